"""From an outcome to a weighted, moderated, de-duplicated sample in a pool.

Weights (documented in docs/tenant-pipeline.md, "Curation"):
- accept: reward 1.0; weight 1.0, or 0.6 when the user decided faster than
  `min_dwell_ms` (probably not read);
- edit then accept: reward 0.3 + 0.4 x similarity(draft, final); weight
  0.3 + 0.7 x similarity — a light edit says the draft was nearly right and the
  final is confirmed by the user;
- reject: reward 0; the user's own reply, if any, is a target with weight
  `user_reply_weight`; the rejected draft is kept as the "rejected" side of a
  preference pair.
A dwell longer than `long_dwell_ms` multiplies the weight by 0.8 (distracted user).

Poisoning guard: near-duplicates (MinHash LSH) share a cluster; within a
cluster one user's samples together weigh at most `per_user_cluster_cap`, and a
cluster trains only when `min_distinct_users` distinct pseudonyms back it. A user
above `max_samples_per_user_per_hour` has further samples kept but rate-limited
(weight 0).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from rapidfuzz import fuzz

from fedloop.client.privacy.moderation import ModerationFilter
from fedloop.client.samples.held_out import cluster_of_new_sample
from fedloop.client.samples.minhash_index import NearDuplicateIndex, signature, signature_bytes, signature_from_bytes
from fedloop.client.store.api import (
    BASELINE_POOLS,
    Action,
    DraftRecord,
    FeedbackStoreAPI,
    OutcomeRecord,
    Pool,
    SampleQuery,
    SampleRecord,
    SampleStatus,
    Slice,
    TrainingExample,
)
from fedloop.client.tenant_settings import REVIEW_RISKS, CurationSection, EvaluationSection, ModerationSection
from fedloop.shared.crypto import sm3_digest

log = logging.getLogger(__name__)
BASE_REWARDS = {Action.ACCEPT: 1.0, Action.EDIT: 0.3, Action.REJECT: 0.0}
HIGH_RISK_ENTITIES = {"CN_RESIDENT_ID", "BANK_CARD", "CREDIT_CARD", "IBAN_CODE", "US_SSN"}


def needs_review(risk: str, review_risk: str) -> bool:
    """Whether a sample of `risk` waits for a human decision under curation.review_risk."""
    return review_risk != "off" and REVIEW_RISKS.index(risk) >= REVIEW_RISKS.index(review_risk)


def text_similarity(a: str, b: str) -> float:
    """Normalised edit similarity in [0, 1] (rapidfuzz ratio, case-folded)."""
    return fuzz.ratio(a.casefold().strip(), b.casefold().strip()) / 100.0


def reward_and_weight(
    action: str, draft: str, final: str | None, dwell_ms: int, settings: CurationSection
) -> tuple[float, float]:
    """The refined reward of the draft and the weight of the sample's target, both in [0, 1]."""
    if action == "accept":
        reward, weight = 1.0, (1.0 if dwell_ms >= settings.min_dwell_ms else 0.6)
    elif action == "edit":
        similarity = text_similarity(draft, final or "")
        reward, weight = 0.3 + 0.4 * similarity, 0.3 + 0.7 * similarity
    else:
        reward, weight = 0.0, (settings.user_reply_weight if final else 0.0)
    if dwell_ms > settings.long_dwell_ms:
        weight *= 0.8
    return reward, min(1.0, max(0.0, weight))


