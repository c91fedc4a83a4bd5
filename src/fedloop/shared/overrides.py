"""`fedloop --set section.key=value`: overrides of config keys, validated exactly as if the file said them.

The root command parses them once and keeps them in the environment
(`FEDLOOP_SET`), so the processes a command starts (a SuperNode's ClientApp,
the Simulation Engine's workers) read their config files with the same
overrides. Each override applies to the file whose settings have its section
(the section names of the federation, tenant and HQ files are distinct).
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

OVERRIDES_ENV = "FEDLOOP_SET"
Override = tuple[str, str, Any]  # section, key, value


class OverrideError(ValueError):
    """An override is not of the form section.key=value; the message says how to write it."""


def parse_override(text: str) -> Override:
    """`section.key=value`, the value read as TOML (`4`, `0.5`, `true`, `["a", "b"]`) or else as a bare string."""
    name, equals, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not equals or not dot or not section or not key or "." in key:
        raise OverrideError(f"--set {text!r}: write section.key=value, e.g. --set train.batch_size=4")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value


def keep_overrides(texts: list[str]) -> list[Override]:
    """Parse every override and keep them for this process and the processes it starts."""
    parsed = [parse_override(text) for text in texts]
    if parsed:
        os.environ[OVERRIDES_ENV] = json.dumps(parsed)
    return parsed


def overrides_for(sections: set[str]) -> list[Override]:
    """The kept overrides of these sections (the sections of one kind of config file)."""
    kept: list[list[Any]] = json.loads(os.environ.get(OVERRIDES_ENV, "[]"))
    return [(section, key, value) for section, key, value in kept if section in sections]


def with_overrides(document: dict[str, Any], sections: set[str]) -> dict[str, Any]:
    """A parsed config document with the kept overrides of its sections applied."""
    merged = {name: dict(table) if isinstance(table, dict) else table for name, table in document.items()}
    for section, key, value in overrides_for(sections):
        table = merged.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = value
    return merged


def effective_file(path: Path, sections: set[str]) -> Path:
    """`path`, or (with overrides of its sections) a copy beside it with them applied, for a process started
    elsewhere that reads the file itself (`fedloop run`'s ServerApp). Beside it, relative paths keep their meaning."""
    if not overrides_for(sections):
        return path
    document = with_overrides(tomllib.loads(path.read_text()), sections)
    copy = path.parent / f".{path.stem}.with-set.toml"
    copy.write_text(tomli_w.dumps(document))
    return copy
