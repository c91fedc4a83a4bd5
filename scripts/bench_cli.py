"""How fast and how small an operator's commands are: `fedloop status --tenant` and `fedloop release rollback`.

A tenant directory is set up as the operator guide does (`tenant.toml`, keys,
a store with 2,000 decided drafts and a running canary). Each command is run
`--repeat` times as an operator runs it, a fresh `fedloop` process each time
(the canary is offered again before each rollback, not timed); the time is from
the process's start to its exit, the memory its peak resident set (wait4's
ru_maxrss). The baseline is what these commands cost before issue 31: the same
answer through the whole tenant runtime (the PII pipeline with Presidio and the
near-duplicate index), opened by a Python process the same way.

Printed: minimum and median seconds and peak MB of each, and the ratio
baseline / fedloop. Goal (issue 31): under 2 s and 150 MB on this machine.

Run: .venv/bin/python scripts/bench_cli.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FEDLOOP = str(Path(sys.executable).parent / "fedloop")
BASELINE = """
import sys
from pathlib import Path
from fedloop.client.commands.context import open_runtime
from fedloop.client.status import tenant_status
runtime = open_runtime(Path("tenant.toml"))
if sys.argv[1] == "status":
    tenant_status(runtime.settings, runtime.store)
else:
    from fedloop.client.release.controller import ReleaseController
    ReleaseController(runtime.store, runtime.settings.release, actor="ops").rollback("ops: bench")
runtime.close()
"""


def measured(command: list[str], directory: Path) -> tuple[float, float]:
    """(seconds, peak MB) of one process running `command` in `directory`; fails if it fails."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed: {process.stderr.read().decode() if process.stderr else ''}")
    return seconds, usage.ru_maxrss / 1024


def prepare(directory: Path, drafts: int) -> None:
    """A tenant directory as the guide leaves it, with decided drafts and v1 serving."""
    from fedloop.client.ingest.recorder import Action, FeedbackRecorder
    from fedloop.client.ingest.runtime import open_tenant
    from fedloop.client.release.controller import ReleaseController
    from fedloop.client.store.api import InstalledVersion
    from fedloop.client.tenant_settings import load_tenant_settings
    from fedloop.shared.keys import init_keys, load_identity

    (directory / "tenant.toml").write_text('[tenant]\nname = "acme"\nkeys_dir = "keys"\ndata_dir = "data"\n')
    init_keys("tenant", "acme", directory / "keys")
    settings = load_tenant_settings(directory / "tenant.toml")
    runtime = open_tenant(settings, load_identity(directory / "keys", "acme"))
    recorder = FeedbackRecorder(runtime.pipeline)
    for index in range(drafts):
        draft_id = recorder.record_draft(f"user-{index % 300}", f"Where is order {index}?", "On its way.", "v1")
        recorder.record_outcome(draft_id, Action.ACCEPT if index % 3 else Action.REJECT, dwell_ms=3000)
    runtime.store.versions.install(InstalledVersion("v1", 1, None, "d1"), b"adapter v1")
    ReleaseController(runtime.store, settings.release).offer("v1", "bench: v1 serves")
    runtime.close()


def offer_canary(directory: Path, number: int) -> None:
    """Install and offer a fresh canary (so there is one to roll back)."""
    from fedloop.client.ingest.runtime import open_tenant
    from fedloop.client.release.controller import ReleaseController
    from fedloop.client.store.api import InstalledVersion
    from fedloop.client.tenant_settings import load_tenant_settings
    from fedloop.shared.keys import load_identity

    settings = load_tenant_settings(directory / "tenant.toml")
    runtime = open_tenant(settings, load_identity(directory / "keys", "acme"))
    version = f"v{number + 2}"
    runtime.store.versions.install(InstalledVersion(version, number + 2, "v1", f"d{version}"), b"adapter")
    ReleaseController(runtime.store, settings.release).offer(version, "bench: a canary")
    runtime.close()


def row(label: str, runs: list[tuple[float, float]]) -> str:
    """A table row: minimum and median seconds, peak MB."""
    seconds = [s for s, _ in runs]
    return f"| {label} | {min(seconds):.2f} | {statistics.median(seconds):.2f} | {max(m for _, m in runs):.0f} |"


def main() -> None:
    """Time both commands against the baseline and print the table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command")
    parser.add_argument("--drafts", type=int, default=2000, help="decided drafts in the store")
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)  # the set-up steps run in a child process,
    parser.add_argument("--offer", type=Path, help=argparse.SUPPRESS)  # so the measured ones do not inherit its memory
    parser.add_argument("--number", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare, args.drafts)
        return
    if args.offer:
        offer_canary(args.offer, args.number)
        return
    here = [sys.executable, __file__]
    with tempfile.TemporaryDirectory() as work:
        directory = Path(work)
        subprocess.run([*here, "--prepare", work, "--drafts", str(args.drafts)], check=True)
        commands = {
            "status": ([FEDLOOP, "status", "--tenant", "tenant.toml"], [sys.executable, "-c", BASELINE, "status"]),
            "rollback": (
                [FEDLOOP, "release", "rollback", "--operator", "ops", "--reason", "bench"],
                [sys.executable, "-c", BASELINE, "rollback"],
            ),
        }
        print(f"{args.drafts} decided drafts in the store; {args.repeat} runs each; {os.cpu_count()} CPUs")
        print("| command | min s | median s | peak MB |\n|---|---|---|---|")
        for name, (fedloop, baseline) in commands.items():
            results = {}
            for label, command in (("fedloop", fedloop), ("baseline: whole runtime", baseline)):
                runs = []
                for number in range(args.repeat):
                    if name == "rollback":
                        offset = 0 if label == "fedloop" else args.repeat
                        subprocess.run([*here, "--offer", work, "--number", str(number + offset)], check=True)
                    runs.append(measured(command, directory))
                results[label] = runs
                print(row(f"`{name}` ({label})", runs), flush=True)
            ratio = statistics.median(s for s, _ in results["baseline: whole runtime"]) / statistics.median(
                s for s, _ in results["fedloop"]
            )
            print(f"`{name}`: baseline / fedloop (median time) = {ratio:.1f}x")


if __name__ == "__main__":
    main()
