"""The simulation's answer to `fedloop report --run`: HQ's registry and every simulated tenant's store of a run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedloop.shared.report import ReportData


def run_report(run: Path, version: str | None) -> ReportData:
    """`fedloop report --run`: HQ's registry and every simulated tenant's store of a run directory."""
    from fedloop.client.report_data import add_tenant
    from fedloop.client.store import FeedbackStore
    from fedloop.server.commands.versions import open_registry
    from fedloop.server.report_data import hq_report_data
    from fedloop.shared.keys import load_identity
    from fedloop.shared.run_layout import RunLayout

    layout = RunLayout(run)
    with open_registry(run, None, None) as registry:
        data = hq_report_data(registry, f"fedloop evaluation report: {run.name}", f"simulated run {run}", version)
    versions = [v["id"] for v in data.lineage]
    for store_dir in sorted((layout.root / "tenants").glob("*")):
        identity = load_identity(layout.keys, store_dir.name)
        store = FeedbackStore(store_dir / "feedback.db", identity.storage, identity.pseudonym_key)
        try:
            data.train_losses.pop(store_dir.name, None)  # the tenant's own step-by-step curves replace HQ's means
            add_tenant(data, store_dir.name, store, versions)
        finally:
            store.close()
    return data
