"""Tenant release: canary buckets by pseudonym hash, widening, promotion, automatic rollback, pointer swaps."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from fedloop.client.ingest.recorder import Action, FeedbackRecorder
from fedloop.client.release.canary import bucket, in_canary
from fedloop.client.release.controller import ReleaseController, ReleaseError, now_ms
from fedloop.client.store.api import EvaluationKind, InstalledVersion
from fedloop.client.tenant_settings import ReleaseSection

# No dwell times (the ramp's clock has its own test), few drafts before a decision.
SETTINGS = ReleaseSection(
    guard_h=0, canary_share=0.05, widened_share=0.30, canary_dwell_h=0, promote_after_h=0, min_drafts_per_arm=30
)
# A large canary share, so a few hundred drafts give the sequential test enough of both arms.
WIDE = SETTINGS.model_copy(update={"canary_share": 0.30, "widened_share": 0.50})
HOUR_MS = 3_600_000


def test_canary_buckets_are_stable_nested_and_sized_by_the_share() -> None:
    users = [f"pseudonym-{i}" for i in range(20_000)]
    small = {u for u in users if in_canary(u, 0.05)}
    wide = {u for u in users if in_canary(u, 0.30)}
    assert small <= wide
    assert len(small) / len(users) == pytest.approx(0.05, abs=0.005)
    assert len(wide) / len(users) == pytest.approx(0.30, abs=0.01)


def test_a_users_bucket_is_the_same_in_every_process() -> None:
    """Keyed on SM3 of the pseudonym, not on Python's per-process salted hash(): a restarted tenant keeps every user
    on the version they saw."""
    users = [f"pseudonym-{i}" for i in range(50)]
    probe = "import sys\nfrom fedloop.client.release.canary import bucket\nprint([bucket(u) for u in sys.argv[1:]])"
    for seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", probe, *users],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert done.stdout.strip() == str([bucket(u) for u in users])
    assert bucket("alice") == pytest.approx(0.967545374120)  # pinned: a changed hash would move every user


def steps(count: int, rate: float) -> bool:
    """Whether the count-th event is one of an evenly spread `rate` share (floor(n x rate) after n)."""
    return int(count * rate + 1e-9) > int((count - 1) * rate + 1e-9)


def serve(
    controller: ReleaseController,
    recorder: FeedbackRecorder,
    store,
    accept_rate: dict[str, float],
    drafts: int,
    reject_rate: dict[str, float] | None = None,
) -> Counter:
    """`drafts` users ask; each draft comes from the routed version and is accepted at that version's rate."""
    served: Counter = Counter()
    for i in range(drafts):
        user = f"user-{i}-{len(store.versions.release_history())}"
        version = controller.route(store.pseudonym(user))
        assert version is not None
        served[version] += 1
        draft_id = recorder.record_draft(user, "Where is my parcel?", "It ships today.", version)
        if steps(served[version], accept_rate[version]):  # exactly floor(n x rate) accepts after n drafts
            recorder.record_outcome(draft_id, Action.ACCEPT, dwell_ms=3000)
        elif reject_rate and steps(served[version], reject_rate[version]):
            recorder.record_outcome(draft_id, Action.REJECT, "It ships today, tracking by mail.", 3000)
        else:
            recorder.record_outcome(draft_id, Action.EDIT, "It ships today, promised.", 3000)
    return served


def canary_running(make_tenant):
    """A tenant whose v1 serves and v2 runs as a canary on 30 % of users (WIDE)."""
    tenant = make_tenant()
    controller, recorder = ReleaseController(tenant.store, WIDE), FeedbackRecorder(tenant.pipeline)
    controller.offer("v1", "gates passed")
    controller.offer("v2", "gates passed")
    return tenant, controller, recorder


