"""Ingestion throughput and latency: the running gRPC service against the bare pipeline, in one run.

1. Starts `fedloop tenant serve` as its own process on 127.0.0.1 and drives
   draft + outcome events through it from this process with concurrent clients:
   half as unary calls, half as client-streamed RecordBatch calls.
2. Runs the same kind of events through the bare pipeline in-process
   (redact + encrypt + commit, no gRPC) on fresh stores: the floors, one per call
   shape (single events with in-process redaction; batches with the service's
   redaction workers).
3. Prints events/s, p50 and p99 latency of each, and the service/floor ratios.
4. Times MinHash LSH near-duplicate queries against 100,000 stored samples.

Run: .venv/bin/python scripts/bench_ingest.py [--events 4000] [--clients 4] [--batch 50]
"""

from __future__ import annotations

import argparse
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from fedloop.client.ingest.runtime import open_tenant
from fedloop.client.privacy.redaction import Redactor
from fedloop.client.samples.minhash_index import NearDuplicateIndex, signature
from fedloop.client.tenant_settings import CurationSection, IngestSection, TenantSection, TenantSettings
from fedloop.proto import feedback_pb2 as pb
from fedloop.proto import feedback_pb2_grpc as pb_grpc
from fedloop.shared.keys import init_keys, load_identity
from fedloop.simulation.product import STYLES, TenantTraffic

BENCH_CURATION = CurationSection(max_samples_per_user_per_hour=10**9)


