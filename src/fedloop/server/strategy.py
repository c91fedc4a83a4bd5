"""SealedMerge: a Flower strategy that only ever handles sealed, signed adapters.

Outgoing global versions are sealed per tenant and signed by HQ. Incoming
updates are verified (signature, sender, associated data) and decrypted in
memory only; a refused update is logged with its tenant, round and reason,
counted by reason in the round report, and left out; the round goes on. The
accepted adapters are merged as `[aggregation]` says (src/fedloop/server/aggregation.py)
and recorded as a new version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedloop.server.aggregation import TenantUpdate, UpdateRejected, check_update, lora_scaling, merge
from fedloop.server.registry import VersionRecord
from fedloop.server.replies import ReplyRefused, reported_metrics
from fedloop.server.round_ledger import RoundLedger, RoundReport
from fedloop.shared.adapter import AdapterState, adapter_from_bytes, adapter_to_bytes
from fedloop.shared.crypto import CryptoError, sm3_digest
from fedloop.shared.envelope import EnvelopeError, OpenedEnvelope, open_envelope, seal
from fedloop.shared.keys import Identity, Keyring, PartyPublicKey
from fedloop.shared.pooled_hit_rate import pooled_hit_rate
from fedloop.shared.protocol import (
    DATASET_VERSION,
    DECLINED,
    HIT_RATE,
    NUM_EXAMPLES,
    global_binding,
    global_content,
    sealed_envelope,
    update_binding,
    wire_size,
)
from fedloop.shared.settings import AggregationSection, LoraSettings

log = logging.getLogger(__name__)


class UpdateRefused(Exception):
    """A tenant's reply was not merged; `reason` is the short code counted in the round report."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class SealedMerge(Strategy):
    """Merging of sealed LoRA adapters; what each round produced goes to the `RoundLedger`, and nowhere else."""

    def __init__(
        self,
        ledger: RoundLedger,
        hq: Identity,
        trusted: Keyring,
        tenants: dict[int, PartyPublicKey],
        run: str,
        current: VersionRecord,
        current_state: AdapterState,
        lora: LoraSettings,
        aggregation: AggregationSection | None = None,
    ) -> None:
        self.ledger = ledger
        self.hq = hq
        self.trusted = trusted
        self.tenants = tenants
        self.run = run
        self.current = current
        self.current_state = current_state
        self.rounds_before = current.round  # versions count rounds across runs: this run's round 1 follows it
        self.scaling = lora_scaling(lora.alpha, lora.rank)
        self.aggregation = aggregation or AggregationSection()
        self.seen_envelopes: set[bytes] = set()  # SM3 of every sealed update received in this run (replay cache)
        self.reports: dict[int, RoundReport] = {}
        self._sent: list[Message] = []  # the latest messages out; Flower stamps their ids when it sends them

    def _report(self, server_round: int) -> RoundReport:
        return self.reports.setdefault(server_round, RoundReport(server_round))

    def _sealed_messages(self, server_round: int, arrays: ArrayRecord, message_type: str) -> list[Message]:
        # The current version's own state, not `arrays`: after a version every tenant declined, the strategy goes
        # back to its parent while Flower's loop still holds the declined arrays.
        del arrays
        payload = adapter_to_bytes(self.current_state)
        report = self._report(server_round)
        details = {"parent": self.current.parent, "version_round": self.current.round, "digest": self.current.digest}
        messages = []
        for node_id, tenant in self.tenants.items():
            binding = global_binding(tenant.name, self.run, server_round, self.current.id, details)
            content = global_content(seal(payload, binding, self.hq, tenant), self.current.id, server_round)
            report.bytes_to_tenant[tenant.name] = report.bytes_to_tenant.get(tenant.name, 0) + wire_size(content)
            messages.append(Message(content=content, dst_node_id=node_id, message_type=message_type))
        self._sent = messages
        return messages

    def _replying_node(self, reply: Message) -> int:
        """The node a reply answers for: its sender, or for an error the SuperLink raised, the original addressee."""
        if reply.metadata.src_node_id in self.tenants:
            return reply.metadata.src_node_id
        addressed = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent}
        return addressed.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Seal the current global version for every enrolled tenant."""
        log.info(
            "round %d: sending version %s to %d tenants for training", server_round, self.current.id, len(self.tenants)
        )
        self._report(server_round).started_at = time.time()
        return self._sealed_messages(server_round, arrays, MessageType.TRAIN)

    def _verify_and_decrypt(self, server_round: int, reply: Message, node_id: int) -> OpenedEnvelope:
        """The reply's sealed update, its signature and binding verified and its payload decrypted."""
        tenant = self.tenants.get(node_id)
        if tenant is None:
            raise UpdateRefused(f"reply from node {node_id}, which is not enrolled", "unknown-node")
        if reply.has_error():
            raise UpdateRefused(f"{tenant.name} reported an error: {reply.error.reason}", "tenant-error")
        try:
            envelope = sealed_envelope(reply.content)
            opened = open_envelope(
                envelope, self.hq, self.trusted, update_binding(tenant.name, self.run, server_round, self.current.id)
            )
        except EnvelopeError as err:
            raise UpdateRefused(str(err), err.reason) from None
        except KeyError:
            raise UpdateRefused(f"{tenant.name}'s reply has no sealed update (`sealed` record)", "malformed") from None
        except (CryptoError, TypeError) as err:
            raise UpdateRefused(f"{tenant.name}'s reply is not a readable sealed update: {err}", "malformed") from None
        if opened.sender.key_id != tenant.key_id:
            raise UpdateRefused(f"update for {tenant.name} is signed by {opened.sender.name!r}", "wrong-sender")
        return opened

    def _validate(self, opened: OpenedEnvelope, name: str) -> TenantUpdate:
        """The decrypted update as a merge input: a positive sample count and an adapter shaped like the current one."""
        num_examples = opened.binding.details.get(NUM_EXAMPLES)
        if not isinstance(num_examples, int) or num_examples <= 0:
            raise UpdateRefused(f"{name}'s update carries no positive sample count", "no-samples")
        try:
            state = adapter_from_bytes(opened.payload)
            check_update(state, self.current_state, name)
        except UpdateRejected as err:
            raise UpdateRefused(str(err), err.reason) from None
        except Exception as err:  # safetensors raises its own error types for a corrupt blob
            raise UpdateRefused(f"{name}'s adapter is not valid safetensors: {err}", "malformed") from None
        return TenantUpdate(name, state, num_examples, str(opened.binding.details.get(DATASET_VERSION, "")))

    def _check_not_replayed(self, reply: Message, name: str, accepted: set[str]) -> None:
        """Refuse a sealed update already seen in this run, and a second update from a tenant in one round."""
        if reply.has_error():
            return
        try:
            digest = sm3_digest(sealed_envelope(reply.content))
        except (KeyError, TypeError):
            return  # _open_update names what is missing
        if digest in self.seen_envelopes:
            raise UpdateRefused(f"{name}'s sealed update was already received in this run (replayed)", "replay")
        self.seen_envelopes.add(digest)
        if name in accepted:
            raise UpdateRefused(
                f"{name} already sent an accepted update this round; a second one is not merged", "replay"
            )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check the replies, verify and decrypt each update, validate it, merge the accepted, record the version."""
        report = self._report(server_round)
        updates = self._accepted_updates(server_round, replies, report)
        if len(updates) < self.aggregation.min_tenants:
            log.warning(
                "round %d: %d acceptable update(s), fewer than aggregation.min_tenants = %d; global version stays %s",
                server_round,
                len(updates),
                self.aggregation.min_tenants,
                self.current.id,
            )
            report.contributors.clear()
            return None, None
        merged = self._merge(updates, report)
        self._record(merged, report)
        return ArrayRecord(merged), MetricRecord(
            {"tenants": len(updates), NUM_EXAMPLES: sum(u.num_examples for u in updates)}
        )

    def _accepted_updates(
        self, server_round: int, replies: Iterable[Message], report: RoundReport
    ) -> list[TenantUpdate]:
        """Each reply checked (sender, replay), verified and decrypted, validated; refused and silent ones reported."""
        updates: list[TenantUpdate] = []
        silent = dict(self.tenants)
        for reply in replies:
            node_id = self._replying_node(reply)
            silent.pop(node_id, None)
            node_tenant = self.tenants.get(node_id)
            name = node_tenant.name if node_tenant else f"node-{node_id}"
            if not reply.has_error():
                report.bytes_to_hq[name] = wire_size(reply.content)
            try:
                self._check_not_replayed(reply, name, {u.tenant for u in updates})
                update = self._validate(self._verify_and_decrypt(server_round, reply, node_id), name)
                figures = reported_metrics(reply.content, training=True)
            except ReplyRefused as err:
                report.refuse(name, f"{name}: {err}", err.reason)
                continue
            except UpdateRefused as err:
                report.refuse(name, str(err), err.reason)
                continue
            updates.append(update)
            report.accept(update.tenant, update.num_examples, update.dataset_version, figures)
        for tenant in silent.values():
            message = f"{tenant.name} sent no reply within the round's timeout (federation.round_timeout_s)"
            report.refuse(tenant.name, message, "no-reply")
        return updates

    def _merge(self, updates: list[TenantUpdate], report: RoundReport) -> AdapterState:
        """The accepted updates merged onto the current version (aggregation.method); notes go to the report."""
        merged, report.merge_notes = merge(updates, self.current_state, self.scaling, self.aggregation)
        for name, note in report.merge_notes.items():
            log.warning("round %d: %s: %s", report.round, name, note)
        return merged

    def _record(self, merged: AdapterState, report: RoundReport) -> None:
        """Register the merged adapter as the next version, which becomes the current one."""
        record = self.ledger.record_version(
            merged, self.current, self.rounds_before + report.round, self.aggregation.method, report.contributors
        )
        log.info(
            "round %d: version %s (parent %s, %s) from %s",
            report.round,
            record.id,
            record.parent,
            self.aggregation.method,
            ", ".join(f"{t}={n}" for t, n in report.contributors.items()),
        )
        report.version, report.parent, self.current, self.current_state = record.id, record.parent, record, merged

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Seal the current global version for every tenant to evaluate on its held-out prompts."""
        log.info("round %d: asking %d tenants to evaluate version %s", server_round, len(self.tenants), self.current.id)
        return self._sealed_messages(server_round, arrays, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Keep each tenant's offline hit rate; return the pooled rate over tenants that measured one
        (src/fedloop/shared/pooled_hit_rate.py)."""
        report = self._report(server_round)
        if report.started_at:
            report.duration_s = time.time() - report.started_at
        for reply in replies:
            node_id = self._replying_node(reply)
            tenant = self.tenants.get(node_id)
            if tenant is None or reply.has_error():
                log.warning(
                    "round %d: evaluation failed on %s: %s",
                    server_round,
                    tenant.name if tenant else node_id,
                    reply.error.reason if reply.has_error() else "not an enrolled tenant",
                )
                continue
            try:
                report.evaluation[tenant.name] = reported_metrics(reply.content, training=False)
            except ReplyRefused as err:
                log.warning("round %d: evaluation of %s refused: %s", server_round, tenant.name, err)
        self.ledger.record_round(report, self.current, self.current_state)
        self._decline_if_all_declined(server_round, report.evaluation)
        measured = report.measured()
        pooled = pooled_hit_rate(measured)
        if pooled is None:
            log.info("round %d: no tenant has held-out finals yet: no offline hit rate", server_round)
            return None
        log.info(
            "round %d: offline hit rate on held-out finals %s; pooled %s",
            server_round,
            ", ".join(f"{t}={m[HIT_RATE]:.1%} (n={int(m[NUM_EXAMPLES])})" for t, m in measured.items()),
            pooled,
        )
        return MetricRecord({HIT_RATE: pooled.rate, NUM_EXAMPLES: pooled.count})

    def _decline_if_all_declined(self, server_round: int, evaluation: dict[str, dict[str, float]]) -> None:
        """Every tenant that evaluated the current version refused or rolled it back: decline it."""
        if evaluation and all(metrics.get(DECLINED) == 1 for metrics in evaluation.values()):
            log.warning("round %d: every tenant declined version %s", server_round, self.current.id)
            self.decline(self.current.id, sorted(evaluation))

    def decline(self, version_id: str, tenants: list[str]) -> None:
        """Every tenant declined `version_id`: mark it in the registry (whose `latest` then skips it, so no next run
        continues from it); if training was to go on from it, go on from its nearest ancestor nobody declined (or the
        first version)."""
        registry = self.ledger.registry
        registry.decline(version_id, tenants)
        if version_id != self.current.id:
            return
        record = registry.get(version_id)
        while record.parent is not None and record.status in ("declined", "rolled_back"):
            record = registry.get(record.parent)
        self.current, self.current_state = record, adapter_from_bytes(registry.load_adapter(record.id))
        log.warning("declined version %s (%s): training goes on from %s", version_id, ", ".join(tenants), record.id)

    def summary(self) -> None:
        """Log the strategy's configuration."""
        log.info(
            "SealedMerge: run %s, %d tenants, starting from version %s", self.run, len(self.tenants), self.current.id
        )
