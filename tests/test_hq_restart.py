"""HQ killed mid-run (SIGKILL, no clean-up) and restarted: only complete versions, and the run goes on from them.

`fedloop demo` runs a simulated federation on the tiny model in its own process
group; once the registry holds at least two versions, every process of it is
killed. The registry must then hold only versions whose encrypted blob decrypts
and matches its signed digest, and `fedloop demo --resume` continues from the
newest of them.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from deployment_helpers import FEDLOOP, descendants

from fedloop.server.registry import VersionRegistry
from fedloop.shared.keys import load_identity
from fedloop.shared.run_layout import HQ_NAME, RunLayout

pytestmark = [pytest.mark.deployment, pytest.mark.slow]


def registry_rows(database: Path) -> int:
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM versions").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_hq_killed_mid_run_leaves_complete_versions_and_the_next_run_continues(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(f"""
[federation]
run_name = "restart"
tenants = ["acme", "bolt"]
rounds = 6
[paths]
model = "{tiny_model_dir}"
runs_dir = "{tmp_path / "runs"}"
[lora]
rank = 4
alpha = 8
[train]
max_steps = 3
batch_size = 4
max_seq_len = 64
[simulation]
conversations_per_round = 4
max_new_tokens = 8
""")
    log = tmp_path / "first.log"
    demo = subprocess.Popen(
        [FEDLOOP, "demo", "--config", str(config)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    run_dir = None
    while time.monotonic() < deadline and demo.poll() is None:
        found = re.search(r"in (\S+/runs/restart-[0-9-]+)", log.read_text())
        run_dir = Path(found.group(1)) if found else None
        if run_dir and registry_rows(RunLayout(run_dir).hq / "registry.db") >= 2:
            break
        time.sleep(0.2)
    assert demo.poll() is None and run_dir is not None, log.read_text()[-3000:]
    for pid in [demo.pid, *descendants(demo.pid)]:  # HQ's machine dies: no handler runs
        os.kill(pid, signal.SIGKILL)
    demo.wait(timeout=30)

    layout = RunLayout(run_dir)
    registry = VersionRegistry(layout.hq, load_identity(layout.keys, HQ_NAME))
    survivors = registry.versions()
    assert len(survivors) >= 2 and all(registry.signature_valid(v.id) for v in survivors)
    for version in survivors:
        registry.load_adapter(version.id)  # decrypts and matches its signed digest, or raises
    last = survivors[-1].id
    registry.close()

    resumed = subprocess.run(
        [FEDLOOP, "demo", "--config", str(config), "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert f"continuing from version {last}" in resumed.stdout + resumed.stderr
    # Every round of the resumed run made a version after the survivors. (Its lineage can be shorter: a version
    # every tenant declined is not where training goes on from, issue 30.)
    registry = VersionRegistry(layout.hq, load_identity(layout.keys, HQ_NAME))
    ids = [v.id for v in registry.versions()]
    registry.close()
    assert ids[: len(survivors)] == [v.id for v in survivors] and len(ids) == len(survivors) + 6
