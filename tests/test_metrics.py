"""Prometheus endpoints of a tenant service and of HQ: what they export, and the Grafana dashboards' names."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
from ports import free_port

from fedloop.client.ingest.recorder import Action, FeedbackError, FeedbackRecorder
from fedloop.client.release.controller import ReleaseController
from fedloop.server.metrics import hq_registry
from fedloop.server.registry import VersionRegistry
from fedloop.server.schedule_state import schedule_state
from fedloop.shared.keys import init_keys
from fedloop.shared.metrics import HQ_METRICS, TENANT_METRICS, serve_metrics
from fedloop.shared.run_layout import RunLayout
from fedloop.shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def scrape(registry) -> dict[str, float]:
    """Serve `registry` on loopback for real, GET /metrics, and return {sample line's name{labels}: value}."""
    address = f"127.0.0.1:{free_port()}"
    server, _ = serve_metrics(registry, address)
    try:
        text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def names(samples: dict[str, float]) -> set[str]:
    return {key.split("{", 1)[0] for key in samples}  # a sample's key is its metric name, then its labels


@pytest.fixture
def tenant_scrape(make_tenant) -> tuple[dict[str, float], dict[str, list[bool]]]:
    tenant = make_tenant()
    recorder = FeedbackRecorder(tenant.pipeline)
    controller = ReleaseController(tenant.store, tenant.settings.release)
    controller.offer("v1", "gates passed")
    controller.offer("v2", "gates passed")
    accepted_by_version: dict[str, list[bool]] = {}  # which users the canary takes depends on the pseudonym key
    for index in range(6):
        user = f"user-{index}"
        version = controller.route(tenant.store.pseudonym(user))
        accepted_by_version.setdefault(version, []).append(bool(index % 2))
        draft_id = recorder.record_draft(
            user, f"Call me on 1381234567{index}", "Sure, we will call.", version, prompt_version="p7"
        )
        recorder.record_outcome(
            draft_id,
            Action.ACCEPT if index % 2 else Action.REJECT,
            None if index % 2 else "We will call you today.",
            3000,
        )
    with pytest.raises(FeedbackError):
        recorder.record_outcome("no-such-draft", Action.ACCEPT)
    controller.rollback("operator: test")
    tenant.store.versions.record_evaluation("v2", "training", {"loss": 0.75, "duration_s": 12.5})
    return scrape(tenant.metrics), accepted_by_version


def test_the_tenant_endpoint_exports_its_metrics(tenant_scrape: tuple[dict[str, float], dict[str, list[bool]]]) -> None:
    samples, accepted_by_version = tenant_scrape
    serving = accepted_by_version["v1"]
    assert set(TENANT_METRICS) <= names(samples) | {"fedloop_tenant_canary_hit_rate"}  # no canary left
    assert samples['fedloop_tenant_events_ingested_total{kind="draft"}'] == 6
    assert samples['fedloop_tenant_events_ingested_total{kind="outcome"}'] == 6
    assert samples['fedloop_tenant_rejected_inputs_total{reason="NOT_FOUND"}'] == 1
    assert samples['fedloop_tenant_redactions_total{entity_type="CN_MOBILE"}'] == 6
    assert samples['fedloop_tenant_hit_rate{model_version="v1",prompt_version="p7"}'] == pytest.approx(
        sum(serving) / len(serving)
    )
    assert samples["fedloop_tenant_rollbacks_total"] == 1
    assert samples["fedloop_tenant_train_loss"] == 0.75
    assert samples["fedloop_tenant_breaker_tripped"] == 0


def test_hq_endpoint_exports_rounds_refusals_bytes_and_versions(tmp_path: Path) -> None:
    registry = VersionRegistry(tmp_path / "hq", init_keys("hq", "hq", tmp_path / "keys"))
    first = registry.create(b"adapter-0", None, "run", 0, {}, "init")
    second = registry.create(b"adapter-1", first.id, "run", 1, {"acme": 10, "bolt": 12}, "exact")
    registry.promote(second.id)
    registry.record_round("run", 0, first.id, {"evaluation": {}})
    registry.record_round(
        "run",
        1,
        second.id,
        {
            "contributors": {"acme": 10, "bolt": 12},
            "duration_s": 42.0,
            "refused_by_reason": {"bad-signature": 1},
            "bytes_to_hq": {"acme": 100, "bolt": 50},
        },
    )
    registry.close()
    layout = RunLayout(tmp_path)
    waiting = schedule_state({"acme": 3100, "bolt": 40}, Settings(), time.time(), time.time(), 1)
    layout.schedule.write_text(json.dumps(waiting.as_dict()))  # a continuous run between rounds
    samples = scrape(hq_registry(layout))
    assert set(HQ_METRICS) <= names(samples)
    assert samples["fedloop_hq_schedule_ready_tenants"] == 1 and samples["fedloop_hq_schedule_needed_tenants"] == 1
    assert samples['fedloop_hq_schedule_new_samples{tenant="bolt"}'] == 40
    assert 86_000 < samples["fedloop_hq_schedule_due_in_seconds"] <= 86_400
    assert samples["fedloop_hq_rounds_total"] == 1 and samples["fedloop_hq_round_duration_seconds"] == 42.0
    assert samples["fedloop_hq_round_tenants"] == 2 and samples["fedloop_hq_received_bytes_total"] == 150
    assert samples['fedloop_hq_refused_deltas_total{reason="bad-signature"}'] == 1
    assert samples['fedloop_hq_versions{status="canary"}'] == 1
    assert samples['fedloop_hq_versions{status="candidate"}'] == 1


@pytest.mark.parametrize("side, exported", [("tenant", TENANT_METRICS), ("hq", HQ_METRICS)])
def test_every_metric_a_dashboard_queries_is_exported(side: str, exported: dict[str, str]) -> None:
    dashboard = json.loads((ROOT / "configs" / "grafana" / f"{side}.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bfedloop_[a-z0-9_]+", target["expr"])
    }
    assert queried and queried <= set(exported), sorted(queried - set(exported))
    assert set(exported) <= queried  # and every exported metric is on the dashboard