def test_a_better_canary_is_widened_then_promoted(make_tenant) -> None:
    tenant = make_tenant()
    controller, recorder = ReleaseController(tenant.store, WIDE), FeedbackRecorder(tenant.pipeline)
    assert (first := controller.offer("v1", "gates passed")) is not None and first.action == "bootstrap"
    assert controller.route(tenant.store.pseudonym("anyone")) == "v1"
    assert (second := controller.offer("v2", "gates passed")) is not None and second.action == "canary"
    served = serve(controller, recorder, tenant.store, {"v1": 0.30, "v2": 0.70}, 500)
    assert served["v2"] / sum(served.values()) == pytest.approx(0.30, abs=0.06)
    comparison = controller.compare()
    assert comparison is not None and comparison.hit_gap.low >= WIDE.promote_margin  # better, with confidence
    widened = controller.decide()  # stage 1 ends after its dwell (0 h here) without harm
    assert widened is not None and widened.action == "widen" and widened.share == 0.50
    assert controller.decide() is None  # a fresh window: nothing decided before it fills
    serve(controller, recorder, tenant.store, {"v1": 0.30, "v2": 0.70}, 300)
    promoted = controller.decide()
    assert promoted is not None and (promoted.action, promoted.serving, promoted.canary) == ("promote", "v2", None)
    actions = [entry.action for entry in tenant.store.audit_log.entries()]
    assert actions[-3:] == ["release-canary", "release-widen", "release-promote"]


def test_the_ramp_waits_its_dwell_times_even_for_a_clearly_better_canary(make_tenant) -> None:
    """Seeds: 24 h at 5 % (here 30 %, WIDE's first stage), 72 h from the canary's start before 100 %."""
    offset = [-30 * HOUR_MS]  # the canary began 30 h ago
    settings = WIDE.model_copy(update={"canary_dwell_h": 24.0, "promote_after_h": 72.0})
    tenant = make_tenant()
    controller = ReleaseController(tenant.store, settings, clock=lambda: now_ms() + offset[0])
    recorder = FeedbackRecorder(tenant.pipeline)
    controller.offer("v1", "gates passed")
    controller.offer("v2", "gates passed")
    serve(controller, recorder, tenant.store, {"v1": 0.30, "v2": 0.70}, 500)
    offset[0] = -10 * HOUR_MS
    assert controller.decide() is None  # 20 h at 30 %: still in stage 1, however good it looks
    offset[0] = 0
    assert (widened := controller.decide()) is not None and widened.action == "widen"  # 30 h: a fresh window
    serve(controller, recorder, tenant.store, {"v1": 0.30, "v2": 0.70}, 400)
    assert (comparison := controller.compare()) is not None and comparison.wins(settings.promote_margin)
    assert controller.decide() is None  # better with confidence, but the canary is 30 h old, not 72
    offset[0] = 43 * HOUR_MS
    assert (promoted := controller.decide()) is not None and promoted.action == "promote"


def test_a_newer_version_waits_for_the_running_canary_and_follows_it(make_tenant) -> None:
    tenant, controller, _ = canary_running(make_tenant)
    for newer in ("v3", "v4"):  # not superseded: v2 keeps its window
        assert (state := controller.offer(newer, "gates passed")) is not None and state.canary == "v2"
    assert controller.waiting() == "v4"  # only the newest waits
    assert [e.action for e in tenant.store.audit_log.entries()][-2:] == ["release-wait", "release-wait"]
    after = controller.promote("operator: v2 is fine")
    assert (after.action, after.serving, after.canary) == ("canary", "v2", "v4")
    assert controller.waiting() is None


def test_looks_read_only_new_rows_and_agree_with_a_rebuild_from_the_store(make_tenant) -> None:
    tenant, controller, recorder = canary_running(make_tenant)
    serve(controller, recorder, tenant.store, {"v1": 0.40, "v2": 0.45}, 200)
    controller.compare()
    serve(controller, recorder, tenant.store, {"v1": 0.40, "v2": 0.45}, 200)
    kept = controller.compare()
    rebuilt = ReleaseController(tenant.store, WIDE).compare()  # a restarted service reads its window once
    assert kept == rebuilt and kept.canary.decided + kept.control.decided == 400


def test_a_worse_canary_is_rolled_back_automatically(make_tenant) -> None:
    tenant, controller, recorder = canary_running(make_tenant)
    serve(controller, recorder, tenant.store, {"v1": 0.70, "v2": 0.30}, 500)
    rolled = controller.decide()
    assert rolled is not None and (rolled.action, rolled.serving, rolled.canary) == ("rollback", "v1", None)
    assert rolled.reason.startswith("automatic (hit rate lower with confidence)")
    assert controller.route(tenant.store.pseudonym("user-1")) == "v1"


