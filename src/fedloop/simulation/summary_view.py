"""Render a run summary for people: hit rates, lineage, bytes on the wire."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from fedloop.client.store.api import ReleaseRecord
from fedloop.simulation.product import ServedRound


def _rate(accepted: int, served: int) -> str:
    return f"{accepted / served:.0%} of {served}" if served else "-"


def render_served(served: dict[str, list[ServedRound]], console: Console) -> None:
    """Print, per tenant and round, how many drafts each version served the product and how many were accepted."""
    table = Table(title="Drafts each version served the simulated product (accepted as is / drafts), per round")
    for column in ("tenant", "round", "drafts by version", "hit rate", "refused"):
        table.add_column(column)
    for tenant, rounds in sorted(served.items()):
        for entry in rounds:
            by_version = ", ".join(f"{v}: {_rate(entry.accepted[v], n)}" for v, n in sorted(entry.served.items()))
            total = sum(entry.served.values())
            refused = ", ".join(f"{n} {status}" for status, n in entry.refused.items())
            table.add_row(
                tenant, str(entry.round), by_version or "-", _rate(sum(entry.accepted.values()), total), refused
            )
    console.print(table)
    uplift = Table(title="Draft hit rate the product's users saw: first round against last round")
    for column in ("tenant", "first round", "last round", "uplift"):
        uplift.add_column(column)
    for tenant, rounds in sorted(served.items()):
        if not rounds:
            continue
        first, last = rounds[0], rounds[-1]
        rates = [sum(r.accepted.values()) / max(1, sum(r.served.values())) for r in (first, last)]
        uplift.add_row(
            tenant,
            f"round {first.round}: {_rate(sum(first.accepted.values()), sum(first.served.values()))}",
            f"round {last.round}: {_rate(sum(last.accepted.values()), sum(last.served.values()))}",
            f"{(rates[1] - rates[0]) * 100:+.1f} pts",
        )
    console.print(uplift)


def render_summary(summary: dict[str, Any], console: Console) -> None:
    """Print the offline hit rate per tenant and round, the version lineage and bytes per tenant per round."""
    rounds = {r["round"]: r for r in summary["rounds"]}
    hits = Table(title="Offline hit rate of each round's version on the tenant's held-out finals (95 % interval)")
    for column in ("round", *summary["tenants"]):
        hits.add_column(column)
    for number in sorted(rounds):
        cells = []
        for tenant in summary["tenants"]:
            metrics = rounds[number]["evaluation"].get(tenant)
            if metrics is None or not metrics.get("num-examples"):
                cells.append("no held-out finals yet" if metrics is not None else "n/a")
                continue
            cells.append(
                f"{metrics['hit-rate']:.0%} [{metrics['hit-rate-low']:.0%}, {metrics['hit-rate-high']:.0%}] "
                f"n={int(metrics['num-examples'])}"
            )
        hits.add_row(str(number), *cells)
    console.print(hits)

    lineage = Table(title="Version lineage (HQ registry, SM2-signed)")
    for column in ("version", "parent", "round", "method", "contributors (samples)", "SM3 digest"):
        lineage.add_column(column, no_wrap=column != "contributors (samples)")
    for version in summary["lineage"]:
        contributors = ", ".join(f"{t}={n}" for t, n in sorted(version["contributors"].items())) or "-"
        lineage.add_row(
            version["id"],
            version["parent"] or "-",
            str(version["round"]),
            version["method"],
            contributors,
            version["digest"][:16] + "…",
        )
    console.print(lineage)
    console.print(f"all version signatures valid: {summary['signatures_valid']}")

    traffic = Table(title="Bytes on the wire per tenant per round (sealed payloads)")
    for column in ("round", "tenant", "tenant → HQ (update)", "HQ → tenant (train + evaluate)", "refused"):
        traffic.add_column(column)
    for number in sorted(rounds):
        report = rounds[number]
        for tenant in summary["tenants"]:
            traffic.add_row(
                str(number),
                tenant,
                f"{report['bytes_to_hq'].get(tenant, 0):,}",
                f"{report['bytes_to_tenant'].get(tenant, 0):,}",
                report["refused"].get(tenant, ""),
            )
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
