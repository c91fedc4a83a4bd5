"""The tenant's Python API for recording drafts and what users did with them.

Every text passes through PII redaction before it reaches the store.
"""

from __future__ import annotations

import uuid
from enum import Enum

from fedloop.client.privacy import Redactor
from fedloop.client.store import FeedbackStore


class Action(str, Enum):
    """What a user did with a draft."""

    ACCEPT = "accept"
    EDIT = "edit"
    REJECT = "reject"


REWARDS: dict[Action, float] = {Action.ACCEPT: 1.0, Action.EDIT: 0.3, Action.REJECT: 0.0}


class FeedbackError(ValueError):
    """A recording call was refused; nothing was stored."""


class FeedbackRecorder:
    """Records drafts and outcomes, redacted, into a tenant's encrypted store."""

    def __init__(self, store: FeedbackStore, redactor: Redactor) -> None:
        self._store = store
        self._redactor = redactor

    def record_draft(self, user_id: str, prompt: str, draft: str, model_version: str) -> str:
        """Record a draft shown to `user_id` for `prompt`; returns the new draft id."""
        for name, value in (("user_id", user_id), ("prompt", prompt), ("draft", draft),
                            ("model_version", model_version)):
            if not value.strip():
                raise FeedbackError(f"{name} is empty: every draft needs a user, prompt, draft and model version")
        draft_id = uuid.uuid4().hex
        self._store.insert_draft(draft_id, user_id, self._redactor.redact(prompt),
                                 self._redactor.redact(draft), model_version)
        return draft_id

    def record_outcome(self, draft_id: str, action: Action | str, final_text: str | None = None) -> float:
        """Record what the user did with draft `draft_id`; returns the reward (1.0 / 0.3 / 0).

        `final_text` is the edited reply for EDIT (required) and the user's own
        reply for REJECT (optional); ACCEPT takes none.
        """
        try:
            action = Action(action)
        except ValueError:
            raise FeedbackError(f"unknown action {action!r}: use one of "
                                f"{', '.join(a.value for a in Action)}") from None
        if action is Action.EDIT and not (final_text or "").strip():
            raise FeedbackError("an edit outcome needs final_text: the reply the user sent after editing")
        if action is Action.ACCEPT and final_text is not None:
            raise FeedbackError("an accept outcome takes no final_text: the accepted draft is the final text")
        if not self._store.has_draft(draft_id):
            raise FeedbackError(f"unknown draft id {draft_id!r}: record the draft before its outcome")
        if self._store.has_outcome(draft_id):
            raise FeedbackError(f"draft {draft_id!r} already has an outcome")
        redacted = None if not final_text else self._redactor.redact(final_text)
        self._store.insert_outcome(draft_id, action.value, redacted, REWARDS[action])
        return REWARDS[action]
