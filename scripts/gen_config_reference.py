"""Write docs/configuration.md from the settings models' JSON schema: every section and key, its type, default
and meaning.

The schema is pydantic's `model_json_schema()` of the settings models (src/fedloop/shared/settings.py,
src/fedloop/client/tenant_settings.py, src/fedloop/server/hq_settings.py): a key's meaning is its
`Field(description=...)`, a section's is its class docstring, a choice lists its allowed values. A test
regenerates the page and compares, so the reference cannot drift from the code.

Run: .venv/bin/python scripts/gen_config_reference.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedloop.client.tenant_settings import TenantSettings
from fedloop.server.hq_settings import HQSettings
from fedloop.shared.config_files import FEDERATION_SETTINGS, HQ_CONFIG, TENANT_CONFIG
from fedloop.shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "configuration.md"
FILES = [
    (
        Settings,
        "Federation settings",
        "the TOML HQ and every tenant share (`fedloop demo --config`, `fedloop run "
        "--settings`, `fedloop tenant up --settings`); template: configs/federation.toml "
        "(the demo's: configs/demo.toml)",
    ),
    (
        TenantSettings,
        "Tenant settings",
        "each tenant's own TOML (`fedloop tenant serve|up --config`, "
        "`fedloop samples|vault|release|status --tenant`); "
        "template: configs/tenant.toml",
    ),
    (
        HQSettings,
        "HQ settings",
        "HQ's own TOML (`fedloop hq up|register-node --config`, `fedloop run --config`, "
        "`fedloop status --hq`); template: configs/hq.toml",
    ),
]


def default_text(value: object) -> str:
    """A default as it would be written in TOML."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(default_text(v) for v in value) + "]"
    return repr(value)


def type_text(schema: dict[str, Any]) -> str:
    """A key's JSON-schema type in TOML words, with the allowed values of a choice."""
    if "enum" in schema:
        return "one of " + ", ".join(f"`{default_text(v)}`" for v in schema["enum"])
    names = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}
    if schema.get("type") == "array":
        return f"list of {names[schema['items']['type']]}s"
    return names[schema["type"]]


def number_text(value: float) -> str:
    """A limit as written: integers whole, other numbers short."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def limit_text(schema: dict[str, Any]) -> str:
    """A key's limits from its JSON schema (the fields' ge/gt/le/lt/min_length): ">= 1", "(0, 1]", or ""."""
    low = ("[", schema["minimum"]) if "minimum" in schema else ("(", schema.get("exclusiveMinimum"))
    high = ("]", schema["maximum"]) if "maximum" in schema else (")", schema.get("exclusiveMaximum"))
    if "minItems" in schema:
        return f"at least {schema['minItems']} item(s)"
    if low[1] is not None and high[1] is not None:
        return f"{low[0]}{number_text(low[1])}, {number_text(high[1])}{high[0]}"
    if low[1] is not None:
        return f"{'>=' if low[0] == '[' else '>'} {number_text(low[1])}"
    if high[1] is not None:
        return f"{'<=' if high[0] == ']' else '<'} {number_text(high[1])}"
    return ""


def section_rows(section: dict[str, Any]) -> list[str]:
    """Table rows of one section's keys, from its JSON schema."""
    rows = []
    for name, key in section["properties"].items():
        cells = [
            f"`{name}`",
            type_text(key),
            limit_text(key),
            f"`{default_text(key['default'])}`",
            key.get("description", ""),
        ]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return rows


def render() -> str:
    """The whole reference page."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the settings models' JSON schema by `scripts/gen_config_reference.py`; do not edit by hand.",
        "Every key is optional (the default applies). On start every file is validated: an unknown section",
        "or key, a value of the wrong type or out of range stops the command with the file, the key and",
        "what is allowed.",
        "",
        "Where the files are: each party works in a directory of its own, and every command looks for its",
        f"file there unless told otherwise: `{TENANT_CONFIG}` (a tenant's), `{HQ_CONFIG}` (HQ's) and",
        f"`{FEDERATION_SETTINGS}` (the federation settings HQ shares), copied from the templates in the",
        "repository's `configs/`. A relative",
        "path in a file (keys, data, certificates, the model, exports) resolves against the file's own directory.",
        "",
        "The *allowed* column is each key's own limit; rules between keys (e.g. `canary_share <= widened_share`)",
        "are checked too and named in the error.",
        "",
        "One run with a different value, without editing a file: `fedloop --set section.key=value <command>`",
        '(repeatable, before the command; the value is TOML: `4`, `0.5`, `true`, `"text"`, or a bare word). It is',
        "validated exactly as if the file said it and applies to the file whose settings have that section, in",
        "the command and in the processes it starts; `fedloop run` submits a copy of the federation settings",
        "beside the file (`.federation.with-set.toml`) with the overrides applied. For example",
        "`fedloop --set federation.rounds=1 run` or `fedloop --set release.canary_share=0.1 tenant serve`.",
        "",
    ]
    for root, title, where in FILES:
        lines += [f"## {title}", "", f"{where[0].upper()}{where[1:]}.", ""]
        schema = root.model_json_schema()  # type: ignore[attr-defined]  # FILES holds pydantic model classes
        for name, reference in schema["properties"].items():
            section = schema["$defs"][reference["$ref"].rsplit("/", 1)[-1]]
            lines += [
                f"### `[{name}]`",
                "",
                section["description"].splitlines()[0],
                "",
                "| key | type | allowed | default | meaning |",
                "|---|---|---|---|---|",
                *section_rows(section),
                "",
            ]
    return "\n".join(lines)


def main() -> None:
    """Write the page, or with --check fail if the committed one differs."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is out of date")
    args = parser.parse_args()
    page = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != page:
            sys.exit(f"{OUT} is out of date: run scripts/gen_config_reference.py")
        return
    OUT.write_text(page)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