def test_a_canary_with_more_rejects_is_rolled_back_despite_more_accepts(make_tenant) -> None:
    tenant, controller, recorder = canary_running(make_tenant)
    serve(controller, recorder, tenant.store, {"v1": 0.40, "v2": 0.45}, 500, reject_rate={"v1": 0.05, "v2": 0.90})
    rolled = controller.decide()
    assert rolled is not None and rolled.action == "rollback" and "reject rate higher" in rolled.reason


def test_a_canary_as_good_as_control_keeps_collecting(make_tenant) -> None:
    tenant, controller, recorder = canary_running(make_tenant)
    assert controller.decide().action == "widen"  # no harm after stage 1's dwell (0 h here)
    serve(controller, recorder, tenant.store, {"v1": 0.50, "v2": 0.50}, 400)
    assert controller.decide() is None and controller.state().canary == "v2"
    comparison = controller.compare()
    assert comparison is not None and comparison.hit_gap.low < 0 < comparison.hit_gap.high


def test_manual_rollback_goes_back_past_rolled_back_versions(make_tenant) -> None:
    tenant = make_tenant()
    controller = ReleaseController(tenant.store, SETTINGS)
    with pytest.raises(ReleaseError, match="nothing has been released"):
        controller.rollback("operator")
    for version in ("v1", "v2", "v3"):
        controller.offer(version, "gates passed")
        if version != "v1":
            controller.promote("operator")
    assert controller.rollback("operator: complaints").serving == "v2"
    assert controller.rollback("operator: still bad").serving == "v1"
    with pytest.raises(ReleaseError, match="first version"):
        controller.rollback("operator")


def test_release_cli_shows_and_moves_the_pointer_with_an_audited_operator(tmp_path) -> None:
    from typer.testing import CliRunner

    from fedloop.cli import app
    from fedloop.client.store import FeedbackStore
    from fedloop.shared.keys import init_keys

    identity = init_keys("tenant", "acme", tmp_path / "keys")
    config = tmp_path / "tenant.toml"
    config.write_text(f'[tenant]\nname = "acme"\nkeys_dir = "{tmp_path / "keys"}"\ndata_dir = "{tmp_path / "data"}"\n')
    runner = CliRunner()
    empty = runner.invoke(app, ["release", "status", "--config", str(config)])
    assert empty.exit_code == 0 and "nothing released yet" in empty.output
    store = FeedbackStore(tmp_path / "data" / "feedback.db", identity.storage, identity.pseudonym_key)
    controller = ReleaseController(store, SETTINGS)
    controller.offer("v1", "gates passed")
    controller.offer("v2", "gates passed")
    store.close()
    shown = runner.invoke(app, ["release", "status", "--config", str(config)])
    assert shown.exit_code == 0 and "canary" in shown.output and "v2 (5%)" in shown.output
    assert "hit-rate gap" in shown.output and "always valid" in shown.output
    refused = runner.invoke(app, ["release", "rollback", "--config", str(config), "--operator", " ", "--reason", "x"])
    assert refused.exit_code == 2 and "must not be empty" in refused.output
    rolled = runner.invoke(
        app,
        [
            "release",
            "rollback",
            "--config",
            str(config),
            "--operator",
            "li.wei",
            "--reason",
            "complaints from the support team",
        ],
    )
    assert rolled.exit_code == 0 and "serving v1, canary none" in rolled.output
    store = FeedbackStore(tmp_path / "data" / "feedback.db", identity.storage, identity.pseudonym_key)
    last = store.audit_log.entries()[-1]
    assert (last.actor, last.action) == ("li.wei", "release-rollback")
    store.versions.install(InstalledVersion("v3", 3, None, "digest-3"), b"adapter")
    ReleaseController(store, SETTINGS).offer("v2", "round 4 evaluated it again")  # declined: not offered
    store.close()

    def operator(*command: str) -> str:
        done = runner.invoke(
            app, ["release", *command, "--config", str(config), "--operator", "li.wei", "--reason", "x"]
        )
        assert done.exit_code == 0, done.output
        return done.output

    status = runner.invoke(app, ["release", "status", "--config", str(config)]).output
    assert "not offered or served here: v2 (rolled back: li.wei: complaints from the support team)" in status
    assert "v2 re-admitted" in operator("readmit", "--version", "v2")
    store = FeedbackStore(tmp_path / "data" / "feedback.db", identity.storage, identity.pseudonym_key)
    ReleaseController(store, SETTINGS).offer("v2", "round 5")  # re-admitted: a canary again
    store.close()
    assert "supersede: serving v1, canary v3 on 5%" in operator("supersede", "--version", "v3")
    assert "guard: serving v3, canary v1 on 5%" in operator("promote")  # the default guard keeps 5 % on v1
    assert "settle: serving v3, canary none" in operator("promote")  # an operator ends the guard


