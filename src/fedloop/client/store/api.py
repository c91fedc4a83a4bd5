"""What the tenant store holds, and the interface any store implementation fills.

The store is split by what it stores: drafts and outcomes (with the product's
signals, derived problems and the PII vault), samples and their pools, versions
and evaluations (with the release pointer), and the audit log. Each is a
repository protocol asked in types (records, enums, `SampleQuery`), never in SQL,
so a PostgreSQL store for large tenants fills the same `FeedbackStoreAPI` as the
SQLite one (sqlite_store.py). Texts in these records are already redacted and ids
already pseudonymised when they reach a store.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from fedloop.client.privacy.placeholders import PlaceholderMap
from fedloop.shared.audit import AuditLog
from fedloop.shared.settings import Pool
from fedloop.shared.storage_keys import StorageKeyring

BASELINE_POOLS = (Pool.SECONDARY_BASELINE, Pool.CORE_BASELINE)
BASE_VERSION = "base"  # the base model with no adapter: what drafts before any version is released
ChatMessage = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


def conversation(context: Sequence[ChatMessage], prompt: str) -> tuple[ChatMessage, ...]:
    """The messages a draft answered: its context (system prompt, history), then the user's `prompt`."""
    return (*context, {"role": "user", "content": prompt})


class Action(StrEnum):
    """What a user did with a draft."""

    ACCEPT = "accept"
    EDIT = "edit"
    REJECT = "reject"


class SampleStatus(StrEnum):
    """Where a sample stands: only admitted samples train."""

    ADMITTED = "admitted"
    HELD = "held"  # the moderation breaker is tripped: waits for `fedloop samples breaker-reset`
    QUARANTINED = "quarantined"  # moderation refused it
    AWAITING_REVIEW = "awaiting_review"  # high-risk PII: waits for `fedloop samples review decide`
    REJECTED = "rejected"  # a reviewer refused it
    RATE_LIMITED = "rate_limited"  # its user sent too many samples in an hour: kept at weight 0


class Slice(StrEnum):
    """Which part of the feedback a sample's near-duplicate cluster belongs to (fixed when the cluster began)."""

    TRAIN = "train"  # may train (subject to status, pool and the poisoning guard)
    HELD_OUT = "held_out"  # never trains: the finals versions are evaluated on
    APART = "apart"  # neither: a near-duplicate of both a held-out and a training sample


HELD_OUT_CLUSTER = "held-out:"  # how the id of a held-out cluster begins
APART_CLUSTER = "apart:"  # how the id of a cluster apart from both begins


def cluster_slice(cluster_id: str) -> Slice:
    """The slice a cluster id names (a cluster id without a mark trains)."""
    if cluster_id.startswith(HELD_OUT_CLUSTER):
        return Slice.HELD_OUT
    return Slice.APART if cluster_id.startswith(APART_CLUSTER) else Slice.TRAIN


class EvaluationKind(StrEnum):
    """What an evaluation record of a version holds."""

    HIT_RATE = "hit_rate"  # offline hit rate on the held-out finals (metrics: protocol.HIT_RATE, NUM_EXAMPLES, ...)
    HIT_RATE_VS_SERVING = "hit_rate_vs_serving"  # the hit-rate gate
    KL_TO_SERVING = "kl_to_serving"  # the KL gate
    GENERAL_NLL_INCREASE = "general_nll_increase"  # the forgetting gate
    DEGENERATE_SHARE_INCREASE = "degenerate_share_increase"  # the degeneration gate
    TRAINING = "training"  # a local training run (losses, examples, duration)
    OFFERED = "offered"  # passed the gates while a canary ran: waits to be the next canary
    REFUSED = "refused"  # the gates refused it: never offered, not servable (metrics: at_ms, why)
    ROLLED_BACK = "rolled_back"  # rolled back here: never offered again, not servable (metrics: at_ms, why)
    READMITTED = "readmitted"  # an operator lifted a refusal or rollback by name (metrics: at_ms, why)


