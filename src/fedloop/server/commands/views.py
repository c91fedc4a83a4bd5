"""HQ's answers to `fedloop status|audit|report --hq`, from its settings and registry."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedloop.server.commands.hq import hq_settings_or_fail
from fedloop.server.commands.versions import open_registry
from fedloop.shared.console import fail
from fedloop.shared.run_layout import RunLayout

if TYPE_CHECKING:
    from fedloop.shared.audit import AuditLog
    from fedloop.shared.report import ReportData


def hq_status(config: Path) -> dict[str, Any]:
    """`fedloop status --hq`: HQ's status document."""
    from fedloop.server.registry import RegistryError
    from fedloop.server.status import hq_status as status_document
    from fedloop.shared.keys import KeyFileError

    try:
        return status_document(hq_settings_or_fail(config))
    except (KeyFileError, RegistryError) as err:
        fail(str(err))


@contextmanager
def hq_audit_log(config: Path) -> Iterator[AuditLog]:
    """`fedloop audit … --hq`: the registry's audit log, open while the block runs."""
    layout = RunLayout(hq_settings_or_fail(config).home)
    with open_registry(None, layout.hq, layout.keys) as registry:
        yield registry.audit_log


def hq_report(config: Path, version: str | None) -> ReportData:
    """`fedloop report --hq`: HQ's registry (only `version`'s lineage if given)."""
    from fedloop.server.report_data import hq_report_data

    layout = RunLayout(hq_settings_or_fail(config).home)
    with open_registry(None, layout.hq, layout.keys) as registry:
        return hq_report_data(registry, "fedloop evaluation report: HQ", f"HQ registry {layout.hq}", version)
