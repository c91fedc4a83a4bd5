"""The tenant's fixed held-out slice: its own users' finals that never enter training.

The slice is chosen per near-duplicate cluster (the MinHash LSH clusters
curation assigns), when a cluster begins, and written into its id
(store.api.cluster_slice), so the choice never changes for any sample:

- a sample with no near-duplicate begins a cluster; the tenant's first
  `evaluation.held_out_after_clusters` clusters all train (a tenant whose
  feedback forms a few clusters keeps data to train on: it has no held-out
  finals and the canary decides); after them a cluster is held out when a
  keyed hash of its first sample's id (the tenant's pseudonym key, so nobody
  outside can steer a sample in or out) falls below `evaluation.held_out_share`;
- a sample with near-duplicates joins their cluster, so no twin of a held-out
  sample trains; one that is a near-duplicate of both a held-out and a
  training sample (LSH clusters are not transitive) begins a cluster apart
  that neither trains nor is evaluated on.

The slice grows with the feedback and a version is never evaluated on what,
or on the twin of what, any version trained on.

A reference whose final is a draft a version produced and the user accepted
as it was says which version (`drafted_by`): comparing that version with
another on it would favour it (it reproduces its own greedy draft), so the
gates leave out the references the compared versions drafted.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedloop.client.store.api import (
    APART_CLUSTER,
    HELD_OUT_CLUSTER,
    Action,
    ChatMessage,
    FeedbackStoreAPI,
    SampleQuery,
    SampleRecord,
    SampleStatus,
    Slice,
    cluster_slice,
    conversation,
)
from fedloop.client.tenant_settings import EvaluationSection

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


def cluster_of_new_sample(
    store: FeedbackStoreAPI, sample_id: str, near: set[str], clusters: int, evaluation: EvaluationSection
) -> str:
    """The cluster id of a new sample whose near-duplicates are in the clusters `near`, when the tenant's samples
    already form `clusters` clusters (the module docstring gives the rule)."""
    held_out = sorted(c for c in near if cluster_slice(c) == Slice.HELD_OUT)
    if held_out and any(cluster_slice(c) == Slice.TRAIN for c in near):
        return APART_CLUSTER + sample_id
    if near:
        return (held_out or sorted(near))[0]
    draw = int(store.pseudonym(f"held-out/{sample_id}")[:16], 16) / _SCALE
    if clusters >= evaluation.held_out_after_clusters and draw < evaluation.held_out_share:
        return HELD_OUT_CLUSTER + sample_id
    return sample_id


def drafted_by(store: FeedbackStoreAPI, sample: SampleRecord) -> str | None:
    """The version whose draft is the sample's final (accepted as it was), or None."""
    outcome = store.drafts.get_outcome(sample.draft_id)
    if outcome is None or outcome.action != Action.ACCEPT:
        return None
    draft = store.drafts.get_draft(sample.draft_id)
    return None if draft is None else draft.model_version


def reference(store: FeedbackStoreAPI, sample: SampleRecord) -> Reference:
    """The reference a sample with a final text gives: its prompt, its context, its final and who drafted it."""
    return Reference(sample.prompt, sample.target or "", sample.context, drafted_by(store, sample))


def held_out_references(store: FeedbackStoreAPI, limit: int, compared: frozenset[str] = frozenset()) -> list[Reference]:
    """The newest `limit` held-out samples that have a final text, oldest first, less those whose final a
    `compared` version drafted."""
    samples = store.samples.find(SampleQuery(status=SampleStatus.ADMITTED, with_target=True, slice=Slice.HELD_OUT))
    chosen: list[Reference] = []
    for sample in reversed(samples):
        if len(chosen) == limit:
            break
        candidate = reference(store, sample)
        if candidate.drafted_by not in compared:
            chosen.append(candidate)
    return chosen[::-1]
