"""Settings of a tenant's services: ingestion limits, privacy, moderation, curation, derived signals."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fedloop.shared.settings import load_sections, require


@dataclass(frozen=True)
class TenantSection:
    """Who this tenant is and where its keys and data live."""

    name: str = "acme"
    keys_dir: str = "keys"
    data_dir: str = "data"


@dataclass(frozen=True)
class IngestSection:
    """The gRPC feedback service and its input limits."""

    address: str = "127.0.0.1:50051"
    max_workers: int = 8
    max_text_bytes: int = 65536
    max_id_chars: int = 128
    max_dwell_ms: int = 86_400_000
    max_position: int = 1000
    max_clock_skew_ms: int = 86_400_000
    max_batch_events: int = 1000
    redaction_workers: int = 0


@dataclass(frozen=True)
class ModerationSection:
    """The built-in local filter and the quarantine breaker."""

    blocklist: tuple[str, ...] = ("kill yourself", "bomb making", "炸药制作")
    patterns: tuple[str, ...] = (r"\b(?:buy|sell)\s+(?:drugs|weapons)\b",)
    breaker_max_rate: float = 0.3
    breaker_window: int = 200
    breaker_min_samples: int = 50


@dataclass(frozen=True)
class CurationSection:
    """How outcomes become weighted samples, and the poisoning guard."""

    min_dwell_ms: int = 1500
    long_dwell_ms: int = 600_000
    user_reply_weight: float = 0.5
    near_duplicate_threshold: float = 0.8
    per_user_cluster_cap: float = 1.0
    min_distinct_users: int = 1
    max_samples_per_user_per_hour: int = 60


@dataclass(frozen=True)
class SignalsSection:
    """Derived-signal rules that flag low-quality interactions into the problem pool."""

    repeated_question_lookback: int = 3
    repeated_question_similarity: float = 0.85
    stuck_dialogue_turns: int = 3
    cta_window_ms: int = 300_000
    order_window_ms: int = 1_800_000
    no_response_ms: int = 600_000
    conversion_window_ms: int = 3_600_000


@dataclass(frozen=True)
class EvaluationSection:
    """Gates a received version must pass before it may serve."""

    kl_bound: float = 0.02
    forgetting_bound: float = 0.10


@dataclass(frozen=True)
class TenantSettings:
    """Everything `fedloop tenant serve` and the tenant tools need."""

    tenant: TenantSection = field(default_factory=TenantSection)
    ingest: IngestSection = field(default_factory=IngestSection)
    moderation: ModerationSection = field(default_factory=ModerationSection)
    curation: CurationSection = field(default_factory=CurationSection)
    signals: SignalsSection = field(default_factory=SignalsSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)

    def __post_init__(self) -> None:
        require(self.ingest.max_workers >= 1, "ingest.max_workers", "an integer >= 1")
        require(0 <= self.ingest.redaction_workers <= 64, "ingest.redaction_workers",
                "an integer in [0, 64] (0 = find PII in the service process)")
        require(1 <= self.ingest.max_text_bytes <= 16 * 2**20, "ingest.max_text_bytes", "in [1, 16 MiB]")
        require(0.0 < self.moderation.breaker_max_rate <= 1.0, "moderation.breaker_max_rate", "in (0, 1]")
        require(0.0 < self.curation.near_duplicate_threshold <= 1.0, "curation.near_duplicate_threshold",
                "in (0, 1]")
        require(self.curation.min_distinct_users >= 1, "curation.min_distinct_users", "an integer >= 1")
        require(0.0 <= self.curation.user_reply_weight <= 1.0, "curation.user_reply_weight", "in [0, 1]")
        require(self.evaluation.kl_bound > 0 and self.evaluation.forgetting_bound > 0,
                "evaluation.kl_bound / forgetting_bound", "numbers > 0")

    @property
    def store_path(self) -> Path:
        """The tenant's SQLite store."""
        return Path(self.tenant.data_dir) / "feedback.db"


def load_tenant_settings(path: Path) -> TenantSettings:
    """Read and validate a tenant TOML file."""
    return load_sections(TenantSettings, path)
