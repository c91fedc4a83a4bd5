"""The evaluation report: one self-contained HTML page (plots embedded as PNG data URIs, no external files).

`ReportData` is filled by HQ's side (src/fedloop/server/report_data.py: versions, rounds,
hit rates and KL per tenant, bytes, dataset versions) and by each tenant's side
(src/fedloop/client/report_data.py: step-by-step training loss, problem rates per version);
`render_report` turns it into HTML. The page marks `data-plots-rendered` on its
body once every plot image has loaded, so a browser test can tell that the
plots really render.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import matplotlib

from fedloop.shared.intervals import wilson_interval

matplotlib.use("Agg")
import matplotlib.pyplot as plt


@dataclass
class ReportData:
    """Everything a report shows; empty parts are left out of the page, or say why (`unfilled`)."""

    title: str
    source: str
    lineage: list[dict[str, Any]] = field(
        default_factory=list
    )  # id, parent, round, method, contributors, status, digest
    versions: list[str] = field(default_factory=list)  # evaluated versions, in order
    hit_rates: dict[str, dict[str, float]] = field(default_factory=dict)  # tenant -> version -> hit rate
    # tenant -> version -> (drafts accepted as they were, drafts with an outcome): what the tenant's users did
    served: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    kl_to_serving: dict[str, dict[str, float]] = field(default_factory=dict)  # tenant -> version -> KL
    kl_bounds: dict[str, float] = field(default_factory=dict)  # tenant -> its evaluation.kl_bound
    train_losses: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # tenant -> "round n" -> losses
    problem_rates: list[dict[str, Any]] = field(
        default_factory=list
    )  # tenant, problem_type, version, rate, previous, ...
    bytes_per_round: list[dict[str, Any]] = field(default_factory=list)  # round, tenant, to_hq, to_tenant
    dataset_versions: list[dict[str, Any]] = field(default_factory=list)  # round, tenant, dataset_version
    unfilled: dict[str, str] = field(default_factory=dict)  # section title -> why the source cannot fill it


HIT_RATES = "Hit rate per tenant per version"
SERVED = "Hit rate with users per version (their outcomes)"
TRAINING_LOSS = "Training loss"
PROBLEM_RATES = "Problem rate against the previous version"


def _png(figure: plt.Figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _lines(
    series: dict[str, dict[str, float]],
    order: list[str],
    ylabel: str,
    title: str,
    bounds: dict[str, float] | None = None,
) -> str:
    figure, axis = plt.subplots(figsize=(8, 3.6))
    for name, values in sorted(series.items()):
        xs = [v for v in order if v in values]
        axis.plot(xs, [values[v] for v in xs], marker="o", label=name)
    for bound, tenants in _by_value(bounds or {}).items():
        axis.axhline(
            bound, linestyle="--", color="firebrick", linewidth=1, label=f"bound {bound:g} ({', '.join(tenants)})"
        )
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.tick_params(axis="x", labelrotation=30, labelsize=7)
    axis.legend(fontsize=7)
    return _png(figure)


def _by_value(bounds: dict[str, float]) -> dict[float, list[str]]:
    """Tenants grouped by their bound, so that tenants with the same bound share one line."""
    grouped: dict[float, list[str]] = {}
    for tenant, bound in sorted(bounds.items()):
        grouped.setdefault(bound, []).append(tenant)
    return grouped


def _served_rates(served: dict[str, dict[str, tuple[int, int]]]) -> str:
    """Each tenant's hit rate with its users per version, with 95 % Wilson intervals as error bars."""
    order = list(dict.fromkeys(v for versions in served.values() for v in versions))  # as they first served
    figure, axis = plt.subplots(figsize=(8, 3.6))
    for offset, (tenant, versions) in enumerate(sorted(served.items())):
        rates = [accepted / decided for accepted, decided in versions.values()]
        intervals = [wilson_interval(accepted, decided) for accepted, decided in versions.values()]
        errors = [
            [r - low for r, (low, _) in zip(rates, intervals, strict=True)],
            [high - r for r, (_, high) in zip(rates, intervals, strict=True)],
        ]
        positions = [order.index(v) + 0.08 * offset for v in versions]
        axis.errorbar(positions, rates, yerr=errors, marker="o", capsize=3, label=tenant)
    axis.set_xticks(range(len(order)), order)
    axis.set_ylabel("accepted as drafted")
    axis.set_ylim(0, 1)
    axis.set_title("Hit rate with the tenant's users (outcomes), 95 % Wilson intervals")
    axis.tick_params(axis="x", labelrotation=30, labelsize=7)
    axis.legend(fontsize=7)
    return _png(figure)


def _loss_curves(losses: dict[str, dict[str, list[float]]]) -> str:
    figure, axes = plt.subplots(1, len(losses), figsize=(4 * len(losses), 3.2), squeeze=False)
    for axis, (tenant, runs) in zip(axes[0], sorted(losses.items()), strict=True):
        for label, values in runs.items():
            axis.plot(range(1, len(values) + 1), values, marker=".", label=label)
        axis.set_title(f"{tenant}: training loss")
        axis.set_xlabel("step" if any(len(v) > 1 for v in runs.values()) else "")
        axis.legend(fontsize=7)
    return _png(figure)


