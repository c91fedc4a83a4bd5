"""Helpers for tests that talk to a real FeedbackService over loopback."""

from __future__ import annotations

from typing import Any

import grpc

from fedloop.proto import feedback_pb2 as pb
from fedloop.proto import feedback_pb2_grpc as pb_grpc


def draft(event_id: str, draft_id: str, **fields: Any) -> pb.DraftEvent:
    """A valid DraftEvent, with any field overridden."""
    values: dict[str, Any] = dict(
        event_id=event_id,
        draft_id=draft_id,
        user_id="user-1",
        session_id="session-1",
        prompt="Where is my order 12345?",
        draft="It ships tomorrow.",
        model_version="v1",
        prompt_version="p1",
        position=0,
    )
    values.update(fields)
    return pb.DraftEvent(**values)


def outcome(event_id: str, draft_id: str, **fields: Any) -> pb.OutcomeEvent:
    """A valid ACCEPT OutcomeEvent, with any field overridden."""
    values: dict[str, Any] = dict(event_id=event_id, draft_id=draft_id, action=pb.ACCEPT, dwell_ms=3000)
    values.update(fields)
    return pb.OutcomeEvent(**values)


def status_of(call, *args) -> grpc.StatusCode:
    """The status code a call ends with (OK when it succeeds)."""
    try:
        call(*args, timeout=10)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def stub(port: int) -> tuple[grpc.Channel, pb_grpc.FeedbackServiceStub]:
    """A channel and stub to the service on 127.0.0.1:port."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=10)
    return channel, pb_grpc.FeedbackServiceStub(channel)
