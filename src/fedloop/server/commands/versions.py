"""`fedloop versions`: HQ's view of the version registry (list, show, diff, export, promote, rollback)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedloop.server.registry import RegistryError, VersionRecord, VersionRegistry
from fedloop.shared.console import audited, command_group, fail, output_console
from fedloop.shared.keys import KeyFileError, load_identity
from fedloop.shared.pooled_hit_rate import pooled_hit_rate
from fedloop.shared.protocol import HIT_RATE, NUM_EXAMPLES
from fedloop.shared.run_layout import HQ_NAME, RunLayout
from fedloop.shared.settings import LoraSettings

versions_app = command_group("Inspect and release global versions in HQ's registry.")
RunDir = Annotated[Path | None, typer.Option("--run", help="A run directory (runs/<run>/): its hq/ and keys/.")]
RegistryDir = Annotated[Path | None, typer.Option("--registry", help="HQ's registry directory (instead of --run).")]
KeysDir = Annotated[Path | None, typer.Option("--keys", help="HQ's key directory (instead of --run).")]


@contextmanager
def open_registry(run: Path | None, registry_dir: Path | None, keys_dir: Path | None) -> Iterator[VersionRegistry]:
    """Open the registry named by --run, or by --registry and --keys; exits with a clear error otherwise."""
    if run is not None:
        registry_dir, keys_dir = RunLayout(run).hq, RunLayout(run).keys
    if registry_dir is None or keys_dir is None:
        fail("say which registry: --run runs/<run> or both --registry DIR and --keys DIR")
    if not (registry_dir / "registry.db").exists():
        fail(f"no registry at {registry_dir} (registry.db missing): check --run / --registry")
    try:
        hq = load_identity(keys_dir, HQ_NAME)
    except KeyFileError as err:
        fail(str(err))
    registry = VersionRegistry(registry_dir, hq)
    try:
        yield registry
    except RegistryError as err:
        fail(str(err))
    finally:
        registry.close()


def _lora(record: VersionRecord) -> LoraSettings:
    lora = dict(record.settings.get("lora", {}))
    if "target_modules" in lora:
        lora["target_modules"] = tuple(lora["target_modules"])
    return LoraSettings(**lora)


def _mean_hit_rate(record: VersionRecord) -> str:
    """The version's pooled hit rate over its tenants' held-out finals, with its interval and count."""
    rates, counts = record.metrics.get(HIT_RATE, {}), record.metrics.get(NUM_EXAMPLES, {})
    pooled = pooled_hit_rate({t: {HIT_RATE: rate, NUM_EXAMPLES: counts.get(t, 0)} for t, rate in rates.items()})
    return "-" if pooled is None else str(pooled)


@versions_app.command("list")
def list_versions(run: RunDir = None, registry: RegistryDir = None, keys: KeysDir = None) -> None:
    """Every version, oldest first, with status, lineage and mean hit rate."""
    with open_registry(run, registry, keys) as versions:
        stable = versions.stable()
        table = Table(title="Global versions")
        for column in (
            "version",
            "parent",
            "run",
            "round",
            "method",
            "status",
            "contributors",
            "hit rate (pooled, 95 %, n)",
        ):
            table.add_column(column)
        for record in versions.versions():
            marker = " ← stable" if stable and stable.id == record.id else ""
            table.add_row(
                record.id,
                record.parent or "-",
                record.run,
                str(record.round),
                record.method,
                record.status + marker,
                ", ".join(f"{t}={n}" for t, n in sorted(record.contributors.items())) or "-",
                _mean_hit_rate(record),
            )
        output_console().print(table)


@versions_app.command("show")
def show(version: str, run: RunDir = None, registry: RegistryDir = None, keys: KeysDir = None) -> None:
    """One version as JSON: manifest, status, metrics, and whether HQ's signature verifies."""
    with open_registry(run, registry, keys) as versions:
        record = versions.get(version)
        document = {
            **asdict(record),
            "signature_valid": versions.signature_valid(version),
            "lineage": [v.id for v in versions.lineage(version)],
        }
        typer.echo(json.dumps(document, indent=2, sort_keys=True))


@versions_app.command("diff")
def diff(first: str, second: str, run: RunDir = None, registry: RegistryDir = None, keys: KeysDir = None) -> None:
    """How far apart two versions are: per module, ‖ΔW₂ − ΔW₁‖ and its size relative to ‖ΔW₁‖."""
    import torch

    from fedloop.server.aggregation import dense_deltas, lora_scaling
    from fedloop.shared.adapter import adapter_from_bytes

    with open_registry(run, registry, keys) as versions:
        deltas = []
        for version in (first, second):
            record = versions.get(version)
            lora = _lora(record)
            state = adapter_from_bytes(versions.load_adapter(version))
            deltas.append(dense_deltas(state, lora_scaling(lora.alpha, lora.rank)))
        if deltas[0].keys() != deltas[1].keys():
            fail(f"{first} and {second} adapt different modules; they cannot be compared")
        table = Table(title=f"{first} → {second}")
        for column in ("module", "‖ΔW₂ − ΔW₁‖", "relative to ‖ΔW₁‖"):
            table.add_column(column)
        total, base = 0.0, 0.0
        for module in sorted(deltas[0]):
            change = float(torch.linalg.matrix_norm(deltas[1][module] - deltas[0][module]))
            size = float(torch.linalg.matrix_norm(deltas[0][module]))
            total, base = total + change**2, base + size**2
            table.add_row(module.replace("\0", "."), f"{change:.4g}", f"{change / size:.3f}" if size else "-")
        table.add_row("[bold]all modules[/bold]", f"{total**0.5:.4g}", f"{(total / base) ** 0.5:.3f}" if base else "-")
        output_console().print(table)


@versions_app.command("export")
def export(
    version: str,
    out: Path = typer.Option(..., help="Directory for adapter_config.json + weights."),
    base_model: str = typer.Option(
        "models/smollm2-135m-instruct", help="Written as base_model_name_or_path in adapter_config.json."
    ),
    run: RunDir = None,
    registry: RegistryDir = None,
    keys: KeysDir = None,
) -> None:
    """Write a version in the standard PEFT layout (`PeftModel.from_pretrained(base, OUT)` loads it)."""
    from fedloop.shared.adapter import adapter_from_bytes, export_peft

    if out.exists() and any(out.iterdir()):
        fail(f"{out} is not empty; choose a new directory for the export")
    with open_registry(run, registry, keys) as versions:
        record = versions.get(version)
        export_peft(adapter_from_bytes(versions.load_adapter(version)), _lora(record), base_model, out)
    typer.echo(f"exported {version} to {out}")


OPERATOR = typer.Option(..., "--operator", help="Who decides (recorded in HQ's audit log).")


@versions_app.command("promote")
def promote(
    version: str, operator: str = OPERATOR, run: RunDir = None, registry: RegistryDir = None, keys: KeysDir = None
) -> None:
    """candidate → canary, or canary → stable."""
    with open_registry(run, registry, keys) as versions:
        record = versions.promote(version, audited(operator))
    typer.echo(f"{version} is now {record.status}")


@versions_app.command("rollback")
def rollback(
    version: str, operator: str = OPERATOR, run: RunDir = None, registry: RegistryDir = None, keys: KeysDir = None
) -> None:
    """Mark a version rolled back; if it was stable, the stable pointer goes back to the previous one."""
    with open_registry(run, registry, keys) as versions:
        stable = versions.rollback(version, audited(operator))
    typer.echo(f"{version} rolled back; stable is now {stable.id if stable else 'none'}")
