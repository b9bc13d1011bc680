"""Logging set-up, written once for every process (SCP, workers, CLI).

Logs carry Study/Series/SOP UIDs and job IDs as fields; callers never log patient names or IDs.
Third-party libraries log below WARNING only at ``logging.level = DEBUG``: highdicom alone writes
a dozen INFO lines per result object ("copy attributes of module ..."), which would bury the
node's own lines.
"""

from __future__ import annotations

import logging
import sys

import structlog

from kneenode.settings import LoggingSettings

OWN_PACKAGES = frozenset({"kneenode", "scp", "pipeline", "workers", "__main__"})


def _own_or_important(record: logging.LogRecord) -> bool:
    """Keep the node's own records at any level and third-party records from WARNING on."""
    return record.levelno >= logging.WARNING or record.name.split(".", 1)[0] in OWN_PACKAGES


def configure_logging(settings: LoggingSettings) -> None:
    """Route stdlib and structlog records through one renderer (console or JSON lines)."""
    renderer: structlog.typing.Processor
    if settings.format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    if settings.level != "DEBUG":
        handler.addFilter(_own_or_important)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # pynetdicom logs every PDU at DEBUG and dataset contents at some levels: keep it quiet.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structured logger; bind UIDs/job IDs with ``log.bind(series_uid=...)``."""
    return structlog.stdlib.get_logger(name)