@dataclass(frozen=True)
class SampleQuery:
    """Which samples to read: every condition that is set must hold (oldest sample first)."""

    sample_id: str | None = None
    draft_id: str | None = None
    user_pseudonym: str | None = None
    status: SampleStatus | None = None
    pools: Sequence[Pool] | None = None
    trainable: bool = False  # only samples with a reply to learn and a positive weight
    with_target: bool = False  # only samples with a reply to learn
    slice: Slice | None = None  # only samples of clusters in this slice


@dataclass(frozen=True)
class DraftRecord:
    """A draft shown to a user."""

    id: str
    user_pseudonym: str
    session_pseudonym: str
    prompt: str
    draft: str
    model_version: str
    prompt_version: str
    position: int
    shown_at_ms: int
    context: tuple[ChatMessage, ...] = ()  # the messages before `prompt` (system prompt, history), redacted


@dataclass(frozen=True)
class OutcomeRecord:
    """What the user did with a draft."""

    draft_id: str
    action: Action
    final_text: str | None
    dwell_ms: int
    reward: float
    decided_at_ms: int


@dataclass(frozen=True)
class SignalRecord:
    """An implicit signal from the product."""

    event_id: str
    user_pseudonym: str
    session_pseudonym: str
    kind: str
    draft_id: str | None
    value: str | None
    at_ms: int


@dataclass(frozen=True)
class SampleRecord:
    """A curated training sample in a pool."""

    id: str
    draft_id: str
    cluster_id: str
    user_pseudonym: str
    prompt: str
    target: str | None
    rejected: str | None
    reward: float
    weight: float
    pool: Pool
    problem_type: str | None
    risk: str
    first_seen_version: str
    status: SampleStatus
    reason: str | None
    label: str | None
    created_at_ms: int
    context: tuple[ChatMessage, ...] = ()  # the conversation before `prompt`, as its draft was served


@dataclass(frozen=True)
class TrainingExample:
    """A prompt and the reply to learn, with its sample weight and pool (and the rejected draft, if any)."""

    prompt: str
    target: str
    weight: float
    pool: Pool
    rejected: str | None = None
    context: tuple[ChatMessage, ...] = ()  # the conversation before `prompt`, as its draft was served

    @property
    def messages(self) -> tuple[ChatMessage, ...]:
        """The conversation the reply answers, ending with the user's `prompt`."""
        return conversation(self.context, self.prompt)


@dataclass(frozen=True)
class InstalledVersion:
    """A global version this tenant verified and installed."""

    version_id: str
    round: int
    parent: str | None
    digest: str


@dataclass(frozen=True)
class ReleaseRecord:
    """One move of the tenant's release pointer: which version serves, which is in canary, on what share."""

    at_ms: int
    action: str
    serving: str | None
    canary: str | None
    share: float
    reason: str


@dataclass(frozen=True)
class ArmStats:
    """What users did with one version's drafts over an observation window."""

    version: str
    users: int
    decided: int
    accepts: int
    rejects: int
    flagged: int

    @property
    def hit_rate(self) -> float:
        """Share of decided drafts accepted as they were."""
        return self.accepts / self.decided if self.decided else 0.0

    @property
    def reject_rate(self) -> float:
        """Share of decided drafts rejected."""
        return self.rejects / self.decided if self.decided else 0.0

    @property
    def complaint_rate(self) -> float:
        """Share of decided drafts a derived-signal rule flagged as a problem."""
        return self.flagged / self.decided if self.decided else 0.0


@dataclass(frozen=True)
class WindowEvent:
    """An outcome (with its `action`) or a problem flag (`action` None) of a draft in a release window."""

    rowid: int
    draft_id: str
    user: str
    version: str
    action: Action | None


@dataclass(frozen=True)
class UserRates:
    """One user's decided drafts over a span, and how many were accepted, rejected and flagged (in that order)."""

    user: str
    decided: int
    counts: tuple[int, int, int]


