"""One federated round through fedloop against the same round through plain Flower FedAvg.

Both arms run in Flower's Simulation Engine in this one process, with the same
settings, model, simulated product and tenant work (the product's users ask
the tenant's draft service and report outcomes, the tenant trains the local
LoRA recipe, evaluates the hit rate and the gates). What differs is what fedloop adds around that work: the fedloop
arm seals every adapter (SM4-GCM + SM2 wrap + SM2 signature), verifies and
decrypts on receipt, runs the robust exact merge and writes each version to the
signed, encrypted registry; the plain arm sends the adapter as a Flower
ArrayRecord to Flower's own `FedAvg`, with no sealing and no registry.

Printed: round 1's wall time in each arm (from the first training message to
the last evaluation reply) and the overhead ratio (goal <= 1.10), the bytes
each tenant sent and received in the round and their share of the full model's
float32 size. Sealing throughput on its own: scripts/bench_crypto.py.

Run: .venv/bin/python scripts/bench_round.py [--model models/smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedloop.client.store.api import InstalledVersion
from fedloop.shared.adapter import adapter_state, adapter_to_bytes, attach_lora, load_base_model
from fedloop.shared.crypto import sm3_digest
from fedloop.shared.protocol import NUM_EXAMPLES
from fedloop.shared.run_layout import RunLayout
from fedloop.shared.settings import FederationSection, PathsSection, Settings, SimulationSection, TrainSection
from fedloop.simulation.client_app import simulated_tenants, simulated_traffic
from fedloop.simulation.federation import prepare_run, run_federation, simulate

ROOT = Path(__file__).resolve().parents[1]


class TimedFedAvg(FedAvg):
    """Flower's FedAvg, timing each round as fedloop's strategy does (first training message to evaluations back)."""

    def __init__(self, nodes: int) -> None:
        super().__init__(min_train_nodes=nodes, min_evaluate_nodes=nodes, min_available_nodes=nodes)
        self.started: dict[int, float] = {}
        self.durations: dict[int, float] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Start the round's clock, then Flower's own configure_train."""
        self.started[server_round] = time.time()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Stop the round's clock, then Flower's own aggregate_evaluate."""
        self.durations[server_round] = time.time() - self.started[server_round]
        return super().aggregate_evaluate(server_round, replies)


def plain_client_app(settings: Settings, layout: RunLayout) -> ClientApp:
    """The same tenant work as fedloop's simulation ClientApp (product traffic, train_round, evaluate_version),
    unsealed."""
    resolve = simulated_tenants(settings, layout)
    traffic = simulated_traffic(settings, layout)
    app = ClientApp()

    def install(message: Message, context: Context, version_id: str):
        """Load the received adapter and keep it in the tenant's store (any worker may serve it later)."""
        tenant = resolve(context)
        payload = adapter_to_bytes(message.content.array_records["arrays"].to_torch_state_dict())
        model, tokenizer = tenant.install(InstalledVersion(version_id, 0, None, sm3_digest(payload).hex()), payload)
        return tenant, model, tokenizer

    @app.train()
    def train(message: Message, context: Context) -> Message:
        round_ = int(str(message.content.config_records["config"]["server-round"]))
        tenant, model, tokenizer = install(message, context, f"plain-{round_ - 1}")
        traffic(tenant, round_)
        outcome = tenant.train_round(model, tokenizer, f"plain-{round_ - 1}", round_)
        return Message(
            RecordDict(
                {"arrays": ArrayRecord(adapter_state(model)), "metrics": MetricRecord({NUM_EXAMPLES: outcome.examples})}
            ),
            reply_to=message,
        )

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        version_id = f"plain-{int(str(message.content.config_records['config']['server-round']))}"
        tenant, model, tokenizer = install(message, context, version_id)
        metrics = tenant.evaluate_version(model, tokenizer, version_id)
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=message)

    return app


