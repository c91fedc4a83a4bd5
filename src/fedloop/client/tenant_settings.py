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
        description="how long a writer (the service, the ClientApp) waits for another to release the store; "
        "then the draft endpoint answers 503 + Retry-After and gRPC UNAVAILABLE",
    )


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
    max_workers: int = Field(8, description="gRPC handler threads")
    max_text_bytes: int = Field(65536, description="longest accepted text field, in bytes (up to 16 MiB)")
    max_id_chars: int = Field(128, description="longest accepted id")
    max_context_messages: int = Field(
        128, description="most messages of conversation before a draft's prompt (system prompt, history)"
    )
    max_dwell_ms: int = Field(86_400_000, description="longest accepted dwell time")
    max_position: int = Field(1000, description="highest accepted draft position")
    max_clock_skew_ms: int = Field(86_400_000, description="how far an event's timestamp may be from now")
    max_batch_events: int = Field(
        1000, description="most events in one RecordBatch stream (enforced while the stream is read)"
    )
    max_batch_bytes: int = Field(16 * 2**20, description="most bytes of events in one RecordBatch stream")
    max_events_per_user_per_minute: int = Field(
        600, description="a user's drafts and signals beyond this get RESOURCE_EXHAUSTED; 0 = off"
    )
    redaction_workers: int = Field(0, description="> 0: find PII in that many worker processes (0..64)")


class ModerationSection(Section):
    """The built-in local filter and the quarantine breaker."""

    blocklist: tuple[str, ...] = Field(
        ("kill yourself", "bomb making", "炸药制作"), description="phrases that send a sample to quarantine"
    )
    patterns: tuple[str, ...] = Field((r"\b(?:buy|sell)\s+(?:drugs|weapons)\b",), description="regexes that quarantine")
    breaker_max_rate: float = Field(
        0.3, description="quarantine rate above which the breaker holds new samples, in (0, 1]"
    )
    breaker_window: int = Field(200, description="latest samples the rate is computed over")
    breaker_min_samples: int = Field(50, description="samples needed before the breaker may trip")


ReviewRisk = Literal["low", "medium", "high", "off"]  # risk levels in order; "off": no sample waits for review
REVIEW_RISKS: tuple[str, ...] = get_args(ReviewRisk)


