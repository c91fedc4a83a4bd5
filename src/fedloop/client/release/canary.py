"""Which users see the canary: a stable hash of the pseudonymous user id.

The same user always lands in the same place of [0, 1), so widening the canary
from 5 % to 30 % keeps the first 5 % inside it, and nobody flips between
versions from one draft to the next.
"""

from __future__ import annotations

from fedloop.shared.crypto import sm3_digest

_SCALE = float(2**64)


def bucket(user_pseudonym: str) -> float:
    """The user's fixed position in [0, 1), from SM3 of the pseudonym."""
    return int.from_bytes(sm3_digest(b"fedloop/canary/" + user_pseudonym.encode())[:8], "big") / _SCALE


def in_canary(user_pseudonym: str, share: float) -> bool:
    """Whether the user is in a canary covering `share` of users."""
    return bucket(user_pseudonym) < share
