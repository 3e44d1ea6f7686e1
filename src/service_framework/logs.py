"""Logging: the package logger, handler set-up for processes we run, workflow ids.

The library never configures logging on import. Only the runners (the CLI, ``Service``,
``InlineServices``) call :func:`configure_logging`, which attaches one console handler
and, when asked, one rotating file handler (hourly, and whenever the file reaches
``log_max_bytes``) to the root logger, so that a service's own ``getLogger(__name__)``
lines are formatted the same way. Every record gets a ``workflow_id`` attribute from
:mod:`service_framework.workflow`.

A peer cannot forge or flood these logs: the handlers' formatter escapes every
character that could end a line or rewrite a terminal (``\\n`` becomes the two
characters ``\\n``, ESC becomes ``\\x1b``), so one record is one line - a traceback
keeps its own lines, with the exception's message escaped. Text a peer controls
(workflow ids, key names, topics, error texts) is cut to a bounded length with
:func:`clip` where it enters a log line or an error reply.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from logging.handlers import TimedRotatingFileHandler
from pathlib import Path
from typing import Any

from .workflow import IDLE, WORKFLOW_ID_MAX_CHARS, current_flow

__all__ = [
    "DEFAULT_LOG_MAX_BYTES",
    "LOG_FORMAT",
    "WorkflowIdFilter",
    "clip",
    "configure_logging",
    "get_logger",
    "printable",
]

PACKAGE_LOGGER_NAME = "service_framework"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(workflow_id)s] %(message)s"
# Each log file is rolled over before it grows past this (0: only hourly). With the
# hourly rotation and backup_count this bounds the disk a log can take.
DEFAULT_LOG_MAX_BYTES = 100 * 1024 * 1024

PEER_TEXT_MAX = 200  # a peer's string (key name, topic, id) inside a log line or error text
ERROR_TEXT_MAX = 1000  # a whole error text in a log line or an error reply

# What could end a line or rewrite what a terminal shows: C0 and C1 controls (\n, \r,
# ESC, NEL, ...), DEL, the Unicode line and paragraph separators, and the bidi
# overrides. All of them are non-printable, so str.isprintable() is the fast path.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(found: re.Match[str]) -> str:
    char = found.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every character that could end a log line or steer a terminal
    escaped (``"a\\nb"`` -> ``"a\\\\nb"``); printable text is returned as is."""
    if text.isprintable():
        return text
    return _UNSAFE.sub(_escape, text)


def clip(text: object, limit: int = PEER_TEXT_MAX) -> str:
    """Text a peer controls, fit for one log line or an error text: at most ``limit``
    characters (then ``...(N chars)`` says how long it was), control characters escaped."""
    if isinstance(text, str):
        value = text
    else:
        try:
            value = str(text)
        except Exception:  # a handler's exception whose __str__ fails must not crash us
            value = f"<{type(text).__name__} whose str() failed>"
    if len(value) > limit:
        value = f"{value[:limit]}...({len(value):,} chars)"
    return printable(value)


def get_logger() -> logging.Logger:
    """The package logger, ``logging.getLogger('service_framework')``."""
    return logging.getLogger(PACKAGE_LOGGER_NAME)


class WorkflowIdFilter(logging.Filter):
    """Stamps each record with the workflow id of the message being handled ('-' if none).

    The id came from a peer: it is escaped and cut to the receive cap (ids longer than
    that are refused on receipt, so the cut only matters for ids made in this process).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        flow = current_flow.get()
        if flow is None:
            record.workflow_id = IDLE
        else:
            workflow_id = flow.id
            if len(workflow_id) > WORKFLOW_ID_MAX_CHARS or not workflow_id.isprintable():
                workflow_id = clip(workflow_id, WORKFLOW_ID_MAX_CHARS)
            record.workflow_id = workflow_id
        return True


class _OneLineFormatter(logging.Formatter):
    """The framework's format, one line per record: the message (and every attribute in
    it) escaped; a traceback keeps its lines, its exceptions' messages escaped and cut."""

    def format(self, record: logging.LogRecord) -> str:
        # Another handler (a test's capture, a user's) may have cached its own unescaped
        # traceback text on the record: format ours, and leave theirs as it was.
        cached = record.exc_text
        record.exc_text = None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        text = super().formatException(ei)
        seen: set[int] = set()
        error = ei[1]
        while isinstance(error, BaseException) and id(error) not in seen:
            seen.add(id(error))
            try:
                message = str(error)
            except Exception:  # a broken __str__ shows as traceback's placeholder
                message = ""
            if message and (len(message) > ERROR_TEXT_MAX or not message.isprintable()):
                text = text.replace(message, clip(message, ERROR_TEXT_MAX))
            error = error.__cause__ or error.__context__
        return text


class _OwnedHandler:
    """Marks handlers installed by configure_logging so a second call replaces them."""


class _ConsoleHandler(logging.StreamHandler, _OwnedHandler):  # type: ignore[type-arg]
    pass


