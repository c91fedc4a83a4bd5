"""Helpers for tests that deploy fedloop for real on 127.0.0.1: SuperLink, SuperNodes, `fedloop run`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from grpc_helpers import draft, outcome, stub
from ports import free_port

from fedloop.proto import feedback_pb2 as pb
from fedloop.shared.certs import make_node_key
from fedloop.shared.keys import init_keys, key_paths
from fedloop.shared.run_layout import HQ_NAME

FEDLOOP = str(Path(sys.executable).parent / "fedloop")


def wait_for(
    condition,
    what: str,
    log: Path,
    process: subprocess.Popen | None = None,
    timeout: float = 120.0,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited before {what}:\n{log.read_text()[-3000:]}")
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"no {what} after {timeout} s:\n{log.read_text()[-3000:]}")


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Federation:
    """The processes and directories of one deployed federation."""

    root: Path
    port: int
    metrics_port: int = field(default_factory=lambda: free_port())
    superlink_port: int = field(default_factory=lambda: free_port())  # loopback Control API (operators)
    processes: dict[str, tuple[subprocess.Popen, Path]] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    serve_ports: dict[str, int] = field(default_factory=dict)
    # What each tenant's product sent, by whichever fixture or test sent it: tenant -> user -> drafts (each with its
    # outcome). A test that counts events compares with this, so the tests of a module pass in any order.
    sent: dict[str, dict[str, int]] = field(default_factory=dict)

    def record_sent(self, tenant: str, user: str, drafts: int = 1) -> None:
        """Note that `tenant`'s product sent `drafts` drafts (and an outcome for each) for `user`."""
        users = self.sent.setdefault(tenant, {})
        users[user] = users.get(user, 0) + drafts

    def start(self, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        log = self.root / f"{name}.log"
        process = subprocess.Popen(
            [FEDLOOP, *args], cwd=self.root, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes[name] = (process, log)
        return process, log

    def kill(self, name: str, signum: int = signal.SIGTERM) -> None:
        process, _ = self.processes[name]
        if signum == signal.SIGKILL:  # the machine dies: every process of it, whatever its group
            for pid in descendants(process.pid):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            os.killpg(process.pid, signum)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)

    def stop(self) -> None:
        for name in self.processes:
            self.kill(name)


def tenant_store(root: Path, tenant: str):
    """A second connection to a deployed tenant's store (`root/<tenant>-home`), with its keys."""
    from fedloop.client.store import FeedbackStore
    from fedloop.shared.keys import load_identity

    identity = load_identity(root / f"{tenant}-home" / "keys", tenant)
    return FeedbackStore(
        root / f"{tenant}-home" / f"data-{tenant}" / "feedback.db", identity.storage, identity.pseudonym_key
    )


def write_tenant_config(
    root: Path, name: str, home: str, ingest_port: int, tenant: str | None = None, serve_port: int | None = None
) -> Path:
    """A tenant TOML: its name (default `name`), keys and store under `root/home`, its ingestion and draft ports."""
    path = root / f"{name}.toml"
    path.write_text(
        f'[tenant]\nname = "{tenant or name}"\nkeys_dir = "{root / home / "keys"}"\n'
        f'data_dir = "{root / home / ("data-" + name)}"\n[ingest]\naddress = "127.0.0.1:{ingest_port}"\n'
        f'[metrics]\naddress = "127.0.0.1:{free_port()}"\n'
        f'[serve]\naddress = "127.0.0.1:{serve_port or free_port()}"\n'
    )
    return path


def provision(root: Path, tenants: tuple[str, ...], extra_node_keys: tuple[str, ...] = ()) -> None:
    """Certificates (CA, SuperLink, node keys), HQ's and each tenant's SM2/SM4 keys, public keys exchanged."""
    subprocess.run([FEDLOOP, "certs", "--out", "certs"], cwd=root, check=True, capture_output=True)
    for tenant in (*tenants, *extra_node_keys):  # each tenant makes its own node key; HQ gets the public half
        make_node_key(root / "certs", tenant)
    hq_keys = root / "hq-home" / "keys"
    init_keys("hq", HQ_NAME, hq_keys)
    for tenant in tenants:
        tenant_keys = root / f"{tenant}-home" / "keys"
        init_keys("tenant", tenant, tenant_keys)
        (hq_keys / f"{tenant}.sm2.pub.json").write_bytes(key_paths(tenant_keys, tenant)["public"].read_bytes())
        (tenant_keys / "hq.sm2.pub.json").write_bytes(key_paths(hq_keys, HQ_NAME)["public"].read_bytes())


def start_hq(federation: Federation, tenants: tuple[str, ...]) -> None:
    """`fedloop hq up` (TLS, SuperNode auth, metrics) and `fedloop hq register-node` for each tenant."""
    (federation.root / "hq.toml").write_text(
        f'[hq]\nhome = "hq-home"\ncerts = "certs"\nport = {federation.port}\n'
        f"superlink_port = {federation.superlink_port}\n"
        f'metrics_address = "127.0.0.1:{federation.metrics_port}"\n'
    )
    hq, hq_log = federation.start("hq", "hq", "up", "--config", "hq.toml")
    wait_for(
        lambda: listening(federation.port) and listening(federation.superlink_port), "SuperLink and gateway", hq_log, hq
    )
    for tenant in tenants:
        subprocess.run(
            [
                FEDLOOP,
                "hq",
                "register-node",
                "--config",
                "hq.toml",
                "--key",
                f"certs/{tenant}.node.pub",
                "--name",
                tenant,
            ],
            cwd=federation.root,
            check=True,
            capture_output=True,
            timeout=60,
        )


def start_tenant(federation: Federation, name: str, config: Path, ingest_port: int | None) -> None:
    """`fedloop tenant up` with node key `certs/<name>.node`; waits for its FeedbackService if a port is given."""
    process, log = federation.start(
        name,
        "tenant",
        "up",
        "--config",
        str(config),
        "--settings",
        "settings.toml",
        "--superlink",
        f"127.0.0.1:{federation.port}",
        "--ca",
        "certs/ca.crt",
        "--node-key",
        f"certs/{name}.node",
        "--port",
        str(free_port()),
    )
    if ingest_port is not None:
        wait_for(lambda: listening(ingest_port), f"{name}'s FeedbackService", log, process)


ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class OneTenantRound:
    """How a one-tenant `fedloop run` ended, and how long it took."""

    returncode: int
    log: str
    seconds: float


def run_one_tenant_round(root: Path, model_dir: Path, rank: int, edited_drafts: int, timeout: float) -> OneTenantRound:
    """Deploy HQ and tenant `acme` under `root` (TLS, node authentication), let acme's product report
    `edited_drafts` edited drafts, run one round of `fedloop run` with LoRA `rank` on all linear layers of
    `model_dir`, and stop everything; the run's summary is in `root/hq-home/summary.json`."""
    federation = Federation(root, free_port())
    provision(root, ("acme",))
    (root / "settings.toml").write_text(f"""
[federation]
run_name = "one-tenant"
tenants = ["acme"]
rounds = 1
[paths]
model = "{model_dir}"
[lora]
rank = {rank}
alpha = {rank}
target_modules = {json.dumps(list(ALL_LINEAR))}
[train]
max_steps = 1
batch_size = 2
max_seq_len = 32
""")
    try:
        start_hq(federation, ("acme",))
        port = free_port()
        config = write_tenant_config(root, "acme", "acme-home", port)
        config.write_text(config.read_text() + "[evaluation]\nheld_out_share = 0.0\n")  # every sample trains
        start_tenant(federation, "acme", config, port)
        channel, service = stub(port)
        for index in range(edited_drafts):
            draft_id = f"large-{index}"
            service.RecordDraft(
                draft(f"e-{draft_id}", draft_id, user_id=f"user-{index}", model_version="v0000"), timeout=30
            )
            service.RecordOutcome(
                outcome(
                    f"o-{draft_id}", draft_id, action=pb.EDIT_ACCEPT, final_text=f"Your parcel {index} is on its way."
                ),
                timeout=30,
            )
        channel.close()
        started = time.perf_counter()
        run, log = federation.start("run", "run", "--settings", "settings.toml", "--config", "hq.toml")
        returncode = run.wait(timeout=timeout)
        return OneTenantRound(returncode, log.read_text()[-4000:], time.perf_counter() - started)
    finally:
        federation.stop()