def test_complaints_count_only_decided_drafts_and_a_canary_with_many_unanswered_drafts_still_decides(
    make_tenant,
) -> None:
    """Issue 30: `arm_stats` counted flagged drafts among all shown drafts but divided by decided ones.
    `long_no_response` flags exactly the drafts without an outcome, so a canary whose users answered few drafts had
    flagged > decided; `gap_interval` raised `math domain error`, the release loop swallowed it, and the canary never
    decided. Below that point such an arm was rolled back for "complaints"."""
    tenant, controller, recorder = canary_running(make_tenant)
    serve(controller, recorder, tenant.store, {"v1": 0.50, "v2": 0.50}, 400)
    for i in range(800):  # the canary's users leave more drafts unanswered than answered: each flagged no-response
        user = f"silent-{i}"
        if controller.route(tenant.store.pseudonym(user)) == "v2":
            draft_id = recorder.record_draft(user, "Is it in stock?", "Yes.", "v2")
            tenant.store.drafts.record_problem(draft_id, "long_no_response", "v2", 1)
    comparison = controller.compare()
    decided = controller.decide()  # no crash, no false "complaints": at most stage 1 ends (its dwell is 0 h here)
    assert (decided is None or decided.action == "widen") and controller.state().canary == "v2"
    assert comparison is not None
    canary = comparison.canary
    print(f"canary: {canary.decided} decided, {canary.flagged} flagged among them")
    assert canary.flagged == 0 < canary.decided  # unanswered drafts are in no denominator and no numerator


def test_a_rolled_back_version_is_never_offered_again_until_an_operator_readmits_it(make_tenant) -> None:
    """Issue 30: v0003, rolled back by the operator, was made a canary again by the next run's round 0."""
    tenant, controller, _ = canary_running(make_tenant)
    controller.rollback("operator: complaints")
    assert "v2" in controller.declined() and controller.offer("v2", "round 0 evaluated it again").canary is None
    assert [e.action for e in tenant.store.audit_log.entries()][-1] == "release-declined"
    with pytest.raises(ReleaseError, match="nothing to re-admit"):
        controller.readmit("v1", "operator")
    controller.readmit("v2", "operator: the complaints were about something else")
    assert "v2" not in controller.declined()
    assert (again := controller.offer("v2", "gates passed")) is not None and again.canary == "v2"


def test_rolling_back_the_serving_version_declines_it_and_a_refused_version_is_not_offered(make_tenant) -> None:
    tenant = make_tenant()
    controller = ReleaseController(tenant.store, SETTINGS)
    controller.offer("v1", "gates passed")
    controller.offer("v2", "gates passed")
    controller.promote("operator")
    assert controller.rollback("operator: the guard was not fast enough").serving == "v1"
    assert controller.declined()["v2"].startswith("rolled back: operator")
    controller.decline("v3", EvaluationKind.REFUSED, "kl_to_serving 9.1 (refused)")
    assert (state := controller.offer("v3", "a later round")) is not None and state.serving == "v1"
    assert controller.declined() == {
        "v2": "rolled back: operator: the guard was not fast enough",
        "v3": "refused: kl_to_serving 9.1 (refused)",
    }


