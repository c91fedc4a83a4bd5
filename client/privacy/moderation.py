"""Moderation: a pluggable filter sends unsafe samples to quarantine, with a reason.

`LocalModeration` needs nothing outside the tenant (blocklist and patterns from
config). `ExternalReviewModeration` adapts any review service that can be
called with a text; when the service fails, the sample is quarantined (fail
closed) with the failure as its reason, so nothing unsafe slips through and
nothing is lost.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


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


class ExternalReviewModeration:
    """Adapts an external review service: `call(text)` returns (allowed, reason)."""

    def __init__(self, call: Callable[[str], tuple[bool, str | None]]) -> None:
        self._call = call

    def review(self, text: str) -> Verdict:
        """Ask the service; quarantine if it fails."""
        try:
            allowed, reason = self._call(text)
        except Exception as err:  # the service is outside fedloop: any failure means "not reviewed"
            log.warning("external review failed (%s); quarantining the sample", type(err).__name__)
            return Verdict(False, f"external review unavailable: {type(err).__name__}")
        return Verdict(bool(allowed), reason if not allowed else None)


class ChainedModeration:
    """Runs filters in order; the first refusal wins."""

    def __init__(self, filters: Sequence[ModerationFilter]) -> None:
        self._filters = list(filters)

    def review(self, text: str) -> Verdict:
        """Allowed only if every filter allows."""
        for moderation_filter in self._filters:
            verdict = moderation_filter.review(text)
            if not verdict.allowed:
                return verdict
        return Verdict(True)
