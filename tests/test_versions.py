"""The version registry's release states and `fedloop versions list|show|diff|export|promote|rollback`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from tamper_helpers import changed_value
from typer.testing import CliRunner

from fedloop.cli import app
from fedloop.server.registry import RegistryError, VersionRegistry
from fedloop.shared.adapter import adapter_state, adapter_to_bytes, attach_lora, load_base_model
from fedloop.shared.keys import init_keys, load_identity
from fedloop.shared.pooled_hit_rate import pooled_hit_rate
from fedloop.shared.run_layout import HQ_NAME, RunLayout
from fedloop.shared.settings import LoraSettings

LORA = LoraSettings(rank=4, alpha=8)


@pytest.fixture
def run_dir(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, list[str], dict[str, torch.Tensor]]:
    """A run directory whose registry holds version 0 and two trained versions of the tiny model's adapter."""
    layout = RunLayout(tmp_path / "run")
    hq = init_keys("hq", HQ_NAME, layout.keys)
    model, _ = load_base_model(tiny_model_dir)
    initial = adapter_state(attach_lora(model, LORA, seed=1))
    registry = VersionRegistry(layout.hq, hq)
    ids = [registry.create(adapter_to_bytes(initial), None, "r", 0, {}, "init", {"lora": LORA.model_dump()}).id]
    state = initial
    for round_ in (1, 2):
        state = {k: v + 0.01 * round_ for k, v in state.items()}
        ids.append(
            registry.create(
                adapter_to_bytes(state), ids[-1], "r", round_, {"acme": 10}, "exact", {"lora": LORA.model_dump()}
            ).id
        )
    registry.record_metrics(ids[2], {"hit-rate": {"acme": 0.5, "bolt": 0.3}, "num-examples": {"acme": 30, "bolt": 10}})
    registry.close()
    return layout.root, ids, state


def test_release_states_and_rollback_is_a_pointer_swap(run_dir) -> None:
    root, ids, _ = run_dir
    registry = VersionRegistry(RunLayout(root).hq, load_identity(RunLayout(root).keys, HQ_NAME))
    assert registry.stable() is None
    assert registry.promote(ids[1]).status == "canary" and registry.stable() is None
    assert registry.promote(ids[1]).status == "stable"
    with pytest.raises(RegistryError, match="only a candidate or a canary"):
        registry.promote(ids[1])
    stable = registry.stable()
    assert registry.get(ids[1]).status == "stable" and stable is not None and stable.id == ids[1]
    registry.promote(ids[2])
    registry.promote(ids[2])
    stable = registry.stable()
    assert stable is not None and stable.id == ids[2]
    back = registry.rollback(ids[2])
    assert back is not None and back.id == ids[1]
    assert registry.get(ids[2]).status == "rolled_back" and registry.signature_valid(ids[2])
    with pytest.raises(RegistryError, match="already rolled back"):
        registry.rollback(ids[2])
    registry.close()


def test_versions_cli(run_dir, tiny_model_dir: Path, tmp_path: Path) -> None:
    root, ids, state = run_dir
    runner = CliRunner()
    where = ["--run", str(root)]

    listed = runner.invoke(app, ["versions", "list", *where])
    assert listed.exit_code == 0, listed.output
    pooled = pooled_hit_rate(
        {"acme": {"hit-rate": 0.5, "num-examples": 30}, "bolt": {"hit-rate": 0.3, "num-examples": 10}}
    )
    assert pooled is not None and (pooled.hits, pooled.count) == (18, 40)  # 45 %, not the unweighted 40 %
    assert all(i in listed.output for i in ids) and "45.0% [" in listed.output and "of 40" in listed.output

    shown = json.loads(runner.invoke(app, ["versions", "show", ids[2], *where]).output)
    assert shown["signature_valid"] and shown["lineage"] == ids and shown["status"] == "candidate"

    compared = runner.invoke(app, ["versions", "diff", ids[1], ids[2], *where])
    assert compared.exit_code == 0 and "all modules" in compared.output

    for expected in ("canary", "stable"):
        promoted = runner.invoke(app, ["versions", "promote", ids[2], "--operator", "hq-ops", *where])
        assert promoted.exit_code == 0 and f"now {expected}" in promoted.output
    rolled = runner.invoke(app, ["versions", "rollback", ids[2], "--operator", "hq-ops", *where])
    assert rolled.exit_code == 0 and "stable is now none" in rolled.output

    out = tmp_path / "export"
    exported = runner.invoke(
        app, ["versions", "export", ids[2], "--out", str(out), "--base-model", str(tiny_model_dir), *where]
    )
    assert exported.exit_code == 0, exported.output
    base, _ = load_base_model(tiny_model_dir)
    loaded = adapter_state(PeftModel.from_pretrained(base, out))
    assert all(torch.allclose(loaded[k], v) for k, v in state.items())

    unknown = runner.invoke(app, ["versions", "show", "v9999-deadbeef", *where])
    assert unknown.exit_code == 2 and "unknown version" in unknown.output
    nowhere = runner.invoke(app, ["versions", "list"])
    assert nowhere.exit_code == 2 and "--run" in nowhere.output


def _hq_registry_filled(tmp_path: Path) -> VersionRegistry:
    """A registry with a row in every table: two versions, one promoted to stable, a round."""
    registry = VersionRegistry(tmp_path / "hq", init_keys("hq", "hq", tmp_path / "keys"))
    first = registry.create(b"a0", None, "run", 0, {}, "init")
    second = registry.create(b"a1", first.id, "run", 1, {"acme": 3}, "exact")
    registry.promote(second.id)
    registry.promote(second.id)
    registry.record_round("run", 1, second.id, {"contributors": {"acme": 3}})
    return registry


HQ_READERS = {
    "versions": lambda registry: registry.versions(),
    "releases": lambda registry: registry.stable(),
    "rounds": lambda registry: registry.rounds(),
}


def test_every_hq_table_is_authenticated_or_says_why_not(tmp_path: Path) -> None:
    from fedloop.server.registry import MACED_COLUMNS, UNMACED_TABLES

    registry = _hq_registry_filled(tmp_path)
    db = sqlite3.connect(tmp_path / "hq" / "registry.db")
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == set(MACED_COLUMNS) | set(UNMACED_TABLES) and set(HQ_READERS) == set(MACED_COLUMNS)
    registry.close()


def _hq_plain_columns() -> list[tuple[str, str]]:
    from fedloop.server.registry import MACED_COLUMNS

    return [(table, column) for table, columns in MACED_COLUMNS.items() for column in columns[1:]]


@pytest.mark.parametrize(("table", "column"), _hq_plain_columns())
def test_an_sql_edit_of_any_hq_row_is_caught_on_read(tmp_path: Path, table: str, column: str) -> None:
    """A version's status (which one is stable), the release pointer and the round reports carried no MAC."""
    registry = _hq_registry_filled(tmp_path)
    HQ_READERS[table](registry)
    changed = changed_value(column)
    with sqlite3.connect(tmp_path / "hq" / "registry.db") as db:
        assert db.execute(f"UPDATE {table} SET {column} = {changed}").rowcount >= 1
    with pytest.raises(RegistryError, match=rf"row {table}/.* failed its integrity check"):
        HQ_READERS[table](registry)
    registry.close()
