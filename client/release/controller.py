"""The tenant's release pointer: bootstrap, canary, widen, promote, roll back.

A version that passed the gates (hit rate, KL to the serving version,
forgetting) is offered here. The first version ever offered serves everyone.
Later ones start as a canary on `canary_share` of users (by hash of their
pseudonym) while the serving version is the control. Once both arms have
`min_drafts_per_arm` decided drafts since the phase began, each `decide()`
(run as outcomes arrive, see loop.py) compares them with a sequential test
that stays valid however often it looks (sequential.py):

- the canary's hit rate lower, its reject rate higher or its complaint rate
  (drafts flagged by a derived-signal rule) higher than control's, each with
  confidence: rolled back, automatically (the canary is dropped, the serving
  version stays);
- the canary's hit rate higher than control's by at least `promote_margin`
  with confidence (a win): widened to `widened_share` for a fresh window, and
  promoted to serve everyone after a second such win;
- otherwise it keeps collecting.

The error budget 1 - `confidence` is split equally between the three rollback
tests, so an equally good canary is rolled back with probability at most
1 - `confidence` over the whole phase. A newer version offered while a canary
runs supersedes it. Every move is one appended row in the store's `releases`
table plus an audit entry, so a rollback is a pointer swap: nothing is
re-verified or copied, and a draft server sees it on its next request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from fedloop.client.release.canary import in_canary
from fedloop.client.release.sequential import GapInterval, gap_interval
from fedloop.client.store_api import BASE_VERSION, ArmStats, FeedbackStoreAPI, ReleaseRecord
from fedloop.client.tenant_settings import ReleaseSection

log = logging.getLogger(__name__)
ACTOR = "release-controller"


class ReleaseError(ValueError):
    """A release action is not possible in the current state; the message says why."""


ROLLBACK_TESTS = 3  # hit rate, reject rate, complaint rate share the error budget


@dataclass(frozen=True)
class Comparison:
    """Canary against control over the current observation window, with always-valid intervals of the gaps."""

    canary: ArmStats
    control: ArmStats
    hit_gap: GapInterval
    reject_gap: GapInterval
    complaint_gap: GapInterval

    @classmethod
    def of(cls, canary: ArmStats, control: ArmStats, settings: ReleaseSection) -> Comparison:
        """Compare two arms; each interval is at level 1 - (1 - confidence) / 3 (the three tests share alpha)."""
        level = 1 - (1 - settings.confidence) / ROLLBACK_TESTS

        def gap(a: int, b: int) -> GapInterval:
            return gap_interval(a, canary.decided, b, control.decided, level, settings.mixture_scale)

        return cls(
            canary,
            control,
            gap(canary.accepts, control.accepts),
            gap(canary.rejects, control.rejects),
            gap(canary.flagged, control.flagged),
        )

    def worse(self) -> str | None:
        """Which rate shows the canary worse than control with confidence, or None."""
        if self.hit_gap.high < 0:
            return "hit rate lower"
        if self.reject_gap.low > 0:
            return "reject rate higher"
        if self.complaint_gap.low > 0:
            return "complaint rate higher"
        return None

    def wins(self, promote_margin: float) -> bool:
        """Whether the canary's hit rate beats control's by at least `promote_margin`, with confidence."""
        return self.hit_gap.low >= promote_margin

    def summary(self) -> str:
        """One line for logs and release records."""
        return (
            f"canary {self.canary.version} hit {self.canary.hit_rate:.1%} reject {self.canary.reject_rate:.1%} "
            f"complaints {self.canary.complaint_rate:.1%} (n={self.canary.decided}) vs control "
            f"{self.control.version} hit {self.control.hit_rate:.1%} reject {self.control.reject_rate:.1%} "
            f"complaints {self.control.complaint_rate:.1%} (n={self.control.decided}); "
            f"hit-rate gap {self.hit_gap.describe()}"
        )


def now_ms() -> int:
    """Wall-clock milliseconds."""
    return int(time.time() * 1000)


class ReleaseController:
    """Reads and moves the tenant's release pointer in its store."""

    def __init__(
        self, store: FeedbackStoreAPI, settings: ReleaseSection, actor: str = ACTOR, clock: Callable[[], int] = now_ms
    ) -> None:
        self._store = store
        self._settings = settings
        self._actor = actor  # who the audit log names: the controller itself, or an operator
        self._clock = clock

    def state(self) -> ReleaseRecord | None:
        """The current pointer (None before any version was offered)."""
        return self._store.versions.release_state()

    def route(self, user_pseudonym: str) -> str:
        """The version that drafts for this user now: the canary inside its share, else the serving one, else
        (nothing released yet) the base model, BASE_VERSION."""
        return self.route_in(self.state(), user_pseudonym)

    @staticmethod
    def route_in(state: ReleaseRecord | None, user_pseudonym: str) -> str:
        """The version that drafts for this user under the pointer `state` (BASE_VERSION before any release)."""
        if state is None:
            return BASE_VERSION
        if state.canary is not None and in_canary(user_pseudonym, state.share):
            return state.canary
        return state.serving or BASE_VERSION

    def _move(self, action: str, serving: str | None, canary: str | None, share: float, reason: str) -> ReleaseRecord:
        record = ReleaseRecord(self._clock(), action, serving, canary, share, reason)
        with self._store.transaction():
            self._store.versions.append_release(record)
            self._store.audit(self._actor, f"release-{action}", f"serving={serving} canary={canary} share={share:g}")
        log.info(
            "release %s: serving %s, canary %s (%.0f%% of users): %s", action, serving, canary, share * 100, reason
        )
        return record

    def offer(self, version_id: str, reason: str) -> ReleaseRecord:
        """A version passed the gates: serve it (first ever) or start its canary (superseding a running one)."""
        state = self.state()
        if state is None or state.serving is None:
            return self._move("bootstrap", version_id, None, 0.0, reason)
        if version_id in (state.serving, state.canary):
            return state
        action = "canary" if state.canary is None else "supersede"
        return self._move(action, state.serving, version_id, self._settings.canary_share, reason)

    def compare(self) -> Comparison | None:
        """Canary against control since the current phase began; None if no canary runs."""
        state = self.state()
        if state is None or state.canary is None or state.serving is None:
            return None
        return Comparison.of(
            self._store.drafts.arm_stats(state.canary, state.at_ms),
            self._store.drafts.arm_stats(state.serving, state.at_ms),
            self._settings,
        )

    def decide(self) -> ReleaseRecord | None:
        """Widen, promote or roll back the canary when the evidence says so; None while it keeps collecting."""
        comparison = self.compare()
        if comparison is None:
            return None
        settings = self._settings
        if min(comparison.canary.decided, comparison.control.decided) < settings.min_drafts_per_arm:
            return None
        worse = comparison.worse()
        if worse is not None:
            return self.rollback(f"automatic ({worse} with confidence): {comparison.summary()}")
        if not comparison.wins(settings.promote_margin):
            return None
        state = self.state()
        assert state is not None  # compare() returned a comparison
        if state.share < settings.widened_share:
            return self._move("widen", state.serving, state.canary, settings.widened_share, comparison.summary())
        return self._move("promote", state.canary, None, 0.0, comparison.summary())

    def promote(self, reason: str) -> ReleaseRecord:
        """Serve the canary to everyone now (operator decision)."""
        state = self.state()
        if state is None or state.canary is None:
            raise ReleaseError("no canary is running: nothing to promote")
        return self._move("promote", state.canary, None, 0.0, reason)

    def rollback(self, reason: str) -> ReleaseRecord:
        """Drop the canary, or, with none running, go back to the version that served before the current one."""
        state = self.state()
        if state is None or state.serving is None:
            raise ReleaseError("nothing has been released yet: nothing to roll back")
        if state.canary is not None:
            return self._move("rollback", state.serving, None, 0.0, reason)
        previous = self.rollback_target()
        if previous is None:
            raise ReleaseError(f"{state.serving} is the first version this tenant served: nothing to roll back to")
        return self._move("rollback", previous, None, 0.0, reason)

    def rollback_target(self) -> str | None:
        """The version a rollback with no canary running returns to, skipping any rolled back since."""
        served: list[str] = []
        for record in self._store.versions.release_history():
            if record.action == "rollback" and served and record.serving != served[-1]:
                served.pop()  # the version serving until then was pulled
            elif record.serving is not None and (not served or record.serving != served[-1]):
                served.append(record.serving)
        return served[-2] if len(served) >= 2 else None