def run_plain(settings: Settings, layout: RunLayout) -> float:
    """Plain Flower: round-0 evaluation (as fedloop does), then one FedAvg round; returns round 1's wall time."""
    strategy = TimedFedAvg(len(settings.federation.tenants))
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        model, _ = load_base_model(Path(settings.paths.model))
        arrays = ArrayRecord(adapter_state(attach_lora(model, settings.lora, settings.federation.seed)))
        nodes = list(grid.get_node_ids())
        while len(nodes) < len(settings.federation.tenants):
            time.sleep(0.5)
            nodes = list(grid.get_node_ids())
        evaluate = [
            Message(
                RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 0})}),
                dst_node_id=node,
                message_type=MessageType.EVALUATE,
            )
            for node in nodes
        ]
        grid.send_and_receive(evaluate)
        strategy.start(grid, arrays, num_rounds=1)

    tenants = len(settings.federation.tenants)
    layout.root.mkdir(parents=True, exist_ok=True)
    simulate(app, plain_client_app(settings, layout), tenants)
    return strategy.durations[1]


def named(settings: Settings, run_name: str) -> Settings:
    """The same settings under another run name (each arm gets its own run directory)."""
    return settings.model_copy(update={"federation": settings.federation.model_copy(update={"run_name": run_name})})


def main() -> None:
    """Run both arms; print the round times, the ratio and the bytes each tenant moved."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        type=Path,
        default=ROOT / "models" / "smollm2-135m-instruct",
        help="local model directory or .gguf (default: the one `make model` writes)",
    )
    args = parser.parse_args()
    if not (args.model / "config.json").exists() and args.model.suffix != ".gguf":
        raise SystemExit(f"--model {args.model}: no model there; run `make model` first")
    work = Path(tempfile.mkdtemp(prefix="bench-round-"))
    settings = Settings(
        federation=FederationSection(run_name="bench-round", tenants=("acme", "bolt", "cobalt"), rounds=1),
        paths=PathsSection(model=str(args.model), runs_dir=str(work)),
        train=TrainSection(max_steps=8, batch_size=8),
        simulation=SimulationSection(conversations_per_round=24, max_new_tokens=40),
    )
    print(f"model {args.model}; 3 tenants, 1 round, 24 users per tenant, 8 local steps; work dir {work}", flush=True)

    plain_s = run_plain(settings, prepare_run(named(settings, "plain"), work))  # tenants keep their encrypted stores
    print(f"  plain Flower FedAvg round: {plain_s:.1f} s", flush=True)
    summary = run_federation(settings, prepare_run(named(settings, "fedloop"), work))
    round_1 = summary["rounds"][1]
    fedloop_s = round_1["duration_s"]
    print(f"  fedloop round: {fedloop_s:.1f} s", flush=True)

    base, _ = load_base_model(args.model)
    model_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    payload = adapter_to_bytes(adapter_state(attach_lora(base, settings.lora, 0)))

    print(
        f"\n| arm | round 1 wall time (s) |\n|---|---|\n| plain Flower FedAvg (no sealing, no registry) | "
        f"{plain_s:.1f} |\n| fedloop (sealed, verified, exact merge, registry) | {fedloop_s:.1f} |"
    )
    print(f"overhead ratio fedloop / plain: {fedloop_s / plain_s:.3f} (goal <= 1.10)")
    print(f"\nfull model (float32): {model_bytes:,} bytes; adapter: {len(payload):,} bytes")
    print("| tenant | sent to HQ | share of model | received from HQ (train + evaluate) | share of model |")
    print("|---|---|---|---|---|")
    for tenant in settings.federation.tenants:
        sent, received = round_1["bytes_to_hq"][tenant], round_1["bytes_to_tenant"][tenant]
        print(f"| {tenant} | {sent:,} | {sent / model_bytes:.2%} | {received:,} | {received / model_bytes:.2%} |")


if __name__ == "__main__":
    main()
