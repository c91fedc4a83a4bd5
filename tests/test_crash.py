"""Crash safety: concurrent clients, `kill -9` of the real server mid-stream, restart, nothing lost."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_helpers import draft, outcome, stub
from ports import free_port

from fedloop.client.store import FeedbackStore
from fedloop.shared.keys import init_keys, load_identity

CLIENTS = 4
ACKED_BEFORE_KILL = 200  # events the server has acknowledged when it is killed


def _start(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "fedloop"), "tenant", "serve", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=config.parent,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not start listening within 60 s")


@pytest.mark.slow
def test_every_acknowledged_event_survives_kill_9(tmp_path: Path) -> None:
    port = free_port()
    init_keys("tenant", "acme", tmp_path / "keys")
    config = tmp_path / "tenant.toml"
    config.write_text(
        f'[tenant]\nname = "acme"\nkeys_dir = "keys"\ndata_dir = "data"\n'
        f'[ingest]\naddress = "127.0.0.1:{port}"\n[metrics]\naddress = ""\n'
    )
    log = tmp_path / "server.log"
    server = _start(config, port, log)
    acked: list[list[str]] = [[] for _ in range(CLIENTS)]
    stop = threading.Event()

    def client(number: int) -> None:
        channel, service = stub(port)
        for i in range(100_000):
            if stop.is_set():
                break
            draft_id = f"c{number}-d{i}"
            try:
                service.RecordDraft(draft(f"{draft_id}-e", draft_id, prompt=f"question {i} from {number}"), timeout=5)
                acked[number].append(f"{draft_id}-e")
                service.RecordOutcome(outcome(f"{draft_id}-o", draft_id), timeout=5)
                acked[number].append(f"{draft_id}-o")
            except grpc.RpcError:
                break
        channel.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while sum(map(len, acked)) < ACKED_BEFORE_KILL and time.monotonic() < deadline:  # mid-stream, however fast
        time.sleep(0.01)
    os.kill(server.pid, signal.SIGKILL)  # no chance to flush anything
    server.wait()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    acknowledged = [e for per_client in acked for e in per_client]
    assert len(acknowledged) >= ACKED_BEFORE_KILL, "the clients should have been acknowledged many events first"

    server = _start(config, port, log)
    try:
        channel, service = stub(port)
        # replaying every acknowledged event after the restart: each must be recognised as already stored
        for event_id in acknowledged:
            draft_id = event_id.rsplit("-", 1)[0]
            number, i = draft_id[1:].split("-d")
            message = (
                service.RecordDraft(draft(event_id, draft_id, prompt=f"question {i} from {number}"))
                if event_id.endswith("-e")
                else service.RecordOutcome(outcome(event_id, draft_id))
            )
            assert message.duplicate, event_id
        channel.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    identity = load_identity(tmp_path / "keys", "acme")
    store = FeedbackStore(tmp_path / "data" / "feedback.db", identity.storage, identity.pseudonym_key)
    db = store.raw_connection()
    stored_ids = [r[0] for r in db.execute("SELECT event_id FROM events")]
    assert len(stored_ids) == len(set(stored_ids))
    assert set(acknowledged) <= set(stored_ids)
    for event_id in acknowledged:
        if event_id.endswith("-e"):
            draft_id = event_id.rsplit("-", 1)[0]
            stored = store.drafts.get_draft(draft_id)
            assert stored is not None and stored.prompt.startswith("question ")  # decrypts
    store.close()
