"""Progress logging for fedloop's own modules, on stderr, without touching Flower's logger."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: int = logging.INFO) -> None:
    """Send `fedloop.*` records at `level` and above to stderr (idempotent; safe in Ray workers)."""
    logger = logging.getLogger("fedloop")
    if any(getattr(h, "_fedloop", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler._fedloop = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
