"""Render a run summary for people: hit rates, lineage, bytes on the wire."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from fedloop.client.store_api import ReleaseRecord


def render_summary(summary: dict[str, Any], console: Console) -> None:
    """Print hit rate before/after per tenant, the version lineage and bytes per tenant per round."""
    rounds = {r["round"]: r for r in summary["rounds"]}
    last = max(rounds)
    hits = Table(title="Draft hit rate on held-out prompts (simulated users)")
    for column in ("tenant", "before (v0)", f"after (round {last})", "uplift", "similarity before → after"):
        hits.add_column(column)
    for tenant in summary["tenants"]:
        before, after = rounds[0]["evaluation"].get(tenant), rounds[last]["evaluation"].get(tenant)
        if before is None or after is None:
            hits.add_row(tenant, "n/a", "n/a", "n/a", "n/a")
            continue
        hits.add_row(tenant, f"{before['hit-rate']:.1%}", f"{after['hit-rate']:.1%}",
                     f"{(after['hit-rate'] - before['hit-rate']) * 100:+.1f} pts",
                     f"{before['mean-similarity']:.3f} → {after['mean-similarity']:.3f}")
    console.print(hits)

    lineage = Table(title="Version lineage (HQ registry, SM2-signed)")
    for column in ("version", "parent", "round", "method", "contributors (samples)", "SM3 digest"):
        lineage.add_column(column, no_wrap=column != "contributors (samples)")
    for version in summary["lineage"]:
        contributors = ", ".join(f"{t}={n}" for t, n in sorted(version["contributors"].items())) or "-"
        lineage.add_row(version["id"], version["parent"] or "-", str(version["round"]), version["method"],
                        contributors, version["digest"][:16] + "…")
    console.print(lineage)
    console.print(f"all version signatures valid: {summary['signatures_valid']}")

    traffic = Table(title="Bytes on the wire per tenant per round (sealed payloads)")
    for column in ("round", "tenant", "tenant → HQ (delta)", "HQ → tenant (train + evaluate)", "refused"):
        traffic.add_column(column)
    for number in sorted(rounds):
        report = rounds[number]
        for tenant in summary["tenants"]:
            traffic.add_row(str(number), tenant, f"{report['bytes_to_hq'].get(tenant, 0):,}",
                            f"{report['bytes_to_tenant'].get(tenant, 0):,}", report["refused"].get(tenant, ""))
    console.print(traffic)


def render_releases(histories: dict[str, list[ReleaseRecord]], console: Console) -> None:
    """Print each tenant's release pointer moves: bootstrap, canary, widen, promote, rollback."""
    table = Table(title="Tenant releases (each tenant's own pointer, decided on its own traffic)")
    for column in ("tenant", "action", "serving", "canary (share)", "why"):
        table.add_column(column, no_wrap=column != "why")
    for tenant, records in histories.items():
        for record in records:
            canary = f"{record.canary} ({record.share:.0%})" if record.canary else "-"
            table.add_row(tenant, record.action, record.serving or "-", canary, record.reason)
    console.print(table)
