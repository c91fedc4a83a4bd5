"""The gRPC FeedbackService: a thin layer that maps the pipeline's results and refusals to gRPC.

Requests are deserialised by fedloop, not by grpcio, so that a request that is
not valid protobuf (for example a string field holding invalid UTF-8) gets
INVALID_ARGUMENT instead of grpcio's generic INTERNAL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from fedloop.client.bearer import bearer_accepted, load_api_keys
from fedloop.client.ingest.runtime import TenantRuntime
from fedloop.client.ingest.validation import IngestError
from fedloop.client.release.controller import ReleaseController
from fedloop.proto import feedback_pb2 as pb
from fedloop.shared.files import require_private_setting

log = logging.getLogger(__name__)
SERVICE_NAME = "fedloop.feedback.v1.FeedbackService"


@dataclass(frozen=True)
class Undecodable:
    """A request whose bytes are not a valid message of the expected type."""

    reason: str


def _deserializer(message_type: Any) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as err:
            return Undecodable(str(err) or "not a valid protobuf message")

    return deserialize


class FeedbackServicer:
    """Implements FeedbackService over a tenant's ingestion pipeline."""

    def __init__(
        self,
        runtime: TenantRuntime,
        on_outcomes: Callable[[int], None] | None = None,
        api_keys: list[bytes] | None = None,
    ) -> None:
        self._pipeline = runtime.pipeline
        self._api_keys = api_keys  # None: no key needed (loopback only, enforced by the settings)
        self._release = ReleaseController(runtime.store, runtime.settings.release)
        self._limits = runtime.settings.ingest
        self._max_id_chars = runtime.settings.ingest.max_id_chars
        self._on_outcomes = on_outcomes  # release decisions follow the outcomes that arrive

    def _outcomes_stored(self, events: list[pb.Event], duplicates: list[bool]) -> None:
        count = sum(e.WhichOneof("event") == "outcome" and not d for e, d in zip(events, duplicates, strict=True))
        if count and self._on_outcomes is not None:
            self._on_outcomes(count)

    def _authenticate(self, context: grpc.ServicerContext) -> None:
        if self._api_keys is None:
            return
        authorization = dict(context.invocation_metadata()).get("authorization", "")
        if not bearer_accepted(str(authorization), self._api_keys):
            self._pipeline.counters.rejected.labels("UNAUTHENTICATED").inc()
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or unknown API key: send metadata "
                "`authorization: Bearer <key>` with a key from "
                "ingest.api_keys_file",
            )

    def _refuse_undecodable(self, context: grpc.ServicerContext, message: str) -> None:
        self._pipeline.counters.rejected.labels("INVALID_ARGUMENT").inc()
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

    def _store(self, events: list[pb.Event], context: grpc.ServicerContext) -> list[bool]:
        try:
            duplicates = self._pipeline.ingest(events)
            self._outcomes_stored(events, duplicates)
            return duplicates
        except IngestError as err:
            context.abort(grpc.StatusCode[err.status], str(err))
            raise  # unreachable: abort raises

    def _unary(self, field: str) -> Callable[[Any, grpc.ServicerContext], pb.Ack]:
        def handle(request: Any, context: grpc.ServicerContext) -> pb.Ack:
            self._authenticate(context)
            if isinstance(request, Undecodable):
                self._refuse_undecodable(
                    context, f"request is not a valid {field} event ({request.reason}); strings must be UTF-8"
                )
            [duplicate] = self._store([pb.Event(**{field: request})], context)
            return pb.Ack(event_id=request.event_id, duplicate=duplicate)

        return handle

    def record_batch(self, requests: Iterator[Any], context: grpc.ServicerContext) -> pb.BatchAck:
        """Read the stream within ingest.max_batch_events and ingest.max_batch_bytes, then store it in one
        transaction; a stream that goes past either limit is cut off there and nothing of it is stored."""
        self._authenticate(context)
        events, received = [], 0
        for position, request in enumerate(requests):
            if isinstance(request, Undecodable):
                self._refuse_undecodable(
                    context, f"event #{position} is not a valid Event ({request.reason}); nothing was stored"
                )
            received += request.ByteSize()
            for exceeded, limit, value in (
                (position >= self._limits.max_batch_events, "max_batch_events", self._limits.max_batch_events),
                (received > self._limits.max_batch_bytes, "max_batch_bytes", self._limits.max_batch_bytes),
            ):
                if exceeded:
                    self._refuse_undecodable(
                        context,
                        f"stream exceeds ingest.{limit} ({value}) at event #{position}; "
                        "split it into smaller batches; nothing was stored",
                    )
            events.append(request)
        duplicates = self._store(events, context)
        return pb.BatchAck(stored=duplicates.count(False), duplicates=duplicates.count(True))

    def route_draft(self, request: Any, context: grpc.ServicerContext) -> pb.Route:
        """The version that drafts for this user now, by the tenant's release pointer."""
        self._authenticate(context)
        if isinstance(request, Undecodable) or not request.user_id or len(request.user_id) > self._max_id_chars:
            self._refuse_undecodable(
                context,
                f"user_id must be a non-empty UTF-8 string of at most "
                f"{self._max_id_chars} characters (ingest.max_id_chars)",
            )
        version = self._release.route(self._pipeline.store.pseudonym(request.user_id))  # BASE_VERSION before any
        state = self._release.state()
        return pb.Route(model_version=version, canary=state is not None and version == state.canary)

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler registering every method of the service."""
        unary = {
            "RecordDraft": ("draft", pb.DraftEvent),
            "RecordOutcome": ("outcome", pb.OutcomeEvent),
            "RecordSignal": ("signal", pb.SignalEvent),
        }
        methods = {
            name: grpc.unary_unary_rpc_method_handler(
                self._unary(field), _deserializer(message_type), pb.Ack.SerializeToString
            )
            for name, (field, message_type) in unary.items()
        }
        methods["RecordBatch"] = grpc.stream_unary_rpc_method_handler(
            self.record_batch, _deserializer(pb.Event), pb.BatchAck.SerializeToString
        )
        methods["RouteDraft"] = grpc.unary_unary_rpc_method_handler(
            self.route_draft, _deserializer(pb.RouteRequest), pb.Route.SerializeToString
        )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)


class MaintenanceLoop:
    """Background work of a running service: absence-rule sweeps and picking up rotated storage keys."""

    def __init__(
        self,
        runtime: TenantRuntime,
        reload_keys: Callable[[], None],
        sweep_every_s: float = 30.0,
        reload_every_s: float = 1.0,
    ) -> None:
        self._runtime = runtime
        self._reload_keys = reload_keys
        self._sweep_every = sweep_every_s
        self._reload_every = reload_every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedloop-maintenance", daemon=True)

    def start(self) -> None:
        """Start the loop in a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and wait for it."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        since_sweep = 0.0
        while not self._stop.wait(self._reload_every):
            try:
                self._reload_keys()
                since_sweep += self._reload_every
                if since_sweep >= self._sweep_every:
                    since_sweep = 0.0
                    raised = self._runtime.pipeline.sweep()
                    if raised:
                        log.info("derived-signal sweep flagged %d drafts", raised)
            except Exception:  # keep serving; the failure is logged with its traceback
                log.exception("maintenance step failed")


