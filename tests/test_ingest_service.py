"""The gRPC FeedbackService, started for real on 127.0.0.1: statuses, idempotency, atomic batches."""

from __future__ import annotations

from typing import cast

import grpc
import pytest
from grpc_helpers import draft, outcome, status_of, stub
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedloop.client.ingest.service import start_server
from fedloop.client.tenant_settings import IngestSection, TenantSection, TenantSettings
from fedloop.proto import feedback_pb2 as pb
from fedloop.proto import feedback_pb2_grpc as pb_grpc
from fedloop.shared.certs import make_federation_certificates
from fedloop.shared.settings import ConfigError

BAD = grpc.StatusCode


@pytest.fixture()
def service(make_tenant):
    tenant = make_tenant()
    server, port = start_server(tenant, "127.0.0.1:0", 4)
    channel, client = stub(port)
    yield tenant, client, channel
    channel.close()
    server.stop(grace=None).wait()


def test_events_are_stored_once_and_replays_are_acknowledged(service) -> None:
    tenant, client, _ = service
    ack = client.RecordDraft(draft("e1", "d1"))
    assert ack.event_id == "e1" and not ack.duplicate
    assert client.RecordDraft(draft("e1", "d1")).duplicate
    assert not client.RecordOutcome(outcome("e2", "d1")).duplicate
    assert client.RecordOutcome(outcome("e2", "d1")).duplicate
    signal = pb.SignalEvent(
        event_id="e3", user_id="user-1", session_id="session-1", kind=pb.USER_MESSAGE, value="thanks", draft_id="d1"
    )
    assert not client.RecordSignal(signal).duplicate
    assert tenant.store.drafts.count_events() == 3
    assert tenant.store.drafts.outcome_counts() == {"accept": 1}


@pytest.mark.parametrize(
    "method, message, expected",
    [
        ("RecordDraft", draft("x1", "dx", prompt=""), BAD.INVALID_ARGUMENT),
        ("RecordDraft", draft("", "dx"), BAD.INVALID_ARGUMENT),
        ("RecordDraft", draft("x1", "dx", user_id="has space"), BAD.INVALID_ARGUMENT),
        ("RecordDraft", draft("x1", "dx", prompt="x" * 65537), BAD.INVALID_ARGUMENT),
        ("RecordDraft", draft("x1", "dx", position=-1), BAD.INVALID_ARGUMENT),
        ("RecordDraft", draft("x1", "dx", timestamp_ms=-5), BAD.INVALID_ARGUMENT),
        ("RecordDraft", draft("x1", "dx", timestamp_ms=1_700_000), BAD.INVALID_ARGUMENT),
        ("RecordOutcome", outcome("x2", "never-recorded"), BAD.NOT_FOUND),
        ("RecordOutcome", outcome("x2", "d0", dwell_ms=-1), BAD.INVALID_ARGUMENT),
        ("RecordOutcome", outcome("x2", "d0", dwell_ms=10**12), BAD.INVALID_ARGUMENT),
        ("RecordOutcome", outcome("x2", "d0", action=99), BAD.INVALID_ARGUMENT),
        ("RecordOutcome", outcome("x2", "d0", action=pb.EDIT_ACCEPT), BAD.INVALID_ARGUMENT),
        ("RecordOutcome", outcome("x2", "d0", timestamp_ms=1_000_000_000_000), BAD.FAILED_PRECONDITION),
        ("RecordOutcome", outcome("e0", "d0"), BAD.ALREADY_EXISTS),
        (
            "RecordSignal",
            pb.SignalEvent(event_id="x3", user_id="u", session_id="s", kind=cast(pb.SignalKind, 42)),
            BAD.INVALID_ARGUMENT,
        ),
        (
            "RecordSignal",
            pb.SignalEvent(event_id="x3", user_id="u", session_id="s", kind=pb.USER_MESSAGE),
            BAD.INVALID_ARGUMENT,
        ),
        (
            "RecordSignal",
            pb.SignalEvent(event_id="x3", user_id="u", session_id="s", kind=pb.CTA_SHOWN, draft_id="nope"),
            BAD.NOT_FOUND,
        ),
    ],
)
def test_bad_input_gets_a_precise_status_and_nothing_is_stored(service, method, message, expected) -> None:
    tenant, client, _ = service
    client.RecordDraft(draft("e0", "d0"))
    before = tenant.store.drafts.count_events()
    assert status_of(getattr(client, method), message) == expected
    assert tenant.store.drafts.count_events() == before
    assert tenant.store.drafts.outcome_counts() == {}


