"""What the tenant store holds, and the interface any store implementation fills.

`FeedbackStore` (SQLite, store.py) is the default; a PostgreSQL store for large
tenants implements the same `FeedbackStoreAPI` protocol. Texts in these records
are already redacted and ids already pseudonymised when they reach a store.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from fedloop.client.privacy.placeholders import PlaceholderMap
from fedloop.shared.settings import POOL_NAMES
from fedloop.shared.storage_keys import StorageKeyring

POOLS = POOL_NAMES
BASELINE_POOLS = ("secondary_baseline", "core_baseline")


BASE_VERSION = "base"  # the base model with no adapter: what drafts before any version is released


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


@dataclass(frozen=True)
class OutcomeRecord:
    """What the user did with a draft."""

    draft_id: str
    action: str
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
    pool: str
    problem_type: str | None
    risk: str
    first_seen_version: str
    status: str
    reason: str | None
    label: str | None
    created_at_ms: int


@dataclass(frozen=True)
class TrainingExample:
    """A prompt and the reply to learn, with its sample weight and pool (and the rejected draft, if any)."""

    prompt: str
    target: str
    weight: float
    pool: str
    rejected: str | None = None


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


class FeedbackStoreAPI(Protocol):
    """The operations the ingestion pipeline, curation and tools need from a store."""

    def transaction(self) -> AbstractContextManager[None]:
        """Atomic unit of writes."""

    def use_keys(self, keys: StorageKeyring) -> None:
        """Switch to a rotated keyring."""

    def pseudonym(self, identifier: str) -> str:
        """Keyed pseudonym of a user or session id."""

    def event_mac(self, event_id: str) -> str | None:
        """Stored content MAC of an event id."""

    def insert_event(self, event_id: str, kind: str, content_mac: str) -> None:
        """Record an event id."""

    def insert_draft(self, draft: DraftRecord) -> None:
        """Store a draft."""

    def get_draft(self, draft_id: str) -> DraftRecord | None:
        """Fetch a draft."""

    def has_outcome(self, draft_id: str) -> bool:
        """Whether a draft has an outcome."""

    def insert_outcome(self, outcome: OutcomeRecord) -> None:
        """Store an outcome."""

    def insert_signal(self, signal: SignalRecord) -> None:
        """Store a signal."""

    def session_signals(self, session_pseudonym: str, limit: int = 200) -> list[SignalRecord]:
        """Signals."""

    def session_drafts(self, session_pseudonym: str) -> list[tuple[str, str, int]]:
        """Drafts of a session."""

    def signal_kinds(self) -> set[str]:
        """Signal kinds the product has ever reported."""

    def open_sessions(self, since_ms: int) -> list[str]:
        """Sessions with drafts since a time."""

    def placeholder_map(self, record_id: str) -> PlaceholderMap:
        """Placeholders of a record."""

    def vault_add(self, record_id: str, placeholder: str, original: str) -> None:
        """Vault an original."""

    def audit(self, actor: str, action: str, subject: str) -> None:
        """Append an audit entry."""

    def insert_sample(self, sample: SampleRecord, signature: bytes) -> None:
        """Store a sample."""

    def samples(self, where: str = "1=1", params: tuple = ()) -> list[SampleRecord]:
        """Query samples."""

    def sample_signatures(self) -> list[tuple[str, str, bytes]]:
        """MinHash signatures of all samples."""

    def user_sample_count(self, user_pseudonym: str, since_ms: int) -> int:
        """A user's recent samples."""

    def recent_statuses(self, limit: int) -> list[str]:
        """Statuses of the latest samples."""

    def update_sample(self, sample_id: str, **fields: object) -> None:
        """Change a sample's plain fields."""

    def record_problem(self, draft_id: str, problem_type: str, model_version: str, at_ms: int) -> bool:
        """Flag."""

    def breaker_state(self) -> tuple[bool, str | None]:
        """Moderation breaker state."""

    def set_breaker(self, tripped: bool, reason: str | None) -> None:
        """Trip or reset the breaker."""

    def release_state(self) -> ReleaseRecord | None:
        """The newest release record."""

    def release_history(self) -> list[ReleaseRecord]:
        """Every release record, oldest first."""

    def append_release(self, record: ReleaseRecord) -> None:
        """Move the release pointer."""

    def arm_stats(self, model_version: str, since_ms: int) -> ArmStats:
        """Outcomes of a version's drafts."""