def _bytes(rows: list[dict[str, Any]]) -> str:
    rounds = list(dict.fromkeys(r["round"] for r in rows))  # in the order they happened
    to_hq = [sum(r["to_hq"] for r in rows if r["round"] == n) / 1e6 for n in rounds]
    to_tenants = [sum(r["to_tenant"] for r in rows if r["round"] == n) / 1e6 for n in rounds]
    figure, axis = plt.subplots(figsize=(8, 3.2))
    positions = range(len(rounds))
    axis.bar([i - 0.2 for i in positions], to_hq, 0.4, label="tenants → HQ (sealed updates)")
    axis.bar([i + 0.2 for i in positions], to_tenants, 0.4, label="HQ → tenants (sealed versions)")
    axis.set_xticks(list(positions), [str(n) for n in rounds], fontsize=7, rotation=30)
    axis.set_ylabel("MB, all tenants")
    axis.legend(fontsize=7)
    return _png(figure)


def _table(headers: list[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_section(title: str, *parts: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{''.join(parts)}</section>"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _image(uri: str, alt: str) -> str:
    return f'<img class="plot" src="{uri}" alt="{html.escape(alt)}">'


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 70rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; }
th { background: #f4f4f4; } img.plot { max-width: 100%; display: block; margin: 0.5rem 0; }
.note { color: #666; font-size: 0.85rem; }
"""
_SCRIPT = """
window.addEventListener("load", () => {
  const plots = Array.from(document.querySelectorAll("img.plot"));
  const rendered = plots.filter((img) => img.complete && img.naturalWidth > 0).length;
  document.body.dataset.plotsRendered = String(rendered);
  document.body.dataset.plots = String(plots.length);
});
"""


def render_report(data: ReportData) -> str:
    """The report as one HTML document."""
    sections = []
    unfilled = dict(data.unfilled)

    def _section(title: str, *parts: str) -> str:  # a section, with why a source could not fill its part, if any
        why = unfilled.pop(title, None)
        return _html_section(title, *parts, *([_note(why)] if why else []))

    if data.hit_rates:
        rows = [
            [t] + [f"{data.hit_rates[t].get(v, float('nan')):.1%}" for v in data.versions]
            for t in sorted(data.hit_rates)
        ]
        sections.append(
            _section(
                HIT_RATES,
                _image(
                    _lines(data.hit_rates, data.versions, "hit rate", "Draft hit rate on held-out prompts"),
                    "hit rate per tenant per version",
                ),
                _table(["tenant", *data.versions], rows),
            )
        )
    if data.served:
        rows = []
        for tenant, versions in sorted(data.served.items()):
            for version, (accepted, decided) in versions.items():
                low, high = wilson_interval(accepted, decided)
                rows.append(
                    [
                        tenant,
                        version,
                        f"{accepted / decided:.1%}",
                        f"{accepted} / {decided}",
                        f"[{low:.1%}, {high:.1%}]",
                    ]
                )
        sections.append(
            _section(
                SERVED,
                _image(_served_rates(data.served), "hit rate with users per version"),
                _table(["tenant", "version", "hit rate", "accepted / drafts with an outcome", "95 % interval"], rows),
            )
        )
    if data.train_losses:
        sections.append(_section(TRAINING_LOSS, _image(_loss_curves(data.train_losses), "training loss curves")))
    if data.kl_to_serving:
        sections.append(
            _section(
                "KL divergence to the serving version",
                _image(
                    _lines(
                        data.kl_to_serving,
                        data.versions,
                        "mean per-token KL",
                        "KL(candidate ‖ serving) on reference prompts",
                        data.kl_bounds,
                    ),
                    "KL to serving",
                ),
                _note("The KL gate refuses a version above its bound (evaluation.kl_bound; dashed)."),
            )
        )
    if data.problem_rates:
        sections.append(
            _section(
                PROBLEM_RATES,
                _table(
                    [
                        "tenant",
                        "problem type",
                        "version",
                        "rate",
                        "flagged / drafts",
                        "previous version",
                        "previous rate",
                    ],
                    [
                        [
                            r["tenant"],
                            r["problem_type"],
                            r["version"],
                            f"{r['rate']:.1%}",
                            f"{r['flagged']} / {r['drafts']}",
                            r["previous"] or "-",
                            "-" if r["previous_rate"] is None else f"{r['previous_rate']:.1%}",
                        ]
                        for r in data.problem_rates
                    ],
                ),
            )
        )
    if data.bytes_per_round:
        sections.append(
            _section(
                "Bytes per round",
                _image(_bytes(data.bytes_per_round), "bytes per round"),
                _table(
                    ["round", "tenant", "tenant → HQ", "HQ → tenant"],
                    [[r["round"], r["tenant"], f"{r['to_hq']:,}", f"{r['to_tenant']:,}"] for r in data.bytes_per_round],
                ),
            )
        )
    if data.dataset_versions:
        sections.append(
            _section(
                "Dataset version each tenant trained on",
                _table(
                    ["round", "tenant", "dataset version (digest of its sample set and pool states)"],
                    [[r["round"], r["tenant"], r["dataset_version"] or "-"] for r in data.dataset_versions],
                ),
            )
        )
    if data.lineage:
        sections.append(
            _section(
                "Version lineage",
                _table(
                    ["version", "parent", "round", "method", "status", "contributors (samples)", "SM3 digest"],
                    [
                        [
                            v["id"],
                            v["parent"] or "-",
                            v["round"],
                            v["method"],
                            v["status"],
                            ", ".join(f"{t}={n}" for t, n in sorted(v["contributors"].items())) or "-",
                            v["digest"][:16] + "…",
                        ]
                        for v in data.lineage
                    ],
                ),
            )
        )
    sections += [_html_section(title, _note(why)) for title, why in unfilled.items()]
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(data.title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(data.title)}</h1>"
        f"{_note(data.source + '; generated ' + generated)}{''.join(sections)}"
        f"<script>{_SCRIPT}</script></body></html>"
    )