def start_server(
    runtime: TenantRuntime, address: str, max_workers: int, on_outcomes: Callable[[int], None] | None = None
) -> tuple[grpc.Server, int]:
    """Start the FeedbackService on `address`; returns the server and the bound port.

    With ingest.tls_certificate / tls_key it serves TLS, with ingest.api_keys_file every call needs a bearer key
    (both are required off loopback). `on_outcomes` is told how many new outcomes each call stored.
    """
    ingest = runtime.settings.ingest
    api_keys = load_api_keys(ingest.api_keys_file, "ingest.api_keys_file")
    largest_event = 4 * ingest.max_text_bytes + 2**16  # prompt, draft, final text, ids
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers),
        # no SO_REUSEPORT: a second tenant on the same port must fail, not silently share this tenant's traffic
        options=[("grpc.max_receive_message_length", largest_event), ("grpc.so_reuseport", 0)],
    )
    server.add_generic_rpc_handlers((FeedbackServicer(runtime, on_outcomes, api_keys).handler(),))
    try:
        if ingest.tls_certificate:
            port = server.add_secure_port(
                address, grpc.ssl_server_credentials([_key_pair(ingest.tls_key, ingest.tls_certificate)])
            )
        else:
            port = server.add_insecure_port(address)  # loopback only: the settings refuse anything else without TLS
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(
            f"cannot listen on {address}: is the port in use (another tenant on this host?); "
            "set ingest.address in the tenant config"
        )
    server.start()
    return server, port


def _key_pair(key_path: str, certificate_path: str) -> tuple[bytes, bytes]:
    require_private_setting(Path(key_path), "ingest.tls_key")
    try:
        return Path(key_path).read_bytes(), Path(certificate_path).read_bytes()
    except OSError as err:
        raise OSError(f"ingest.tls_key / tls_certificate: cannot read {err.filename} ({err.strerror})") from None
