"""Logging: the package logger, handler set-up for processes we run, workflow ids.

The library never configures logging on import. Only the runners (the CLI, ``Service``,
``InlineServices``) call :func:`configure_logging`, which attaches one console handler
and, when asked, one hourly-rotating file handler to the root logger, so that a
service's own ``getLogger(__name__)`` lines are formatted the same way. Every record
gets a ``workflow_id`` attribute from :mod:`service_framework.workflow`.
"""

from __future__ import annotations

import logging
import sys
from logging.handlers import TimedRotatingFileHandler
from pathlib import Path

from .workflow import IDLE, current_flow

__all__ = ["LOG_FORMAT", "WorkflowIdFilter", "configure_logging", "get_logger"]

PACKAGE_LOGGER_NAME = "service_framework"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(workflow_id)s] %(message)s"


def get_logger() -> logging.Logger:
    """The package logger, ``logging.getLogger('service_framework')``."""
    return logging.getLogger(PACKAGE_LOGGER_NAME)


class WorkflowIdFilter(logging.Filter):
    """Stamps each record with the workflow id of the message being handled ('-' if none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        flow = current_flow.get()
        record.workflow_id = flow.id if flow is not None else IDLE
        return True


class _OwnedHandler:
    """Marks handlers installed by configure_logging so a second call replaces them."""


class _ConsoleHandler(logging.StreamHandler, _OwnedHandler):  # type: ignore[type-arg]
    pass


class _FileHandler(TimedRotatingFileHandler, _OwnedHandler):
    pass


def _level(value: str | int, what: str) -> int:
    if isinstance(value, int):
        return value
    level = logging.getLevelName(str(value).upper())
    if not isinstance(level, int):
        raise ValueError(
            f"{what} {value!r} is not a log level (use DEBUG, INFO, WARNING, ERROR or CRITICAL)"
        )
    return level


def configure_logging(
    console_loglevel: str | int | None = "INFO",
    log_path: str | Path | None = None,
    file_loglevel: str | int = "INFO",
    backup_count: int = 24,
) -> None:
    """Install (or replace) the framework's console and file handlers on the root logger.

    ``log_path`` gets an hourly ``TimedRotatingFileHandler`` keeping ``backup_count``
    old files. ``console_loglevel=None`` disables console output.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _OwnedHandler)]:
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(LOG_FORMAT)
    levels = []
    if console_loglevel is not None:
        console = _ConsoleHandler(sys.stderr)
        console.setLevel(_level(console_loglevel, "console log level"))
        levels.append(console.level)
        console.setFormatter(formatter)
        console.addFilter(WorkflowIdFilter())
        root.addHandler(console)
    if log_path is not None:
        path = Path(log_path)
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = _FileHandler(path, when="h", backupCount=int(backup_count))
        file_handler.setLevel(_level(file_loglevel, "file log level"))
        levels.append(file_handler.level)
        file_handler.setFormatter(formatter)
        file_handler.addFilter(WorkflowIdFilter())
        root.addHandler(file_handler)
    if levels:
        root.setLevel(min(levels))
