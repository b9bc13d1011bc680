"""``kneenode user add|hash``: console accounts (``[http.users.<name>]``) with argon2 hashes.

The password comes from a prompt (twice, not echoed) or, with ``--password-stdin``, from the
first line of standard input (scripts); it is never an argument (shell history, ``ps``).
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Annotated

import typer

from kneenode.cli_app import CliState, app, fail
from kneenode.fsio import write_text_atomic
from kneenode.settings import CONFIG_ENV, ROLES, USER_NAME

user_app = typer.Typer(help="Web console accounts.", no_args_is_help=True)
app.add_typer(user_app, name="user")

Stdin = Annotated[bool, typer.Option("--password-stdin",
                                     help="Read the password from the first line of stdin.")]


def _password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        raise fail("a password needs at least 8 characters")
    return password


def _hash(password: str) -> str:
    from workers.console.auth import hash_password

    return hash_password(password)


@user_app.command("hash")
def user_hash(password_stdin: Stdin = False) -> None:
    """Print an argon2id hash for `http.users.<name>.password_hash`."""
    typer.echo(_hash(_password(password_stdin)))


@user_app.command("add")
def user_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name (letters, digits, '.', '_', '-').")],
    role: Annotated[str, typer.Option(help="viewer or operator.")] = "viewer",
    password_stdin: Stdin = False,
) -> None:
    """Add an account to the config file (--config, $KNEENODE_CONFIG, else ./kneenode.toml).

    Appends an `[http.users.NAME]` table; the running node reads it at its next start.
    """
    state: CliState = ctx.obj if isinstance(ctx.obj, CliState) else CliState(None)
    path = state.config or Path(os.environ.get(CONFIG_ENV) or "kneenode.toml")
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        current = tomllib.loads(old)
    except tomllib.TOMLDecodeError as exc:
        raise fail(f"{path} is not valid TOML: {exc}") from None
    if name in current.get("http", {}).get("users", {}):
        raise fail(f"user '{name}' exists in {path}: remove its [http.users.{name}] table first")
    if role not in ROLES:
        raise fail(f"--role must be one of {', '.join(ROLES)}, not '{role}'", 2)
    if not re.fullmatch(USER_NAME, name):
        raise fail(f"'{name}': a user name is 1-64 letters, digits, '.', '_' or '-'", 2)
    table = (f'\n[http.users."{name}"]\npassword_hash = "{_hash(_password(password_stdin))}"\n'
             f'role = "{role}"\n')
    new = old + ("" if not old or old.endswith("\n") else "\n") + table
    try:
        tomllib.loads(new)
    except tomllib.TOMLDecodeError as exc:  # e.g. an inline `users = {...}` in [http]
        raise fail(f"cannot append [http.users.{name}] to {path} ({exc}): add it by hand, with "
                   "a hash from `kneenode user hash`") from None
    write_text_atomic(path, new)
    typer.echo(f"user '{name}' ({role}) added to {path}; restart the node to use it")
