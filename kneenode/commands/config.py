"""``kneenode config init|show``: write a commented example, show the effective settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kneenode.cli_app import app, fail, settings_for
from kneenode.configfile import example_config

config_app = typer.Typer(help="Configuration file helpers.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("init")
def config_init(
    path: Annotated[Path, typer.Argument(help="Where to write the example.")] = Path("kneenode.toml"),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented example kneenode.toml with every key and its default."""
    if path.exists() and not force:
        raise fail(f"{path} exists (use --force to overwrite)")
    path.write_text(example_config(), encoding="utf-8")
    typer.echo(f"wrote {path}")


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Validate the configuration and print the effective settings as JSON."""
    settings = settings_for(ctx, configure_logs=False)
    typer.echo(settings.model_dump_json(indent=2))
