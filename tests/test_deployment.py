"""Flower's Deployment Engine for real on 127.0.0.1: one SuperLink, three SuperNodes, TLS and node auth on.

Every process is started the way an operator starts it (`fedloop hq up`,
`fedloop tenant up`, `fedloop run`) and stopped at the end. Tenants receive
their users' feedback only from their product, through their own running
FeedbackService (the federation settings have no simulated users); one tenant
is killed in the middle of the last round; a second run continues from the last
version in HQ's registry. A product then drafts with the released version over
the tenant's OpenAI-compatible endpoint, with the official `openai` client,
exactly as docs/tenant-operator.md shows.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from deployment_helpers import (
    FEDLOOP,
    Federation,
    descendants,
    free_port,
    provision,
    start_hq,
    start_tenant,
    tenant_store,
    wait_for,
    write_tenant_config,
)
from flwr.common.constant import TIMESTAMP_HEADER
from flwr.supercore.constant import FLEET_HTTP_PUBLIC_KEY_HEADER, FLEET_HTTP_SIGNATURE_HEADER
from grpc_helpers import draft, outcome, stub
from memory_helpers import PeakGrowth, cap_address_space, post_head, push_body

from fedloop.proto import feedback_pb2 as pb
from fedloop.server.registry import VersionRegistry
from fedloop.shared.flower_processes import flower_env
from fedloop.shared.keys import load_identity
from fedloop.shared.run_layout import HQ_NAME

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

TENANTS = ("acme", "bolt", "cobalt")
DOOMED = "cobalt"  # killed in the middle of the last round
CANARIES = {tenant: f"CANARY-{tenant}-qx7zv9-do-not-leak" for tenant in TENANTS}
ROUNDS = 2
PLANTED_USERS = [f"user-{index}" for index in range(4)]


def write_settings(path: Path, model: Path, rounds: int) -> None:
    path.write_text(f"""
