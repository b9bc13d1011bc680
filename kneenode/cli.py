"""Console-script entry point: ``kneenode``."""

from __future__ import annotations

from kneenode.cli_app import app
from kneenode.commands import analysis as _analysis  # noqa: F401
from kneenode.commands import analyze as _analyze  # noqa: F401
from kneenode.commands import config as _config  # noqa: F401  (registers commands)
from kneenode.commands import edge as _edge  # noqa: F401
from kneenode.commands import history as _history  # noqa: F401
from kneenode.commands import jobs as _jobs  # noqa: F401
from kneenode.commands import ops as _ops  # noqa: F401
from kneenode.commands import review as _review  # noqa: F401
from kneenode.commands import upload as _upload  # noqa: F401
from kneenode.commands import users as _users  # noqa: F401


def main() -> None:
    """Run the CLI."""
    app()


if __name__ == "__main__":
    main()
