"""End to end in Flower's Simulation Engine: 3 tenants, a tiny model, 2 rounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedloop.client.ingest.recorder import Action, FeedbackRecorder
from fedloop.client.ingest.runtime import open_tenant
from fedloop.client.store import FeedbackStore
from fedloop.client.tenant_settings import TenantSection, TenantSettings
from fedloop.server.app import run_hq
from fedloop.server.registry import VersionRegistry
from fedloop.shared.keys import load_identity
from fedloop.shared.run_layout import HQ_NAME
from fedloop.shared.settings import (
    FederationSection,
    LoraSettings,
    PathsSection,
    Settings,
    SimulationSection,
    TrackingSection,
    TrainSection,
)
from fedloop.simulation.federation import prepare_run, run_federation
from fedloop.simulation.product import read_product_log

pytestmark = pytest.mark.slow


class RecordingGrid:
    """A Grid proxy that keeps the wire bytes of every reply HQ receives."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.replies: list[bytes] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        from flwr.common.serde import recorddict_to_proto

        self.replies += [recorddict_to_proto(r.content).SerializeToString() for r in replies if r.has_content()]
        return replies


# The simulated tenants' own settings: gates, held-out slice and release sized for 12 users per round (as the
# demo's are), and
# drift bounds for a tiny model trained hard on one reply style (it moves KL ~2.7 and general NLL ~45 %).
TENANT_CONFIG = """
[evaluation]
kl_bound = 5.0
forgetting_bound = 1.0
held_out_share = 0.25
held_out_after_clusters = 0
min_held_out = 4
max_new_tokens = 24
[release]
canary_share = 0.5
widened_share = 0.5
mixture_scale = 0.3
min_drafts_per_arm = 4
min_users_per_arm = 2
promote_after_h = 0.0
guard_h = 0.0
decide_every_outcomes = 2
"""


@pytest.fixture(scope="module")
def federated_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, redactor):
    tracking_dir = tmp_path_factory.mktemp("mlflow")
    tenant_config = tmp_path_factory.mktemp("tenant-config") / "tenant.toml"
    tenant_config.write_text(TENANT_CONFIG)
    settings = Settings(
        federation=FederationSection(run_name="e2e", tenants=("acme", "bolt", "cobalt"), rounds=2, seed=3),
        paths=PathsSection(model=str(tiny_model_dir), runs_dir=str(tmp_path_factory.mktemp("runs"))),
        lora=LoraSettings(
            rank=8,
            alpha=16,
            target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        ),
        train=TrainSection(epochs=20, max_steps=40, batch_size=8, learning_rate=1e-2, max_seq_len=96),
        simulation=SimulationSection(
            conversations_per_round=12, max_new_tokens=24, tenant_config=str(tenant_config), styles=("brief",)
        ),  # one shared, learnable preference
        tracking=TrackingSection(
            mlflow_uri=f"sqlite:///{tracking_dir / 'mlflow.db'}",
            experiment="e2e",
            artifacts=str(tracking_dir / "artifacts"),
        ),
    )
    layout = prepare_run(settings, Path(settings.paths.runs_dir))
    canaries = {}
    for tenant in settings.federation.tenants:
        canary = f"CANARY-{tenant}-d41d8cd98f"
        canaries[tenant] = canary
        runtime = open_tenant(
            TenantSettings(
                tenant=TenantSection(name=tenant, keys_dir=str(layout.keys), data_dir=str(layout.tenant(tenant)))
            ),
            load_identity(layout.keys, tenant),
            redactor=redactor,
        )
        recorder = FeedbackRecorder(runtime.pipeline)
        for i in range(3):
            draft_id = recorder.record_draft(f"user-{canary}", f"question {canary} {i}", f"draft {canary}", "v-pre")
            recorder.record_outcome(draft_id, Action.EDIT, f"final reply {canary} {i}", dwell_ms=2000)
        runtime.close()
    recording: list[RecordingGrid] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        recording.append(RecordingGrid(grid))
        run_hq(cast(Grid, recording[0]), settings, layout, context.run_id)  # a Grid that also records

    summary = run_federation(settings, layout, server_app=server_app)
    return settings, layout, summary, recording[0].replies, canaries


def test_a_version_per_round_with_the_right_parent(federated_run) -> None:
    settings, layout, summary, _, _ = federated_run
    lineage = summary["lineage"]
    assert [v["round"] for v in lineage] == [0, 1, 2]
    assert lineage[0]["parent"] is None
    assert [v["parent"] for v in lineage[1:]] == [v["id"] for v in lineage[:-1]]
    assert all(set(v["contributors"]) == set(settings.federation.tenants) for v in lineage[1:])
    assert summary["signatures_valid"]
    rounds = {r["round"]: r for r in summary["rounds"]}
    assert all(not rounds[r]["refused"] for r in (1, 2))
    assert all(set(rounds[r]["evaluation"]) == set(settings.federation.tenants) for r in (0, 1, 2))
    registry = VersionRegistry(layout.hq, load_identity(layout.keys, HQ_NAME))
    assert [v.id for v in registry.versions()] == [v["id"] for v in lineage]
    registry.load_adapter(lineage[-1]["id"])  # decrypts and matches its digest
    registry.close()