class Curator:
    """Turns decided drafts into samples; owns the near-duplicate index and the moderation breaker."""

    def __init__(
        self,
        store: FeedbackStoreAPI,
        curation: CurationSection,
        moderation_settings: ModerationSection,
        moderation: ModerationFilter,
        evaluation: EvaluationSection,
    ) -> None:
        self._store = store
        self._settings = curation
        self._evaluation = evaluation  # the held-out slice's share and warm-up (samples/held_out.py)
        self._moderation_settings = moderation_settings
        self._moderation = moderation
        self._index = NearDuplicateIndex(curation.near_duplicate_threshold)
        self._uncommitted: list[str] = []
        for sample_id, cluster_id, data in store.samples.signatures():
            self._index.add(sample_id, cluster_id, signature_from_bytes(data))

    def make_sample(self, draft: DraftRecord, outcome: OutcomeRecord, entity_types: set[str]) -> SampleRecord:
        """Build and store the sample of a decided draft (call inside the ingest transaction).

        The sample enters the near-duplicate index at once, so later samples of
        the same batch find it; `forget_uncommitted` takes it out again if the
        transaction rolls back.
        """
        target = draft.draft if outcome.action == Action.ACCEPT else outcome.final_text
        rejected = draft.draft if outcome.action == Action.REJECT else None
        reward, weight = reward_and_weight(
            outcome.action, draft.draft, outcome.final_text, outcome.dwell_ms, self._settings
        )
        minhash = signature(f"{draft.prompt}\n{target or draft.draft}")
        sample_id = f"s-{draft.id}"
        cluster_id = cluster_of_new_sample(
            self._store, sample_id, self._index.clusters_near(minhash), self._index.cluster_count, self._evaluation
        )
        status, reason = self._admission(draft, target, rejected)
        if status == SampleStatus.RATE_LIMITED:
            weight = 0.0
        risk = "high" if entity_types & HIGH_RISK_ENTITIES else "low"
        if status == SampleStatus.ADMITTED and needs_review(risk, self._settings.review_risk):
            status, reason = (
                SampleStatus.AWAITING_REVIEW,
                (
                    f"carried {', '.join(sorted(entity_types & HIGH_RISK_ENTITIES))}: "
                    "a reviewer decides (`fedloop samples review decide`)"
                ),
            )
        sample = SampleRecord(
            id=sample_id,
            draft_id=draft.id,
            cluster_id=cluster_id,
            user_pseudonym=draft.user_pseudonym,
            prompt=draft.prompt,
            context=draft.context,
            target=target,
            rejected=rejected,
            reward=reward,
            weight=weight,
            pool=Pool.CANDIDATE,
            problem_type=None,
            risk=risk,
            first_seen_version=draft.model_version,
            status=status,
            reason=reason,
            label=None,
            created_at_ms=int(time.time() * 1000),
        )
        self._store.samples.insert(sample, signature_bytes(minhash))
        self._index.add(sample_id, cluster_id, minhash)
        self._uncommitted.append(sample_id)
        if status == SampleStatus.QUARANTINED:
            self._check_breaker()
        return sample

    def _admission(
        self, draft: DraftRecord, target: str | None, rejected: str | None
    ) -> tuple[SampleStatus, str | None]:
        hour_ago = int(time.time() * 1000) - 3_600_000
        if (
            self._store.samples.user_count(draft.user_pseudonym, hour_ago)
            >= self._settings.max_samples_per_user_per_hour
        ):
            return (
                SampleStatus.RATE_LIMITED,
                f"user above {self._settings.max_samples_per_user_per_hour} samples per hour",
            )
        for text in (draft.prompt, target, rejected):
            if text:
                verdict = self._moderation.review(text)
                if not verdict.allowed:
                    return SampleStatus.QUARANTINED, verdict.reason
        tripped, _ = self._store.samples.breaker_state()
        if tripped:
            return SampleStatus.HELD, "moderation breaker tripped: waiting for an operator reset"
        return SampleStatus.ADMITTED, None

    def _check_breaker(self) -> None:
        settings = self._moderation_settings
        statuses = [
            s for s in self._store.samples.recent_statuses(settings.breaker_window) if s != SampleStatus.RATE_LIMITED
        ]
        if len(statuses) < settings.breaker_min_samples:
            return
        rate = statuses.count(SampleStatus.QUARANTINED) / len(statuses)
        if rate > settings.breaker_max_rate and not self._store.samples.breaker_state()[0]:
            reason = (
                f"quarantine rate {rate:.0%} over the last {len(statuses)} samples > {settings.breaker_max_rate:.0%}"
            )
            self._store.samples.set_breaker(True, reason)
            self._store.audit("fedloop", "breaker.trip", reason)
            log.warning("moderation breaker tripped: %s", reason)

    def committed(self) -> None:
        """The transaction holding the latest samples committed: keep them in the index."""
        self._uncommitted.clear()

    def forget_uncommitted(self) -> None:
        """The transaction holding the latest samples rolled back: drop them from the index."""
        for sample_id in self._uncommitted:
            self._index.remove(sample_id)
        self._uncommitted.clear()

    def reset_breaker(self, operator: str) -> tuple[int, int]:
        """Reset the breaker; held samples are reviewed again. Returns (admitted, quarantined)."""
        admitted = quarantined = 0
        with self._store.transaction():
            self._store.samples.set_breaker(False, None)
            for sample in self._store.samples.find(SampleQuery(status=SampleStatus.HELD)):
                verdicts = [self._moderation.review(t) for t in (sample.prompt, sample.target, sample.rejected) if t]
                refusal = next((v for v in verdicts if not v.allowed), None)
                if refusal is None:
                    self._store.samples.set_status(sample.id, SampleStatus.ADMITTED, None)
                    admitted += 1
                else:
                    self._store.samples.set_status(sample.id, SampleStatus.QUARANTINED, refusal.reason)
                    quarantined += 1
            self._store.audit(
                operator, "breaker.reset", f"held samples: {admitted} admitted, {quarantined} quarantined"
            )
        return admitted, quarantined

    def flag_problem(self, draft_id: str, problem_type: str, model_version: str, at_ms: int) -> bool:
        """Record a derived-signal problem; returns False if the draft already had it.

        The draft's sample moves to the problem pool unless a human already put it in a baseline pool.
        """
        if not self._store.drafts.record_problem(draft_id, problem_type, model_version, at_ms):
            return False
        for sample in self._store.samples.find(SampleQuery(draft_id=draft_id)):
            if sample.pool not in BASELINE_POOLS:
                self._store.samples.flag_problem(sample.id, problem_type, "medium")
        return True


