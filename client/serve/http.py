"""The OpenAI-compatible draft endpoint, over `DraftService`.

- `POST /v1/chat/completions` (non-streaming and `stream: true`): `user` is
  the product's id of the user; `model` is the routing alias (`fedloop`) or an
  installed version id. The response's `id` is the draft id and its `model`
  the version that drafted it. Drafts are greedy: `temperature`, `top_p` and
  `seed` are accepted and have no effect.
- `POST /v1/drafts/{draft_id}/outcome`: what the user did with the draft.
- `GET /v1/models`: the alias and the installed versions.

Errors have OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`)
with the HTTP status of the refusal, and nothing of a refused request is stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from fedloop.client.bearer import bearer_accepted
from fedloop.client.feedback import FeedbackError
from fedloop.client.serve.drafts import Draft, DraftRequest, DraftService

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
}


class ChatMessageIn(BaseModel):
    """One message of the conversation."""

    model_config = ConfigDict(extra="forbid")
    role: str
    content: str
    name: str | None = None


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat completion request that drafting uses; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[ChatMessageIn]
    user: str = ""
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    n: Literal[1] = 1
    stream_options: dict[str, Any] | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class OutcomeRequest(BaseModel):
    """What the user did with a draft."""

    model_config = ConfigDict(extra="forbid")
    action: Literal["accept", "edit", "reject"]
    final_text: str | None = None
    dwell_ms: int = Field(default=0, ge=0)


def _error(status: int, message: str, param: str | None, code: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "service_unavailable"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def _draft_request(body: ChatCompletionRequest) -> DraftRequest:
    metadata = body.metadata
    unknown = sorted(set(metadata) - {"session_id", "prompt_version"})
    if unknown:
        raise FeedbackError(
            "INVALID_ARGUMENT",
            f"metadata has unknown key(s) {unknown}: fedloop reads session_id and prompt_version",
            "metadata",
        )
    return DraftRequest(
        body.user,
        tuple(m.model_dump(exclude_none=True) for m in body.messages),
        body.model,
        body.max_completion_tokens or body.max_tokens,
        metadata.get("session_id", "default"),
        metadata.get("prompt_version", "default"),
    )


def _completion(draft: Draft) -> dict[str, Any]:
    generation = draft.generation
    return {
        "id": draft.draft_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": draft.version,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": generation.text},
                "finish_reason": generation.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens,
        },
        "fedloop": {"draft_id": draft.draft_id, "version": draft.version, "canary": draft.canary},
    }


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def build_http_app(service: DraftService, model_alias: str, api_keys: list[bytes] | None = None) -> FastAPI:
    """The FastAPI app of the draft endpoint; with `api_keys`, every route needs `Authorization: Bearer <key>`."""
    app = FastAPI(title="fedloop draft endpoint", docs_url=None, redoc_url=None, openapi_url=None)

    def authenticate(request: Request) -> None:
        if not api_keys:
            return
        if not bearer_accepted(request.headers.get("authorization", ""), api_keys):
            raise FeedbackError(
                "UNAUTHENTICATED",
                "missing or unknown API key: send `Authorization: Bearer <key>` with a key from serve.api_keys_file",
            )

    @app.exception_handler(FeedbackError)
    async def refused(_: Request, err: FeedbackError) -> JSONResponse:
        return _error(HTTP_STATUS.get(err.status, 400), str(err), err.param, err.status.lower())

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problem = err.errors()[0]
        where = ".".join(str(part) for part in problem["loc"] if part != "body") or "body"
        fix = "remove it" if problem["type"] == "extra_forbidden" else "see docs/tenant-operator.md for the fields"
        return _error(400, f"{where}: {problem['msg']} ({fix}); nothing was recorded", where, "invalid_argument")

    @app.post("/v1/chat/completions", dependencies=[Depends(authenticate)])
    def chat_completions(body: ChatCompletionRequest) -> Any:
        request = _draft_request(body)
        if not body.stream:
            return _completion(service.draft_one(request))
        stream = service.stream(request)

        def events() -> Iterator[str]:
            chunk = {
                "id": stream.draft_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": stream.version,
            }
            yield _sse(
                {
                    **chunk,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                }
            )
            try:
                for piece in stream.pieces:
                    yield _sse({**chunk, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            except FeedbackError as err:
                yield _sse(
                    {
                        "error": {
                            "message": str(err),
                            "type": "server_error",
                            "param": err.param,
                            "code": err.status.lower(),
                        }
                    }
                )
                return
            [draft] = stream.finished
            yield _sse(
                {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": draft.generation.finish_reason}]}
            )
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/drafts/{draft_id}/outcome", dependencies=[Depends(authenticate)])
    def outcome(draft_id: str, body: OutcomeRequest) -> dict[str, Any]:
        reward = service.record_outcome(draft_id, body.action, body.final_text, body.dwell_ms)
        return {"draft_id": draft_id, "action": body.action, "reward": reward}

    @app.get("/v1/models", dependencies=[Depends(authenticate)])
    def models() -> dict[str, Any]:
        names = [model_alias, *service.installed()]
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "fedloop"} for n in names]}

    return app
