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
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from fedloop.shared.names import PARTY_NAME_RULE, is_party_name
from fedloop.shared.overrides import overrides_for, with_overrides
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

    rank: int = Field(8, ge=1, description="LoRA rank r (>= 1)")
    alpha: int = Field(16, description="LoRA alpha; the update is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout, in [0, 1)")
    target_modules: tuple[str, ...] = Field(("q_proj", "v_proj"), description="module names that get a LoRA adapter")


class FederationSection(Section):
    """Who takes part and for how long."""

    run_name: str = Field("demo", description="names the run in the registry and binds every sealed message to it")
    tenants: tuple[str, ...] = Field(
        ("acme", "bolt", "cobalt"), min_length=1, description="the tenants taking part (simulation: one SuperNode each)"
    )
    rounds: int = Field(3, ge=1, description="federated rounds per run (>= 1)")
    seed: int = Field(7, description="seeds LoRA initialisation, data order and simulated users")
    round_timeout_s: float = Field(
        3600.0, gt=0, description="HQ stops waiting for a tenant's reply after this; the round goes on"
    )
    enrol_timeout_s: float = Field(
        120.0, gt=0, description="HQ waits this long for every tenant's SuperNode before starting"
    )

    @model_validator(mode="after")
    def _check_federation(self) -> Self:
        """This section's own rules beyond each key's range (ConfigError names the key and what is allowed)."""
        require(len(set(self.tenants)) == len(self.tenants), "federation.tenants", "distinct names")
        require(
            all(is_party_name(name) and name != HQ_NAME for name in self.tenants),
            "federation.tenants",
            f"names of {PARTY_NAME_RULE}, none of them {HQ_NAME!r}",
        )
        return self


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
    epochs: int = Field(1, ge=1, description="passes over the training mix (max_steps caps them)")
    max_steps: int = Field(8, ge=0, description="optimiser steps per round and phase; 0 = as many as epochs give")
    batch_size: int = Field(8, ge=1, description="examples per step (before gradient accumulation)")
    grad_accum: int = Field(1, ge=1, description="batches accumulated into one optimiser step")
    learning_rate: float = Field(2e-3, gt=0.0, le=1.0, description="AdamW learning rate, in (0, 1]")
    warmup_steps: int = Field(0, ge=0, description="linear warmup steps; 0 = none")
    max_seq_len: int = Field(160, description="tokens of prompt + reply kept (left-truncated)")
    dpo_beta: float = Field(0.1, gt=0, description="DPO temperature beta, > 0")
    dpo_learning_rate: float = Field(
        2e-4, ge=0.0, le=1.0, description="AdamW learning rate of the DPO phase, in [0, 1]; 0 = learning_rate"
    )
    kto_beta: float = Field(0.1, gt=0, description="KTO temperature beta, > 0")
    kto_learning_rate: float = Field(
        2e-4, ge=0.0, le=1.0, description="AdamW learning rate of the KTO phase, in [0, 1]; 0 = learning_rate"
    )
    kto_desirable_weight: float = Field(1.0, gt=0, description="KTO's lambda_D: weight of desirable replies, > 0")
    kto_undesirable_weight: float = Field(
        1.0, gt=0, description="KTO's lambda_U: weight of undesirable (rejected) drafts, > 0"
    )
    proximal_mu: float = Field(
        0.0, ge=0, description="FedProx: weight of (mu/2)·‖w − w_global‖²; 0 = plain local training"
    )
    weight_core_baseline: float = Field(
        1.0, ge=0, description="pool weight, multiplied by each sample's curated weight"
    )
    weight_secondary_baseline: float = Field(0.8, ge=0, description="pool weight of secondary_baseline samples")
    weight_candidate: float = Field(0.6, ge=0, description="pool weight of candidate samples")
    weight_problem: float = Field(0.4, ge=0, description="pool weight of current problem samples")
    curriculum: tuple[float, ...] = Field((0.8, 0.5, 0.0), description="stage thresholds, highest first, in [0, 1]")

    def pool_weight(self, pool: Pool) -> float:
        """The configured weight of a sample pool."""
        return float(getattr(self, f"weight_{pool}"))

    @model_validator(mode="after")
    def _check_train(self) -> Self:
        """This section's own rules beyond each key's range (ConfigError names the key and what is allowed)."""
        require(
            len(self.curriculum) >= 1
            and list(self.curriculum) == sorted(self.curriculum, reverse=True)
            and all(0.0 <= c <= 1.0 for c in self.curriculum),
            "train.curriculum",
            "confidence thresholds in [0, 1], highest first, e.g. [0.8, 0.5, 0.0]",
        )
        return self


