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

from fedloop.shared.adapter import LoraSettings


T = TypeVar("T")


def require(ok: bool, key: str, allowed: str) -> None:
    """Raise ConfigError naming `key` and what is `allowed` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: must be {allowed}")


class ConfigError(ValueError):
    """A config file is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class FederationSection:
    """Who takes part and for how long."""

    run_name: str = "demo"
    tenants: tuple[str, ...] = ("acme", "bolt", "cobalt")
    rounds: int = 3
    seed: int = 7


@dataclass(frozen=True)
class PathsSection:
    """Where the base model is (a local HF directory or a .gguf file) and where run outputs go."""

    model: str = "models/smollm2-135m-instruct"
    runs_dir: str = "runs"


@dataclass(frozen=True)
class TrainSection:
    """The local training recipe (client/train/recipe.py): every knob it has."""

    method: str = "sft"
    epochs: int = 1
    max_steps: int = 8
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 2e-3
    warmup_steps: int = 0
    max_seq_len: int = 160
    dpo_beta: float = 0.1
    weight_core_baseline: float = 1.0
    weight_secondary_baseline: float = 0.8
    weight_candidate: float = 0.6
    weight_problem: float = 0.4
    curriculum: tuple[float, ...] = (0.8, 0.5, 0.0)

    def pool_weight(self, pool: str) -> float:
        """The configured weight of a sample pool."""
        return float(getattr(self, f"weight_{pool}"))


TRAIN_METHODS = ("sft", "dpo", "sft_then_dpo")
MERGE_METHODS = ("fedavg", "exact")
ROBUST_METHODS = ("none", "trimmed_mean", "krum")


@dataclass(frozen=True)
class AggregationSection:
    """How HQ merges a round's adapters (see server/aggregation.py)."""

    method: str = "fedavg"  # "fedavg" of A and B, or "exact": SVD of the summed updates B·A
    robust: str = "none"  # "trimmed_mean" or "krum" (Flower's) on top of the norm bound
    norm_bound: float = 3.0  # an update's distance to the current version is cut to this × the median; 0 = off
    trim_fraction: float = 0.34  # share cut from each end by the trimmed mean (0.34 of 3 tenants = 1)
    krum_malicious: int = 1  # tenants Krum assumes may be malicious
    min_tenants: int = 1  # fewest accepted updates for a round to produce a version
POOL_NAMES = ("problem", "candidate", "secondary_baseline", "core_baseline")  # sample pools, lifecycle order


@dataclass(frozen=True)
class SimulationSection:
    """Simulated users of each tenant: traffic per round and how they judge drafts."""

    conversations_per_round: int = 24
    eval_prompts: int = 16
    max_new_tokens: int = 40
    accept_threshold: float = 0.8
    edit_threshold: float = 0.45
    styles: tuple[str, ...] = ("formal", "friendly", "brief")  # hidden preferred styles, tenant i gets i mod n


@dataclass(frozen=True)
class Settings:
    """Everything a federated run needs."""

    federation: FederationSection = field(default_factory=FederationSection)
    paths: PathsSection = field(default_factory=PathsSection)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSection = field(default_factory=TrainSection)
    simulation: SimulationSection = field(default_factory=SimulationSection)
    aggregation: AggregationSection = field(default_factory=AggregationSection)

    def __post_init__(self) -> None:
        require(self.federation.rounds >= 1, "federation.rounds", "an integer >= 1")
        require(len(self.federation.tenants) >= 1, "federation.tenants", "a non-empty list of names")
        require(len(set(self.federation.tenants)) == len(self.federation.tenants),
                "federation.tenants", "distinct names")
        require(self.lora.rank >= 1, "lora.rank", "an integer >= 1")
        require(0.0 <= self.lora.dropout < 1.0, "lora.dropout", "a number in [0, 1)")
        train = self.train
        require(train.method in TRAIN_METHODS, "train.method", f"one of {', '.join(TRAIN_METHODS)}")
        require(train.epochs >= 1 and train.batch_size >= 1 and train.grad_accum >= 1,
                "train.epochs / batch_size / grad_accum", "integers >= 1")
        require(train.max_steps >= 0 and train.warmup_steps >= 0, "train.max_steps / warmup_steps",
                "integers >= 0 (max_steps 0 = no cap)")
        require(train.dpo_beta > 0, "train.dpo_beta", "a number > 0")
        require(all(0.0 <= train.pool_weight(p) for p in POOL_NAMES), "train.weight_*", "numbers >= 0")
        require(len(train.curriculum) >= 1 and list(train.curriculum) == sorted(train.curriculum, reverse=True)
                and all(0.0 <= c <= 1.0 for c in train.curriculum), "train.curriculum",
                "confidence thresholds in [0, 1], highest first, e.g. [0.8, 0.5, 0.0]")
        require(0.0 < self.train.learning_rate <= 1.0, "train.learning_rate", "a number in (0, 1]")
        require(0.0 <= self.simulation.edit_threshold <= self.simulation.accept_threshold <= 1.0,
                "simulation.edit_threshold / accept_threshold", "0 <= edit_threshold <= accept_threshold <= 1")
        merging = self.aggregation
        require(merging.method in MERGE_METHODS, "aggregation.method", f"one of {', '.join(MERGE_METHODS)}")
        require(merging.robust in ROBUST_METHODS, "aggregation.robust", f"one of {', '.join(ROBUST_METHODS)}")
        require(merging.norm_bound >= 0, "aggregation.norm_bound", "a number >= 0 (0 = off)")
        require(0.0 <= merging.trim_fraction < 0.5, "aggregation.trim_fraction", "a number in [0, 0.5)")
        require(merging.krum_malicious >= 0, "aggregation.krum_malicious", "an integer >= 0")
        require(1 <= merging.min_tenants <= len(self.federation.tenants), "aggregation.min_tenants",
                "an integer between 1 and the number of tenants")
        require(self.simulation.conversations_per_round >= 1 and self.simulation.eval_prompts >= 1,
                "simulation.conversations_per_round / eval_prompts", "integers >= 1")


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
