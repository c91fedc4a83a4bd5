"""Federation settings, read from a TOML file and validated before anything starts.

The settings are pydantic models: every key has a type, a default and a
description (docs/configuration.md is generated from their JSON schema), an
unknown section or key is refused (`extra="forbid"`), and values are taken as
TOML typed them (`strict`: no "9300" for a port). An error names the file, the
key and what is allowed; nothing runs with a half-understood config.
"""

from __future__ import annotations

import ipaddress
import socket
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TypeVar, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from fedloop.shared.names import PARTY_NAME_RULE, is_party_name
from fedloop.shared.run_layout import HQ_NAME

T = TypeVar("T", bound="Section")


class ConfigError(Exception):
    """A config file is invalid; the message names the file and the key.

    Not a ValueError: pydantic passes it through its validators unchanged, so the rule's own message reaches
    the operator.
    """


def require(ok: bool, key: str, allowed: str) -> None:
    """Raise ConfigError naming `key` and what is `allowed` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: must be {allowed}")


def is_host_port(address: str) -> bool:
    """Whether `address` looks like host:port with a port in 1..65535."""
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def is_loopback(address: str) -> bool:
    """Whether host:port names only loopback addresses: an IP in 127.0.0.0/8 or ::1, or a name every one of whose
    addresses is (a name that does not resolve is not; `127.attacker.example` is a name like any other)."""
    host = address.rpartition(":")[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return False
    return bool(resolved) and all(ipaddress.ip_address(str(ip).partition("%")[0]).is_loopback for ip in resolved)


class Pool(StrEnum):
    """The pools a tenant's samples move through, in lifecycle order (the training recipe weighs each)."""

    PROBLEM = "problem"
    CANDIDATE = "candidate"
    SECONDARY_BASELINE = "secondary_baseline"
    CORE_BASELINE = "core_baseline"


