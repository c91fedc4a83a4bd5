"""Per-user event rate limit at ingestion: a user's events beyond the limit are refused with RESOURCE_EXHAUSTED."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

WINDOW_S = 60.0


class UserRateLimit:
    """At most `per_minute` events per user in any 60 s window (0 = no limit); kept in memory, by pseudonym."""

    def __init__(self, per_minute: int) -> None:
        self._per_minute = per_minute
        self._recent: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, users: list[str], now: float | None = None) -> str | None:
        """Count a batch's events against their users; returns the first user over the limit (nothing counted then)."""
        if self._per_minute <= 0 or not users:
            return None
        now = time.monotonic() if now is None else now
        batch = Counter(users)
        with self._lock:
            for user, count in batch.items():
                recent = self._recent.setdefault(user, deque())
                while recent and recent[0] <= now - WINDOW_S:
                    recent.popleft()
                if len(recent) + count > self._per_minute:
                    return user
            for user, count in batch.items():
                self._recent[user].extend([now] * count)
        return None
