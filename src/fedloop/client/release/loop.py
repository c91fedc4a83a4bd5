"""Release decisions as outcomes arrive, in the release loop's own thread: after every N outcomes, and every few
seconds in any case (a canary's dwell time ends without any outcome)."""

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
    it wakes the loop's thread, which also decides every `decide_every_s`
    seconds. A request never waits for a look. Before `start()` (the Python API
    without a service) the caller's thread decides instead. `after_look` (for
    example `ExportOnMove.check`) runs after every look, so it also sees moves
    made by other processes (an operator's command, the ClientApp offering a
    version).
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
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def outcomes_recorded(self, count: int = 1) -> None:
        """Count newly recorded outcomes; when enough have arrived, wake the loop (or, unstarted, decide now)."""
        with self._lock:
            self._pending += count
            due = self._pending >= self._settings.decide_every_outcomes
        if not due:
            return
        if self._thread is None:
            self.decide_now()
        else:
            self._wake.set()

    def decide_now(self) -> None:
        """Let the controller decide on everything recorded so far."""
        with self._lock:
            self._pending = 0
            try:
                self._controller.decide()
            except Exception:  # a failed look must not end the loop; the next look retries
                log.exception("release decision failed")
        if self._after_look is not None:
            try:
                self._after_look()
            except Exception:
                log.exception("the step after a release look failed")

    def start(self) -> None:
        """Decide in a daemon thread: when woken by outcomes, and every `decide_every_s` seconds."""
        self._thread = threading.Thread(target=self._run, name="fedloop-release", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._settings.decide_every_s)
            self._wake.clear()
            if not self._stop.is_set():
                self.decide_now()
