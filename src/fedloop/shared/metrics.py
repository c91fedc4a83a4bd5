"""Prometheus metric names of both sides, and the endpoint that serves them (prometheus-client).

The names below are the contract with the Grafana dashboards in configs/
(a test checks that every metric a dashboard queries is exported). Each side
keeps its metrics in its own CollectorRegistry: counters the running process
increments, plus collectors that read the tenant's store or HQ's registry at
scrape time, so figures written by another process (a ClientApp, a ServerApp)
are exported too.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

TENANT_METRICS: dict[str, str] = {
    "fedloop_tenant_events_ingested_total": "Feedback events stored, by kind (draft, outcome, signal).",
    "fedloop_tenant_rejected_inputs_total": "Feedback calls refused, by reason (the gRPC status).",
    "fedloop_tenant_redactions_total": "PII spans replaced by placeholders, by entity type.",
    "fedloop_tenant_quarantined_samples": "Samples held in quarantine (moderation, breaker).",
    "fedloop_tenant_breaker_tripped": "1 while the moderation breaker holds new samples, else 0.",
    "fedloop_tenant_pool_samples": "Admitted samples per pool.",
    "fedloop_tenant_hit_rate": "Share of decided drafts accepted as they were, by model version and prompt version.",
    "fedloop_tenant_decided_drafts": "Drafts with an outcome, by model version and prompt version.",
    "fedloop_tenant_canary_share": "Share of users the running canary serves (0 when none runs).",
    "fedloop_tenant_canary_hit_rate": "Hit rate of the canary and of the control in the current window, by arm.",
    "fedloop_tenant_rollbacks_total": "Release rollbacks, automatic and by operators.",
    "fedloop_tenant_train_loss": "Mean loss of the latest local training run.",
    "fedloop_tenant_train_duration_seconds": "Wall time of the latest local training run.",
}
HQ_METRICS: dict[str, str] = {
    "fedloop_hq_rounds_total": "Federated rounds completed (round 0, the baseline evaluation, not counted).",
    "fedloop_hq_round_duration_seconds": "Wall time of the latest round, first training message to evaluations back.",
    "fedloop_hq_round_tenants": "Tenants whose update was merged in the latest round.",
    "fedloop_hq_refused_deltas_total": "Tenant updates (sealed adapters) refused, by reason.",
    "fedloop_hq_received_bytes_total": "Bytes of sealed updates received from tenants.",
    "fedloop_hq_versions": "Global versions in the registry, by status.",
    "fedloop_hq_schedule_ready_tenants": "Continuous run: tenants with schedule.min_new_samples new samples now.",
    "fedloop_hq_schedule_needed_tenants": "Continuous run: ready tenants a round needs (below it, the round waits).",
    "fedloop_hq_schedule_new_samples": "Continuous run: each tenant's new training samples at the latest poll.",
    "fedloop_hq_schedule_due_in_seconds": "Continuous run: seconds until a round is due by schedule.max_interval_s.",
}


def serve_metrics(registry: CollectorRegistry, address: str) -> tuple[WSGIServer, threading.Thread]:
    """Serve `registry` at http://address/metrics in a daemon thread; returns the server (call `shutdown()`)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"metrics address {address!r} is not host:port (e.g. 127.0.0.1:9464)")
    try:
        return start_http_server(int(port), addr=host, registry=registry)
    except OSError as err:
        raise OSError(f"cannot serve metrics on {address}: {err.strerror or err}; is the port in use?") from None