class Section(BaseModel):
    """A table of a settings file: known keys only, values of their declared type, immutable once loaded.

    Lists in the file become tuples (a settings object is hashable and never changes under a running service).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    # The keys of this table that hold a file or directory: a relative one in a file resolves against the file's
    # own directory (`load_sections`), so a config means the same from wherever a command runs.
    PATH_KEYS: ClassVar[tuple[str, ...]] = ()

    def with_paths_from(self, base: Path) -> Self:
        """This table (and its sub-tables) with every relative, non-empty path key made absolute under `base`."""
        changes: dict[str, Any] = {}
        for name in self.PATH_KEYS:
            value = getattr(self, name)
            if value and not Path(value).expanduser().is_absolute():
                changes[name] = str((base / value).resolve())
            elif value:
                changes[name] = str(Path(value).expanduser())
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Section):
                changes[name] = value.with_paths_from(base)
        return self.model_copy(update=changes)

    @model_validator(mode="before")
    @classmethod
    def _lists_as_tuples(cls, table: Any) -> Any:
        if not isinstance(table, dict):
            return table
        tuples = {name for name, info in cls.model_fields.items() if get_origin(info.annotation) is tuple}
        return {
            key: tuple(value) if key in tuples and isinstance(value, list) else value for key, value in table.items()
        }


class LoraSettings(Section):
    """The LoRA shape every party of a federation must agree on."""

    rank: int = Field(8, description="LoRA rank r (>= 1)")
    alpha: int = Field(16, description="LoRA alpha; the update is scaled by alpha / rank")
    dropout: float = Field(0.0, description="LoRA dropout, in [0, 1)")
    target_modules: tuple[str, ...] = Field(("q_proj", "v_proj"), description="module names that get a LoRA adapter")


class FederationSection(Section):
    """Who takes part and for how long."""

    run_name: str = Field("demo", description="names the run in the registry and binds every sealed message to it")
    tenants: tuple[str, ...] = Field(
        ("acme", "bolt", "cobalt"), description="the tenants taking part (simulation: one SuperNode each)"
    )
    rounds: int = Field(3, description="federated rounds per run (>= 1)")
    seed: int = Field(7, description="seeds LoRA initialisation, data order and simulated users")
    round_timeout_s: float = Field(
        3600.0, description="HQ stops waiting for a tenant's reply after this; the round goes on"
    )
    enrol_timeout_s: float = Field(120.0, description="HQ waits this long for every tenant's SuperNode before starting")


class PathsSection(Section):
    """Where the base model is (a local HF directory or a .gguf file) and where run outputs go."""

    PATH_KEYS = ("model", "runs_dir")

    model: str = Field("models/smollm2-135m-instruct", description="a local Hugging Face directory or .gguf file")
    runs_dir: str = Field("runs", description="where `fedloop demo` creates its run directories")


class TrainSection(Section):
    """The local training recipe (src/fedloop/client/train/recipe.py): every knob it has."""

    method: Literal["sft", "dpo", "kto", "sft_then_dpo", "sft_then_kto"] = Field(
        "sft", description="what the tenant trains: SFT, DPO, KTO, or SFT then a preference phase"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description='where the model trains, evaluates and drafts: "auto" = a CUDA GPU if there is one, else the CPU',
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description='the base model\'s precision: "auto" = bfloat16 on CUDA, float32 on the CPU (adapters: float32)',
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory per step, about a third slower"
    )
    epochs: int = Field(1, description="passes over the training mix (max_steps caps them)")
    max_steps: int = Field(8, description="optimiser steps per round and phase; 0 = as many as epochs give")
    batch_size: int = Field(8, description="examples per step (before gradient accumulation)")
    grad_accum: int = Field(1, description="batches accumulated into one optimiser step")
    learning_rate: float = Field(2e-3, description="AdamW learning rate, in (0, 1]")
    warmup_steps: int = Field(0, description="linear warmup steps; 0 = none")
    max_seq_len: int = Field(160, description="tokens of prompt + reply kept (left-truncated)")
    dpo_beta: float = Field(0.1, description="DPO temperature beta, > 0")
    dpo_learning_rate: float = Field(
        2e-4, description="AdamW learning rate of the DPO phase, in [0, 1]; 0 = learning_rate"
    )
    kto_beta: float = Field(0.1, description="KTO temperature beta, > 0")
    kto_learning_rate: float = Field(
        2e-4, description="AdamW learning rate of the KTO phase, in [0, 1]; 0 = learning_rate"
    )
    kto_desirable_weight: float = Field(1.0, description="KTO's lambda_D: weight of desirable replies, > 0")
    kto_undesirable_weight: float = Field(
        1.0, description="KTO's lambda_U: weight of undesirable (rejected) drafts, > 0"
    )
    proximal_mu: float = Field(0.0, description="FedProx: weight of (mu/2)·‖w − w_global‖²; 0 = plain local training")
    weight_core_baseline: float = Field(1.0, description="pool weight, multiplied by each sample's curated weight")
    weight_secondary_baseline: float = Field(0.8, description="pool weight of secondary_baseline samples")
    weight_candidate: float = Field(0.6, description="pool weight of candidate samples")
    weight_problem: float = Field(0.4, description="pool weight of current problem samples")
    curriculum: tuple[float, ...] = Field((0.8, 0.5, 0.0), description="stage thresholds, highest first, in [0, 1]")

    def pool_weight(self, pool: Pool) -> float:
        """The configured weight of a sample pool."""
        return float(getattr(self, f"weight_{pool}"))


class AggregationSection(Section):
    """How HQ merges a round's adapters (see src/fedloop/server/aggregation.py)."""

    method: Literal["exact", "fedavg"] = Field(
        "exact", description='"exact": SVD of the summed updates B·A (default), or "fedavg" of A and B'
    )
    robust: Literal["none", "trimmed_mean", "krum"] = Field(
        "none", description='"trimmed_mean" or "krum" (Flower\'s) on top of the norm bound'
    )
    norm_bound: float = Field(
        3.0, description="an update's distance to the current version is cut to this × the median; 0 = off"
    )
    trim_fraction: float = Field(
        0.34, description="share cut from each end by the trimmed mean (0.34 of 3 tenants = 1)"
    )
    krum_malicious: int = Field(1, description="tenants Krum assumes may be malicious")
    min_tenants: int = Field(1, description="fewest accepted updates for a round to produce a version")
    max_share: float = Field(
        0.5, description="most of a merge's sample weight one tenant may hold, in (0, 1]; 1 = uncapped"
    )
    outlier_factor: float = Field(10.0, description="a count above this x the round's median is flagged as an outlier")
    dp_clipping_norm: float = Field(0.0, description="central DP: clip each tenant's update to this L2 norm; 0 = off")
    dp_noise_multiplier: float = Field(
        0.0, description="central DP: Gaussian noise std = this × clipping norm / tenants"
    )


