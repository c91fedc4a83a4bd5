"""Write docs/configuration.md from the config schema: every section and key, its type, default and meaning.

The schema is the settings dataclasses themselves (shared/settings.py, client/tenant_settings.py,
server/hq_settings.py); a key's meaning is the comment beside its field, a section's is its class docstring.
A test regenerates the page and compares, so the reference cannot drift from the code.

Run: .venv/bin/python scripts/gen_config_reference.py [--check]
"""

from __future__ import annotations

import argparse
import inspect
import io
import sys
import tokenize
from dataclasses import MISSING, fields
from pathlib import Path
from typing import get_type_hints

from fedloop.client.tenant_settings import TenantSettings
from fedloop.server.hq_settings import HQSettings
from fedloop.shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "configuration.md"
FILES = [
    (
        Settings,
        "Federation settings",
        "the TOML HQ and every tenant share (`fedloop demo --config`, `fedloop run "
        "--settings`, `fedloop tenant up --settings`); example: configs/demo.toml",
    ),
    (
        TenantSettings,
        "Tenant settings",
        "each tenant's own TOML (`fedloop tenant serve|up --config`, "
        "`fedloop samples|vault|release|status --tenant`); "
        "example: configs/tenant.toml",
    ),
    (
        HQSettings,
        "HQ settings",
        "HQ's own TOML (`fedloop hq up|register-node --config`, `fedloop run --config`, "
        "`fedloop status --hq`); example: configs/hq.toml",
    ),
]


def field_comments(cls: type) -> dict[str, str]:
    """The trailing `# comment` of each `name: type = default` line in the class source."""
    by_line: dict[int, list[tokenize.TokenInfo]] = {}
    for token in tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline):
        if token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            by_line.setdefault(token.start[0], []).append(token)
    comments = {}
    for tokens in by_line.values():
        if (
            len(tokens) > 2
            and tokens[0].type == tokenize.NAME
            and tokens[1].string == ":"
            and tokens[-1].type == tokenize.COMMENT
        ):
            comments[tokens[0].string] = tokens[-1].string.lstrip("# ").strip()
    return comments


def default_text(value: object) -> str:
    """A default as it would be written in TOML."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(default_text(v) for v in value) + "]"
    return repr(value)


def type_text(hint: object) -> str:
    """A field type in TOML words."""
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if hint in names:
        return names[hint]
    return "list of strings" if "str" in str(hint) else "list of numbers"


def section_rows(section_cls: type) -> list[str]:
    """Table rows of one section's keys."""
    hints, comments = get_type_hints(section_cls), field_comments(section_cls)
    rows = []
    for item in fields(section_cls):
        default = item.default if item.default is not MISSING else item.default_factory()  # type: ignore[misc]
        cells = [
            f"`{item.name}`",
            type_text(hints[item.name]),
            f"`{default_text(default)}`",
            comments.get(item.name, ""),
        ]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return rows


def render() -> str:
    """The whole reference page."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the settings classes by `scripts/gen_config_reference.py`; do not edit by hand.",
        "Every key is optional (the default applies). On start every file is validated: an unknown section",
        "or key, a value of the wrong type or out of range stops the command with the file, the key and",
        "what is allowed.",
        "",
    ]
    for root, title, where in FILES:
        lines += [f"## {title}", "", f"{where[0].upper()}{where[1:]}.", ""]
        hints = get_type_hints(root)
        for section in fields(root):
            section_cls = hints[section.name]
            doc = (inspect.getdoc(section_cls) or "").splitlines()[0]
            lines += [
                f"### `[{section.name}]`",
                "",
                doc,
                "",
                "| key | type | default | meaning |",
                "|---|---|---|---|",
                *section_rows(section_cls),
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