def test_the_guard_rolls_back_a_version_that_turns_worse_after_promotion(make_tenant) -> None:
    settings = WIDE.model_copy(update={"guard_h": 72.0, "holdback_share": 0.30})
    tenant = make_tenant()
    controller, recorder = ReleaseController(tenant.store, settings), FeedbackRecorder(tenant.pipeline)
    controller.offer("v1", "gates passed")
    controller.offer("v2", "gates passed")
    canary_users = {u for u in (f"u{i}" for i in range(3000)) if controller.route(tenant.store.pseudonym(u)) == "v2"}
    guarded = controller.promote("operator: v2 looks good")
    assert (guarded.action, guarded.serving, guarded.canary, guarded.share) == ("guard", "v2", "v1", 0.30)
    routes = {u: controller.route(tenant.store.pseudonym(u)) for u in (f"u{i}" for i in range(3000))}
    holdback = {u for u, version in routes.items() if version == "v1"}
    assert len(holdback) / len(routes) == pytest.approx(0.30, abs=0.03)
    assert not holdback & canary_users  # the holdback never saw the canary: its covariates are untouched by it
    serve(controller, recorder, tenant.store, {"v1": 0.60, "v2": 0.30}, 500)  # v2 drafts worse than it did
    rolled = controller.decide()
    assert rolled is not None and (rolled.action, rolled.serving, rolled.canary) == ("rollback", "v1", None)
    assert rolled.reason.startswith("automatic (guard: hit rate lower with confidence)")
    assert controller.route(tenant.store.pseudonym("u1")) == "v1" and "v2" in controller.declined()


def test_a_guard_without_harm_settles_after_its_window_and_the_waiting_version_follows(make_tenant) -> None:
    offset = [-80 * HOUR_MS]
    settings = WIDE.model_copy(update={"guard_h": 72.0, "holdback_share": 0.30})
    tenant = make_tenant()
    controller = ReleaseController(tenant.store, settings, clock=lambda: now_ms() + offset[0])
    recorder = FeedbackRecorder(tenant.pipeline)
    controller.offer("v1", "gates passed")
    controller.offer("v2", "gates passed")
    assert controller.promote("operator").action == "guard"
    controller.offer("v3", "gates passed")  # waits: the guard holds the canary slot
    serve(controller, recorder, tenant.store, {"v1": 0.50, "v2": 0.50}, 400)
    offset[0] = -10 * HOUR_MS
    assert controller.decide() is None  # 70 h of guard: still watching
    offset[0] = 0
    assert controller.decide() is not None
    actions = [record.action for record in tenant.store.versions.release_history()]
    assert actions[-2:] == ["settle", "canary"] and (after := controller.state()) is not None and after.canary == "v3"


def test_the_release_commands_load_neither_the_model_libraries_nor_the_pii_models() -> None:
    """Issue 30: `fedloop release rollback` took 29 s from the command to the first draft by the previous version,
    nearly all of it start-up. The CLI (every command group) must not import what a release move does not need."""
    probe = (
        "import sys\nimport fedloop.cli\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'presidio_analyzer', 'spacy', 'flwr') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "[]"


def test_status_and_rollback_open_only_the_store_and_keys(make_tenant, tmp_path: Path) -> None:
    """Issue 31: tenant commands took 11-34 s and 590 MB each, importing Presidio to read a few rows. Run as an
    operator runs them, `fedloop status --tenant` and `fedloop release rollback` load no PII model, no model
    library and no near-duplicate index (their time and memory: scripts/bench_cli.py)."""
    tenant = make_tenant()
    controller = ReleaseController(tenant.store, tenant.settings.release)
    controller.offer("v1", "gates passed")
    controller.offer("v2", "gates passed")
    config = tmp_path / "tenant.toml"
    config.write_text(
        f'[tenant]\nname = "acme"\nkeys_dir = "{tenant.settings.tenant.keys_dir}"\n'
        f'data_dir = "{tenant.settings.tenant.data_dir}"\n'
    )
    heavy = ("torch", "transformers", "peft", "presidio_analyzer", "spacy", "flwr", "datasketch")
    probe = (
        "import sys\nfrom fedloop.cli import main\nsys.argv = ['fedloop', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as end:\n    assert not end.code, end.code\n"
        f"print('LOADED', sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    for command in (
        ["status", "--tenant", "tenant.toml"],
        ["release", "rollback", "--operator", "ops", "--reason", "r"],
    ):
        done = subprocess.run(
            [sys.executable, "-c", probe, *command], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().endswith("LOADED []"), (command, done.stdout[-500:])
    state = controller.state()
    assert state is not None and state.canary is None and "v2" in controller.declined()  # the rollback happened