class CurationSection(Section):
    """How outcomes become weighted samples, and the poisoning guard."""

    min_dwell_ms: int = Field(1500, description="an accept faster than this weighs 0.6 (probably not read)")
    long_dwell_ms: int = Field(600_000, description="a dwell longer than this multiplies the weight by 0.8")
    user_reply_weight: float = Field(0.5, description="weight of the reply a user wrote after rejecting, in [0, 1]")
    near_duplicate_threshold: float = Field(
        0.8, description="MinHash Jaccard similarity that makes two samples one cluster, in (0, 1]"
    )
    per_user_cluster_cap: float = Field(1.0, description="most weight one user's samples carry within a cluster")
    min_distinct_users: int = Field(1, description="users a cluster needs before it trains (poisoning guard)")
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
        0.4, description="refuse a version whose mean per-token KL to the serving version is above this"
    )
    forgetting_bound: float = Field(0.10, description="refuse above this relative NLL rise over base")
    degenerate_bound: float = Field(
        0.05, description="refuse when empty/looping held-out drafts rise by more than this share"
    )
    held_out_share: float = Field(
        0.10,
        description="share of new near-duplicate clusters held out: their finals never train (fixed per cluster)",
    )
    held_out_after_clusters: int = Field(
        20, description="the tenant's first this many near-duplicate clusters all train; the slice begins after them"
    )
    min_held_out: int = Field(
        30, description='fewer held-out finals than this: the hit-rate gate says "insufficient evidence"'
    )
    max_held_out: int = Field(200, description="newest held-out finals a version is evaluated on")
    hit_similarity: float = Field(
        0.8, description="a draft at least this similar to the user's final text counts as a hit"
    )
    max_new_tokens: int = Field(
        0, description="tokens drafted per held-out prompt; 0 = serve.max_new_tokens, the budget users' drafts get"
    )
    confidence: float = Field(
        0.95, description="the hit-rate gate refuses a version worse than the serving one with this confidence"
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
    steps: int = Field(8, description='local SFT steps of "local_steps"')


class ReleaseSection(Section):
    """How a version that passed the gates reaches users: canary, widening, promotion, automatic rollback."""

    PATH_KEYS = ("export_dir",)

    canary_share: float = Field(0.05, description="users (by hash of their pseudonym) who first see a new version")
    canary_dwell_h: float = Field(
        24.0, description="hours at canary_share before the canary widens (when no harm was found by then)"
    )
    widened_share: float = Field(0.30, description="the canary's share after canary_dwell_h without harm")
    promote_after_h: float = Field(72.0, description="hours since a canary began before it may be promoted")
    promote_margin: float = Field(
        0.0, description="a win: the canary's hit rate beats the serving one's by more than this, with confidence"
    )
    confidence: float = Field(
        0.95, description="family-wise confidence of the sequential test (always valid under repeated looks)"
    )
    mixture_scale: float = Field(
        0.05, description="mSPRT mixing scale tau: the size of hit-rate gap the test is most sensitive to"
    )
    min_drafts_per_arm: int = Field(200, description="decided drafts per arm before any decision")
    min_users_per_arm: int = Field(20, description="users with a decided draft per arm before any decision")
    covariate_days: float = Field(
        28.0, description="days before a canary whose outcomes adjust its comparison for who is in which arm"
    )
    guard_h: float = Field(
        72.0,
        description="hours after a promotion during which holdback_share of users stay on the previous version and "
        "the same test watches the promoted one (worse: automatic rollback); 0 = no guard",
    )
    holdback_share: float = Field(0.05, description="users kept on the previous version during a guard")
    decide_every_outcomes: int = Field(20, description="the controller decides after this many new outcomes ...")
    decide_every_s: float = Field(5.0, description="... and at least this often while outcomes arrive")
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
        128, description="most tokens a draft may have (a request's max_tokens is capped to this)"
    )
    max_messages: int = Field(64, description="most messages in one request")
    max_prompt_bytes: int = Field(
        262_144, description="most bytes (UTF-8) of all messages of one request together, checked before tokenising"
    )
    max_prompt_tokens: int = Field(
        0,
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
        8, description="most drafts decoded together (requests join the running batch between steps)"
    )
    max_queue: int = Field(
        256, description="most drafts waiting for the generation worker; beyond it requests get 503 + Retry-After"
    )
    threads: int = Field(0, description="torch threads of the generation worker; 0 = the cores this process may use")
    stall_after_s: float = Field(
        120.0, description="a batch running longer than this makes /ready fail (the worker is stuck)"
    )
    retry_after_s: int = Field(1, description="the Retry-After (s) of a 503 for a full queue or a busy store")


