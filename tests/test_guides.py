"""The guides are code (issue 31): every shell block of README.md and docs/ runs, or says why it cannot.

A shell block is preceded by one marker:
- `<!-- guide-run: LABEL -->`: run by `test_the_operator_guides_run_as_written`, in the order of `SCENARIO`, in
  the working directory of the party that runs it (HQ, or each of two tenants), on loopback with the tiny model.
  The only changes are those the guides tell a second party to make: host names (hq.example.com is this host)
  and ports (each party's own), and for the second tenant its name (bolt for acme). What parties send each other
  (public keys, certificates, the federation file) the test copies, as the guides say.
- `<!-- guide-synopsis: WHY -->`: a reference with placeholders; every `fedloop` command in it must exist with
  every option it names (`fedloop ... --help`).
- `<!-- guide-skip: WHY -->`: cannot run here, and why.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from deployment_helpers import free_port, listening
from typer.testing import CliRunner

from fedloop.cli import app

ROOT = Path(__file__).resolve().parents[1]
GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- guide-(run|synopsis|skip): (.+?) -->\n)?```(bash|sh|shell|console)\n(.*?)```", re.S)
SCENARIO = [  # (label, who runs it), in the order the guides' key exchange makes them happen
    ("hq-setup", "hq"),
    ("tenant-setup", "tenants"),
    ("exchange", "test"),
    ("hq-keyring", "hq"),
    ("hq-up", "hq"),
    ("tenant-up", "tenants"),
    ("tenant-traffic", "tenants"),
    ("hq-run", "hq"),
    ("tenant-release", "acme"),  # the operations after the run: the first tenant (the second one's are the same)
    ("tenant-export", "acme"),
    ("tenant-keys", "acme"),
    ("tenant-watch", "acme"),
    ("hq-watch", "hq"),
    ("hq-decide", "hq"),
    ("hq-audit", "hq"),
]
# Commands that run until stopped, and how the guide's reader knows they are up.
LONG_RUNNING = ("fedloop hq up", "fedloop tenant up")
TEMPLATE_PORTS = {"hq": (9300, 9301, 9302), "tenant": (50051, 8000, 9464, 9400)}


@dataclass(frozen=True)
class Block:
    """A shell block of a guide and its marker."""

    guide: Path
    kind: str  # run, synopsis, skip, or "" (unmarked)
    label: str
    text: str

    def commands(self) -> list[str]:
        """The block's commands: continuation lines joined, comment-only and blank lines left out (a `for ... done`
        loop is one command)."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        commands: list[str] = []
        for line in joined.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if commands and (commands[-1].lstrip().startswith("for ") and not commands[-1].rstrip().endswith("done")):
                commands[-1] += "\n" + line
            else:
                commands.append(line)
        return commands


def guide_blocks() -> list[Block]:
    """Every shell block of README.md and docs/, in order."""
    found = []
    for guide in GUIDES:
        for kind, label, _, text in BLOCK.findall(guide.read_text()):
            found.append(Block(guide, kind, label.strip(), text))
    return found


def test_every_shell_block_runs_or_says_why() -> None:
    blocks = guide_blocks()
    unmarked = [f"{b.guide.name}: {b.text.splitlines()[0]}" for b in blocks if not b.kind]
    assert not unmarked, f"shell blocks without a guide-run/synopsis/skip marker: {unmarked}"
    assert all(len(b.label) > 20 for b in blocks if b.kind != "run"), "a skipped block must say why"
    labels = [b.label for b in blocks if b.kind == "run"]
    assert len(labels) == len(set(labels)), f"run labels repeat: {labels}"
    assert set(labels) == {label for label, who in SCENARIO if who != "test"}, "SCENARIO and the guides disagree"


def _command_paths(line: str) -> Iterator[tuple[list[str], list[str]]]:
    """(subcommand path, options named) of a synopsis line, one path per `a|b` alternative."""
    words = shlex.split(line, comments=True)
    if not words or words[0] != "fedloop":
        return
    path = []
    for word in words[1:]:
        if not re.fullmatch(r"[a-z][a-z0-9-]*(\|[a-z][a-z0-9-]*)*", word):
            break
        path.append(word.split("|"))
    options = sorted({m for w in words for m in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", w)})
    for choice in itertools.product(*path):
        yield list(choice), options


def test_every_command_a_guide_names_exists_with_its_options() -> None:
    runner = CliRunner()
    checked = 0
    for block in guide_blocks():
        if block.kind == "skip":
            continue
        for command in block.commands():
            for path, options in _command_paths(command.strip()):
                shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "240"}, terminal_width=240)
                assert shown.exit_code == 0, f"{block.guide.name}: `fedloop {' '.join(path)}` does not exist"
                missing = [o for o in options if o not in shown.output and o != "--help"]
                assert not missing, f"{block.guide.name}: `fedloop {' '.join(path)}` has no {missing}"
                checked += 1
    assert checked > 60


@dataclass
class Party:
    """A party's working directory (a clone: configs/, scripts/, .venv, models/) and what the guides change."""

    name: str
    directory: Path
    substitutions: dict[str, str]
    processes: list[tuple[subprocess.Popen, Path]] = field(default_factory=list)

    def substitute(self, text: str) -> str:
        """`text` with this party's host names, ports and name."""
        for old, new in self.substitutions.items():
            text = re.sub(rf"(?<![\w.-]){re.escape(old)}(?![\w-])", new, text)
        return text


