"""One tenant's malformed replies cannot stop everyone's run: HQ validates every field it reads (issue 29).

A real federated run in Flower's Simulation Engine: two honest tenants, four nodes that answer enrolment with a
missing, mistyped, oversized or extra field, and one enrolled tenant whose training and evaluation replies are
malformed in a different way each round. `registered tenant answers enrolment with missing fields` used to raise
`KeyError: 'key_id'` in src/fedloop/server/app.py and abort the whole run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedloop.server.app import build_server_app
from fedloop.server.replies import ReplyRefused, enrol_claim, reported_metrics
from fedloop.shared.protocol import ENROL, HIT_RATE, METRICS, NUM_EXAMPLES, SEALED, message_round, sealed_record
from fedloop.shared.settings import (
    FederationSection,
    LoraSettings,
    PathsSection,
    Settings,
    SimulationSection,
    TrainSection,
)
from fedloop.simulation.client_app import simulation_client_app
from fedloop.simulation.federation import prepare_run, simulate

ENROL_FUZZ: dict[str, dict[str, Any]] = {
    "eve-missing": {"tenant": "eve-missing", "signature": "00"},  # no key_id: the KeyError that stopped runs
    "eve-mistyped": {"tenant": "eve-mistyped", "key_id": 7, "signature": "00"},
    "eve-oversized": {"tenant": "eve-oversized", "key_id": "k" * 100_000, "signature": "00"},
    "eve-extra": {"tenant": "eve-extra", "key_id": "k", "signature": "00", "admin": "yes"},
}
TENANTS = ("acme", "bolt", "mallory", *ENROL_FUZZ)


def _train_fuzz(message: Message, reply: Message, round_: int) -> Message:
    """Mallory's training reply, malformed: round 1 without its sealed update, round 2 a valid update with extra
    records and an oversized, mistyped metric record."""
    content = reply.content
    if round_ == 1:
        return Message(RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 5})}), reply_to=message)
    metrics: dict[str, Any] = {f"m{i}": 1.0 for i in range(100)} | {NUM_EXAMPLES: [1, 2]}
    content = RecordDict(
        {SEALED: content.array_records[SEALED], METRICS: MetricRecord(metrics), "admin": ConfigRecord({"x": 1})}
    )
    return Message(content, reply_to=message)


EVALUATE_FUZZ = {  # by round: missing, out of range, oversized
    0: RecordDict({}),
    1: RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 3, HIT_RATE: 7.0})}),
    2: RecordDict({METRICS: MetricRecord({f"m{i}": 1.0 for i in range(100)})}),
}


def _fuzzing_app(settings: Settings, honest: ClientApp) -> ClientApp:
    app = ClientApp()

    def name(context: Context) -> str:
        return settings.federation.tenants[int(context.node_config["partition-id"])]

    @app.query(ENROL)
    def enrol(message: Message, context: Context) -> Message:
        claim = ENROL_FUZZ.get(name(context))
        if claim is None:
            return honest(message, context)
        return Message(RecordDict({ENROL: ConfigRecord(claim)}), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        reply = honest(message, context)
        round_ = message_round(message.content.config_records["global"])
        return _train_fuzz(message, reply, round_) if name(context) == "mallory" else reply

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        if name(context) != "mallory":
            return honest(message, context)
        return Message(EVALUATE_FUZZ[message_round(message.content.config_records["global"])], reply_to=message)

    return app


@pytest.mark.slow
def test_malformed_replies_refuse_their_tenant_and_the_run_goes_on(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        federation=FederationSection(
            run_name="fuzz", tenants=TENANTS, rounds=2, seed=3, enrol_timeout_s=60, round_timeout_s=300
        ),
        paths=PathsSection(model=str(tiny_model_dir), runs_dir=str(tmp_path / "runs")),
        lora=LoraSettings(rank=4, alpha=8),
        train=TrainSection(max_steps=4, batch_size=4, max_seq_len=64),
        simulation=SimulationSection(conversations_per_round=4, max_new_tokens=8, styles=("brief",)),
    )
    layout = prepare_run(settings, Path(settings.paths.runs_dir))
    with caplog.at_level(logging.WARNING, logger="fedloop"):
        simulate(
            build_server_app(settings, layout),
            _fuzzing_app(settings, simulation_client_app(settings, layout)),
            len(TENANTS),
        )
    assert layout.summary.exists(), "the run did not finish"
    import json

    summary = json.loads(layout.summary.read_text())
    refusals = [r.getMessage() for r in caplog.records if "malformed reply" in r.getMessage()]
    print("\n".join(refusals))
    assert summary["tenants"] == ["acme", "bolt", "mallory"] and len(refusals) == len(ENROL_FUZZ)
    rounds = {report["round"]: report for report in summary["rounds"]}
    first, second = rounds[1], rounds[2]
    print(json.dumps({r["round"]: r["refused"] for r in summary["rounds"]}, indent=1))
    assert first["refusal_reasons"]["mallory"] == "malformed" and "mallory" not in first["contributors"]
    assert "records HQ does not read" in second["refused"]["mallory"] and set(second["contributors"]) == {
        "acme",
        "bolt",
    }
    assert all("mallory" not in r["evaluation"] for r in summary["rounds"])
    evaluation_refusals = [r.getMessage() for r in caplog.records if "evaluation of mallory refused" in r.getMessage()]
    assert len(evaluation_refusals) == 3, evaluation_refusals


def _content(**records: Any) -> RecordDict:
    return RecordDict(records)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (_content(), "no `enrol` record"),
        (_content(enrol=ConfigRecord({"tenant": "acme", "signature": "00"})), "key_id is invalid: Field required"),
        (_content(enrol=ConfigRecord({"tenant": "acme", "key_id": 7, "signature": "00"})), "key_id is invalid"),
        (_content(enrol=ConfigRecord({"tenant": "acme", "key_id": "k", "signature": "xyz"})), "signature is invalid"),
        (_content(enrol=ConfigRecord({"tenant": "a" * 65, "key_id": "k", "signature": "00"})), "tenant is invalid"),
        (
            _content(enrol=ConfigRecord({"tenant": "acme", "key_id": "k", "signature": "00", "x": 1})),
            "x is invalid: Extra inputs",
        ),
        (_content(enrol=MetricRecord({"tenant": 1})), "records HQ does not read"),
    ],
)
def test_every_malformed_enrolment_claim_is_named(content: RecordDict, message: str) -> None:
    with pytest.raises(ReplyRefused, match=message):
        enrol_claim(content)


@pytest.mark.parametrize(
    ("metrics", "training", "message"),
    [
        (None, False, "no `metrics` record"),
        (None, True, "no sealed update"),
        ({NUM_EXAMPLES: 3}, False, "hit-rate is None"),
        ({NUM_EXAMPLES: 3, HIT_RATE: float("nan")}, False, "not a finite number"),
        ({NUM_EXAMPLES: -1}, True, "not a count"),
        ({NUM_EXAMPLES: 2.5}, True, "not a count"),
        ({NUM_EXAMPLES: [1, 2]}, True, "not a finite number"),
        ({NUM_EXAMPLES: 1, "m" * 65: 1.0}, True, "longer than 64"),
        ({NUM_EXAMPLES: 1, **{f"m{i}": 1.0 for i in range(64)}}, True, "at most 64"),
    ],
)
def test_every_malformed_metric_record_is_named(metrics: dict[str, Any] | None, training: bool, message: str) -> None:
    records: dict[str, Any] = {METRICS: MetricRecord(metrics)} if metrics is not None else {}
    if training and "no sealed update" not in message:
        records[SEALED] = sealed_record(b"envelope")
    content = RecordDict(records)
    with pytest.raises(ReplyRefused, match=message):
        reported_metrics(content, training)


def test_a_well_formed_reply_reads_back_its_figures() -> None:
    content = RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 4, HIT_RATE: 0.5, "hit-rate-low": 0.2})})
    assert reported_metrics(content, training=False) == {NUM_EXAMPLES: 4.0, HIT_RATE: 0.5, "hit-rate-low": 0.2}
    claim = enrol_claim(RecordDict({ENROL: ConfigRecord({"tenant": "acme", "key_id": "k1", "signature": "0a"})}))
    assert (claim.tenant, claim.key_id) == ("acme", "k1")
