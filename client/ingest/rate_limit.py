"""Per-user event rate limit at ingestion: a user's events beyond the limit are refused with RESOURCE_EXHAUSTED."""

from __future__ import annotations

import threading
import time
from collections import deque

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
        with self._lock:
            for user in set(users):
                recent = self._recent.get(user)
                while recent and recent[0] <= now - WINDOW_S:
                    recent.popleft()
                if recent is not None and not recent:
                    del self._recent[user]
            for user in users:
                if len(self._recent.get(user, ())) + users.count(user) > self._per_minute:
                    return user
            for user in users:
                self._recent.setdefault(user, deque()).append(now)
        return None
