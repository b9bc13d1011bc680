"""The Typer application object and the helpers every command module shares.

Command modules in :mod:`kneenode.commands` register themselves on :data:`app`;
:mod:`kneenode.cli` imports them all and is the console-script entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from kneenode.logs import configure_logging
from kneenode.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    name="kneenode",
    help="DICOM node for knee MRI: receive series, analyse them, send results back to PACS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


@dataclass(frozen=True)
class CliState:
    """What the global options carry to every command."""

    config: Path | None


@app.callback()
def _global_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="kneenode.toml to read (default: $KNEENODE_CONFIG)."),
    ] = None,
) -> None:
    ctx.obj = CliState(config=config)


def settings_for(ctx: typer.Context, *, configure_logs: bool = True,
                 overrides: dict[str, Any] | None = None) -> Settings:
    """Load the settings for a command; an invalid value exits 2 with one clear message.

    ``overrides`` (nested, e.g. from ``--set``) win over the config file and are validated with it.
    """
    state: CliState = ctx.obj if isinstance(ctx.obj, CliState) else CliState(None)
    try:
        settings = load_settings(state.config, **(overrides or {}))
    except SettingsError as exc:
        err_console.print(f"[bold red]configuration error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    if configure_logs:
        configure_logging(settings.logging)
    return settings


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error for the operator and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # may hold [keys]
    return typer.Exit(code)
