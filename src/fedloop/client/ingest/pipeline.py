"""The ingestion pipeline: event -> validate -> pseudonymise -> redact -> store -> curate.

`ingest` takes a batch of events and stores all of them in one transaction or
none: any refusal rolls the whole batch back. Events are idempotent by id: the
same id with the same content is acknowledged as a duplicate and stored once;
the same id with different content is refused with ALREADY_EXISTS. The gRPC
service and the Python API both call this one pipeline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from fedloop.client.ingest.rate_limit import UserRateLimit
from fedloop.client.ingest.validation import ACTIONS, SIGNAL_KINDS, IngestError, check_event, timestamp
from fedloop.client.metrics import IngestCounters
from fedloop.client.privacy.finders import Finder
from fedloop.client.privacy.placeholders import Finding, PlaceholderMap, apply_placeholders
from fedloop.client.samples.curation import BASE_REWARDS, Curator
from fedloop.client.samples.signals import absence_flags, immediate_flags
from fedloop.client.store.api import DraftRecord, FeedbackStoreAPI, OutcomeRecord, SignalRecord
from fedloop.client.tenant_settings import IngestSection, TenantSettings
from fedloop.proto import feedback_pb2 as pb
from fedloop.shared.crypto import hmac_sm3
from fedloop.shared.sqlite_db import DatabaseBusy

log = logging.getLogger(__name__)


def _texts(body: pb.DraftEvent | pb.OutcomeEvent | pb.SignalEvent) -> tuple[str, ...]:
    """The free texts of an event, which redaction must see."""
    if isinstance(body, pb.DraftEvent):
        return body.prompt, body.draft, *(turn.content for turn in body.context)
    if isinstance(body, pb.OutcomeEvent):
        return (body.final_text,)
    return (body.value,)


class IngestPipeline:
    """Everything between a feedback event and the tenant's store."""

    def __init__(
        self,
        store: FeedbackStoreAPI,
        finder: Finder,
        curator: Curator,
        settings: TenantSettings,
        mac_key: bytes,
        counters: IngestCounters,
    ) -> None:
        self.store = store
        self.curator = curator
        self.counters = counters
        self._finder = finder
        self._findings: dict[str, list[Finding]] = {}
        self._settings = settings
        self._mac_key = mac_key
        self._redacted: list[str] = []  # entity types replaced in the transaction under way
        self._lock = threading.Lock()
        self._rate_limit = UserRateLimit(settings.ingest.max_events_per_user_per_minute)

    @property
    def limits(self) -> IngestSection:
        """The input limits every edge (gRPC, HTTP, the Python API) checks against."""
        return self._settings.ingest

    def ingest(self, events: Sequence[pb.Event], admitted: bool = False) -> list[bool]:
        """Store `events` atomically; returns, per event, whether it was a duplicate of a stored one.

        A refusal raises IngestError (counted by its status); nothing of the batch is stored then. `admitted`:
        the users' rate limit was already charged for these events (`admit`, before a draft was generated).
        """
        try:
            try:
                return self._ingest(events, admitted)
            except DatabaseBusy:
                raise IngestError(
                    "UNAVAILABLE",
                    f"the tenant store is busy: another writer held it longer than "
                    f"{self._settings.tenant.store_busy_timeout_s:g} s (tenant.store_busy_timeout_s); nothing was "
                    "stored: retry",
                ) from None
        except IngestError as err:
            self.counters.rejected.labels(err.status).inc()
            raise

    def admit(self, user_ids: Sequence[str]) -> None:
        """Charge one event per user id against the per-user rate limit; IngestError RESOURCE_EXHAUSTED if over.

        The draft endpoint calls this before it generates, then ingests the draft with `admitted=True`.
        """
        try:
            self._admit(user_ids)
        except IngestError as err:
            self.counters.rejected.labels(err.status).inc()
            raise

    def _admit(self, user_ids: Sequence[str]) -> None:
        if self._rate_limit.admit([self.store.pseudonym(user) for user in user_ids]) is not None:
            raise IngestError(
                "RESOURCE_EXHAUSTED",
                f"a user in this batch sent more than "
                f"{self._settings.ingest.max_events_per_user_per_minute} events in the last minute "
                "(ingest.max_events_per_user_per_minute); retry later; nothing was "
                "stored",
            )

    def _ingest(self, events: Sequence[pb.Event], admitted: bool) -> list[bool]:
        limits = self._settings.ingest
        if len(events) > limits.max_batch_events:
            raise IngestError(
                "INVALID_ARGUMENT",
                f"batch of {len(events)} events exceeds ingest.max_batch_events ({limits.max_batch_events}); split it",
            )
        kinds = []
        for position, event in enumerate(events):
            try:
                kinds.append(check_event(event, limits))
            except IngestError as err:
                raise IngestError(err.status, f"event #{position}: {err}" if len(events) > 1 else str(err)) from None
        if not admitted:
            self._admit(
                [
                    getattr(event, kind).user_id
                    for event, kind in zip(events, kinds, strict=True)
                    if kind in ("draft", "signal")
                ]
            )
        texts = sorted(
            {t for event, kind in zip(events, kinds, strict=True) for t in _texts(getattr(event, kind)) if t}
        )
        findings = dict(zip(texts, self._finder.find_many(texts), strict=True))  # the costly part, outside the lock
        duplicates: list[bool] = []
        with self._lock:  # the near-duplicate index must follow exactly this transaction's fate
            self._findings, self._redacted = findings, []
            try:
                self._store_events(events, kinds, duplicates)
            except BaseException:
                self.curator.forget_uncommitted()
                raise
            self.curator.committed()
            for kind, duplicate in zip(kinds, duplicates, strict=True):
                if not duplicate:
                    self.counters.events.labels(kind).inc()
            for entity in self._redacted:
                self.counters.redactions.labels(entity).inc()
        return duplicates

    def _store_events(self, events: Sequence[pb.Event], kinds: list[str], duplicates: list[bool]) -> None:
        draft_position = {e.draft.draft_id: i for i, e in enumerate(events) if e.WhichOneof("event") == "draft"}
        with self.store.transaction():
            seen: dict[str, str] = {}
            for position, (kind, event) in enumerate(zip(kinds, events, strict=True)):
                body = getattr(event, kind)
                mac = hmac_sm3(self._mac_key, kind.encode() + body.SerializeToString(deterministic=True)).hex()
                stored = seen.get(body.event_id) or self.store.drafts.event_mac(body.event_id)
                if stored is not None:
                    if stored != mac:
                        raise IngestError(
                            "ALREADY_EXISTS",
                            f"event_id {body.event_id!r} was already used for "
                            "different content; use a new id for a new event",
                        )
                    duplicates.append(True)
                    continue
                later_drafts = {d for d, p in draft_position.items() if p > position} if kind == "outcome" else set()
                handler = {"draft": self._draft, "outcome": self._outcome, "signal": self._signal}[kind]
                handler(body, later_drafts)
                self.store.drafts.insert_event(body.event_id, kind, mac)
                seen[body.event_id] = mac
                duplicates.append(False)

    def _redact(self, record_id: str, placeholders: PlaceholderMap, text: str) -> str:
        redaction = apply_placeholders(text, self._findings[text], placeholders)
        for placeholder, original in redaction.new_entries:
            self.store.drafts.vault_add(record_id, placeholder, original)
        self._redacted.extend(redaction.entity_types)
        return redaction.text

    def _draft(self, event: pb.DraftEvent, later_drafts: set[str]) -> None:
        if self.store.drafts.get_draft(event.draft_id) is not None:
            raise IngestError("ALREADY_EXISTS", f"draft_id {event.draft_id!r} already exists under another event id")
        placeholders = PlaceholderMap()  # a new draft starts a new record
        context = [(turn.role, self._redact(event.draft_id, placeholders, turn.content)) for turn in event.context]
        prompt = self._redact(event.draft_id, placeholders, event.prompt)
        draft = self._redact(event.draft_id, placeholders, event.draft)
        # what a later text revealed, in the earlier ones too
        prompt = apply_placeholders(prompt, [], placeholders).text
        context = [(role, apply_placeholders(text, [], placeholders).text) for role, text in context]
        self.store.drafts.insert_draft(
            DraftRecord(
                id=event.draft_id,
                user_pseudonym=self.store.pseudonym(event.user_id),
                session_pseudonym=self.store.pseudonym(event.session_id),
                prompt=prompt,
                draft=draft,
                model_version=event.model_version,
                prompt_version=event.prompt_version,
                position=event.position,
                shown_at_ms=timestamp("draft.timestamp_ms", event.timestamp_ms, self._settings.ingest),
                context=tuple({"role": role, "content": text} for role, text in context),
            )
        )

    def _outcome(self, event: pb.OutcomeEvent, later_drafts: set[str]) -> None:
        draft = self.store.drafts.get_draft(event.draft_id)
        if draft is None:
            if event.draft_id in later_drafts:
                raise IngestError(
                    "FAILED_PRECONDITION",
                    f"outcome for draft {event.draft_id!r} comes before its draft in the batch; send the draft first",
                )
            raise IngestError("NOT_FOUND", f"unknown draft_id {event.draft_id!r}: record the draft before its outcome")
        decided = timestamp("outcome.timestamp_ms", event.timestamp_ms, self._settings.ingest)
        if decided < draft.shown_at_ms:
            raise IngestError(
                "FAILED_PRECONDITION",
                f"outcome time {decided} is before draft {event.draft_id!r} was shown ({draft.shown_at_ms})",
            )
        if self.store.drafts.has_outcome(event.draft_id):
            raise IngestError("ALREADY_EXISTS", f"draft {event.draft_id!r} already has an outcome")
        action = ACTIONS[event.action]
        placeholders = self.store.drafts.placeholder_map(event.draft_id)
        final = self._redact(event.draft_id, placeholders, event.final_text) if event.final_text else None
        outcome = OutcomeRecord(event.draft_id, action, final, event.dwell_ms, BASE_REWARDS[action], decided)
        self.store.drafts.insert_outcome(outcome)
        self.curator.make_sample(draft, outcome, placeholders.entity_types())

    def _signal(self, event: pb.SignalEvent, later_drafts: set[str]) -> None:
        if event.draft_id and self.store.drafts.get_draft(event.draft_id) is None:
            raise IngestError("NOT_FOUND", f"signal refers to unknown draft_id {event.draft_id!r}")
        record_id = event.draft_id or f"signal-{event.event_id}"
        value = (
            self._redact(record_id, self.store.drafts.placeholder_map(record_id), event.value) if event.value else None
        )
        session = self.store.pseudonym(event.session_id)
        signal = SignalRecord(
            event.event_id,
            self.store.pseudonym(event.user_id),
            session,
            SIGNAL_KINDS[event.kind],
            event.draft_id or None,
            value,
            timestamp("signal.timestamp_ms", event.timestamp_ms, self._settings.ingest),
        )
        self.store.drafts.insert_signal(signal)
        history = self.store.drafts.session_signals(session)
        for flag in immediate_flags(signal, history, self.store.drafts.session_drafts(session), self._settings.signals):
            self.curator.flag_problem(flag.draft_id, flag.problem_type, flag.model_version, signal.at_ms)

    def sweep(self, now_ms: int | None = None, lookback_ms: int = 86_400_000) -> int:
        """Apply the absence rules to recent sessions; returns how many new flags were raised."""
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        raised = 0
        with self.store.transaction():
            reported = self.store.drafts.signal_kinds()
            for session in self.store.drafts.open_sessions(now_ms - lookback_ms):
                drafts = self.store.drafts.session_drafts(session)
                answered = {draft_id for draft_id, _, _ in drafts if self.store.drafts.has_outcome(draft_id)}
                flags = absence_flags(
                    self.store.drafts.session_signals(session),
                    drafts,
                    now_ms,
                    self._settings.signals,
                    reported,
                    answered,
                )
                for flag in flags:
                    raised += self.curator.flag_problem(flag.draft_id, flag.problem_type, flag.model_version, now_ms)
        return raised
