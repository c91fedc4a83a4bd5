"""The tenant's release pointer: bootstrap, canary, ramp, promote, roll back.

A version that passed the gates (hit rate, KL to the serving version,
forgetting) is offered here. The first version ever offered serves everyone.
Later ones start as a canary on `canary_share` of users (by hash of their
pseudonym) while the serving version is the control, and ramp:

- stage 1, `canary_share` (5 %): for at least `canary_dwell_h` hours; with no
  harm found by then, widened to `widened_share` (30 %) for a fresh window;
- stage 2, `widened_share`: promoted to serve everyone once its hit rate beats
  control's by at least `promote_margin` with confidence and the canary is at
  least `promote_after_h` hours old;
- in either stage, once both arms have `min_drafts_per_arm` decided drafts from
  `min_users_per_arm` users: rolled back, automatically, when its hit rate is
  lower, its reject rate higher or its complaint rate (decided drafts flagged by a
  derived-signal rule) higher than control's, each with confidence.

The comparison treats the user as the unit, adjusted by what each user did
before the canary began (user_statistics.py), inside a sequential test that
stays valid however often it looks (sequential.py). The error budget
1 - `confidence` is split equally between the two stages and the three rollback
tests, so an equally good canary is rolled back with probability at most
1 - `confidence` over its whole life. Looks are O(1): arm_tally.py keeps the
sums as outcomes arrive.

A running canary is never restarted by a newer version: the newest version
offered meanwhile waits and becomes the next canary once this one is decided
(an operator may supersede by hand). Every move is one appended row in the
store's `releases` table plus an audit entry, so a rollback is a pointer swap:
nothing is re-verified or copied, and a draft server sees it on its next
request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fedloop.client.release.arm_tally import Window, WindowTally
from fedloop.client.release.canary import in_canary
from fedloop.client.release.comparison import Comparison, arm_stats
from fedloop.client.store.api import BASE_VERSION, EvaluationKind, FeedbackStoreAPI, ReleaseRecord
from fedloop.client.tenant_settings import ReleaseSection

log = logging.getLogger(__name__)
ACTOR = "release-controller"
HOUR_MS = 3_600_000


class ReleaseError(ValueError):
    """A release action is not possible in the current state; the message says why."""


GUARD = "guard"  # the release action of a guarded promotion: `canary` names the version the holdback keeps


def tested_version(state: ReleaseRecord) -> str | None:
    """The version a phase tests: the canary, or during a guard the promoted (serving) version."""
    return state.serving if state.action == GUARD else state.canary


def reference_version(state: ReleaseRecord) -> str | None:
    """What the tested version is compared with: the serving version, or during a guard the holdback's."""
    return state.canary if state.action == GUARD else state.serving


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
        self._tally: WindowTally | None = None  # the current window's sums, kept between looks
        self._lock = threading.Lock()

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
        if state.canary is not None:
            if state.action == GUARD:  # the holdback: the top of the buckets, users no canary of it reached
                if not in_canary(user_pseudonym, 1.0 - state.share):
                    return state.canary
            elif in_canary(user_pseudonym, state.share):
                return state.canary
        return state.serving or BASE_VERSION

    def _move(
        self,
        action: str,
        serving: str | None,
        canary: str | None,
        share: float,
        reason: str,
        pulled: str | None = None,
    ) -> ReleaseRecord:
        """Append one release record and its audit entry; `pulled`: the version a rollback takes away, remembered as
        rolled back in the same transaction."""
        record = ReleaseRecord(self._clock(), action, serving, canary, share, reason)
        with self._store.transaction():
            if pulled is not None:
                self.decline(pulled, EvaluationKind.ROLLED_BACK, reason)
            self._store.versions.append_release(record)
            self._store.audit(self._actor, f"release-{action}", f"serving={serving} canary={canary} share={share:g}")
        log.info(
            "release %s: serving %s, canary %s (%.0f%% of users): %s", action, serving, canary, share * 100, reason
        )
        return record

    def declined(self) -> dict[str, str]:
        """Versions this tenant will not serve, with why: refused by its gates or rolled back here, and not
        re-admitted by an operator since."""
        verdicts: list[tuple[float, str, EvaluationKind, str]] = []
        for kind in (EvaluationKind.REFUSED, EvaluationKind.ROLLED_BACK, EvaluationKind.READMITTED):
            for version, metrics in self._store.versions.evaluations_of_kind(kind):
                verdicts.append((float(metrics.get("at_ms", 0)), version, kind, str(metrics.get("why", ""))))
        declined: dict[str, str] = {}
        for _, version, kind, why in sorted(verdicts, key=lambda verdict: verdict[0]):
            if kind == EvaluationKind.READMITTED:
                declined.pop(version, None)
            else:
                declined[version] = f"{kind.replace('_', ' ')}: {why}"
        return declined

    def decline(self, version_id: str, kind: EvaluationKind, why: str) -> None:
        """Remember that this tenant refused or rolled back a version (it is neither offered nor served again)."""
        self._store.versions.record_evaluation(version_id, kind, {"at_ms": self._clock(), "why": why})

    def readmit(self, version_id: str, reason: str) -> None:
        """Lift a refusal or rollback (operator decision): the version may be offered and served again."""
        if version_id not in self.declined():
            raise ReleaseError(f"{version_id} is neither refused nor rolled back here: nothing to re-admit")
        with self._store.transaction():
            self._store.versions.record_evaluation(
                version_id, EvaluationKind.READMITTED, {"at_ms": self._clock(), "why": reason}
            )
            self._store.audit(self._actor, "release-readmit", version_id)

    def offer(self, version_id: str, reason: str) -> ReleaseRecord | None:
        """A version passed the gates: serve it (first ever), start its canary, or, while a canary runs, let it wait
        (the newest offered version waits; it becomes the canary once the running one is decided). A version this
        tenant refused or rolled back is not offered (until an operator re-admits it)."""
        state = self.state()
        if (why := self.declined().get(version_id)) is not None:
            self._store.audit(self._actor, "release-declined", f"{version_id}: {why}")
            log.info("release: %s is not offered again (%s)", version_id, why)
            return state
        if state is None or state.serving is None:
            return self._move("bootstrap", version_id, None, 0.0, reason)
        if version_id in (state.serving, state.canary):
            return state
        if state.canary is None:
            return self._move("canary", state.serving, version_id, self._settings.canary_share, reason)
        self._store.versions.record_evaluation(version_id, EvaluationKind.OFFERED, {})
        self._store.audit(self._actor, "release-wait", f"{version_id} waits for canary {state.canary} to be decided")
        log.info("release: %s waits until canary %s is decided (%s)", version_id, state.canary, reason)
        return state

    def waiting(self) -> str | None:
        """The newest version offered while a canary ran, neither released nor declined since: the next canary."""
        latest = self._store.versions.latest_evaluation(EvaluationKind.OFFERED)
        if latest is None:
            return None
        released = {v for r in self._store.versions.release_history() for v in (r.serving, r.canary)}
        return None if latest[0] in released or latest[0] in self.declined() else latest[0]

    def supersede(self, version_id: str, reason: str) -> ReleaseRecord:
        """Replace the running canary by an installed version now (operator decision: a fresh window)."""
        state = self.state()
        if state is None or state.canary is None or state.serving is None:
            raise ReleaseError("no canary is running: nothing to supersede")
        if version_id not in {v.version_id for v in self._store.versions.installed()}:
            raise ReleaseError(f"{version_id} is not installed at this tenant: see `fedloop versions`")
        if state.action == GUARD:
            raise ReleaseError("a guard is running: end it first (`fedloop release promote` or `rollback`)")
        if version_id in (state.serving, state.canary):
            raise ReleaseError(f"{version_id} already drafts here (serving {state.serving}, canary {state.canary})")
        return self._move("supersede", state.serving, version_id, self._settings.canary_share, reason)

    def _next_canary(self, decided: ReleaseRecord) -> ReleaseRecord:
        waiting = self.waiting()
        if waiting is None or decided.serving is None:
            return decided
        return self._move("canary", decided.serving, waiting, self._settings.canary_share, f"{waiting} waited")

    def canary_since_ms(self, state: ReleaseRecord) -> int:
        """When the version under test began its canary (for a guard: the promoted version's canary; its own
        start if it never had one). Users' covariates come from before it."""
        tested, since = tested_version(state), state.at_ms
        history = self._store.versions.release_history()
        for record in reversed(history[:-1] if state.action == GUARD else history):
            if record.canary != tested:
                break
            since = record.at_ms
        return since

    def _window(self, state: ReleaseRecord) -> WindowTally:
        tested, reference = tested_version(state), reference_version(state)
        assert tested is not None and reference is not None
        window = Window(tested, reference, state.at_ms, self.canary_since_ms(state))
        if self._tally is None or self._tally.window != window:
            self._tally = WindowTally(self._store, window, self._settings.covariate_days)
        self._tally.catch_up()
        return self._tally

    def compare(self) -> Comparison | None:
        """The version under test against its reference since the current phase began (a canary against the
        serving version; during a guard, the promoted version against the holdback); None if neither runs."""
        state = self.state()
        if state is None or state.canary is None or state.serving is None:
            return None
        tested, reference = tested_version(state), reference_version(state)
        assert tested is not None and reference is not None
        with self._lock:
            tally = self._window(state)
            sums = (tally.arms[tested].sums.copy(), tally.arms[reference].sums.copy())
        return Comparison.of(arm_stats(tested, sums[0]), arm_stats(reference, sums[1]), sums, self._settings)

    def decide(self) -> ReleaseRecord | None:
        """Widen, promote, settle or roll back when the evidence and the ramp's dwell times say so; None while the
        canary or the guard keeps collecting."""
        state = self.state()
        comparison = self.compare()
        if state is None or comparison is None:
            return None
        settings, now = self._settings, self._clock()
        if comparison.ready(settings) and (worse := comparison.worse()) is not None:
            what = "guard: " if state.action == GUARD else ""
            return self.rollback(f"automatic ({what}{worse} with confidence): {comparison.summary()}")
        if state.action == GUARD:
            if now - state.at_ms < settings.guard_h * HOUR_MS:
                return None
            reason = f"guard passed: no harm in {settings.guard_h:g} h: {comparison.summary()}"
            return self._next_canary(self._move("settle", state.serving, None, 0.0, reason))
        if state.share < settings.widened_share:
            if now - state.at_ms < settings.canary_dwell_h * HOUR_MS:
                return None
            reason = f"no harm found in {settings.canary_dwell_h:g} h at {state.share:.0%}: {comparison.summary()}"
            return self._move("widen", state.serving, state.canary, settings.widened_share, reason)
        assert self._tally is not None  # compare() kept this window's tally, and when its canary began
        old_enough = now - self._tally.window.canary_since_ms >= settings.promote_after_h * HOUR_MS
        if comparison.ready(settings) and old_enough and comparison.wins(settings.promote_margin):
            return self._promote(state, comparison.summary())
        return None

    def _promote(self, state: ReleaseRecord, reason: str) -> ReleaseRecord:
        """Serve the canary to everyone; with a guard configured, all but the holdback, which stays on the previous
        version while the guard watches."""
        assert state.canary is not None and state.serving is not None
        settings = self._settings
        if settings.guard_h > 0 and settings.holdback_share > 0:
            reason = (
                f"promoted; guard for {settings.guard_h:g} h, {settings.holdback_share:.0%} of users stay on "
                f"{state.serving}: {reason}"
            )
            return self._move(GUARD, state.canary, state.serving, settings.holdback_share, reason)
        return self._next_canary(self._move("promote", state.canary, None, 0.0, reason))

    def promote(self, reason: str) -> ReleaseRecord:
        """Serve the canary to everyone now (guarded, if a guard is configured), or end a running guard now
        (operator decision)."""
        state = self.state()
        if state is None or state.canary is None or state.serving is None:
            raise ReleaseError("no canary or guard is running: nothing to promote")
        if state.action == GUARD:
            return self._next_canary(self._move("settle", state.serving, None, 0.0, reason))
        return self._promote(state, reason)

    def rollback(self, reason: str) -> ReleaseRecord:
        """Drop the canary; during a guard, go back to the version the holdback kept; otherwise go back to the version
        that served before the current one. The version taken away is not offered or served again."""
        state = self.state()
        if state is None or state.serving is None:
            raise ReleaseError("nothing has been released yet: nothing to roll back")
        if state.action == GUARD and state.canary is not None:
            return self._next_canary(self._move("rollback", state.canary, None, 0.0, reason, pulled=state.serving))
        if state.canary is not None:
            return self._next_canary(self._move("rollback", state.serving, None, 0.0, reason, pulled=state.canary))
        previous = self.rollback_target()
        if previous is None:
            raise ReleaseError(f"{state.serving} is the first version this tenant served: nothing to roll back to")
        return self._move("rollback", previous, None, 0.0, reason, pulled=state.serving)

    def rollback_target(self) -> str | None:
        """The version a rollback with no canary running returns to, skipping any rolled back since."""
        served: list[str] = []
        for record in self._store.versions.release_history():
            if record.action == "rollback" and served and record.serving != served[-1]:
                served.pop()  # the version serving until then was pulled
            elif record.serving is not None and (not served or record.serving != served[-1]):
                served.append(record.serving)
        return served[-2] if len(served) >= 2 else None