class DraftRepository(Protocol):
    """Drafts and outcomes, with the product's signals, the problems rules derive from them, and the PII vault."""

    def event_mac(self, event_id: str) -> str | None:
        """Stored content MAC of an event id (None: never stored)."""

    def insert_event(self, event_id: str, kind: str, content_mac: str) -> None:
        """Remember an event id and its content MAC (idempotent ingestion)."""

    def count_events(self) -> int:
        """How many distinct events are stored."""

    def insert_draft(self, draft: DraftRecord) -> None:
        """Store a shown draft."""

    def get_draft(self, draft_id: str) -> DraftRecord | None:
        """A stored draft, or None."""

    def has_outcome(self, draft_id: str) -> bool:
        """Whether a draft has an outcome."""

    def insert_outcome(self, outcome: OutcomeRecord) -> None:
        """Store the user's decision on a draft."""

    def get_outcome(self, draft_id: str) -> OutcomeRecord | None:
        """The outcome of a draft, or None."""

    def insert_signal(self, signal: SignalRecord) -> None:
        """Store an implicit signal."""

    def session_signals(self, session_pseudonym: str, limit: int = 200) -> list[SignalRecord]:
        """The latest signals of a session, oldest first."""

    def session_drafts(self, session_pseudonym: str) -> list[tuple[str, str, int]]:
        """(draft id, model version, shown at) of a session's drafts, oldest first."""

    def signal_kinds(self) -> set[str]:
        """Signal kinds the product has ever reported."""

    def open_sessions(self, since_ms: int) -> list[str]:
        """Sessions with a draft shown since a time."""

    def outcome_counts(self) -> dict[Action, int]:
        """How many drafts ended in each action."""

    def outcomes_by_version(self) -> list[tuple[str, str, int, int]]:
        """(model version, prompt version, decided drafts, accepted drafts) for every pair that served."""

    def drafting_versions(self) -> list[str]:
        """Model versions that drafted, in the order they first did."""

    def window_events(
        self, versions: Sequence[str], since_ms: int, after_outcome: int, after_problem: int
    ) -> tuple[list[WindowEvent], list[WindowEvent]]:
        """Outcomes and problem flags of the versions' drafts shown since `since_ms`, recorded after the given rowids
        (integrity-checked)."""

    def user_rates(self, since_ms: int, until_ms: int) -> list[UserRates]:
        """Per user: decided drafts shown in [since_ms, until_ms) and how many were accepted, rejected, flagged."""

    def record_problem(self, draft_id: str, problem_type: str, model_version: str, at_ms: int) -> bool:
        """Flag a draft with a problem type; False if it was already flagged so."""

    def problem_rate(self, problem_type: str, model_version: str) -> tuple[int, int]:
        """(drafts of the version flagged with the type, all drafts of the version)."""

    def problem_types(self) -> list[str]:
        """Every problem type flagged so far."""

    def placeholder_map(self, record_id: str) -> PlaceholderMap:
        """The placeholders already assigned in a record."""

    def vault_add(self, record_id: str, placeholder: str, original: str) -> None:
        """Keep the original behind a placeholder."""

    def vault_lookup(self, record_id: str, placeholder: str) -> str | None:
        """The original behind a placeholder, or None (callers audit the reveal)."""