[federation]
run_name = "deployed"
tenants = {json.dumps(list(TENANTS))}
rounds = {rounds}
round_timeout_s = 240
enrol_timeout_s = 20
[paths]
model = "{model}"
[lora]
rank = 4
alpha = 8
[train]
max_steps = 4
batch_size = 4
max_seq_len = 64
[aggregation]
min_tenants = 2
""")


def plant_canary(port: int, tenant: str) -> None:
    """The tenant's product reports drafts whose edited finals carry the tenant's canary: training targets."""
    channel, service = stub(port)
    for index, user in enumerate(PLANTED_USERS):
        draft_id = f"{tenant}-draft-{index}"
        service.RecordDraft(draft(f"e-{draft_id}", draft_id, user_id=user, model_version="v0000"), timeout=30)
        service.RecordOutcome(
            outcome(
                f"o-{draft_id}",
                draft_id,
                action=pb.EDIT_ACCEPT,
                final_text=f"Your parcel is on its way. {CANARIES[tenant]}",
            ),
            timeout=30,
        )
    channel.close()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("deployed")
    federation = Federation(root, free_port())
    provision(root, TENANTS, extra_node_keys=("rogue",))
    write_settings(root / "settings.toml", tiny_model_dir, ROUNDS)
    try:
        start_hq(federation, TENANTS)
        for tenant in TENANTS:
            port, serve_port = free_port(), free_port()
            federation.serve_ports[tenant] = serve_port
            start_tenant(
                federation,
                tenant,
                write_tenant_config(root, tenant, f"{tenant}-home", port, serve_port=serve_port),
                port,
            )
            plant_canary(port, tenant)
            for user in PLANTED_USERS:
                federation.record_sent(tenant, user)
        # A SuperNode whose node key HQ never registered, claiming to be acme.
        start_tenant(federation, "rogue", write_tenant_config(root, "rogue", "acme-home", free_port(), "acme"), None)
        run, run_log = federation.start("run-1", "run", "--settings", "settings.toml", "--config", "hq.toml")
        wait_for(
            lambda: f"round {ROUNDS}: sending version" in run_log.read_text(),
            f"round {ROUNDS}",
            run_log,
            run,
            timeout=400,
        )
        federation.kill(DOOMED, signal.SIGKILL)  # the tenant's machine dies in the middle of the round
        assert run.wait(timeout=500) == 0, run_log.read_text()[-4000:]
        federation.runs.append(json.loads((root / "hq-home" / "summary.json").read_text())["lineage"][-1]["id"])
        write_settings(root / "settings.toml", tiny_model_dir, 1)
        second = subprocess.run(
            [FEDLOOP, "run", "--settings", "settings.toml", "--config", "hq.toml"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=500,
        )
        (root / "run-2.log").write_text(second.stdout + second.stderr)
        assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
        yield federation
    finally:
        federation.stop()


def summary(federation: Federation) -> dict:
    return json.loads((federation.root / "hq-home" / "summary.json").read_text())


def test_rounds_over_tls_with_authenticated_supernodes_and_a_tenant_lost_mid_round(deployed: Federation) -> None:
    versions = VersionRegistry(
        deployed.root / "hq-home" / "hq", load_identity(deployed.root / "hq-home" / "keys", HQ_NAME)
    )
    first_run = versions.lineage(deployed.runs[0])
    assert [v.round for v in first_run] == [0, 1, 2]
    assert set(first_run[1].contributors) == set(TENANTS)
    assert set(first_run[2].contributors) == set(TENANTS) - {DOOMED}  # the round went on without it
    assert all(versions.signature_valid(v.id) for v in versions.versions())
    versions.close()
    assert f"refused update from {DOOMED}" in (deployed.root / "run-1.log").read_text()


def test_a_second_run_continues_from_the_last_version(deployed: Federation) -> None:
    second = summary(deployed)
    assert second["tenants"] == sorted(set(TENANTS) - {DOOMED})
    lineage = second["lineage"]
    assert lineage[-2]["id"] == deployed.runs[0] and lineage[-1]["parent"] == deployed.runs[0]
    assert [v["round"] for v in lineage] == [0, 1, 2, 3]  # rounds keep counting across runs
    assert f"continuing from version {deployed.runs[0]}" in (deployed.root / "run-2.log").read_text()


def test_a_supernode_whose_key_is_not_registered_is_refused(deployed: Federation) -> None:
    rogue = deployed.processes["rogue"][1].read_text()
    assert "Failed to activate SuperNode" in rogue
    assert "Failed to activate SuperNode" not in deployed.processes["acme"][1].read_text()


EVIL_SERVERAPP = """
from pathlib import Path
Path({marker!r}).write_text("the attacker's ServerApp ran on HQ")
from flwr.serverapp import ServerApp
app = ServerApp()
"""


def _evil_app(directory: Path, marker: Path) -> Path:
    """A Flower App whose ServerApp, if HQ ever imported it, would leave `marker` behind."""
    directory.mkdir()
    (directory / "evil.py").write_text(EVIL_SERVERAPP.format(marker=str(marker)))
    (directory / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "evil"\nversion = "1.0.0"\ndependencies = []\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["."]\n'
        '[tool.flwr.app]\npublisher = "mallory"\n'
        '[tool.flwr.app.components]\nserverapp = "evil:app"\nclientapp = "evil:app"\n[tool.flwr.app.config]\n'
    )
    return directory


def _outsider_flwr(deployed: Federation, *args: str) -> subprocess.CompletedProcess:
    """The Flower CLI of someone holding only the public ca.crt, pointed at HQ's public port."""
    home = deployed.root / "outsider"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "hq"\n\n[superlink.hq]\n'
        f'address = "127.0.0.1:{deployed.port}"\n'
        f'root-certificates = "{deployed.root / "certs" / "ca.crt"}"\n'
    )
    return subprocess.run(
        [str(Path(FEDLOOP).parent / "flwr"), *args],
        cwd=deployed.root,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FLWR_HOME": str(home)},
    )


def test_an_outsider_with_the_ca_certificate_cannot_use_the_control_api(deployed: Federation) -> None:
    marker = deployed.root / "evil-ran"
    attempts = {
        "flwr ls": _outsider_flwr(deployed, "ls", "hq"),
        "flwr supernode register": _outsider_flwr(deployed, "supernode", "register", "certs/rogue.node.pub", "hq"),
        "flwr run": _outsider_flwr(deployed, "run", str(_evil_app(deployed.root / "evilapp", marker)), "hq"),
    }
    for command, result in attempts.items():
        print(f"$ {command}  -> exit {result.returncode}\n{(result.stdout + result.stderr).strip()[-400:]}")
        assert result.returncode != 0, f"{command} got in:\n{result.stdout}{result.stderr}"
        assert "only the Fleet API is served" in " ".join((result.stdout + result.stderr).replace("│", " ").split())
    time.sleep(3)
    assert not marker.exists(), "the attacker's ServerApp ran on HQ"
    operator = subprocess.run(
        [str(Path(FEDLOOP).parent / "flwr"), "supernode", "list", "fedloop"],
        capture_output=True,
        text=True,
        timeout=120,
        env=flower_env(deployed.root / "hq-home"),
    )
    assert operator.returncode == 0 and "rogue" not in operator.stdout, operator.stdout + operator.stderr


