"""The tenant's Python API for recording drafts and outcomes, over the same pipeline as the gRPC service."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from fedloop.client.ingest.pipeline import IngestPipeline
from fedloop.client.ingest.validation import IngestError, check_dwell
from fedloop.client.samples.curation import BASE_REWARDS
from fedloop.client.store.api import Action, ChatMessage
from fedloop.proto import feedback_pb2 as pb
from fedloop.shared.echo import echoed

_PROTO_ACTIONS = {Action.ACCEPT: pb.ACCEPT, Action.EDIT: pb.EDIT_ACCEPT, Action.REJECT: pb.REJECT}


class FeedbackError(ValueError):
    """A recording or drafting call was refused; nothing was stored.

    `status` is the matching gRPC status name; `param` names the request field at fault, when one is; `code` is
    the HTTP error's code when it is more specific than the status (OpenAI's `context_length_exceeded`).
    """

    def __init__(self, status: str, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code or status.lower()


class FeedbackRecorder:
    """Records drafts and outcomes through the ingestion pipeline (redacted, encrypted, curated)."""

    def __init__(self, pipeline: IngestPipeline) -> None:
        self._pipeline = pipeline

    def _ingest(self, event: pb.Event, admitted: bool = False) -> None:
        try:
            self._pipeline.ingest([event], admitted)
        except IngestError as err:
            raise FeedbackError(err.status, str(err)) from None

    def record_draft(
        self,
        user_id: str,
        prompt: str,
        draft: str,
        model_version: str,
        session_id: str = "default",
        prompt_version: str = "default",
        draft_id: str = "",
        context: Sequence[ChatMessage] = (),
        admitted: bool = False,
    ) -> str:
        """Record a draft shown to `user_id` in reply to `prompt` after `context` (the system prompt and the
        history); returns its draft id (`draft_id`, or a new one). `admitted`: the user's rate limit was already
        charged for it."""
        draft_id = draft_id or uuid.uuid4().hex
        self._ingest(
            pb.Event(
                draft=pb.DraftEvent(
                    event_id=f"draft-{draft_id}",
                    draft_id=draft_id,
                    user_id=user_id,
                    session_id=session_id,
                    prompt=prompt,
                    draft=draft,
                    model_version=model_version,
                    prompt_version=prompt_version,
                    context=[pb.ChatTurn(role=m["role"], content=m["content"]) for m in context],
                )
            ),
            admitted,
        )
        return draft_id

    def record_outcome(
        self, draft_id: str, action: Action | str, final_text: str | None = None, dwell_ms: int = 0
    ) -> float:
        """Record what the user did with a draft; returns the base reward (1.0 / 0.3 / 0).

        `final_text` is the edited reply for EDIT (required) and the user's own
        reply for REJECT (optional); ACCEPT takes none.
        """
        try:
            action = Action(action)
        except ValueError:
            raise FeedbackError(
                "INVALID_ARGUMENT", f"unknown action {echoed(action)}: use one of {', '.join(a.value for a in Action)}"
            ) from None
        try:
            check_dwell(dwell_ms, self._pipeline.limits)
        except IngestError as err:
            raise FeedbackError(err.status, str(err), "dwell_ms") from None
        self._ingest(
            pb.Event(
                outcome=pb.OutcomeEvent(
                    event_id=f"outcome-{draft_id}",
                    draft_id=draft_id,
                    action=_PROTO_ACTIONS[action],
                    final_text=final_text or "",
                    dwell_ms=dwell_ms,
                )
            )
        )
        return BASE_REWARDS[action]
