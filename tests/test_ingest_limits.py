"""A hostile RecordBatch stream cannot grow the FeedbackService: limits hold while the stream is read."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
import pytest
from deployment_helpers import FEDLOOP, free_port, listening, wait_for
from grpc_helpers import draft, stub
from memory_helpers import CAPPED_ENV, PeakGrowth, cap_address_space

from fedloop.proto import feedback_pb2 as pb
from fedloop.shared.keys import init_keys


def _send(service, events) -> tuple[grpc.StatusCode, str, float]:
    started = time.perf_counter()
    try:
        service.RecordBatch(events, timeout=120)
    except grpc.RpcError as err:
        return err.code(), err.details(), time.perf_counter() - started
    return grpc.StatusCode.OK, "", time.perf_counter() - started


@pytest.mark.slow  # 100,000 events streamed: the heavy tier
def test_long_and_heavy_streams_are_cut_off_with_memory_bounded(tmp_path: Path) -> None:
    init_keys("tenant", "acme", tmp_path / "keys")
    port = free_port()
    config = tmp_path / "tenant.toml"
    config.write_text(
        f'[tenant]\nname = "acme"\nkeys_dir = "{tmp_path / "keys"}"\ndata_dir = "{tmp_path / "data"}"\n'
        f'[ingest]\naddress = "127.0.0.1:{port}"\n[metrics]\naddress = ""\n'
    )
    log = tmp_path / "serve.log"
    server = subprocess.Popen(
        [FEDLOOP, "tenant", "serve", "--config", str(config)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=CAPPED_ENV,
    )
    try:
        wait_for(lambda: listening(port), "FeedbackService", log, server)
        channel, service = stub(port)
        print(f"address space capped at {cap_address_space(server.pid) / 2**30:.2f} GiB")
        growth = PeakGrowth(server.pid)
        many = (pb.Event(draft=draft(f"e{i}", f"d{i}", prompt="hi", draft="ok")) for i in range(100_000))
        code, detail, seconds = _send(service, many)
        print(f"100,000-event stream: {code.name} after {seconds:.2f} s: {detail}")
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "ingest.max_batch_events" in detail
        heavy = (pb.Event(draft=draft(f"h{i}", f"h{i}", prompt="x" * 60_000)) for i in range(6_000))
        code, detail, seconds = _send(service, heavy)
        print(f"6,000 x 60 KB stream: {code.name} after {seconds:.2f} s: {detail}")
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "ingest.max_batch_bytes" in detail
        growth_mib = growth.mib()
        print(f"server peak memory growth: {growth_mib:.1f} MiB (limit 50)")
        assert growth_mib < 50
        assert service.RecordBatch(iter([pb.Event(draft=draft("ok", "ok"))]), timeout=30).stored == 1
        channel.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
