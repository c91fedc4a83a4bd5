"""No key byte ever reaches an operator's screen or a log: crypto failures provoked in every command group.

Each command below reads data whose ciphertext was altered (or a store cut short), so it fails inside the
cryptographic code with the keys in its local variables. The test runs the real `fedloop` executable and
searches stdout and stderr (where fedloop logs) for every secret key, as hex and as Python's bytes repr.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fedloop.client.ingest.recorder import Action, FeedbackRecorder
from fedloop.client.release.controller import ReleaseController
from fedloop.client.store import ENCRYPTED_COLUMNS
from fedloop.client.store.api import InstalledVersion
from fedloop.client.tenant_settings import ReleaseSection
from fedloop.server.registry import VersionRegistry
from fedloop.shared.keys import Identity, init_keys
from fedloop.shared.run_layout import HQ_NAME, RunLayout

FEDLOOP = str(Path(sys.executable).parent / "fedloop")
ROOT = Path(__file__).resolve().parents[1]


def _secrets(identity: Identity) -> list[bytes]:
    return [*identity.storage.keys.values(), identity.pseudonym_key, identity.signing_key.scalar]


def _flip_every_encrypted_value(database: Path) -> None:
    with sqlite3.connect(database) as db:
        for table, (_, columns) in ENCRYPTED_COLUMNS.items():
            for column in columns:
                for rowid, value in db.execute(f"SELECT rowid, {column} FROM {table} WHERE {column} IS NOT NULL"):
                    db.execute(
                        f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (value[:-1] + bytes([value[-1] ^ 1]), rowid)
                    )


def _config(path: Path, name: str, keys: Path, data: Path) -> Path:
    path.write_text(f'[tenant]\nname = "{name}"\nkeys_dir = "{keys}"\ndata_dir = "{data}"\n')
    return path


@pytest.fixture
def broken_parties(make_tenant, tmp_path: Path) -> tuple[dict[str, list[str]], list[bytes]]:
    """Commands, one per group, that each hit altered ciphertext or a cut store; the secrets they must not print."""
    tenant = make_tenant()
    recorder = FeedbackRecorder(tenant.pipeline)
    draft_id = recorder.record_draft("u1", "call me on 13812345678", "Sure, we will call.", "v1")
    recorder.record_outcome(draft_id, Action.ACCEPT, dwell_ms=3000)
    tenant.store.versions.install(InstalledVersion("v1", 1, None, "d" * 64), b"adapter bytes")
    ReleaseController(tenant.store, ReleaseSection()).offer("v1", "gates passed")
    settings = tenant.settings.tenant
    config = _config(tmp_path / "tenant.toml", settings.name, Path(settings.keys_dir), Path(settings.data_dir))
    _flip_every_encrypted_value(Path(settings.data_dir) / "feedback.db")

    cut = init_keys("tenant", "cut", tmp_path / "cut-keys")
    cut_config = _config(tmp_path / "cut.toml", "cut", tmp_path / "cut-keys", tmp_path / "cut")
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "feedback.db").write_bytes(b"SQLite format 3\x00" + os.urandom(40))

    layout = RunLayout(tmp_path / "run")
    hq = init_keys("hq", HQ_NAME, layout.keys)
    registry = VersionRegistry(layout.hq, hq)
    version = registry.create(b"\x00" * 64, None, "r", 0, {}, "init", {})
    registry.close()
    blob = next((layout.hq / "blobs").iterdir())
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")

    commands = {
        "keys": ["keys", "rotate", "--config", str(config), "--operator", "ana"],
        "samples": ["samples", "review", "list", "--config", str(config)],
        "vault": [
            "vault",
            "reveal",
            "--config",
            str(config),
            "--record",
            draft_id,
            "--placeholder",
            "<CN_MOBILE_1>",
            "--operator",
            "ana",
            "--reason",
            "call back",
        ],
        "release": [
            "release",
            "export",
            "--config",
            str(config),
            "--settings",
            str(ROOT / "configs" / "demo.toml"),
            "--out",
            str(tmp_path / "export"),
            "--operator",
            "ana",
            "--reason",
            "inference server",
        ],
        "tenant": ["tenant", "serve", "--config", str(cut_config)],
        "versions": ["versions", "export", version.id, "--run", str(layout.root), "--out", str(tmp_path / "v")],
        "audit": ["audit", "verify", "--tenant", str(cut_config)],
    }
    return commands, _secrets(tenant.identity) + _secrets(cut) + _secrets(hq)


def _leaks(text: str, secrets: list[bytes]) -> list[str]:
    shown = text.lower()
    return [
        secret.hex()[:12] + "…" for secret in secrets if secret.hex() in shown or repr(secret)[2:-1].lower() in shown
    ]


@pytest.mark.slow
def test_no_command_group_prints_a_key_when_crypto_fails(broken_parties) -> None:
    commands, secrets = broken_parties
    env = {**os.environ, "COLUMNS": "200"}  # fedloop's log records go to stderr, searched with it
    running = {
        group: subprocess.Popen([FEDLOOP, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for group, argv in commands.items()
    }
    outputs = {group: process.communicate(timeout=240) for group, process in running.items()}
    for group, (stdout, stderr) in outputs.items():
        print(f"--- fedloop {group} (exit {running[group].returncode})\n{stdout}{stderr}")
        assert running[group].returncode == 2 and "Usage:" not in stderr, f"{group}: not refused\n{stdout}{stderr}"
        assert "integrity check" in stderr or "not a readable SQLite database" in stderr
        assert not _leaks(stdout + stderr, secrets), f"`fedloop {group}` printed a key:\n{stdout}{stderr}"
        assert "Traceback" not in stdout + stderr, f"`fedloop {group}` printed a traceback:\n{stderr}"