def test_invalid_utf8_is_invalid_argument(service) -> None:
    tenant, _, channel = service
    raw = channel.unary_unary(
        "/fedloop.feedback.v1.FeedbackService/RecordDraft",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    valid = draft("u1", "du").SerializeToString()
    broken = valid.replace(b"Where is my order", b"Where is my \xff\xfe\xfd\xfc\xfb")
    assert status_of(raw, broken) == BAD.INVALID_ARGUMENT
    assert tenant.store.drafts.count_events() == 0


def test_a_batch_is_stored_whole_or_not_at_all(service) -> None:
    tenant, client, _ = service
    good = [pb.Event(draft=draft("b1", "db1")), pb.Event(outcome=outcome("b2", "db1"))]
    bad_tail = good + [pb.Event(outcome=outcome("b3", "unknown"))]
    assert status_of(client.RecordBatch, iter(bad_tail)) == BAD.NOT_FOUND
    assert tenant.store.drafts.count_events() == 0
    out_of_order = [pb.Event(outcome=outcome("b2", "db1")), pb.Event(draft=draft("b1", "db1"))]
    assert status_of(client.RecordBatch, iter(out_of_order)) == BAD.FAILED_PRECONDITION
    ack = client.RecordBatch(iter(good))
    assert (ack.stored, ack.duplicates) == (2, 0)
    ack = client.RecordBatch(iter(good))
    assert (ack.stored, ack.duplicates) == (0, 2)
    assert tenant.store.drafts.count_events() == 2


ALLOWED = {BAD.OK, BAD.INVALID_ARGUMENT, BAD.NOT_FOUND, BAD.FAILED_PRECONDITION, BAD.ALREADY_EXISTS}
texts = st.text(max_size=40) | st.sampled_from(["", " ", "d0", "e0", "x" * 70000])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=300), method=st.sampled_from(["RecordDraft", "RecordOutcome", "RecordSignal"]))
def test_random_bytes_never_crash_the_server(service, payload: bytes, method: str) -> None:
    tenant, client, channel = service
    raw = channel.unary_unary(
        f"/fedloop.feedback.v1.FeedbackService/{method}",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    before = tenant.store.drafts.count_events()
    code = status_of(raw, payload)
    assert code in ALLOWED
    if code != BAD.OK:
        assert tenant.store.drafts.count_events() == before


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    event_id=texts,
    draft_id=texts,
    prompt=texts,
    action=st.integers(-3, 6),
    dwell=st.integers(-10, 10**11),
    final=texts,
    kind=st.integers(-2, 9),
)
def test_random_messages_get_precise_statuses(service, event_id, draft_id, prompt, action, dwell, final, kind) -> None:
    tenant, client, _ = service
    calls = [
        (client.RecordDraft, draft(event_id, draft_id, prompt=prompt)),
        (client.RecordOutcome, outcome(event_id, draft_id, action=action, dwell_ms=dwell, final_text=final)),
        (
            client.RecordSignal,
            pb.SignalEvent(event_id=event_id, user_id="u", session_id="s", kind=kind, value=final, draft_id=draft_id),
        ),
    ]
    for call, message in calls:
        before = tenant.store.drafts.count_events()
        code = status_of(call, message)
        assert code in ALLOWED, (code, message)
        if code != BAD.OK:
            assert tenant.store.drafts.count_events() == before


def test_route_draft_follows_the_release_pointer(service) -> None:
    from fedloop.client.release.controller import ReleaseController

    tenant, client, _ = service
    assert client.RouteDraft(pb.RouteRequest(user_id="user-1")) == pb.Route(model_version="base", canary=False)
    assert status_of(client.RouteDraft, pb.RouteRequest(user_id="")) == BAD.INVALID_ARGUMENT
    controller = ReleaseController(tenant.store, tenant.settings.release)
    controller.offer("v1", "gates passed")
    assert client.RouteDraft(pb.RouteRequest(user_id="user-1")) == pb.Route(model_version="v1", canary=False)
    controller.offer("v2", "gates passed")
    routes = [client.RouteDraft(pb.RouteRequest(user_id=f"user-{i}")) for i in range(400)]
    in_canary = [r for r in routes if r.canary]
    assert all(r.model_version == "v2" for r in in_canary) and 0 < len(in_canary) < 50  # about 5 % of 400
    assert all(r.model_version == "v1" for r in routes if not r.canary)


def test_off_loopback_the_service_needs_tls_and_bearer_keys_and_refuses_strangers(make_tenant, tmp_path) -> None:
    with pytest.raises(ConfigError, match="ingest.api_keys_file / tls_certificate / tls_key"):
        TenantSettings(
            tenant=TenantSection(name="acme", keys_dir="k", data_dir="d"), ingest=IngestSection(address="0.0.0.0:50051")
        )
    certificates = make_federation_certificates(tmp_path / "certs", ["127.0.0.1"])
    (tmp_path / "keys.txt").write_text("# product backend\nk-3f9c2a\n")
    (tmp_path / "keys.txt").chmod(0o600)
    tenant = make_tenant(
        ingest=IngestSection(
            address="127.0.0.1:0",
            api_keys_file=str(tmp_path / "keys.txt"),
            tls_certificate=str(certificates.superlink_certificate),
            tls_key=str(certificates.superlink_key),
        )
    )
    server, port = start_server(tenant, "127.0.0.1:0", 2)
    try:
        plaintext = grpc.insecure_channel(f"127.0.0.1:{port}")
        assert status_of(pb_grpc.FeedbackServiceStub(plaintext).RecordDraft, draft("e1", "d1")) == BAD.UNAVAILABLE
        credentials = grpc.ssl_channel_credentials(certificates.ca_certificate.read_bytes())
        secure = grpc.secure_channel(f"127.0.0.1:{port}", credentials)
        client = pb_grpc.FeedbackServiceStub(secure)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "k-3f9c2a"),)):
            with pytest.raises(grpc.RpcError) as refused:
                client.RecordDraft(draft("e1", "d1"), metadata=metadata, timeout=10)
            assert refused.value.code() == BAD.UNAUTHENTICATED and "ingest.api_keys_file" in refused.value.details()
            with pytest.raises(grpc.RpcError) as refused:
                client.RecordBatch(iter([pb.Event(draft=draft("e2", "d2"))]), metadata=metadata, timeout=10)
            assert refused.value.code() == BAD.UNAUTHENTICATED
        assert tenant.store.drafts.count_events() == 0 and tenant.store.drafts.get_draft("d1") is None
        ack = client.RecordDraft(draft("e1", "d1"), metadata=(("authorization", "Bearer k-3f9c2a"),), timeout=10)
        assert ack.event_id == "e1" and not ack.duplicate
        plaintext.close()
        secure.close()
    finally:
        server.stop(grace=None).wait()
