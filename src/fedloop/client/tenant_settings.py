"""Settings of a tenant's services: ingestion limits, privacy, moderation, curation, derived signals."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self, get_args

from pydantic import Field, model_validator

from fedloop.shared.names import PARTY_NAME_RULE, is_party_name
from fedloop.shared.settings import Section, is_host_port, is_loopback, load_sections, require


class TenantSection(Section):
    """Who this tenant is and where its keys and data live."""

    PATH_KEYS = ("keys_dir", "data_dir")

    name: str = Field("acme", description="the tenant's name, as in the federation settings and its key files")
    keys_dir: str = Field("keys", description="holds <name>.sm2.key.json, <name>.sm4.key.json and hq.sm2.pub.json")
    data_dir: str = Field("data", description="the store: <data_dir>/feedback.db")
    store_busy_timeout_s: float = Field(
        5.0,
        gt=0,
        le=600,
        description="how long a writer (the service, the ClientApp) waits for another to release the store; "
        "then the draft endpoint answers 503 + Retry-After and gRPC UNAVAILABLE",
    )

    @model_validator(mode="after")
    def _check_tenant(self) -> Self:
        """This section's own rules beyond each key's range (ConfigError names the key and what is allowed)."""
        require(is_party_name(self.name), "tenant.name", PARTY_NAME_RULE)
        return self


class IngestSection(Section):
    """The gRPC feedback service and its input limits."""

    PATH_KEYS = ("api_keys_file", "tls_certificate", "tls_key")

    address: str = Field(
        "127.0.0.1:50051", description="host:port the FeedbackService listens on (off loopback: TLS and keys required)"
    )
    api_keys_file: str = Field(
        "", description="file of accepted bearer keys, one per line (gRPC metadata `authorization: Bearer <key>`)"
    )
    tls_certificate: str = Field("", description="PEM certificate the service presents (with tls_key: TLS on)")
    tls_key: str = Field("", description="PEM private key of tls_certificate (mode 0600)")
    max_workers: int = Field(8, ge=1, description="gRPC handler threads")
    max_text_bytes: int = Field(
        65536, ge=1, le=16 * 2**20, description="longest accepted text field, in bytes (up to 16 MiB)"
    )
    max_id_chars: int = Field(128, description="longest accepted id")
    max_context_messages: int = Field(
        128, ge=0, description="most messages of conversation before a draft's prompt (system prompt, history)"
    )
    max_dwell_ms: int = Field(86_400_000, description="longest accepted dwell time")
    max_position: int = Field(1000, description="highest accepted draft position")
    max_clock_skew_ms: int = Field(86_400_000, description="how far an event's timestamp may be from now")
    max_batch_events: int = Field(
        1000, description="most events in one RecordBatch stream (enforced while the stream is read)"
    )
    max_batch_bytes: int = Field(16 * 2**20, description="most bytes of events in one RecordBatch stream")
    max_events_per_user_per_minute: int = Field(
        600, ge=0, description="a user's drafts and signals beyond this get RESOURCE_EXHAUSTED; 0 = off"
    )
    redaction_workers: int = Field(0, ge=0, le=64, description="> 0: find PII in that many worker processes (0..64)")


class ModerationSection(Section):
    """The built-in local filter and the quarantine breaker."""

    blocklist: tuple[str, ...] = Field(
        ("kill yourself", "bomb making", "炸药制作"), description="phrases that send a sample to quarantine"
    )
    patterns: tuple[str, ...] = Field((r"\b(?:buy|sell)\s+(?:drugs|weapons)\b",), description="regexes that quarantine")
    breaker_max_rate: float = Field(
        0.3, gt=0.0, le=1.0, description="quarantine rate above which the breaker holds new samples, in (0, 1]"
    )
    breaker_window: int = Field(200, description="latest samples the rate is computed over")
    breaker_min_samples: int = Field(50, description="samples needed before the breaker may trip")


ReviewRisk = Literal["low", "medium", "high", "off"]  # risk levels in order; "off": no sample waits for review
REVIEW_RISKS: tuple[str, ...] = get_args(ReviewRisk)


class CurationSection(Section):
    """How outcomes become weighted samples, and the poisoning guard."""

    min_dwell_ms: int = Field(1500, description="an accept faster than this weighs 0.6 (probably not read)")
    long_dwell_ms: int = Field(600_000, description="a dwell longer than this multiplies the weight by 0.8")
    user_reply_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="weight of the reply a user wrote after rejecting, in [0, 1]"
    )
    near_duplicate_threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="MinHash Jaccard similarity that makes two samples one cluster, in (0, 1]"
    )
    per_user_cluster_cap: float = Field(1.0, description="most weight one user's samples carry within a cluster")
    min_distinct_users: int = Field(1, ge=1, description="users a cluster needs before it trains (poisoning guard)")
    max_samples_per_user_per_hour: int = Field(60, description="further samples of a user are kept at weight 0")
    review_risk: ReviewRisk = Field(
        "high", description='samples at this risk or above wait for `fedloop samples review decide`; "off" = none'
    )


class SignalsSection(Section):
    """Derived-signal rules that flag low-quality interactions into the problem pool."""

    repeated_question_lookback: int = Field(3, description="earlier user messages a question is compared with")
    repeated_question_similarity: float = Field(0.85, description="similarity that counts as asking again")
    stuck_dialogue_turns: int = Field(3, description="turns without a new dialogue state that count as stuck")
    cta_window_ms: int = Field(300_000, description="a CTA shown and not clicked within this is flagged")
    order_window_ms: int = Field(1_800_000, description="a cart with no order within this is flagged")
    no_response_ms: int = Field(
        600_000, description="draft with no outcome, no USER_MESSAGE after it: flagged (needs USER_MESSAGEs)"
    )
    conversion_window_ms: int = Field(
        3_600_000, description="session with drafts, no conversion: flagged (needs conversion signals)"
    )


class EvaluationSection(Section):
    """Gates a received version must pass before it may serve."""

    kl_bound: float = Field(
        0.4, gt=0, description="refuse a version whose mean per-token KL to the serving version is above this"
    )
    forgetting_bound: float = Field(0.10, gt=0, description="refuse above this relative NLL rise over base")
    degenerate_bound: float = Field(
        0.05, ge=0, lt=1, description="refuse when empty/looping held-out drafts rise by more than this share"
    )
    held_out_share: float = Field(
        0.10,
        ge=0.0,
        lt=1.0,
        description="share of new near-duplicate clusters held out: their finals never train (fixed per cluster)",
    )
    held_out_after_clusters: int = Field(
        20,
        ge=0,
        description="the tenant's first this many near-duplicate clusters all train; the slice begins after them",
    )
    min_held_out: int = Field(
        30, ge=1, description='fewer held-out finals than this: the hit-rate gate says "insufficient evidence"'
    )
    max_held_out: int = Field(200, description="newest held-out finals a version is evaluated on")
    hit_similarity: float = Field(
        0.8, gt=0.0, le=1.0, description="a draft at least this similar to the user's final text counts as a hit"
    )
    max_new_tokens: int = Field(
        0,
        ge=0,
        description="tokens drafted per held-out prompt; 0 = serve.max_new_tokens, the budget users' drafts get",
    )
    confidence: float = Field(
        0.95,
        ge=0.5,
        lt=1.0,
        description="the hit-rate gate refuses a version worse than the serving one with this confidence",
    )


class PersonaliseSection(Section):
    """How this tenant adapts each global version to its own users (src/fedloop/client/train/personalise.py).

    The gates offer the personalised candidate only when it drafts better than the global version on the held-out
    finals with evaluation.confidence. The default `none` is measured: personalisation lowered the hit rate on
    both benchmark splits (docs/benchmarks.md, issue 15).
    """

    method: Literal["none", "local_steps", "local_b"] = Field(
        "none", description='"none", "local_steps" (SFT steps from the global version) or "local_b" (FedSA)'
    )
    steps: int = Field(8, ge=1, description='local SFT steps of "local_steps"')


class ReleaseSection(Section):
    """How a version that passed the gates reaches users: canary, widening, promotion, automatic rollback."""

    PATH_KEYS = ("export_dir",)

    canary_share: float = Field(
        0.05, gt=0.0, le=1.0, description="users (by hash of their pseudonym) who first see a new version"
    )
    canary_dwell_h: float = Field(
        24.0, ge=0, description="hours at canary_share before the canary widens (when no harm was found by then)"
    )
    widened_share: float = Field(
        0.30, gt=0.0, le=1.0, description="the canary's share after canary_dwell_h without harm"
    )
    promote_after_h: float = Field(72.0, ge=0, description="hours since a canary began before it may be promoted")
    promote_margin: float = Field(
        0.0, ge=0, description="a win: the canary's hit rate beats the serving one's by more than this, with confidence"
    )
    confidence: float = Field(
        0.95,
        ge=0.5,
        lt=1.0,
        description="family-wise confidence of the sequential test (always valid under repeated looks)",
    )
    mixture_scale: float = Field(
        0.05, gt=0, description="mSPRT mixing scale tau: the size of hit-rate gap the test is most sensitive to"
    )
    min_drafts_per_arm: int = Field(200, ge=1, description="decided drafts per arm before any decision")
    min_users_per_arm: int = Field(20, ge=2, description="users with a decided draft per arm before any decision")
    covariate_days: float = Field(
        28.0, ge=0, description="days before a canary whose outcomes adjust its comparison for who is in which arm"
    )
    guard_h: float = Field(
        72.0,
        ge=0,
        description="hours after a promotion during which holdback_share of users stay on the previous version and "
        "the same test watches the promoted one (worse: automatic rollback); 0 = no guard",
    )
    holdback_share: float = Field(0.05, ge=0.0, le=1.0, description="users kept on the previous version during a guard")
    decide_every_outcomes: int = Field(20, ge=1, description="the controller decides after this many new outcomes ...")
    decide_every_s: float = Field(5.0, gt=0, description="... and at least this often while outcomes arrive")
    export_dir: str = Field(
        "",
        description="set: the tenant service re-exports the release (serving, canary, rollback target, routing.json) "
        'here after every move of the pointer, for an external inference server; "" = only `fedloop release export`',
    )


class ServeSection(Section):
    """The OpenAI-compatible draft endpoint (`POST /v1/chat/completions`)."""

    PATH_KEYS = ("api_keys_file", "tls_certificate", "tls_key")

    address: str = Field("127.0.0.1:8000", description='host:port of the HTTP endpoint; "" = no endpoint')
    api_keys_file: str = Field("", description="file of accepted bearer keys, one per line; required off loopback")
    model_alias: str = Field("fedloop", description="the `model` name that routes by the release pointer")
    max_new_tokens: int = Field(
        128, ge=1, description="most tokens a draft may have (a request's max_tokens is capped to this)"
    )
    max_messages: int = Field(64, ge=1, description="most messages in one request")
    max_prompt_bytes: int = Field(
        262_144,
        ge=1,
        description="most bytes (UTF-8) of all messages of one request together, checked before tokenising",
    )
    max_prompt_tokens: int = Field(
        0,
        ge=0,
        description="most tokens of a request's conversation after the chat template; "
        "0 = the model's context length minus max_new_tokens",
    )
    truncate: Literal["none", "oldest"] = Field(
        "none",
        description='a conversation over max_prompt_bytes or max_prompt_tokens: "none" = refused (400), '
        '"oldest" = its oldest turns after the system messages are cut until it fits',
    )
    max_body_bytes: int = Field(
        1_048_576,
        description="largest HTTP request body; a larger one gets 413 before it is read (at least max_prompt_bytes)",
    )
    tls_certificate: str = Field("", description="PEM certificate the endpoint presents (with tls_key: HTTPS)")
    tls_key: str = Field("", description="PEM private key of tls_certificate (mode 0600)")
    engine: Literal["transformers"] = Field(
        "transformers", description="what generates: transformers on this process's CPU or GPU (the only engine yet)"
    )
    max_batch_size: int = Field(
        8, ge=1, le=256, description="most drafts decoded together (requests join the running batch between steps)"
    )
    max_queue: int = Field(
        256, ge=1, description="most drafts waiting for the generation worker; beyond it requests get 503 + Retry-After"
    )
    threads: int = Field(
        0, ge=0, description="torch threads of the generation worker; 0 = the cores this process may use"
    )
    stall_after_s: float = Field(
        120.0, gt=0, description="a batch running longer than this makes /ready fail (the worker is stuck)"
    )
    retry_after_s: int = Field(1, ge=1, description="the Retry-After (s) of a 503 for a full queue or a busy store")

    @model_validator(mode="after")
    def _check_serve(self) -> Self:
        """This section's own rules beyond each key's range (ConfigError names the key and what is allowed)."""
        require(
            self.address == "" or is_host_port(self.address),
            "serve.address",
            'host:port (e.g. 127.0.0.1:8000), or "" for no endpoint',
        )
        require(bool(self.model_alias.strip()), "serve.model_alias", 'a non-empty name, e.g. "fedloop"')
        return self


class MetricsSection(Section):
    """Where the tenant service serves its Prometheus metrics."""

    address: str = Field("127.0.0.1:9464", description='host:port of /metrics; "" = no endpoint')

    @model_validator(mode="after")
    def _check_metrics(self) -> Self:
        """This section's own rules beyond each key's range (ConfigError names the key and what is allowed)."""
        require(
            self.address == "" or is_host_port(self.address),
            "metrics.address",
            'host:port (e.g. 127.0.0.1:9464), or "" for no endpoint',
        )
        return self


class TenantSettings(Section):
    """Everything `fedloop tenant serve` and the tenant tools need."""

    tenant: TenantSection = Field(default_factory=TenantSection, description=TenantSection.__doc__)
    ingest: IngestSection = Field(default_factory=IngestSection, description=IngestSection.__doc__)
    moderation: ModerationSection = Field(default_factory=ModerationSection, description=ModerationSection.__doc__)
    curation: CurationSection = Field(default_factory=CurationSection, description=CurationSection.__doc__)
    signals: SignalsSection = Field(default_factory=SignalsSection, description=SignalsSection.__doc__)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection, description=EvaluationSection.__doc__)
    personalise: PersonaliseSection = Field(default_factory=PersonaliseSection, description=PersonaliseSection.__doc__)
    release: ReleaseSection = Field(default_factory=ReleaseSection, description=ReleaseSection.__doc__)
    serve: ServeSection = Field(default_factory=ServeSection, description=ServeSection.__doc__)
    metrics: MetricsSection = Field(default_factory=MetricsSection, description=MetricsSection.__doc__)

    @model_validator(mode="after")
    def _check(self) -> Self:
        """The rules between keys (each key's range is on its field); ConfigError names the keys and the rule."""
        require(
            bool(self.ingest.tls_certificate) == bool(self.ingest.tls_key),
            "ingest.tls_certificate / tls_key",
            "both set (TLS on) or both empty",
        )
        require(
            is_loopback(self.ingest.address) or bool(self.ingest.api_keys_file and self.ingest.tls_certificate),
            "ingest.api_keys_file / tls_certificate / tls_key",
            "set when ingest.address is not on loopback "
            "(127.0.0.1): the FeedbackService takes training data, so off loopback it needs TLS and bearer keys",
        )
        require(
            self.ingest.max_batch_bytes >= 4 * self.ingest.max_text_bytes,
            "ingest.max_batch_bytes",
            "at least 4 x ingest.max_text_bytes (one event's texts)",
        )
        evaluation = self.evaluation
        require(
            1 <= evaluation.min_held_out <= evaluation.max_held_out,
            "evaluation.min_held_out / max_held_out",
            "integers with 1 <= min_held_out <= max_held_out",
        )
        release = self.release
        require(
            0.0 < release.canary_share <= release.widened_share <= 1.0,
            "release.canary_share / widened_share",
            "0 < canary_share <= widened_share <= 1",
        )
        require(
            0.0 <= release.holdback_share <= 1.0 - release.widened_share,
            "release.holdback_share",
            "a share in [0, 1 - widened_share] (the holdback and the canary's users must not overlap)",
        )
        serve = self.serve
        require(
            bool(serve.tls_certificate) == bool(serve.tls_key),
            "serve.tls_certificate / tls_key",
            "both set (HTTPS) or both empty",
        )
        require(
            serve.address == "" or is_loopback(serve.address) or bool(serve.api_keys_file and serve.tls_certificate),
            "serve.api_keys_file / tls_certificate / tls_key",
            "set when serve.address is not on loopback (127.0.0.1): off loopback the draft endpoint needs "
            "bearer keys and TLS (keys and prompts would travel in clear)",
        )
        require(
            serve.max_body_bytes >= serve.max_prompt_bytes,
            "serve.max_body_bytes",
            "at least serve.max_prompt_bytes (a body must be able to carry the largest prompt)",
        )
        return self

    @property
    def held_out_tokens(self) -> int:
        """Tokens drafted per held-out prompt: evaluation.max_new_tokens, or serve.max_new_tokens when it is 0."""
        return self.evaluation.max_new_tokens or self.serve.max_new_tokens

    @property
    def store_path(self) -> Path:
        """The tenant's SQLite store."""
        return Path(self.tenant.data_dir) / "feedback.db"


def load_tenant_settings(path: Path) -> TenantSettings:
    """Read and validate a tenant TOML file."""
    return load_sections(TenantSettings, path)
