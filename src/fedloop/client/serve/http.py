"""The OpenAI-compatible draft endpoint, over `DraftService`.

- `POST /v1/chat/completions` (non-streaming and `stream: true`): the user id
  is `user`, else `metadata.user`, else the `X-Fedloop-User` header (for
  clients that drop `user`); `model` is the routing alias (`fedloop`) or an
  installed version id. The response's `id`, its `fedloop.draft_id` and the
  `X-Fedloop-Draft-Id` header carry the draft id; a client may choose it
  itself (`X-Fedloop-Draft-Id` request header or `metadata.draft_id`), so a
  product whose client library renames streamed chunks still knows it.
  `model` in the response is the version that drafted. Greedy unless
  `temperature` > 0 (then sampled with `top_p` and `seed`).
- `POST /v1/drafts/{draft_id}/outcome`: what the user did with the draft.
- `GET /v1/models`, `GET /v1/models/{id}`: the alias and the servable versions (installed, and neither
  refused nor rolled back here).
- `GET /health` (the process answers) and `GET /ready` (worker alive and not
  stuck, queue below its limit, store writable; 503 otherwise): no key needed,
  they tell nothing but these booleans.

Every error has OpenAI's shape (`{"error": {"message", "type", "param",
"code"}}`) and the status of its cause: 400 bad input, 401 no key, 404 unknown
model, draft or route, 409 a draft id reused or an outcome too early, 413 a
body over `serve.max_body_bytes`, 429 a user over the rate limit, 503 +
`Retry-After` when the queue is full or the store busy; a conversation over
the prompt limits gets 400 `context_length_exceeded`. Authentication comes
before the body is read (guard.py); the prompt limits before tokenising; the rate limit
before generation; a draft is recorded before its completion is answered, and
a stream that fails ends with an error event instead of `[DONE]`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedloop.client.ingest.recorder import FeedbackError
from fedloop.client.serve.drafts import Draft, DraftRequest, DraftService, PendingDraft
from fedloop.client.serve.engine import Generation, Sampling
from fedloop.client.serve.guard import RequestGuard
from fedloop.client.serve.openai_schema import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    DraftInfo,
    ModelCard,
    ModelList,
    OutcomeRequest,
    error_body,
    sse,
    usage,
)
from fedloop.shared.echo import echoed

log = logging.getLogger(__name__)
USER_HEADER = "x-fedloop-user"
DRAFT_ID_HEADER = "x-fedloop-draft-id"
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
}


def _validation_message(err: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    """The first problem of a refused body, naming the field and the fix."""
    problem = err.errors()[0]
    if problem["type"] == "json_invalid":
        return f"the request body is not valid JSON ({problem.get('msg')}): send a JSON object", None
    where = echoed(".".join(str(part) for part in problem["loc"] if part != "body") or "body")[1:-1]
    fix = "remove it" if problem["type"] == "extra_forbidden" else "see docs/tenant-operator.md for the fields"
    return f"{where}: {problem['msg']} ({fix}); nothing was recorded", where


def _draft_request(body: ChatCompletionRequest, request: Request) -> DraftRequest:
    metadata = body.metadata
    greedy = not body.temperature
    return DraftRequest(
        user_id=body.user or metadata.get("user") or request.headers.get(USER_HEADER, ""),
        messages=tuple(m.as_chat() for m in body.messages),
        model=body.model,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        session_id=metadata.get("session_id", "default"),
        prompt_version=metadata.get("prompt_version", "default"),
        sampling=Sampling() if greedy else Sampling(body.temperature or 0.0, body.top_p or 1.0, body.seed),
        stop=body.stops(),
        draft_id=request.headers.get(DRAFT_ID_HEADER) or metadata.get("draft_id", ""),
    )


def _info(pending: PendingDraft) -> DraftInfo:
    return DraftInfo(draft_id=pending.draft_id, version=pending.version, canary=pending.canary)


def _completion(pending: PendingDraft, draft: Draft) -> ChatCompletion:
    generation = draft.generation
    return ChatCompletion(
        id=draft.draft_id,
        created=int(time.time()),
        model=draft.version,
        choices=[
            Choice(
                message=AssistantMessage(content=generation.text),
                finish_reason="length" if generation.finish_reason == "length" else "stop",
            )
        ],
        usage=usage(generation.prompt_tokens, generation.completion_tokens),
        fedloop=_info(pending),
    )


def build_http_app(
    service: DraftService, model_alias: str, api_keys: list[bytes] | None = None, max_body_bytes: int = 1_048_576
) -> FastAPI:
    """The FastAPI app of the draft endpoint; with `api_keys`, every route but /health and /ready needs
    `Authorization: Bearer <key>`, checked before the body (at most `max_body_bytes`) is read (guard.py)."""
    app = FastAPI(title="fedloop draft endpoint", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestGuard, api_keys=api_keys, max_body_bytes=max_body_bytes)
    started = int(time.time())

    def error(status: int, message: str, param: str | None, code: str) -> JSONResponse:
        headers = {"Retry-After": str(service.retry_after_s)} if status in (429, 503) else None
        return JSONResponse(error_body(status, message, param, code).model_dump(), status, headers=headers)

    @app.exception_handler(FeedbackError)
    async def refused(_: Request, err: FeedbackError) -> JSONResponse:
        return error(HTTP_STATUS.get(err.status, 400), str(err), err.param, err.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(err)
        return error(400, message, param, "invalid_argument")

    @app.exception_handler(StarletteHTTPException)
    async def no_route(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = {
            404: f"no route {echoed(request.url.path)}: the endpoint serves /v1/chat/completions, "
            "/v1/drafts/{draft_id}/outcome, /v1/models, /health and /ready",
            405: f"{echoed(request.method)} is not allowed on {echoed(request.url.path)}",
        }.get(err.status_code, str(err.detail))
        return error(err.status_code, message, None, "not_found" if err.status_code == 404 else "method_not_allowed")

    @app.exception_handler(Exception)
    async def failed(_: Request, err: Exception) -> JSONResponse:
        log.exception("the draft endpoint failed on a request")
        return error(500, f"internal error ({type(err).__name__}); it was logged", None, "internal")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        try:
            body = ChatCompletionRequest.model_validate_json(await request.body())
        except ValidationError as err:
            message, param = _validation_message(err)
            raise FeedbackError("INVALID_ARGUMENT", message, param) from None
        pending = await run_in_threadpool(service.start, _draft_request(body, request))
        headers = {"X-Fedloop-Draft-Id": pending.draft_id}
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(
                _stream(service, pending, include_usage), media_type="text/event-stream", headers=headers
            )
        try:
            generation = await pending.handle.result_async()
        except Exception as err:
            raise service.generation_failed(pending, err) from None
        draft = await run_in_threadpool(service.finish, pending, generation)
        return JSONResponse(_completion(pending, draft).model_dump(), headers=headers)

    @app.post("/v1/drafts/{draft_id}/outcome")
    def outcome(draft_id: str, body: OutcomeRequest) -> dict[str, Any]:
        reward = service.record_outcome(draft_id, body.action, body.final_text, body.dwell_ms)
        return {"draft_id": draft_id, "action": body.action, "reward": reward}

    def card(name: str) -> ModelCard:
        return ModelCard(id=name, created=started)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return ModelList(data=[card(n) for n in (model_alias, *service.servable())]).model_dump()

    @app.get("/v1/models/{model_id}")
    def model(model_id: str) -> dict[str, Any]:
        if model_id != model_alias and model_id not in service.servable():
            raise FeedbackError(
                "NOT_FOUND",
                f"model {echoed(model_id)} is not served: use {model_alias!r} or a servable version",
                "model",
            )
        return card(model_id).model_dump()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        checks = service.ready()
        return JSONResponse({"ready": all(checks.values()), "checks": checks}, 200 if all(checks.values()) else 503)

    return app


async def _stream(service: DraftService, pending: PendingDraft, include_usage: bool) -> AsyncIterator[str]:
    """The server-sent events of a streamed draft; it ends with `[DONE]` only once the draft is recorded."""
    chunk = ChatCompletionChunk(id=pending.draft_id, created=int(time.time()), model=pending.version, choices=[])
    recorded = False
    try:
        yield sse(chunk.model_copy(update={"choices": [ChunkChoice(delta=Delta(role="assistant", content=""))]}))
        generation: Generation | None = None
        async for event in pending.handle.events_async():
            if isinstance(event, str):
                if event:
                    yield sse(chunk.model_copy(update={"choices": [ChunkChoice(delta=Delta(content=event))]}))
            elif isinstance(event, Generation):
                generation = event
            else:
                raise service.generation_failed(pending, event)
        assert generation is not None
        draft = await run_in_threadpool(service.finish, pending, generation)
        recorded = True
    except FeedbackError as err:
        service.fail(pending, str(err))
        status = HTTP_STATUS.get(err.status, 503)
        yield sse(error_body(status, f"{err}; the draft id {pending.draft_id} is void", None, err.code))
        return
    except BaseException:  # the client left (the task is cancelled) or the stream broke: the draft is void
        if not recorded:
            service.fail(pending, "the stream ended before the draft was complete")
        raise
    reason = "length" if draft.generation.finish_reason == "length" else "stop"
    info = _info(pending)
    yield sse(chunk.model_copy(update={"choices": [ChunkChoice(delta=Delta(), finish_reason=reason)], "fedloop": info}))
    if include_usage:
        generation = draft.generation
        yield sse(chunk.model_copy(update={"usage": usage(generation.prompt_tokens, generation.completion_tokens)}))
    yield sse("[DONE]")