def _party(root: Path, name: str, model: Path, substitutions: dict[str, str]) -> Party:
    directory = root / name
    (directory / "configs").mkdir(parents=True)
    party = Party(name, directory, substitutions)
    for template in (ROOT / "configs").glob("*.toml"):
        (directory / "configs" / template.name).write_text(party.substitute(template.read_text()))
    (directory / "scripts").symlink_to(ROOT / "scripts")
    (directory / ".venv").symlink_to(Path(sys.prefix))
    (directory / "models").mkdir()
    (directory / "models" / "smollm2-135m-instruct").symlink_to(model)
    return party


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _run(party: Party, command: str, log: Path) -> None:
    """Run one command of a guide in the party's directory; a long-running one is started and waited for."""
    command = party.substitute(command)
    with log.open("a") as out:
        out.write(f"\n[{time.strftime('%H:%M:%S')}] {party.name}$ {command}\n")
    if command.lstrip().startswith(LONG_RUNNING):
        process_log = party.directory / f"{len(party.processes)}-{command.split()[1]}.log"
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=party.directory,
            env=_env(),
            stdout=process_log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        party.processes.append((process, process_log))
        _wait_until_up(party, command, process, process_log)
        return
    done = subprocess.run(
        ["bash", "-c", command], cwd=party.directory, env=_env(), capture_output=True, text=True, timeout=900
    )
    with log.open("a") as out:
        out.write(done.stdout + done.stderr)
    assert done.returncode == 0, f"{party.name}: `{command}` exited {done.returncode}:\n{done.stdout}{done.stderr}"


def _wait_until_up(party: Party, command: str, process: subprocess.Popen, log: Path) -> None:
    """Wait until a long-running command serves what the guide's next step needs."""
    if "hq up" in command:
        ports = [int(party.substitutions[str(p)]) for p in (9300, 9302)]
        ready = lambda: all(listening(p) for p in ports)  # noqa: E731
    else:
        ports = [int(party.substitutions[str(p)]) for p in (8000, 50051)]
        ready = lambda: all(listening(p) for p in ports)  # noqa: E731
    deadline = time.monotonic() + 180
    while not ready():
        assert process.poll() is None, f"{party.name}: `{command}` exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{party.name}: `{command}` not up after 180 s:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


def _stop(parties: list[Party]) -> None:
    for party in reversed(parties):
        for process, _ in reversed(party.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=30)


def _exchange(hq: Party, tenants: list[Party]) -> None:
    """What the guides tell the parties to send each other: public halves to HQ's inbox, HQ's to each tenant."""
    inbox = hq.directory / "inbox"
    inbox.mkdir()
    for tenant in tenants:
        name = tenant.substitute("acme")
        shutil.copy(tenant.directory / "keys" / f"{name}.sm2.pub.json", inbox)
        shutil.copy(tenant.directory / "certs" / f"{name}.node.pub", inbox)
        shutil.copy(hq.directory / "hq-home" / "keys" / "hq.sm2.pub.json", tenant.directory)
        shutil.copy(hq.directory / "certs" / "ca.crt", tenant.directory / "certs")
        shutil.copy(hq.directory / "federation.toml", tenant.directory)


@pytest.mark.deployment
@pytest.mark.slow
def test_the_operator_guides_run_as_written(tmp_path: Path, tiny_model_dir: Path) -> None:
    blocks = {b.label: b for b in guide_blocks() if b.kind == "run"}
    hq_ports = {str(p): str(free_port()) for p in TEMPLATE_PORTS["hq"]}
    hq = _party(tmp_path, "hq", tiny_model_dir, {"hq.example.com": "localhost", **hq_ports})
    tenants = [
        _party(
            tmp_path,
            name,
            tiny_model_dir,
            {
                "hq.example.com": "localhost",
                "9300": hq_ports["9300"],
                **{str(p): str(free_port()) for p in TEMPLATE_PORTS["tenant"]},
                **({"acme": name, "--tenant-index 0": "--tenant-index 1"} if name != "acme" else {}),
            },
        )
        for name in ("acme", "bolt")
    ]
    log = tmp_path / "guides.log"
    try:
        for label, who in SCENARIO:
            if who == "test":
                _exchange(hq, tenants)
                continue
            for party in {"hq": [hq], "acme": tenants[:1], "tenants": tenants}[who]:
                for command in blocks[label].commands():
                    _run(party, command, log)
    finally:
        _stop([hq, *tenants])
    transcript = log.read_text()
    assert "run finished; summary:" in transcript, transcript[-3000:]
    lineage = json.loads((hq.directory / "hq-home" / "summary.json").read_text())["lineage"]
    assert len(lineage) >= 2, lineage  # version 0 and the versions the rounds made (a declined one is not in it)
    acme = tenants[0].directory
    routing = json.loads((acme / "lora" / "acme" / "routing.json").read_text())
    assert Path(routing["base_model"]).is_absolute() and Path(routing["base_model"]).exists()
    for adapter in routing["adapters"].values():
        for written in Path(adapter).iterdir():
            assert stat.S_IMODE(written.stat().st_mode) == 0o600, written
    assert "no signals received" in (acme / "report.html").read_text()  # the problem-rate section says why
