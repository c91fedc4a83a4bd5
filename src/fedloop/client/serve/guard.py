"""The draft endpoint's door: the bearer key is checked before a byte of the body is read, and the body is capped.

An ASGI middleware in front of every route but `/health` and `/ready`: a
request without an accepted key gets 401 from its headers alone; a body whose
`Content-Length` is over `serve.max_body_bytes` gets 413 from its headers, and
one without a length (chunked) gets 413 as soon as what was read passes the
limit. Only a body within the limit is buffered and handed on, so no request
costs the process more than `serve.max_body_bytes` before it is checked.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedloop.client.bearer import bearer_accepted
from fedloop.client.serve.openai_schema import error_body

OPEN_PATHS = ("/health", "/ready")  # they tell nothing but booleans: no key needed


class RequestGuard:
    """Authenticate by header, then read the body up to `max_body_bytes`; refuse with OpenAI-shaped errors."""

    def __init__(self, app: ASGIApp, api_keys: list[bytes] | None, max_body_bytes: int) -> None:
        self._app = app
        self._api_keys = api_keys  # None: no key needed (loopback only, enforced by the settings)
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an authenticated request with a body within the limit on to the app; refuse any other."""
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self._app(scope, receive, send)
            return
        headers = {name.lower(): value for name, value in reversed(scope["headers"])}  # the first of repeats wins
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if self._api_keys and not bearer_accepted(authorization, self._api_keys):
            await _refuse(
                send,
                401,
                "missing or unknown API key: send `Authorization: Bearer <key>` with a key from serve.api_keys_file",
                "unauthenticated",
            )
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self._max_body_bytes):
            await self._too_large(send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its body was complete
            body += message.get("body", b"")
            if len(body) > self._max_body_bytes:
                await self._too_large(send)
                return
            if not message.get("more_body", False):
                break
        await self._app(scope, _replay(bytes(body), receive), send)

    async def _too_large(self, send: Send) -> None:
        await _refuse(
            send,
            413,
            f"the request body is larger than {self._max_body_bytes} bytes (serve.max_body_bytes): send fewer or "
            "shorter messages",
            "request_too_large",
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then what the connection says next (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _refuse(send: Send, status: int, message: str, code: str) -> None:
    """Answer `status` with OpenAI's error body and close the connection (the unread body is never read)."""
    payload = error_body(status, message, None, code).model_dump_json().encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
