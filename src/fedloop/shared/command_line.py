"""What each side plugs into the `fedloop` command line, so that `shared` never imports `client` or `server`.

The tenant side, HQ's side and the simulation each name a `register` function
under the `fedloop.commands` entry-point group (pyproject.toml); the root
(`fedloop.shared.cli`) calls every one with a `CommandLine`. A side adds its
command groups to `app` and tells the commands both sides share (`status`,
`audit`, `report`) how to open its view of them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from fedloop.shared.audit import AuditLog
    from fedloop.shared.report import ReportData

ENTRY_POINT_GROUP = "fedloop.commands"
# Where every command looks for its settings unless told otherwise: in the directory it runs in, the party's own
# working directory (the templates are the repository's configs/; relative paths in each resolve against it).
TENANT_CONFIG = Path("tenant.toml")
HQ_CONFIG = Path("hq.toml")
FEDERATION_SETTINGS = Path("federation.toml")

StatusOf = Callable[[Path], dict[str, Any]]
AuditLogOf = Callable[[Path], AbstractContextManager["AuditLog"]]
ReportOf = Callable[[Path, str | None], "ReportData"]


@dataclass
class CommandLine:
    """The root command group and the per-side views of the shared commands, keyed by the option naming the side
    ("tenant", "hq", "run")."""

    app: typer.Typer
    keys: typer.Typer
    status_of: dict[str, StatusOf] = field(default_factory=dict)
    audit_log_of: dict[str, AuditLogOf] = field(default_factory=dict)
    report_of: dict[str, ReportOf] = field(default_factory=dict)


def plug_in_sides(command_line: CommandLine) -> None:
    """Call every installed side's `register(command_line)` (entry-point group `fedloop.commands`)."""
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        register: Callable[[CommandLine], None] = entry.load()
        register(command_line)