def test_every_tenant_verified_and_installed_every_version(federated_run) -> None:
    settings, layout, summary, _, _ = federated_run
    expected = [(v["id"], v["round"], v["parent"], v["digest"]) for v in summary["lineage"]]
    for tenant in settings.federation.tenants:
        identity = load_identity(layout.keys, tenant)
        store = FeedbackStore(layout.tenant(tenant) / "feedback.db", identity.storage, identity.pseudonym_key)
        installed = [(v.version_id, v.round, v.parent, v.digest) for v in store.versions.installed()]
        store.close()
        assert installed == expected, tenant


def test_no_canary_in_any_byte_sent_to_hq(federated_run) -> None:
    _, layout, _, replies, canaries = federated_run
    assert len(replies) >= 3 * 4  # enrol + round-0 evaluation + 2 x (train + evaluate)
    for canary in canaries.values():
        for needle in (canary.encode(), canary.encode("utf-16-le")):
            assert not any(needle in reply for reply in replies)
    for path in layout.hq.rglob("*"):
        if path.is_file():
            assert not any(c.encode() in path.read_bytes() for c in canaries.values()), path


def test_the_product_drafts_through_released_versions_and_the_tenants_learn_its_users_style(federated_run) -> None:
    """All tenants' users want the same templated reply style; the tenants learn it from their product's feedback.

    Round 1's drafts all come from the first version (the base model, bootstrapped by every tenant); round 2's
    also from the canary the tenants' gates let through. The last version drafts much closer to the style than
    the base model for users it never saw.
    """
    settings, layout, summary, _, _ = federated_run
    first = summary["lineage"][0]["id"]
    served = {tenant: read_product_log(layout.product_log(tenant)) for tenant in settings.federation.tenants}
    assert all([r.round for r in rounds] == [1, 2] for rounds in served.values())
    assert all(set(rounds[0].served) == {first} and sum(rounds[0].served.values()) == 12 for rounds in served.values())
    assert any(set(rounds[1].served) - {first} for rounds in served.values()), "no trained version drafted in round 2"
    base, last = (_style_similarity(settings, layout, v) for v in (None, summary["lineage"][-1]["id"]))
    assert last > base + 0.1, (base, last)


def _style_similarity(settings: Settings, layout, version: str | None) -> float:
    """Mean similarity of a version's drafts (None: the base model) to the preferred replies of 48 fresh users."""
    from fedloop.client.evaluate.hit_rate import offline_hit_rate, reference_hit_rate
    from fedloop.client.samples.held_out import Reference
    from fedloop.shared.adapter import adapter_from_bytes, attach_lora, load_adapter_state, load_base_model
    from fedloop.simulation.product import TenantTraffic

    base, tokenizer = load_base_model(Path(settings.paths.model))
    model = attach_lora(base, settings.lora, seed=0)
    references = [
        Reference(c.prompt, c.preferred_reply)
        for c in TenantTraffic("fresh-users", "brief", seed=99).conversations(48, batch=-1)
    ]
    if version is None:
        return reference_hit_rate(model, tokenizer, references, None, 0.8, 24).mean_similarity
    identity = load_identity(layout.keys, "acme")
    store = FeedbackStore(layout.tenant("acme") / "feedback.db", identity.storage, identity.pseudonym_key)
    load_adapter_state(model, adapter_from_bytes(store.versions.adapter(version)))
    store.close()
    return offline_hit_rate(model, tokenizer, references, 0.8, 24).mean_similarity


def test_offline_hit_rates_are_measured_on_held_out_finals_with_their_interval(federated_run) -> None:
    _, _, summary, _, _ = federated_run
    last = summary["rounds"][-1]["evaluation"]
    for metrics in last.values():
        assert metrics["num-examples"] >= 1
        assert metrics["hit-rate-low"] <= metrics["hit-rate"] <= metrics["hit-rate-high"]


@pytest.mark.browser
def test_the_run_report_renders_its_plots_in_a_browser(federated_run, tmp_path: Path) -> None:
    import shutil
    import subprocess

    from typer.testing import CliRunner

    from fedloop.cli import app

    _, layout, summary, _, _ = federated_run
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--run", str(layout.root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    for heading in (
        "Hit rate per tenant per version",
        "Hit rate with users per version (their outcomes)",
        "Training loss",
        "KL divergence to the serving version",
        "Bytes per round",
        "Dataset version each tenant trained on",
        "Version lineage",
    ):
        assert heading in page
    assert all(v["id"] in page for v in summary["lineage"]) and "http" not in page.split("<script>")[0]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is needed to check the report renders: `make test` installs it (Debian's chromium)"
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            out.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    plots = page.count('class="plot"')
    assert plots >= 4 and f'data-plots-rendered="{plots}"' in dom and f'data-plots="{plots}"' in dom


def test_each_round_is_tracked_in_mlflow_with_its_version(federated_run) -> None:
    import mlflow

    settings, _, summary, _, _ = federated_run
    client = mlflow.tracking.MlflowClient(settings.tracking.mlflow_uri)
    experiment = client.get_experiment_by_name("e2e")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "hit-rate/pooled")
    measured = [
        r["round"]
        for r in summary["rounds"]  # rounds in which some tenant had held-out finals
        if any(m["num-examples"] for m in r["evaluation"].values())
    ]
    assert [m.step for m in history] == measured and measured[-2:] == [1, 2]
    last = summary["lineage"][-1]["id"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, f"versions/{last}")}
    assert artifacts == {f"versions/{last}/adapter_config.json", f"versions/{last}/adapter_model.safetensors"}