class SimulationSection(Section):
    """The simulated product of each tenant (demo, benchmarks, tests): traffic per round, how its users judge drafts."""

    PATH_KEYS = ("tenant_config",)

    conversations_per_round: int = Field(24, description="simulated users per tenant per round; 0 = none")
    max_new_tokens: int = Field(40, description="max_tokens the simulated product asks each draft for")
    accept_threshold: float = Field(0.8, description="similarity at or above which a simulated user accepts the draft")
    edit_threshold: float = Field(
        0.45, description="similarity at or above which a simulated user edits instead of rejecting"
    )
    styles: tuple[str, ...] = Field(
        ("formal", "friendly", "brief"), description="hidden preferred styles, tenant i gets i mod n"
    )
    prompt_version: str = Field("default", description="recorded with every simulated draft, beside the model version")
    tenant_config: str = Field(
        "", description='a tenant TOML (gates, release, curation...) for every simulated tenant; "" = defaults'
    )


class TrackingSection(Section):
    """Optional MLflow tracking of HQ's rounds (install the `mlflow` extra)."""

    mlflow_uri: str = Field("", description='e.g. "sqlite:///mlflow.db" or "http://mlflow.internal:5000"; "" = off')
    experiment: str = Field("fedloop", description="MLflow experiment the runs go to")
    artifacts: str = Field(
        "", description='where a new experiment keeps artifacts (e.g. a directory); "" = MLflow\'s default'
    )


class ScheduleSection(Section):
    """When rounds start in a continuous run (`fedloop run --continuous`): from the tenants' feedback counts."""

    continuous: bool = Field(
        False, description="keep one run alive and start rounds from feedback counts (else: federation.rounds, now)"
    )
    min_new_samples: int = Field(
        3000, description="a tenant is ready with this many new training samples since the version it holds"
    )
    min_tenants: int = Field(0, description="ready tenants a round needs; 0 = aggregation.min_tenants")
    max_interval_s: float = Field(
        86400.0, description="a round starts this long after the previous one even without enough samples; 0 = never"
    )
    poll_s: float = Field(60.0, description="how often HQ asks the tenants for their counts (a cheap message)")
    query_timeout_s: float = Field(
        60.0, description="how long HQ waits for a tenant's count (its ClientApp may be starting); no answer counts 0"
    )
    max_rounds: int = Field(0, description="the continuous run ends after this many rounds; 0 = when stopped")


