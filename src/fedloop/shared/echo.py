"""Input echoed in an error message, cut to a bounded length: a 1 MB model name is not sent back whole."""

from __future__ import annotations

ECHO_CHARS = 64


def echoed(value: object, limit: int = ECHO_CHARS) -> str:
    """`repr(value)`, cut to `limit` characters and saying how long it was when it is longer."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
