"""The tenant's Prometheus metrics: counters of the running service, and figures read from its store.

Counters (events ingested, inputs rejected, redactions) count what this
process did since it started. Everything else is read from the store at
scrape time, so what the ClientApp process records (training, evaluations,
release moves) shows up on the service's endpoint too.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fedloop.client.release.controller import ReleaseController
from fedloop.client.store import FeedbackStore
from fedloop.client.store.api import EvaluationKind, Pool, SampleStatus
from fedloop.client.tenant_settings import ReleaseSection
from fedloop.shared.metrics import TENANT_METRICS


class IngestCounters:
    """What the ingestion pipeline of this process stored and refused."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(metric: str, label: str) -> Counter:
            return Counter(metric.removesuffix("_total"), TENANT_METRICS[metric], [label], registry=registry)

        self.events = counter("fedloop_tenant_events_ingested_total", "kind")
        self.rejected = counter("fedloop_tenant_rejected_inputs_total", "reason")
        self.redactions = counter("fedloop_tenant_redactions_total", "entity_type")


class StoreCollector(Collector):
    """Gauges and counters computed from the tenant's store when Prometheus scrapes."""

    def __init__(self, store: FeedbackStore, release: ReleaseSection) -> None:
        self._store = store
        self._controller = ReleaseController(store, release)  # one, so each scrape reads only new outcomes

    def collect(self) -> Iterator[Metric]:
        """Samples by state and pool, breaker, hit rates, canary, rollbacks, latest training."""
        yield from self._samples()
        yield from self._hit_rates()
        yield from self._release_figures()
        yield from self._training()

    @staticmethod
    def _gauge(metric: str, labels: list[str] | None = None) -> GaugeMetricFamily:
        return GaugeMetricFamily(metric, TENANT_METRICS[metric], labels=labels)

    def _samples(self) -> Iterator[Metric]:
        counts = self._store.samples.counts()
        held = self._gauge("fedloop_tenant_quarantined_samples", ["status"])
        for status in (SampleStatus.QUARANTINED, SampleStatus.HELD):
            held.add_metric([status], sum(n for (s, _), n in counts.items() if s == status))
        pools = self._gauge("fedloop_tenant_pool_samples", ["pool"])
        for pool in Pool:
            pools.add_metric([pool], counts.get((SampleStatus.ADMITTED, pool), 0))
        breaker = self._gauge("fedloop_tenant_breaker_tripped")
        breaker.add_metric([], float(self._store.samples.breaker_state()[0]))
        yield from (held, pools, breaker)

    def _hit_rates(self) -> Iterator[Metric]:
        hits = self._gauge("fedloop_tenant_hit_rate", ["model_version", "prompt_version"])
        decided = self._gauge("fedloop_tenant_decided_drafts", ["model_version", "prompt_version"])
        for model_version, prompt_version, count, accepts in self._store.drafts.outcomes_by_version():
            hits.add_metric([model_version, prompt_version], accepts / count)
            decided.add_metric([model_version, prompt_version], count)
        yield from (hits, decided)

    def _release_figures(self) -> Iterator[Metric]:
        controller = self._controller
        state = controller.state()
        share = self._gauge("fedloop_tenant_canary_share")
        share.add_metric([], state.share if state and state.canary else 0.0)
        arms = self._gauge("fedloop_tenant_canary_hit_rate", ["arm"])
        comparison = controller.compare()
        if comparison is not None:
            arms.add_metric(["canary"], comparison.canary.hit_rate)
            arms.add_metric(["control"], comparison.control.hit_rate)
        rollbacks = CounterMetricFamily("fedloop_tenant_rollbacks", TENANT_METRICS["fedloop_tenant_rollbacks_total"])
        rollbacks.add_metric([], sum(r.action == "rollback" for r in self._store.versions.release_history()))
        yield from (share, arms, rollbacks)

    def _training(self) -> Iterator[Metric]:
        loss = self._gauge("fedloop_tenant_train_loss")
        duration = self._gauge("fedloop_tenant_train_duration_seconds")
        latest = self._store.versions.latest_evaluation(EvaluationKind.TRAINING)
        if latest is not None:
            loss.add_metric([], float(latest[1].get("loss", float("nan"))))
            duration.add_metric([], float(latest[1].get("duration_s", 0.0)))
        yield from (loss, duration)


def tenant_registry(store: FeedbackStore, release: ReleaseSection) -> tuple[CollectorRegistry, IngestCounters]:
    """A registry with the ingestion counters and the store collector; returns it and the counters."""
    registry = CollectorRegistry()
    counters = IngestCounters(registry)
    registry.register(StoreCollector(store, release))
    return registry, counters