class Settings(Section):
    """Everything a federated run needs."""

    federation: FederationSection = Field(default_factory=FederationSection, description=FederationSection.__doc__)
    paths: PathsSection = Field(default_factory=PathsSection, description=PathsSection.__doc__)
    lora: LoraSettings = Field(default_factory=LoraSettings, description=LoraSettings.__doc__)
    train: TrainSection = Field(default_factory=TrainSection, description=TrainSection.__doc__)
    simulation: SimulationSection = Field(default_factory=SimulationSection, description=SimulationSection.__doc__)
    aggregation: AggregationSection = Field(default_factory=AggregationSection, description=AggregationSection.__doc__)
    tracking: TrackingSection = Field(default_factory=TrackingSection, description=TrackingSection.__doc__)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection, description=ScheduleSection.__doc__)

    @model_validator(mode="after")
    def _check(self) -> Self:
        """The cross-field and range rules; ConfigError names the key and what is allowed."""
        require(self.federation.rounds >= 1, "federation.rounds", "an integer >= 1")
        require(
            self.federation.round_timeout_s > 0 and self.federation.enrol_timeout_s > 0,
            "federation.round_timeout_s / enrol_timeout_s",
            "numbers of seconds > 0",
        )
        require(len(self.federation.tenants) >= 1, "federation.tenants", "a non-empty list of names")
        schedule = self.schedule
        require(
            schedule.min_new_samples >= 1 and schedule.min_tenants >= 0 and schedule.max_rounds >= 0,
            "schedule.min_new_samples / min_tenants / max_rounds",
            "integers: min_new_samples >= 1, the others >= 0",
        )
        require(
            schedule.max_interval_s >= 0 and schedule.poll_s > 0 and schedule.query_timeout_s > 0,
            "schedule.max_interval_s / poll_s / query_timeout_s",
            "seconds: max_interval_s >= 0 (0 = never), poll_s > 0, query_timeout_s > 0",
        )
        require(
            len(set(self.federation.tenants)) == len(self.federation.tenants), "federation.tenants", "distinct names"
        )
        require(
            all(is_party_name(name) and name != HQ_NAME for name in self.federation.tenants),
            "federation.tenants",
            f"names of {PARTY_NAME_RULE}, none of them {HQ_NAME!r}",
        )
        require(self.lora.rank >= 1, "lora.rank", "an integer >= 1")
        require(0.0 <= self.lora.dropout < 1.0, "lora.dropout", "a number in [0, 1)")
        train = self.train
        require(
            train.epochs >= 1 and train.batch_size >= 1 and train.grad_accum >= 1,
            "train.epochs / batch_size / grad_accum",
            "integers >= 1",
        )
        require(
            train.max_steps >= 0 and train.warmup_steps >= 0,
            "train.max_steps / warmup_steps",
            "integers >= 0 (max_steps 0 = no cap)",
        )
        require(train.dpo_beta > 0 and train.kto_beta > 0, "train.dpo_beta / kto_beta", "numbers > 0")
        require(
            train.kto_desirable_weight > 0 and train.kto_undesirable_weight > 0,
            "train.kto_desirable_weight / kto_undesirable_weight",
            "numbers > 0",
        )
        require(train.proximal_mu >= 0, "train.proximal_mu", "a number >= 0 (0 = off; FedProx typically 0.001-1)")
        require(all(0.0 <= train.pool_weight(p) for p in Pool), "train.weight_*", "numbers >= 0")
        require(
            len(train.curriculum) >= 1
            and list(train.curriculum) == sorted(train.curriculum, reverse=True)
            and all(0.0 <= c <= 1.0 for c in train.curriculum),
            "train.curriculum",
            "confidence thresholds in [0, 1], highest first, e.g. [0.8, 0.5, 0.0]",
        )
        require(0.0 < self.train.learning_rate <= 1.0, "train.learning_rate", "a number in (0, 1]")
        require(
            0.0 <= train.dpo_learning_rate <= 1.0 and 0.0 <= train.kto_learning_rate <= 1.0,
            "train.dpo_learning_rate / kto_learning_rate",
            "numbers in [0, 1] (0 = the SFT learning_rate)",
        )
        require(
            0.0 <= self.simulation.edit_threshold <= self.simulation.accept_threshold <= 1.0,
            "simulation.edit_threshold / accept_threshold",
            "0 <= edit_threshold <= accept_threshold <= 1",
        )
        merging = self.aggregation
        require(merging.norm_bound >= 0, "aggregation.norm_bound", "a number >= 0 (0 = off)")
        require(0 < merging.max_share <= 1, "aggregation.max_share", "a share in (0, 1], e.g. 0.5 (1 = uncapped)")
        require(merging.outlier_factor > 1, "aggregation.outlier_factor", "a number > 1, e.g. 10")
        require(0.0 <= merging.trim_fraction < 0.5, "aggregation.trim_fraction", "a number in [0, 0.5)")
        require(merging.krum_malicious >= 0, "aggregation.krum_malicious", "an integer >= 0")
        require(
            1 <= merging.min_tenants <= len(self.federation.tenants),
            "aggregation.min_tenants",
            "an integer between 1 and the number of tenants",
        )
        require(
            merging.dp_clipping_norm >= 0 and merging.dp_noise_multiplier >= 0,
            "aggregation.dp_clipping_norm / dp_noise_multiplier",
            "numbers >= 0 (clipping norm 0 = DP off)",
        )
        require(
            merging.dp_clipping_norm == 0 or (merging.method == "fedavg" and merging.robust == "none"),
            "aggregation.method / robust",
            '"fedavg" and "none" when dp_clipping_norm > 0 (the DP '
            "guarantee holds for the clipped parameter average only)",
        )
        require(
            self.simulation.conversations_per_round >= 0,
            "simulation.conversations_per_round",
            "an integer >= 0 (0 = no simulated traffic: train on what the tenant's service collected)",
        )
        return self