class AggregationSection(Section):
    """How HQ merges a round's adapters (see src/fedloop/server/aggregation.py)."""

    method: Literal["exact", "fedavg"] = Field(
        "exact", description='"exact": SVD of the summed updates B·A (default), or "fedavg" of A and B'
    )
    robust: Literal["none", "trimmed_mean", "krum"] = Field(
        "none", description='"trimmed_mean" or "krum" (Flower\'s) on top of the norm bound'
    )
    norm_bound: float = Field(
        3.0, ge=0, description="an update's distance to the current version is cut to this × the median; 0 = off"
    )
    trim_fraction: float = Field(
        0.34, ge=0.0, lt=0.5, description="share cut from each end by the trimmed mean (0.34 of 3 tenants = 1)"
    )
    krum_malicious: int = Field(1, ge=0, description="tenants Krum assumes may be malicious")
    min_tenants: int = Field(1, ge=1, description="fewest accepted updates for a round to produce a version")
    max_share: float = Field(
        0.5, gt=0, le=1, description="most of a merge's sample weight one tenant may hold, in (0, 1]; 1 = uncapped"
    )
    outlier_factor: float = Field(
        10.0, gt=1, description="a count above this x the round's median is flagged as an outlier"
    )
    dp_clipping_norm: float = Field(
        0.0, ge=0, description="central DP: clip each tenant's update to this L2 norm; 0 = off"
    )
    dp_noise_multiplier: float = Field(
        0.0, ge=0, description="central DP: Gaussian noise std = this × clipping norm / tenants"
    )


class SimulationSection(Section):
    """The simulated product of each tenant (demo, benchmarks, tests): traffic per round, how its users judge drafts."""

    PATH_KEYS = ("tenant_config",)

    conversations_per_round: int = Field(24, ge=0, description="simulated users per tenant per round; 0 = none")
    max_new_tokens: int = Field(40, description="max_tokens the simulated product asks each draft for")
    accept_threshold: float = Field(
        0.8, ge=0.0, le=1.0, description="similarity at or above which a simulated user accepts the draft"
    )
    edit_threshold: float = Field(
        0.45, ge=0.0, le=1.0, description="similarity at or above which a simulated user edits instead of rejecting"
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
        3000, ge=1, description="a tenant is ready with this many new training samples since the version it holds"
    )
    min_tenants: int = Field(0, ge=0, description="ready tenants a round needs; 0 = aggregation.min_tenants")
    max_interval_s: float = Field(
        86400.0,
        ge=0,
        description="a round starts this long after the previous one even without enough samples; 0 = never",
    )
    poll_s: float = Field(60.0, gt=0, description="how often HQ asks the tenants for their counts (a cheap message)")
    query_timeout_s: float = Field(
        60.0,
        gt=0,
        description="how long HQ waits for a tenant's count (its ClientApp may be starting); no answer counts 0",
    )
    max_rounds: int = Field(0, ge=0, description="the continuous run ends after this many rounds; 0 = when stopped")


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
        """The rules between sections; ConfigError names the keys and what is allowed."""
        require(
            0.0 <= self.simulation.edit_threshold <= self.simulation.accept_threshold <= 1.0,
            "simulation.edit_threshold / accept_threshold",
            "0 <= edit_threshold <= accept_threshold <= 1",
        )
        merging = self.aggregation
        require(
            1 <= merging.min_tenants <= len(self.federation.tenants),
            "aggregation.min_tenants",
            "an integer between 1 and the number of tenants",
        )
        require(
            merging.dp_clipping_norm == 0 or (merging.method == "fedavg" and merging.robust == "none"),
            "aggregation.method / robust",
            '"fedavg" and "none" when dp_clipping_norm > 0 (the DP '
            "guarantee holds for the clipped parameter average only)",
        )
        return self


RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short")


def allowed_range(field: FieldInfo) -> str:
    """What a key's limits allow, in words: "an integer >= 1", "a number in (0, 1]", "at least 1 item"."""
    bounds = {
        name: getattr(m, name)
        for m in field.metadata
        for name in ("ge", "gt", "le", "lt", "min_length")
        if getattr(m, name, None) is not None
    }
    if "min_length" in bounds:
        return "a non-empty list" if bounds["min_length"] == 1 else f"a list of at least {bounds['min_length']}"
    noun = "an integer" if field.annotation is int else "a number"
    low = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    high = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    if low and high:
        return f"{noun} in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    if low:
        return f"{noun} {'>=' if low[0] == '[' else '>'} {_number(low[1])}"
    if high:
        return f"{noun} {'<=' if high[0] == ']' else '<'} {_number(high[1])}"
    return noun


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _field_at(root: type[Section], location: list[str]) -> FieldInfo | None:
    """The field a validation error's location names (None if it is not a key of a section)."""
    model: Any = root
    field = None
    for part in location:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        field = model.model_fields[part]
        model = field.annotation
    return field


def _describe(root: type[Section], error: ErrorDetails) -> str:
    """One pydantic error (other than an unknown key) as fedloop says it: the key, what is wrong, what is allowed."""
    location = [str(part) for part in error["loc"]]
    key, given = ".".join(location), error.get("input")
    kind = error["type"]
    field = _field_at(root, location) if kind in RANGE_ERRORS else None
    if field is not None:
        return f"{key}: must be {allowed_range(field)}, got {given!r}"
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
        message = _unknown_keys(root, unknown) if unknown else "; ".join(_describe(root, e) for e in errors)
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
    sections = set(root.model_fields)
    overridden = ", ".join(f"{s}.{k}={v!r}" for s, k, v in overrides_for(sections))
    try:
        return sections_from_mapping(root, with_overrides(document, sections)).with_paths_from(path.resolve().parent)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" + (f" (with --set {overridden})" if overridden else "")) from None


def load_settings(path: Path) -> Settings:
    """Read and validate a federation settings file."""
    return load_sections(Settings, path)
