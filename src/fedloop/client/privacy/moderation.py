"""Moderation: a pluggable filter sends unsafe samples to quarantine, with a reason.

`LocalModeration` needs nothing outside the tenant (blocklist and patterns from
config). Another filter (an external review service, say) implements
`ModerationFilter` and is passed to the curator in its place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Verdict:
    """A moderation decision: allowed, or not with a reason."""

    allowed: bool
    reason: str | None = None


class ModerationFilter(Protocol):
    """Anything that can judge a text."""

    def review(self, text: str) -> Verdict:
        """Judge `text`."""
        ...


class LocalModeration:
    """Blocklisted words (case-insensitive substrings) and regular expressions."""

    def __init__(self, blocklist: Sequence[str], patterns: Sequence[str]) -> None:
        self._words = [w.casefold() for w in blocklist if w.strip()]
        try:
            self._patterns = [re.compile(p, re.IGNORECASE) for p in patterns]
        except re.error as err:
            raise ValueError(f"moderation pattern is not a valid regular expression: {err}") from None

    def review(self, text: str) -> Verdict:
        """Refuse texts containing a blocklisted word or matching a pattern."""
        folded = text.casefold()
        for index, word in enumerate(self._words):
            if word in folded:
                return Verdict(False, f"blocklist entry #{index + 1}")
        for pattern in self._patterns:
            if pattern.search(text):
                return Verdict(False, f"pattern {pattern.pattern!r}")
        return Verdict(True)
