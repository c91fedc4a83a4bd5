"""Federation settings, read from a TOML file and validated before anything starts.

An unknown section or key, a value of the wrong type or out of range is
reported with the file, the key and what is allowed; nothing runs with a
half-understood config.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

T = TypeVar("T")


def require(ok: bool, key: str, allowed: str) -> None:
    """Raise ConfigError naming `key` and what is `allowed` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: must be {allowed}")


def is_host_port(address: str) -> bool:
    """Whether `address` looks like host:port with a port in 1..65535."""
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def is_loopback(address: str) -> bool:
    """Whether host:port names a loopback host (127.0.0.0/8, localhost or ::1)."""
    host = address.rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


class ConfigError(ValueError):
    """A config file is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA shape every party of a federation must agree on."""

    rank: int = 8  # LoRA rank r (>= 1)
    alpha: int = 16  # LoRA alpha; the update is scaled by alpha / rank
    dropout: float = 0.0  # LoRA dropout, in [0, 1)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")  # module names that get a LoRA adapter


@dataclass(frozen=True)
class FederationSection:
    """Who takes part and for how long."""

    run_name: str = "demo"  # names the run in the registry and binds every sealed message to it
    tenants: tuple[str, ...] = ("acme", "bolt", "cobalt")  # the tenants taking part (simulation: one SuperNode each)
    rounds: int = 3  # federated rounds per run (>= 1)
    seed: int = 7  # seeds LoRA initialisation, data order and simulated users
    round_timeout_s: float = 3600.0  # HQ stops waiting for a tenant's reply after this; the round goes on
    enrol_timeout_s: float = 120.0  # HQ waits this long for every tenant's SuperNode before starting


@dataclass(frozen=True)
class PathsSection:
    """Where the base model is (a local HF directory or a .gguf file) and where run outputs go."""

    model: str = "models/smollm2-135m-instruct"  # a local Hugging Face directory or .gguf file
    runs_dir: str = "runs"  # where `fedloop demo` creates its run directories


@dataclass(frozen=True)
class TrainSection:
    """The local training recipe (client/train/recipe.py): every knob it has."""

    method: str = "sft"  # sft | dpo | kto | sft_then_dpo | sft_then_kto
    epochs: int = 1  # passes over the training mix (max_steps caps them)
    max_steps: int = 8  # optimiser steps per round and phase; 0 = as many as epochs give
    batch_size: int = 8  # examples per step (before gradient accumulation)
    grad_accum: int = 1  # batches accumulated into one optimiser step
    learning_rate: float = 2e-3  # AdamW learning rate, in (0, 1]
    warmup_steps: int = 0  # linear warmup steps; 0 = none
    max_seq_len: int = 160  # tokens of prompt + reply kept (left-truncated)
    dpo_beta: float = 0.1  # DPO temperature beta, > 0
    dpo_learning_rate: float = 2e-4  # AdamW learning rate of the DPO phase, in [0, 1]; 0 = learning_rate
    kto_beta: float = 0.1  # KTO temperature beta, > 0
    kto_learning_rate: float = 2e-4  # AdamW learning rate of the KTO phase, in [0, 1]; 0 = learning_rate
    kto_desirable_weight: float = 1.0  # KTO's lambda_D: weight of desirable replies, > 0
    kto_undesirable_weight: float = 1.0  # KTO's lambda_U: weight of undesirable (rejected) drafts, > 0
    proximal_mu: float = 0.0  # FedProx: weight of (mu/2)·‖w − w_global‖²; 0 = plain local training
    weight_core_baseline: float = 1.0  # pool weight, multiplied by each sample's curated weight
    weight_secondary_baseline: float = 0.8  # pool weight of secondary_baseline samples
    weight_candidate: float = 0.6  # pool weight of candidate samples
    weight_problem: float = 0.4  # pool weight of current problem samples
    curriculum: tuple[float, ...] = (0.8, 0.5, 0.0)  # stage thresholds, highest first, in [0, 1]

    def pool_weight(self, pool: str) -> float:
        """The configured weight of a sample pool."""
        return float(getattr(self, f"weight_{pool}"))


TRAIN_METHODS = ("sft", "dpo", "kto", "sft_then_dpo", "sft_then_kto")
MERGE_METHODS = ("fedavg", "exact")
ROBUST_METHODS = ("none", "trimmed_mean", "krum")


@dataclass(frozen=True)
class AggregationSection:
    """How HQ merges a round's adapters (see server/aggregation.py)."""

    method: str = "exact"  # "exact": SVD of the summed updates B·A (default), or "fedavg" of A and B
    robust: str = "none"  # "trimmed_mean" or "krum" (Flower's) on top of the norm bound
    norm_bound: float = 3.0  # an update's distance to the current version is cut to this × the median; 0 = off
    trim_fraction: float = 0.34  # share cut from each end by the trimmed mean (0.34 of 3 tenants = 1)
    krum_malicious: int = 1  # tenants Krum assumes may be malicious
    min_tenants: int = 1  # fewest accepted updates for a round to produce a version
    max_share: float = 0.5  # most of a merge's sample weight one tenant may hold, in (0, 1]; 1 = uncapped
    outlier_factor: float = 10.0  # a count above this x the round's median is flagged as an outlier
    dp_clipping_norm: float = 0.0  # central DP: clip each tenant's update to this L2 norm; 0 = off
    dp_noise_multiplier: float = 0.0  # central DP: Gaussian noise std = this × clipping norm / tenants