def _describe(error: ErrorDetails) -> str:
    """One pydantic error (other than an unknown key) as fedloop says it: the key, what is wrong, what is allowed."""
    location = [str(part) for part in error["loc"]]
    key, given = ".".join(location), error.get("input")
    kind = error["type"]
    if kind in ("model_type", "dict_type") and len(location) == 1:
        return f"[{location[0]}] must be a table"
    if kind == "literal_error":
        return f"{key}: must be one of {error.get('ctx', {}).get('expected')}, got {given!r}"
    if kind.endswith("_type"):
        wanted = kind.removesuffix("_type").replace("_parsing", "")
        return f"{key}: must be of type {wanted}, got {type(given).__name__} {given!r}"
    return f"{key}: {error['msg']}, got {given!r}"


def _unknown_keys(root: type[Section], unknown: list[ErrorDetails]) -> str:
    """All unknown keys of the first table that has any, in one message with what that table allows."""
    table = unknown[0]["loc"][:-1]
    names = sorted(str(e["loc"][-1]) for e in unknown if e["loc"][:-1] == table)
    if not table:
        return f"unknown section(s) {names}; allowed: {sorted(root.model_fields)}"
    section = root.model_fields[str(table[0])].annotation
    allowed = sorted(section.model_fields) if isinstance(section, type) and issubclass(section, Section) else []
    return f"[{table[0]}] has unknown key(s) {names}; allowed: {allowed}"


def sections_from_mapping(root: type[T], document: dict[str, Any]) -> T:
    """Validate a parsed TOML document into the settings model `root` (missing keys take their defaults)."""
    try:
        return root.model_validate(document)
    except ValidationError as err:
        errors = err.errors()
        unknown = [e for e in errors if e["type"] == "extra_forbidden"]
        message = _unknown_keys(root, unknown) if unknown else "; ".join(_describe(e) for e in errors)
        raise ConfigError(message) from None


def load_sections(root: type[T], path: Path) -> T:
    """Read and validate a TOML file into `root`; errors name the file. Relative paths in it resolve against the
    file's own directory."""
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        where = "" if path.is_absolute() else f" (looked in {Path.cwd()})"
        raise ConfigError(
            f"config file {path} not found{where}: run the command in the directory that holds it, pass its path, "
            f"or copy the template {path.name} from the repository's configs/"
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    try:
        return sections_from_mapping(root, document).with_paths_from(path.resolve().parent)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def load_settings(path: Path) -> Settings:
    """Read and validate a federation settings file."""
    return load_sections(Settings, path)
