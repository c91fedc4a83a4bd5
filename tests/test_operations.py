"""Operator tools: pools and Label Studio, vault reveal with audit, live key rotation, proto regeneration."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedloop.cli import app
from fedloop.client.ingest.recorder import Action, FeedbackRecorder
from fedloop.client.ingest.service import MaintenanceLoop
from fedloop.client.key_rotation import StorageKeyWatcher, rotate_tenant_storage_key
from fedloop.client.samples import pools
from fedloop.client.store import ENCRYPTED_COLUMNS
from fedloop.client.store.api import SampleQuery
from fedloop.shared.keys import load_identity
from fedloop.shared.storage_keys import StorageKeyring

ROOT = Path(__file__).resolve().parents[1]


def _one_sample(tenant, prompt: str = "Where is my order?") -> str:
    api = FeedbackRecorder(tenant.pipeline)
    draft_id = api.record_draft("u1", prompt, "On its way.", "v1")
    api.record_outcome(draft_id, Action.ACCEPT, dwell_ms=3000)
    return tenant.store.samples.find(SampleQuery(draft_id=draft_id))[0].id


def test_promotion_is_a_human_decision_and_is_audited(make_tenant) -> None:
    tenant = make_tenant()
    sample_id = _one_sample(tenant)
    assert tenant.store.samples.find()[0].pool == "candidate"
    with pytest.raises(pools.ReviewError, match="operator"):
        pools.promote(tenant.store, sample_id, "core_baseline", " ")
    with pytest.raises(pools.ReviewError, match="promote goes up"):
        pools.promote(tenant.store, sample_id, "problem", "ana")
    assert pools.promote(tenant.store, sample_id, "core_baseline", "ana").pool == "core_baseline"
    assert pools.demote(tenant.store, sample_id, "secondary_baseline", "ana").pool == "secondary_baseline"
    assert pools.label(tenant.store, sample_id, "shipping", "ana").label == "shipping"
    assert [(a.actor, a.action) for a in tenant.store.audit_log.entries() if a.action.startswith("sample")] == [
        ("ana", "sample.move"),
        ("ana", "sample.move"),
        ("ana", "sample.label"),
    ]


def test_label_studio_round_trip(make_tenant, tmp_path: Path) -> None:
    tenant = make_tenant()
    first, second = _one_sample(tenant), _one_sample(tenant, "How do I reset my password?")
    out = tmp_path / "tasks.json"
    assert pools.export_label_studio(tenant.store, out) == 2
    tasks = json.loads(out.read_text())
    assert {t["data"]["sample_id"] for t in tasks} == {first, second}
    tasks[0]["annotations"] = [
        {
            "result": [
                {"from_name": "pool", "type": "choices", "value": {"choices": ["core_baseline"]}},
                {"from_name": "label", "type": "textarea", "value": {"text": ["tracking"]}},
            ]
        }
    ]
    out.write_text(json.dumps(tasks))
    assert pools.import_label_studio(tenant.store, out, "ana") == {"moved": 1, "labelled": 1}
    moved = tenant.store.samples.find(SampleQuery(sample_id=tasks[0]["data"]["sample_id"]))[0]
    assert (moved.pool, moved.label) == ("core_baseline", "tracking")
    tasks[1]["annotations"] = [{"result": [{"from_name": "pool", "value": {"choices": ["bogus"]}}]}]
    out.write_text(json.dumps(tasks))
    with pytest.raises(pools.ReviewError, match="unknown pool"):
        pools.import_label_studio(tenant.store, out, "ana")


def _config(tenant, tmp_path: Path) -> Path:
    config = tmp_path / "tenant.toml"
    config.write_text(
        f'[tenant]\nname = "{tenant.settings.tenant.name}"\nkeys_dir = "{tenant.settings.tenant.keys_dir}"\n'
        f'data_dir = "{tenant.settings.tenant.data_dir}"\n'
    )
    return config


def test_vault_reveal_is_audited_and_needs_a_reason(make_tenant, tmp_path: Path) -> None:
    tenant = make_tenant()
    api = FeedbackRecorder(tenant.pipeline)
    draft_id = api.record_draft("u1", "call 13812345678", "ok", "v1")
    config = _config(tenant, tmp_path)
    runner = CliRunner()
    args = [
        "vault",
        "reveal",
        "--config",
        str(config),
        "--record",
        draft_id,
        "--placeholder",
        "<CN_MOBILE_1>",
        "--operator",
        "ana",
    ]
    assert runner.invoke(app, args + ["--reason", " "]).exit_code == 2
    result = runner.invoke(app, args + ["--reason", "customer asked for a call back"])
    assert result.exit_code == 0 and result.output.strip() == "13812345678"
    [entry] = [e for e in tenant.store.audit_log.entries() if e.action == "vault.reveal"]
    assert entry.actor == "ana" and "13812345678" not in entry.subject


def test_key_rotation_reencrypts_while_ingestion_continues(make_tenant) -> None:
    tenant = make_tenant()
    api = FeedbackRecorder(tenant.pipeline)
    for i in range(40):
        draft_id = api.record_draft(f"u{i}", f"question {i} call 1381234{i:04d}", "reply", "v1")
        api.record_outcome(draft_id, Action.EDIT, f"final {i}", dwell_ms=3000)
    keys_dir = Path(tenant.settings.tenant.keys_dir)
    stop = threading.Event()
    written: list[str] = []

    def keep_ingesting() -> None:
        while not stop.is_set():
            user = f"live-{len(written) // 100}"  # under ingest.max_events_per_user_per_minute
            draft_id = api.record_draft(user, f"during rotation {len(written)}", "reply", "v1")
            written.append(draft_id)

    ingesting = threading.Thread(target=keep_ingesting)
    maintenance = MaintenanceLoop(tenant, StorageKeyWatcher(tenant), reload_every_s=0.5)  # as `tenant serve` runs it
    ingesting.start()
    maintenance.start()
    try:
        total = rotate_tenant_storage_key(tenant.settings, "ana")
    finally:
        stop.set()
        ingesting.join()
        maintenance.stop()
    assert total > 0 and written
    identity = load_identity(keys_dir, "acme")
    assert identity.storage.active == 2
    db = tenant.store.raw_connection()
    for table, (_, columns) in ENCRYPTED_COLUMNS.items():
        for column in columns:
            for (sealed,) in db.execute(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL"):
                assert StorageKeyring.key_number(sealed) == 2, (table, column)
    assert tenant.store.drafts.get_draft(written[-1]).prompt.startswith("during rotation")
    assert tenant.store.drafts.vault_lookup(tenant.store.samples.find()[0].draft_id, "<CN_MOBILE_1>").startswith(
        "1381234"
    )


def test_generated_grpc_code_is_reproducible_from_the_proto(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for generated in module.generate(tmp_path):
        assert generated.read_text() == (ROOT / "src" / "fedloop" / "proto" / generated.name).read_text(), (
            generated.name
        )


def test_review_cli_lists_promotes_and_reports_problem_rates(make_tenant, tmp_path: Path) -> None:
    tenant = make_tenant()
    sample_id = _one_sample(tenant, "call me on 13812345678")
    config = _config(tenant, tmp_path)
    runner = CliRunner()
    listed = runner.invoke(app, ["samples", "review", "list", "--config", str(config)])
    assert listed.exit_code == 0 and sample_id in listed.output and "13812345678" not in listed.output
    shown = runner.invoke(app, ["samples", "review", "show", sample_id, "--config", str(config)])
    assert "<CN_MOBILE_1>" in shown.output and "13812345678" not in shown.output
    promoted = runner.invoke(
        app,
        [
            "samples",
            "review",
            "promote",
            sample_id,
            "--to",
            "core_baseline",
            "--operator",
            "ana",
            "--config",
            str(config),
        ],
    )
    assert promoted.exit_code == 0 and "pool core_baseline" in promoted.output
    refused = runner.invoke(
        app,
        ["samples", "review", "promote", sample_id, "--to", "candidate", "--operator", "ana", "--config", str(config)],
    )
    assert refused.exit_code == 2 and "promote goes up" in refused.output
    rates = runner.invoke(
        app,
        [
            "samples",
            "problem-rate",
            "--type",
            "repeated_question",
            "--version",
            "v1",
            "--version",
            "v2",
            "--config",
            str(config),
        ],
    )
    assert (
        rates.exit_code == 0
        and "v1\trepeated_question\t0/1" in rates.output
        and "v2\trepeated_question\t0/0\tn/a" in rates.output
    )