POOL_NAMES = ("problem", "candidate", "secondary_baseline", "core_baseline")  # sample pools, lifecycle order


@dataclass(frozen=True)
class SimulationSection:
    """The simulated product of each tenant (demo, benchmarks, tests): traffic per round, how its users judge drafts."""

    conversations_per_round: int = 24  # simulated users per tenant per round; 0 = none
    max_new_tokens: int = 40  # max_tokens the simulated product asks each draft for
    accept_threshold: float = 0.8  # similarity at or above which a simulated user accepts the draft
    edit_threshold: float = 0.45  # similarity at or above which a simulated user edits instead of rejecting
    styles: tuple[str, ...] = ("formal", "friendly", "brief")  # hidden preferred styles, tenant i gets i mod n
    prompt_version: str = "default"  # recorded with every simulated draft, beside the model version
    tenant_config: str = ""  # a tenant TOML (gates, release, curation...) for every simulated tenant; "" = defaults


@dataclass(frozen=True)
class TrackingSection:
    """Optional MLflow tracking of HQ's rounds (install the `mlflow` extra)."""

    mlflow_uri: str = ""  # e.g. "sqlite:///mlflow.db" or "http://mlflow.internal:5000"; "" = off
    experiment: str = "fedloop"  # MLflow experiment the runs go to
    artifacts: str = ""  # where a new experiment keeps artifacts (e.g. a directory); "" = MLflow's default


@dataclass(frozen=True)
class Settings:
    """Everything a federated run needs."""

    federation: FederationSection = field(default_factory=FederationSection)
    paths: PathsSection = field(default_factory=PathsSection)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSection = field(default_factory=TrainSection)
    simulation: SimulationSection = field(default_factory=SimulationSection)
    aggregation: AggregationSection = field(default_factory=AggregationSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)

    def __post_init__(self) -> None:
        require(self.federation.rounds >= 1, "federation.rounds", "an integer >= 1")
        require(
            self.federation.round_timeout_s > 0 and self.federation.enrol_timeout_s > 0,
            "federation.round_timeout_s / enrol_timeout_s",
            "numbers of seconds > 0",
        )
        require(len(self.federation.tenants) >= 1, "federation.tenants", "a non-empty list of names")
        require(
            len(set(self.federation.tenants)) == len(self.federation.tenants), "federation.tenants", "distinct names"
        )
        require(self.lora.rank >= 1, "lora.rank", "an integer >= 1")
        require(0.0 <= self.lora.dropout < 1.0, "lora.dropout", "a number in [0, 1)")
        train = self.train
        require(train.method in TRAIN_METHODS, "train.method", f"one of {', '.join(TRAIN_METHODS)}")
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
        require(all(0.0 <= train.pool_weight(p) for p in POOL_NAMES), "train.weight_*", "numbers >= 0")
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
        require(merging.method in MERGE_METHODS, "aggregation.method", f"one of {', '.join(MERGE_METHODS)}")
        require(merging.robust in ROBUST_METHODS, "aggregation.robust", f"one of {', '.join(ROBUST_METHODS)}")
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


def _coerce(value: Any, hint: Any, key: str) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint == tuple[str, ...]:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{key}: must be a list of strings, got {value!r}")
    if hint == tuple[float, ...]:
        if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return tuple(float(v) for v in value)
        raise ConfigError(f"{key}: must be a list of numbers, got {value!r}")
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: must be of type {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _section(cls: type, table: Any, name: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"[{name}] has unknown key(s) {unknown}; allowed: {sorted(known)}")
    return cls(**{k: _coerce(v, hints[k], f"{name}.{k}") for k, v in table.items()})


def sections_from_mapping(root: type[T], document: dict[str, Any]) -> T:
    """Validate a parsed TOML document into the sectioned dataclass `root` (missing keys take defaults)."""
    hints = get_type_hints(root)
    sections = {f.name for f in fields(root)}  # type: ignore[arg-type]
    unknown = sorted(set(document) - sections)
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; allowed: {sorted(sections)}")
    return root(**{name: _section(hints[name], table, name) for name, table in document.items()})


def load_sections(root: type[T], path: Path) -> T:
    """Read and validate a TOML file into `root`; errors name the file."""
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    try:
        return sections_from_mapping(root, document)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def load_settings(path: Path) -> Settings:
    """Read and validate a federation settings file."""
    return load_sections(Settings, path)