def training_examples(
    store: FeedbackStoreAPI,
    settings: CurationSection,
    pools: tuple[Pool, ...] = (Pool.CORE_BASELINE, Pool.SECONDARY_BASELINE, Pool.CANDIDATE, Pool.PROBLEM),
) -> list[TrainingExample]:
    """Admitted samples with targets, weighted under the poisoning guard, of the training slice.

    Held-out clusters and clusters apart (samples/held_out.py) never train.
    Within a near-duplicate cluster, each user's samples share at most
    `per_user_cluster_cap` of weight; clusters backed by fewer than
    `min_distinct_users` users are left out.
    """
    samples = store.samples.find(
        SampleQuery(status=SampleStatus.ADMITTED, pools=pools, trainable=True, slice=Slice.TRAIN)
    )
    users_in_cluster: dict[str, set[str]] = defaultdict(set)
    user_cluster_weight: dict[tuple[str, str], float] = defaultdict(float)
    for sample in samples:
        users_in_cluster[sample.cluster_id].add(sample.user_pseudonym)
        user_cluster_weight[(sample.cluster_id, sample.user_pseudonym)] += sample.weight
    examples = []
    for sample in samples:
        if len(users_in_cluster[sample.cluster_id]) < settings.min_distinct_users:
            continue
        total = user_cluster_weight[(sample.cluster_id, sample.user_pseudonym)]
        scale = min(1.0, settings.per_user_cluster_cap / total)
        examples.append(
            TrainingExample(
                sample.prompt, sample.target or "", sample.weight * scale, sample.pool, sample.rejected, sample.context
            )
        )
    return examples


def dataset_version(store: FeedbackStoreAPI) -> str:
    """A digest naming the sample set a tenant trains on: every sample's id, pool, status and weight.

    Any admitted, promoted, demoted, quarantined or re-weighted sample changes
    it; it travels (signed) with the tenant's update so HQ can say which data
    version each contribution came from without seeing any of it.
    """
    lines = sorted(f"{s.id}:{s.pool}:{s.status}:{s.weight:.6f}" for s in store.samples.find())
    return sm3_digest("\n".join(lines).encode()).hex()[:16]