class _FileHandler(TimedRotatingFileHandler, _OwnedHandler):
    """Rolls the file over at the top of every hour (as ``TimedRotatingFileHandler``
    does: the full file becomes ``<path>.<YYYY-MM-DD_HH>``) and, with ``max_bytes``,
    whenever the next record would take it past ``max_bytes``: such a file becomes
    ``<path>.<YYYY-MM-DD_HH>.<n>`` (n = 1, 2, ... within the hour, before the
    hour's unnumbered last file). ``backup_count`` old files are kept, of both kinds.
    """

    _BACKUP = re.compile(r"^(\d{4}-\d{2}-\d{2}_\d{2})(?:\.(\d+))?$", re.ASCII)

    def __init__(self, path: Path, backup_count: int, max_bytes: int) -> None:
        super().__init__(path, when="h", backupCount=backup_count)
        # A size cap makes no sense for a device or a pipe (e.g. /dev/stdout).
        self.max_bytes = max_bytes if path.is_file() or not path.exists() else 0
        self._size_due = False

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        self._size_due = False
        if super().shouldRollover(record):
            return True
        if self.max_bytes <= 0:
            return False
        if self.stream is None:  # delay=True, or a rollover just closed it
            self.stream = self._open()
        size = self.stream.tell()
        # As RotatingFileHandler: a record larger than the cap still gets a file.
        if size and size + len(self.format(record)) + len(self.terminator) > self.max_bytes:
            self._size_due = True
        return self._size_due

    def doRollover(self) -> None:
        if not self._size_due or time.time() >= self.rolloverAt:
            super().doRollover()
            return
        self._size_due = False
        if self.stream:
            self.stream.close()
            self.stream = None
        started = self.rolloverAt - self.interval  # this hour's start, as the hourly name
        stamp = time.strftime(
            self.suffix, time.gmtime(started) if self.utc else time.localtime(started)
        )
        part = 1
        while os.path.exists(f"{self.baseFilename}.{stamp}.{part}"):
            part += 1
        self.rotate(self.baseFilename, f"{self.baseFilename}.{stamp}.{part}")
        for old in self.getFilesToDelete():
            os.remove(old)
        self.stream = self._open()

    def getFilesToDelete(self) -> list[str]:
        """The oldest backups beyond ``backupCount``, ordered by hour then part."""
        if self.backupCount <= 0:
            return []
        directory, base = os.path.split(self.baseFilename)
        found: list[tuple[str, float, str]] = []
        for name in os.listdir(directory):
            if not name.startswith(base + "."):
                continue
            matched = self._BACKUP.match(name[len(base) + 1 :])
            if matched:
                part = float(matched.group(2)) if matched.group(2) else float("inf")
                found.append((matched.group(1), part, os.path.join(directory, name)))
        found.sort()
        excess = len(found) - self.backupCount
        return [path for _, _, path in found[:excess]] if excess > 0 else []


def _level(value: str | int, what: str) -> int:
    if isinstance(value, int):
        return value
    level = logging.getLevelName(str(value).upper())
    if not isinstance(level, int):
        raise ValueError(
            f"{what} {value!r} is not a log level (use DEBUG, INFO, WARNING, ERROR or CRITICAL)"
        )
    return level


def check_logging(
    console_loglevel: str | int | None, file_loglevel: str | int, log_max_bytes: int
) -> None:
    """Raise ``ValueError`` for arguments :func:`configure_logging` would refuse, without
    touching any logger (for runners that set logging up later)."""
    if console_loglevel is not None:
        _level(console_loglevel, "console log level")
    _level(file_loglevel, "file log level")
    if type(log_max_bytes) is not int or log_max_bytes < 0:
        raise ValueError(
            f"log_max_bytes must be an int >= 0 (0: no size cap), got {log_max_bytes!r}"
        )


def configure_logging(
    console_loglevel: str | int | None = "INFO",
    log_path: str | Path | None = None,
    file_loglevel: str | int = "INFO",
    backup_count: int = 24,
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
) -> None:
    """Install (or replace) the framework's console and file handlers on the root logger.

    ``log_path`` gets a file handler that rolls over hourly and whenever the file would
    grow past ``log_max_bytes`` (0: hourly only), keeping ``backup_count`` old files.
    ``console_loglevel=None`` disables console output.
    """
    check_logging(console_loglevel, file_loglevel, log_max_bytes)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _OwnedHandler)]:
        root.removeHandler(handler)
        handler.close()
    formatter = _OneLineFormatter(LOG_FORMAT)
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
        file_handler = _FileHandler(path, int(backup_count), log_max_bytes)
        file_handler.setLevel(_level(file_loglevel, "file log level"))
        levels.append(file_handler.level)
        file_handler.setFormatter(formatter)
        file_handler.addFilter(WorkflowIdFilter())
        root.addHandler(file_handler)
    if levels:
        root.setLevel(min(levels))


class RateLimit:
    """At most ``burst`` events at once, then ``per_s`` a second; counts the rest.

    For log lines a peer can trigger: :meth:`allow` says whether to write this one, and
    :attr:`held` how many were held back since the last one written.
    """

    __slots__ = ("burst", "held", "per_s", "stamp", "tokens")

    def __init__(self, burst: int, per_s: float) -> None:
        self.burst = burst
        self.per_s = per_s
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.held = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_s)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.held += 1
        return False

    def take_held(self) -> int:
        held, self.held = self.held, 0
        return held