def test_a_registered_tenant_signing_with_its_node_key_cannot_use_the_control_api(deployed: Federation) -> None:
    node_key = serialization.load_ssh_private_key((deployed.root / "certs" / "acme.node").read_bytes(), None)
    assert isinstance(node_key, ec.EllipticCurvePrivateKey)  # Flower's node keys are ECDSA
    for path in ("/v1/control/list-runs", "/v1/control/register-node", "/v1/control/start-run"):
        timestamp = datetime.now(UTC).isoformat()
        signature = node_key.sign(timestamp.encode(), ec.ECDSA(hashes.SHA256()))
        public = node_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        headers = {
            FLEET_HTTP_PUBLIC_KEY_HEADER: base64.b64encode(public).decode(),
            TIMESTAMP_HEADER: timestamp,
            FLEET_HTTP_SIGNATURE_HEADER: base64.b64encode(signature).decode(),
            "Content-Type": "application/protobuf",
        }
        response = httpx.post(
            f"https://127.0.0.1:{deployed.port}{path}",
            content=b"",
            headers=headers,
            verify=ssl.create_default_context(cafile=deployed.root / "certs" / "ca.crt"),
            timeout=30,
        )
        print(f"POST {path} as acme's node -> {response.status_code} {response.text}")
        assert response.status_code == 403 and "only the Fleet API" in response.text


def _superlink_pid(deployed: Federation) -> int:
    for pid in descendants(deployed.processes["hq"][0].pid):
        if b"superlink_launcher" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise AssertionError("no SuperLink process under `fedloop hq up`")


def test_outsiders_huge_bodies_and_floods_stop_at_the_gateway_and_the_superlink_stays_flat(
    deployed: Federation,
) -> None:
    """Three unauthenticated 300 MB push-object bodies used to take the SuperLink from 161 MB to 2.5 GB.

    The rounds of this module's runs passed through the same gateway limits (the fixture).
    """
    superlink = _superlink_pid(deployed)
    print(f"SuperLink address space capped at {cap_address_space(superlink) / 2**30:.2f} GiB")
    growth = PeakGrowth(superlink)
    tls = ssl.create_default_context(cafile=deployed.root / "certs" / "ca.crt")
    huge = 300 * 2**20
    declared = [
        push_body(deployed.port, post_head(deployed.port, "/v1/fleet/push-object", "", huge), huge, False, tls)
        for _ in range(3)
    ]
    chunked = push_body(deployed.port, post_head(deployed.port, "/v1/fleet/push-object", "", None), huge, True, tls)
    print(f"3 x 300 MB declared: {declared}; 300 MB chunked: {chunked} (status, body bytes sent)")
    assert [status for status, _ in declared] == [413] * 3 and chunked[0] == 413 and chunked[1] < huge
    print(f"SuperLink peak memory growth: {growth.mib():.1f} MiB (limit 50)")
    assert growth.mib() < 50

    def flood(_: int) -> list[int]:  # one of 16 clients; requests back to back on one connection
        with httpx.Client(verify=tls, timeout=30) as client:
            return [client.get(f"https://127.0.0.1:{deployed.port}/v1/fleet/").status_code for _ in range(150)]

    # 2,400 requests from one address, 16 at a time: beyond the burst of 1,000 as soon as they come faster than
    # 100 a second plus the burst (one client alone, 1,500 back to back, stayed under that on a loaded host)
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = [status for statuses in pool.map(flood, range(16)) for status in statuses]
    print(f"2400 requests, 16 at a time, from one address: {statuses.count(429)} answered 429")
    assert statuses.count(429) > 0