def events(count: int, tag: str) -> list[pb.Event]:
    """`count` events: drafts and their outcomes, over realistic support traffic (a quarter with PII)."""
    conversations = TenantTraffic("bench", "formal", 1).conversations(count // 2, batch=1)
    result = []
    for i, conversation in enumerate(conversations):
        draft_id = f"{tag}-{i}"
        result.append(
            pb.Event(
                draft=pb.DraftEvent(
                    event_id=f"{draft_id}-d",
                    draft_id=draft_id,
                    user_id=conversation.user_id,
                    session_id=f"s{i % 97}",
                    prompt=conversation.prompt,
                    draft=conversation.preferred_reply,
                    model_version="v1",
                    prompt_version="p1",
                )
            )
        )
        result.append(
            pb.Event(
                outcome=pb.OutcomeEvent(event_id=f"{draft_id}-o", draft_id=draft_id, action=pb.ACCEPT, dwell_ms=3000)
            )
        )
    return result


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_service(
    workdir: Path, stream: list[pb.Event], clients: int, batch: int, redaction_workers: int
) -> tuple[float, list[float], float, list[float]]:
    """Through the real service in its own process: events/s and per-call latencies (ms) of unary
    calls, then of RecordBatch streams of `batch` events."""
    port = _free_port()
    (workdir / "svc.toml").write_text(
        f'[tenant]\nname = "acme"\nkeys_dir = "keys"\ndata_dir = "svc"\n[ingest]\naddress = "127.0.0.1:{port}"\n'
        f"max_workers = {clients}\nredaction_workers = {redaction_workers}\n"
        "[curation]\nmax_samples_per_user_per_hour = 1000000000\n"
    )
    fedloop = Path(sys.executable).parent / "fedloop"
    server = subprocess.Popen(
        [str(fedloop), "tenant", "serve", "--config", "svc.toml"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=120)
        service = pb_grpc.FeedbackServiceStub(channel)
        half = len(stream) // 2 // 2 * 2
        pairs = [stream[i : i + 2] for i in range(0, half, 2)]
        batches = [stream[i : i + batch] for i in range(half, len(stream), batch)]
        latencies: list[float] = []
        batch_latencies: list[float] = []
        lock = threading.Lock()

        def run(worker: int) -> None:
            mine = []
            for draft_event, outcome_event in pairs[worker::clients]:
                for call, message in (
                    (service.RecordDraft, draft_event.draft),
                    (service.RecordOutcome, outcome_event.outcome),
                ):
                    started = time.perf_counter()
                    call(message, timeout=30)
                    mine.append((time.perf_counter() - started) * 1000)
            with lock:
                latencies.extend(mine)

        def run_batches(worker: int) -> None:
            mine = []
            for events_in_batch in batches[worker::clients]:
                started = time.perf_counter()
                service.RecordBatch(iter(events_in_batch), timeout=60)
                mine.append((time.perf_counter() - started) * 1000)
            with lock:
                batch_latencies.extend(mine)

        warm = events(40, "warm")
        for event in warm:
            getattr(service, "RecordDraft" if event.HasField("draft") else "RecordOutcome")(
                event.draft if event.HasField("draft") else event.outcome
            )
        rates = []
        for target in (run, run_batches):
            threads = [threading.Thread(target=target, args=(n,)) for n in range(clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rates.append(time.perf_counter() - started)
        channel.close()
        return half / rates[0], latencies, (len(stream) - half) / rates[1], batch_latencies
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def bench_floor(
    workdir: Path, stream: list[pb.Event], batch: int, redaction_workers: int, tag: str
) -> tuple[float, list[float]]:
    """Events/s and per-call latencies (ms) of the bare pipeline in-process (redact + encrypt + commit),
    `batch` events per call."""
    settings = TenantSettings(
        tenant=TenantSection(name="acme", keys_dir=str(workdir / "keys"), data_dir=str(workdir / tag)),
        ingest=IngestSection(redaction_workers=redaction_workers),
        curation=BENCH_CURATION,
    )
    runtime = open_tenant(
        settings, load_identity(workdir / "keys", "acme"), redactor=None if redaction_workers else Redactor()
    )
    runtime.pipeline.ingest(events(40, "warm"))
    latencies = []
    started = time.perf_counter()
    for start in range(0, len(stream), batch):
        begin = time.perf_counter()
        runtime.pipeline.ingest(stream[start : start + batch])
        latencies.append((time.perf_counter() - begin) * 1000)
    elapsed = time.perf_counter() - started
    runtime.close()
    return len(stream) / elapsed, latencies


def bench_lsh(samples: int, queries: int) -> tuple[float, float]:
    """(p50, p99) in ms of near-duplicate queries against `samples` indexed samples."""
    rng = random.Random(7)
    index = NearDuplicateIndex(threshold=0.8)
    traffic = [TenantTraffic(f"t{i}", style, i) for i, style in enumerate(STYLES)]
    words = "order refund password address cancel payment ship arrive change account invoice".split()
    for i in range(samples):
        conversation = traffic[i % 3].conversations(1, batch=i)[0]
        noise = " ".join(rng.choice(words) for _ in range(6))
        index.add(f"s{i}", f"s{i}", signature(f"{conversation.prompt} {noise} {i}\n{conversation.preferred_reply}"))
    probes = [signature(f"{c.prompt}\n{c.preferred_reply}") for c in traffic[0].conversations(queries, batch=-7)]
    timings = []
    for probe in probes:
        started = time.perf_counter()
        index.clusters_near(probe)
        timings.append((time.perf_counter() - started) * 1000)
    return percentile(timings, 50), percentile(timings, 99)


def main() -> None:
    """Run all benchmarks and print their results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=50, help="events per RecordBatch stream")
    parser.add_argument(
        "--redaction-workers",
        type=int,
        default=2,
        help="the service's ingest.redaction_workers (0 = redact in the service process)",
    )
    parser.add_argument("--lsh-samples", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        init_keys("tenant", "acme", workdir / "keys")
        stream = events(args.events, "bench")
        floor_rate, floor_lat = bench_floor(workdir, events(args.events // 2, "floor"), 1, 0, "floor-unary")
        floor_batch_rate, floor_batch_lat = bench_floor(
            workdir, events(args.events // 2, "floorb"), args.batch, args.redaction_workers, "floor-batch"
        )
        rate, latencies, batch_rate, batch_lat = bench_service(
            workdir, stream, args.clients, args.batch, args.redaction_workers
        )
    print(
        f"events: {args.events} draft/outcome events (half unary, half batched), floor: {args.events}, "
        f"clients: {args.clients}, service redaction workers: {args.redaction_workers}"
    )
    print("| path | events/s | p50 ms | p99 ms |\n|---|---|---|---|")
    print(
        f"| gRPC service (separate process) | {rate:,.0f} | {statistics.median(latencies):.2f} | "
        f"{percentile(latencies, 99):.2f} |"
    )
    print(
        f"| gRPC RecordBatch, {args.batch} events per stream (latency per stream) | {batch_rate:,.0f} | "
        f"{statistics.median(batch_lat):.2f} | {percentile(batch_lat, 99):.2f} |"
    )
    print(
        f"| floor for unary: bare pipeline, one event per call, redaction in-process | {floor_rate:,.0f} | "
        f"{statistics.median(floor_lat):.2f} | {percentile(floor_lat, 99):.2f} |"
    )
    print(
        f"| floor for batch: bare pipeline, {args.batch} events per call, {args.redaction_workers} redaction "
        f"workers | {floor_batch_rate:,.0f} | {statistics.median(floor_batch_lat):.2f} | "
        f"{percentile(floor_batch_lat, 99):.2f} |"
    )
    print(f"ratio service / floor: unary {rate / floor_rate:.2f}, batch {batch_rate / floor_batch_rate:.2f}")
    p50, p99 = bench_lsh(args.lsh_samples, 1000)
    print(f"MinHash LSH query at {args.lsh_samples:,} samples: p50 {p50:.3f} ms, p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()
