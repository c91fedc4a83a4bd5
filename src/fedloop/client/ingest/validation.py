"""Static checks of ingestion events: required fields, sizes, enums, durations, timestamps.

Each failure raises IngestError with the gRPC status name the service returns
and a message that names the field and the fix. Checks that need the store
(unknown draft, replayed ids) live in the pipeline.
"""

from __future__ import annotations

import re
import time

from fedloop.client.store.api import Action
from fedloop.client.tenant_settings import IngestSection
from fedloop.proto import feedback_pb2 as pb
from fedloop.shared.echo import echoed

EARLIEST_MS = 946_684_800_000  # 2000-01-01: anything older is a unit mistake (seconds for milliseconds)
ACTIONS = {pb.ACCEPT: Action.ACCEPT, pb.EDIT_ACCEPT: Action.EDIT, pb.REJECT: Action.REJECT}
SIGNAL_KINDS = {k: pb.SignalKind.Name(k) for k in pb.SignalKind.values() if k != pb.SIGNAL_KIND_UNSPECIFIED}
SIGNALS_WITH_VALUE = {pb.DIALOGUE_STATE, pb.USER_MESSAGE}


class IngestError(Exception):
    """An event was refused; `status` is the gRPC status name, the message says what to fix."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


CONTEXT_ROLES = ("system", "user", "assistant")  # the roles of a recorded conversation


def check_text(name: str, value: str, limits: IngestSection, required: bool = True) -> None:
    """Refuse a missing (when `required`), non-UTF-8 or over-long text field, naming it."""
    if required and not value.strip():
        raise IngestError("INVALID_ARGUMENT", f"{name} is missing or empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise IngestError("INVALID_ARGUMENT", f"{name} is not valid UTF-8 text") from None
    if size > limits.max_text_bytes:
        raise IngestError(
            "INVALID_ARGUMENT", f"{name} is {size} bytes; the limit is {limits.max_text_bytes} (ingest.max_text_bytes)"
        )


def check_identifier(name: str, value: str, limits: IngestSection) -> None:
    """Refuse an id that is empty, too long, or has spaces or unprintable characters, naming it."""
    check_text(name, value, limits)
    if len(value) > limits.max_id_chars or any(ch.isspace() or not ch.isprintable() for ch in value):
        raise IngestError(
            "INVALID_ARGUMENT", f"{name} must be 1-{limits.max_id_chars} printable characters without spaces"
        )


def timestamp(name: str, value: int, limits: IngestSection) -> int:
    """The event time in ms: `value`, or now when 0; refuses negative, pre-2000 and far-future times."""
    now = int(time.time() * 1000)
    if value == 0:
        return now
    if value < EARLIEST_MS or value > now + limits.max_clock_skew_ms:
        raise IngestError(
            "INVALID_ARGUMENT", f"{name} {value} is not a plausible Unix time in milliseconds (0 means 'now')"
        )
    return value


VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}")


def check_version(name: str, value: str) -> None:
    """A model or prompt version: 1-128 characters, letters, digits and . _ : / + - (no spaces, no quotes)."""
    if not VERSION_PATTERN.fullmatch(value):
        raise IngestError(
            "INVALID_ARGUMENT",
            f"{name} {value[:40]!r} is not a version: use 1-128 letters, digits "
            "and . _ : / + - (e.g. 'v0003-1a2b3c4d' or 'prompt-2026-11')",
        )


def check_draft(event: pb.DraftEvent, limits: IngestSection) -> None:
    """Static checks of a DraftEvent."""
    for name in ("event_id", "draft_id", "user_id", "session_id"):
        check_identifier(f"draft.{name}", getattr(event, name), limits)
    for name in ("prompt", "draft"):
        check_text(f"draft.{name}", getattr(event, name), limits)
    for name in ("model_version", "prompt_version"):
        check_version(f"draft.{name}", getattr(event, name))
    if len(event.context) > limits.max_context_messages:
        raise IngestError(
            "INVALID_ARGUMENT",
            f"draft.context has {len(event.context)} messages; the limit is {limits.max_context_messages} "
            "(ingest.max_context_messages): send the latest turns only",
        )
    for index, turn in enumerate(event.context):
        if turn.role not in CONTEXT_ROLES:
            raise IngestError(
                "INVALID_ARGUMENT",
                f"draft.context[{index}].role is {turn.role!r}: use one of {', '.join(CONTEXT_ROLES)}",
            )
        check_text(f"draft.context[{index}].content", turn.content, limits, required=False)
    if not 0 <= event.position <= limits.max_position:
        raise IngestError("INVALID_ARGUMENT", f"draft.position {event.position} must be in [0, {limits.max_position}]")
    timestamp("draft.timestamp_ms", event.timestamp_ms, limits)


def check_outcome(event: pb.OutcomeEvent, limits: IngestSection) -> None:
    """Static checks of an OutcomeEvent."""
    check_identifier("outcome.event_id", event.event_id, limits)
    check_identifier("outcome.draft_id", event.draft_id, limits)
    if event.action not in ACTIONS:
        raise IngestError(
            "INVALID_ARGUMENT", f"outcome.action {event.action} is not one of ACCEPT, EDIT_ACCEPT, REJECT"
        )
    if event.action == pb.EDIT_ACCEPT:
        check_text("outcome.final_text", event.final_text, limits)
    elif event.action == pb.ACCEPT and event.final_text:
        raise IngestError(
            "INVALID_ARGUMENT", "outcome.final_text must be empty for ACCEPT: the draft is the final text"
        )
    else:
        check_text("outcome.final_text", event.final_text, limits, required=False)
    check_dwell(event.dwell_ms, limits)
    timestamp("outcome.timestamp_ms", event.timestamp_ms, limits)


def check_dwell(dwell_ms: int, limits: IngestSection) -> None:
    """The dwell time's range, one rule for gRPC, HTTP and the Python API (HTTP numbers are unbounded otherwise)."""
    if not 0 <= dwell_ms <= limits.max_dwell_ms:
        raise IngestError(
            "INVALID_ARGUMENT",
            f"outcome.dwell_ms {echoed(dwell_ms)} must be in [0, {limits.max_dwell_ms}] (ingest.max_dwell_ms)",
        )


def check_signal(event: pb.SignalEvent, limits: IngestSection) -> None:
    """Static checks of a SignalEvent."""
    for name in ("event_id", "user_id", "session_id"):
        check_identifier(f"signal.{name}", getattr(event, name), limits)
    if event.kind not in SIGNAL_KINDS:
        raise IngestError("INVALID_ARGUMENT", f"signal.kind {event.kind} is not one of {sorted(SIGNAL_KINDS.values())}")
    if event.draft_id:
        check_identifier("signal.draft_id", event.draft_id, limits)
    check_text("signal.value", event.value, limits, required=event.kind in SIGNALS_WITH_VALUE)
    timestamp("signal.timestamp_ms", event.timestamp_ms, limits)


def check_event(event: pb.Event, limits: IngestSection) -> str:
    """Static checks of any Event; returns its kind (draft, outcome or signal)."""
    kind = event.WhichOneof("event")
    if kind is None:
        raise IngestError("INVALID_ARGUMENT", "event is empty: set one of draft, outcome or signal")
    {"draft": check_draft, "outcome": check_outcome, "signal": check_signal}[kind](getattr(event, kind), limits)
    return kind
