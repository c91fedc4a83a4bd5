"""The tenant's fixed held-out slice: its own users' finals that never enter training.

A sample is held out when a keyed hash of its draft id (the tenant's
pseudonym key, so nobody outside can steer a sample in or out) falls below
`evaluation.held_out_share`. The choice never changes for a sample, so the
slice grows with the feedback and a version is never evaluated on what any
version trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedloop.client.store_api import ChatMessage, FeedbackStoreAPI, SampleQuery, SampleStatus, conversation

_SCALE = float(16**16)


@dataclass(frozen=True)
class Reference:
    """A held-out prompt and the text the user finally sent (the accepted draft, the edit, or their own reply)."""

    prompt: str
    final: str
    context: tuple[ChatMessage, ...] = ()  # the conversation before `prompt`, as its draft was served

    @property
    def messages(self) -> tuple[ChatMessage, ...]:
        """The conversation the final answers, rendered as serving rendered it."""
        return conversation(self.context, self.prompt)


def is_held_out(store: FeedbackStoreAPI, draft_id: str, share: float) -> bool:
    """Whether the sample of `draft_id` belongs to the held-out slice."""
    return int(store.pseudonym(f"held-out/{draft_id}")[:16], 16) / _SCALE < share


def held_out_references(store: FeedbackStoreAPI, share: float, limit: int) -> list[Reference]:
    """The newest `limit` held-out samples that have a final text, oldest first."""
    samples = store.samples.find(SampleQuery(status=SampleStatus.ADMITTED, with_target=True))
    chosen = [s for s in samples if is_held_out(store, s.draft_id, share)][-limit:]
    return [Reference(s.prompt, s.target or "", s.context) for s in chosen]
