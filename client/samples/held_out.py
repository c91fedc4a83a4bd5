"""The tenant's fixed held-out slice: its own users' finals that never enter training.

A sample is held out when a keyed hash of its draft id (the tenant's
pseudonym key, so nobody outside can steer a sample in or out) falls below
`evaluation.held_out_share`. The choice never changes for a sample, so the
slice grows with the feedback and a version is never evaluated on what any
version trained on. (Near-duplicate twins of a held-out sample can still
train: choosing per MinHash cluster was tried for issue 30 and left out, see
docs/evaluation.md.)

A reference whose final is a draft a version produced and the user accepted
as it was says which version (`drafted_by`): comparing that version with
another on it would favour it (it reproduces its own greedy draft), so the
gates leave out the references the compared versions drafted.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedloop.client.store_api import (
    Action,
    ChatMessage,
    FeedbackStoreAPI,
    SampleQuery,
    SampleRecord,
    SampleStatus,
    conversation,
)

_SCALE = float(16**16)


@dataclass(frozen=True)
class Reference:
    """A held-out prompt and the text the user finally sent (the accepted draft, the edit, or their own reply)."""

    prompt: str
    final: str
    context: tuple[ChatMessage, ...] = ()  # the conversation before `prompt`, as its draft was served
    drafted_by: str | None = None  # the version whose draft the user accepted as it was (None: edited, own reply)

    @property
    def messages(self) -> tuple[ChatMessage, ...]:
        """The conversation the final answers, rendered as serving rendered it."""
        return conversation(self.context, self.prompt)


def is_held_out(store: FeedbackStoreAPI, draft_id: str, share: float) -> bool:
    """Whether the sample of `draft_id` belongs to the held-out slice."""
    return int(store.pseudonym(f"held-out/{draft_id}")[:16], 16) / _SCALE < share


def drafted_by(store: FeedbackStoreAPI, sample: SampleRecord) -> str | None:
    """The version whose draft is the sample's final (accepted as it was), or None."""
    outcome = store.drafts.get_outcome(sample.draft_id)
    if outcome is None or outcome.action != Action.ACCEPT:
        return None
    draft = store.drafts.get_draft(sample.draft_id)
    return None if draft is None else draft.model_version


def held_out_references(
    store: FeedbackStoreAPI, share: float, limit: int, compared: frozenset[str] = frozenset()
) -> list[Reference]:
    """The newest `limit` held-out samples that have a final text, oldest first, less those whose final a
    `compared` version drafted."""
    samples = store.samples.find(SampleQuery(status=SampleStatus.ADMITTED, with_target=True))
    chosen: list[Reference] = []
    for sample in reversed(samples):
        if len(chosen) == limit:
            break
        if not is_held_out(store, sample.draft_id, share):
            continue
        author = drafted_by(store, sample)
        if author not in compared:
            chosen.append(Reference(sample.prompt, sample.target or "", sample.context, author))
    return chosen[::-1]
