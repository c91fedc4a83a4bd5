"""Where command output goes: a terminal's own width, or wide enough that ids are never cut when piped."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

PIPED_WIDTH = 160
errors = Console(stderr=True)


def command_group(help: str, **options: object) -> typer.Typer:
    """A Typer command group whose tracebacks never print local variables (keys, texts, pseudonym keys)."""
    return typer.Typer(help=help, no_args_is_help=True, pretty_exceptions_show_locals=False, **options)  # type: ignore[arg-type]


def output_console() -> Console:
    """A rich Console for stdout: the terminal's width, or PIPED_WIDTH columns when not a terminal."""
    return Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)


def fail(message: str) -> NoReturn:
    """Print `message` as an error on stderr and exit with status 2 (as written: "[train]" is not markup)."""
    errors.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(code=2)


def audited(operator: str, reason: str | None = None) -> str:
    """The operator's name, stripped; exits with an error if it (or a given reason) is blank (both are audited)."""
    if not operator.strip() or (reason is not None and not reason.strip()):
        fail(
            "--operator" + (" and --reason" if reason is not None else "") + " must not be empty: the action is "
            "recorded in the audit log"
        )
    return operator.strip()