class SampleRepository(Protocol):
    """Curated samples in their pools, and the moderation breaker."""

    def insert(self, sample: SampleRecord, signature: bytes) -> None:
        """Store a curated sample with its MinHash signature."""

    def find(self, query: SampleQuery = SampleQuery()) -> list[SampleRecord]:
        """The samples the query selects, oldest first (integrity-checked)."""

    def move(self, sample_id: str, pool: Pool) -> None:
        """Put a sample in another pool."""

    def set_status(self, sample_id: str, status: SampleStatus, reason: str | None) -> None:
        """Change a sample's status, with why (None: no reason)."""

    def set_label(self, sample_id: str, label: str) -> None:
        """Attach a reviewer's label."""

    def flag_problem(self, sample_id: str, problem_type: str, risk: str) -> None:
        """Move a sample to the problem pool, naming the problem and its risk."""

    def signatures(self) -> list[tuple[str, str, bytes]]:
        """(sample id, cluster id, MinHash signature) of every sample."""

    def user_count(self, user_pseudonym: str, since_ms: int) -> int:
        """Samples a user contributed since a time."""

    def recent_statuses(self, limit: int) -> list[SampleStatus]:
        """Statuses of the latest samples, newest first."""

    def count_admitted_since(self, since_ms: int) -> int:
        """How many admitted samples were created since `since_ms`."""

    def counts(self) -> dict[tuple[SampleStatus, Pool], int]:
        """How many samples have each (status, pool)."""

    def breaker_state(self) -> tuple[bool, str | None]:
        """(tripped, reason) of the moderation breaker."""

    def set_breaker(self, tripped: bool, reason: str | None) -> None:
        """Trip or reset the moderation breaker."""


class VersionRepository(Protocol):
    """Installed global versions, adapter parts kept locally, evaluations, and the release pointer."""

    def install(self, version: InstalledVersion, adapter_bytes: bytes) -> None:
        """Keep a verified global version."""

    def installed(self) -> list[InstalledVersion]:
        """Installed versions, oldest round first."""

    def last_installed_ms(self) -> int | None:
        """When the newest version was installed here (ms), or None before any."""

    def adapter(self, version_id: str) -> bytes:
        """An installed version's adapter bytes; KeyError if never installed."""

    def keep_local_part(self, name: str, data: bytes) -> None:
        """Keep (replace) an adapter part that never leaves the tenant."""

    def local_part(self, name: str) -> bytes | None:
        """A kept local adapter part, or None."""

    def record_evaluation(self, version_id: str, kind: EvaluationKind, metrics: dict[str, Any]) -> None:
        """Keep an evaluation or training record of a version (aggregate numbers only)."""

    def evaluations(self, version_id: str) -> list[tuple[EvaluationKind, dict[str, Any]]]:
        """(kind, metrics) of every record of a version, oldest first."""

    def evaluations_of_kind(self, kind: EvaluationKind) -> list[tuple[str, dict[str, Any]]]:
        """(version id, metrics) of every record of a kind, oldest first."""

    def latest_evaluation(self, kind: EvaluationKind) -> tuple[str, dict[str, Any]] | None:
        """(version id, metrics) of the newest record of a kind, or None."""

    def release_state(self) -> ReleaseRecord | None:
        """The newest release record."""

    def release_history(self) -> list[ReleaseRecord]:
        """Every release record, oldest first."""

    def append_release(self, record: ReleaseRecord) -> None:
        """Move the release pointer (one appended record)."""


class FeedbackStoreAPI(Protocol):
    """A tenant's store: its repositories, its audit log, and what spans them."""

    @property
    def drafts(self) -> DraftRepository:
        """Drafts and outcomes (signals, problems, vault)."""

    @property
    def samples(self) -> SampleRepository:
        """Samples and pools (and the moderation breaker)."""

    @property
    def versions(self) -> VersionRepository:
        """Versions and evaluations (and the release pointer)."""

    @property
    def audit_log(self) -> AuditLog:
        """The chained audit log."""

    def transaction(self) -> AbstractContextManager[None]:
        """Everything written inside is committed together, or not at all."""

    def use_keys(self, keys: StorageKeyring) -> None:
        """Switch to a rotated keyring."""

    def writable(self, wait_s: float = 0.2) -> bool:
        """Whether a writer could take the store's write lock within `wait_s`."""
        ...

    def pseudonym(self, identifier: str) -> str:
        """Keyed pseudonym of a user or session id."""

    def audit(self, actor: str, action: str, subject: str) -> None:
        """Append an entry to the audit log."""