class MetricsSection(Section):
    """Where the tenant service serves its Prometheus metrics."""

    address: str = Field("127.0.0.1:9464", description='host:port of /metrics; "" = no endpoint')


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
        """The cross-field and range rules; ConfigError names the key and what is allowed."""
        require(is_party_name(self.tenant.name), "tenant.name", PARTY_NAME_RULE)
        require(self.ingest.max_workers >= 1, "ingest.max_workers", "an integer >= 1")
        require(
            0 <= self.ingest.redaction_workers <= 64,
            "ingest.redaction_workers",
            "an integer in [0, 64] (0 = find PII in the service process)",
        )
        require(0 < self.tenant.store_busy_timeout_s <= 600, "tenant.store_busy_timeout_s", "in (0, 600] seconds")
        require(self.ingest.max_context_messages >= 0, "ingest.max_context_messages", "an integer >= 0")
        require(1 <= self.ingest.max_text_bytes <= 16 * 2**20, "ingest.max_text_bytes", "in [1, 16 MiB]")
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
            self.ingest.max_events_per_user_per_minute >= 0,
            "ingest.max_events_per_user_per_minute",
            "an integer >= 0 (0 = no limit)",
        )
        require(
            self.ingest.max_batch_bytes >= 4 * self.ingest.max_text_bytes,
            "ingest.max_batch_bytes",
            "at least 4 x ingest.max_text_bytes (one event's texts)",
        )
        require(0.0 < self.moderation.breaker_max_rate <= 1.0, "moderation.breaker_max_rate", "in (0, 1]")
        require(0.0 < self.curation.near_duplicate_threshold <= 1.0, "curation.near_duplicate_threshold", "in (0, 1]")
        require(self.curation.min_distinct_users >= 1, "curation.min_distinct_users", "an integer >= 1")
        require(0.0 <= self.curation.user_reply_weight <= 1.0, "curation.user_reply_weight", "in [0, 1]")
        require(
            self.evaluation.kl_bound > 0 and self.evaluation.forgetting_bound > 0,
            "evaluation.kl_bound / forgetting_bound",
            "numbers > 0",
        )
        require(0 <= self.evaluation.degenerate_bound < 1, "evaluation.degenerate_bound", "a share in [0, 1)")
        evaluation = self.evaluation
        require(0.0 <= evaluation.held_out_share < 1.0, "evaluation.held_out_share", "a number in [0, 1)")
        require(evaluation.held_out_after_clusters >= 0, "evaluation.held_out_after_clusters", "an integer >= 0")
        require(
            1 <= evaluation.min_held_out <= evaluation.max_held_out,
            "evaluation.min_held_out / max_held_out",
            "integers with 1 <= min_held_out <= max_held_out",
        )
        require(0.0 < evaluation.hit_similarity <= 1.0, "evaluation.hit_similarity", "a number in (0, 1]")
        require(
            evaluation.max_new_tokens >= 0, "evaluation.max_new_tokens", "an integer >= 0 (0 = serve.max_new_tokens)"
        )
        require(0.5 <= evaluation.confidence < 1.0, "evaluation.confidence", "a number in [0.5, 1), e.g. 0.95")
        require(self.personalise.steps >= 1, "personalise.steps", "an integer >= 1")
        release = self.release
        require(
            0.0 < release.canary_share <= release.widened_share <= 1.0,
            "release.canary_share / widened_share",
            "0 < canary_share <= widened_share <= 1",
        )
        require(
            release.promote_margin >= 0, "release.promote_margin", "a number >= 0 (a share of drafts, 0.02 = 2 points)"
        )
        require(0.5 <= release.confidence < 1.0, "release.confidence", "a number in [0.5, 1), e.g. 0.95")
        require(release.mixture_scale > 0, "release.mixture_scale", "a number > 0 (e.g. 0.05 = 5 points)")
        require(release.min_drafts_per_arm >= 1, "release.min_drafts_per_arm", "an integer >= 1")
        require(
            release.min_users_per_arm >= 2,
            "release.min_users_per_arm",
            "an integer >= 2 (a variance over users needs two of them)",
        )
        require(
            min(release.canary_dwell_h, release.promote_after_h, release.covariate_days, release.guard_h) >= 0,
            "release.canary_dwell_h / promote_after_h / covariate_days / guard_h",
            "numbers >= 0 (hours, hours, days, hours)",
        )
        require(
            0.0 <= release.holdback_share <= 1.0 - release.widened_share,
            "release.holdback_share",
            "a share in [0, 1 - widened_share] (the holdback and the canary's users must not overlap)",
        )
        require(
            release.decide_every_outcomes >= 1 and release.decide_every_s > 0,
            "release.decide_every_outcomes / decide_every_s",
            "an integer >= 1 and a number of seconds > 0",
        )
        serve = self.serve
        require(
            serve.address == "" or is_host_port(serve.address),
            "serve.address",
            'host:port (e.g. 127.0.0.1:8000), or "" for no endpoint',
        )
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
        require(bool(serve.model_alias.strip()), "serve.model_alias", 'a non-empty name, e.g. "fedloop"')
        require(
            serve.max_new_tokens >= 1 and serve.max_messages >= 1,
            "serve.max_new_tokens / max_messages",
            "integers >= 1",
        )
        require(serve.max_prompt_bytes >= 1, "serve.max_prompt_bytes", "an integer >= 1")
        require(serve.max_prompt_tokens >= 0, "serve.max_prompt_tokens", "an integer >= 0 (0 = from the model)")
        require(
            serve.max_body_bytes >= serve.max_prompt_bytes,
            "serve.max_body_bytes",
            "at least serve.max_prompt_bytes (a body must be able to carry the largest prompt)",
        )
        require(1 <= serve.max_batch_size <= 256, "serve.max_batch_size", "an integer in [1, 256]")
        require(serve.max_queue >= 1, "serve.max_queue", "an integer >= 1")
        require(serve.threads >= 0, "serve.threads", "an integer >= 0 (0 = the cores this process may use)")
        require(serve.stall_after_s > 0, "serve.stall_after_s", "a number of seconds > 0")
        require(serve.retry_after_s >= 1, "serve.retry_after_s", "an integer >= 1")
        require(
            self.metrics.address == "" or is_host_port(self.metrics.address),
            "metrics.address",
            'host:port (e.g. 127.0.0.1:9464), or "" for no endpoint',
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