def test_no_canary_string_reaches_the_superlink_or_the_registry(deployed: Federation) -> None:
    hq_home = deployed.root / "hq-home"
    files = [p for p in hq_home.rglob("*") if p.is_file() and p.name.startswith(("superlink.db", "registry.db"))]
    files += list((hq_home / "hq" / "blobs").iterdir()) + [hq_home / "summary.json"]
    assert any(p.name == "superlink.db" for p in files) and len(list((hq_home / "hq" / "blobs").iterdir())) == 4
    for path in files:
        data = path.read_bytes()
        for canary in CANARIES.values():
            assert canary.encode() not in data and canary.encode("utf-16-le") not in data, f"{canary} in {path}"


def test_hq_and_tenant_metrics_endpoints_report_the_runs(deployed: Federation) -> None:
    from urllib.request import urlopen

    from fedloop.client.tenant_settings import load_tenant_settings

    hq = urlopen(f"http://127.0.0.1:{deployed.metrics_port}/metrics", timeout=10).read().decode()
    assert "fedloop_hq_rounds_total 3.0" in hq  # two rounds of the first run, one of the second
    assert 'fedloop_hq_refused_deltas_total{reason="tenant-error"} 1.0' in hq
    assert 'fedloop_hq_versions{status="candidate"} 4.0' in hq
    acme = load_tenant_settings(deployed.root / "acme.toml").metrics.address
    tenant = urlopen(f"http://{acme}/metrics", timeout=10).read().decode()
    drafts = sum(deployed.sent["acme"].values())  # the product's drafts (gRPC and the draft endpoint)
    assert f'fedloop_tenant_events_ingested_total{{kind="draft"}} {drafts:.1f}' in tenant
    assert "fedloop_tenant_train_loss" in tenant and 'fedloop_tenant_pool_samples{pool="candidate"}' in tenant


def open_store(federation: Federation, tenant: str):
    return tenant_store(federation.root, tenant)


def documented_integration() -> str:
    """The product integration snippet of docs/tenant-operator.md, as written there."""
    page = (Path(__file__).parent.parent / "docs" / "tenant-operator.md").read_text()
    return page.split("<!-- product-integration -->\n```python\n", 1)[1].split("```", 1)[0]


def test_tenant_stores_hold_exactly_the_product_events_and_no_simulated_user(deployed: Federation) -> None:
    for tenant in TENANTS:
        store = open_store(deployed, tenant)
        try:
            # what the product sent (a draft and an outcome each), and nothing else, was recorded
            sent = deployed.sent[tenant]
            assert store.drafts.count_events() == 2 * sum(sent.values()), tenant
            users = {r[0] for r in store.raw_connection().execute("SELECT user_pseudonym FROM drafts")}
            assert users == {store.pseudonym(u) for u in sent}, tenant
            simulated = {store.pseudonym(f"{t}-user-{n}") for t in TENANTS for n in range(1, 51)}
            samples = {r[0] for r in store.raw_connection().execute("SELECT user_pseudonym FROM samples")}
            assert not (users | samples) & simulated
            assert store.versions.installed() and store.versions.release_state() is not None  # trained, gated, released
            trained = {v.version_id for v in store.versions.installed() if v.round >= 1}
            offered = {r.canary for r in store.versions.release_history()} | {
                r.serving for r in store.versions.release_history()
            }
            assert trained & offered, f"{tenant}: no trained version passed the shipped default gates"  # issue 14
        finally:
            store.close()


def test_a_product_drafts_with_the_released_version_through_the_openai_client(deployed: Federation) -> None:
    tenant = "acme"
    from fedloop.client.release.controller import ReleaseController

    store = open_store(deployed, tenant)
    routed = ReleaseController.route_in(
        store.versions.release_state(), store.pseudonym("customer-42")
    )  # serving or canary
    before = store.drafts.count_events()
    shown: list[str] = []
    namespace = {"show": shown.append, "wait_for_user": lambda: ("edit", "Your parcel arrives tomorrow.")}
    snippet = documented_integration().replace("127.0.0.1:8000", f"127.0.0.1:{deployed.serve_ports[tenant]}")
    exec(compile(snippet, "docs/tenant-operator.md", "exec"), namespace)
    deployed.record_sent(tenant, "customer-42")
    draft: Any = namespace["draft"]  # the documented snippet's ChatCompletion
    assert shown == [draft.choices[0].message.content] and draft.model == routed
    assert store.drafts.get_draft(draft.id).model_version == routed
    assert (
        store.drafts.has_outcome(draft.id) and store.drafts.count_events() == before + 2
    )  # exactly the draft and its outcome
    store.close()
