"""Release decisions as outcomes arrive: after every N outcomes, and every few seconds while any came in."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from fedloop.client.release.controller import ReleaseController
from fedloop.client.tenant_settings import ReleaseSection

log = logging.getLogger(__name__)


class ReleaseLoop:
    """Runs `ReleaseController.decide()` as outcomes arrive.

    Whatever records outcomes (the draft endpoint, the FeedbackService, the
    Python API) calls `outcomes_recorded`; every `decide_every_outcomes` of them
    the controller decides at once. `start()` adds a thread that also decides
    every `decide_every_s` seconds while outcomes came in since the last look.
    `after_look` (for example `ExportOnMove.check`) runs after every decision
    and every tick of that thread, so it also sees moves made by other
    processes (an operator's command, the ClientApp offering a version).
    """

    def __init__(
        self,
        controller: ReleaseController,
        settings: ReleaseSection,
        after_look: Callable[[], None] | None = None,
    ) -> None:
        self._controller = controller
        self._settings = settings
        self._after_look = after_look
        self._pending = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def outcomes_recorded(self, count: int = 1) -> None:
        """Count newly recorded outcomes; decide when enough have arrived."""
        with self._lock:
            self._pending += count
            due = self._pending >= self._settings.decide_every_outcomes
        if due:
            self.decide_now()

    def decide_now(self) -> None:
        """Let the controller decide on everything recorded so far."""
        with self._lock:
            self._pending = 0
            try:
                self._controller.decide()
            except Exception:  # a failed look must not fail the request that triggered it; the next look retries
                log.exception("release decision failed")
        self._look_done()

    def _look_done(self) -> None:
        if self._after_look is not None:
            try:
                self._after_look()
            except Exception:
                log.exception("the step after a release look failed")

    def start(self) -> None:
        """Also decide every `decide_every_s` seconds (in a daemon thread) while outcomes arrive."""
        self._thread = threading.Thread(target=self._run, name="fedloop-release", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the timer thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._settings.decide_every_s):
            if self._pending:
                self.decide_now()
            else:
                self._look_done()
