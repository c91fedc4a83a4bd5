"""Where command output goes: a terminal's own width, or wide enough that ids are never cut when piped."""

from __future__ import annotations

import sys

from rich.console import Console

PIPED_WIDTH = 160


def output_console() -> Console:
    """A rich Console for stdout: the terminal's width, or PIPED_WIDTH columns when not a terminal."""
    return Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)
