"""Liveness and readiness of a running service: a heartbeat file and ``service_framework probe``.

A service run with ``--probe_file PATH`` (or ``SERVICE_FRAMEWORK_PROBE_FILE=PATH``, or
``Service(probe_file=...)``) keeps a small JSON file at PATH fresh while its loop turns.
A background thread of its own looks every :data:`BEAT_S` seconds at a progress count
the loop already keeps (frames received, plus the loop's idle wake-ups) and rewrites the
file only when that count has moved since its last look. Nothing is added to the
per-message path. A handler stuck forever stops the count, the file goes stale, and the
probe fails once it is older than ``--max_age_s``; a stopping service removes the file,
so the probe fails at once.

``service_framework probe [PATH...]`` exits 0 when every file is fresh, its process is
alive, and (with ``--connected``) every connecting socket the framework watches has a
peer; 1 otherwise, with one line saying why. That suits a Kubernetes or Compose exec
probe, and ``--wait_s`` makes it a readiness gate for starting services in order.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["BEAT_S", "PROBE_FILE_ENV", "Heartbeat", "check_probe_file", "probe_main"]

LOG = logging.getLogger("service_framework.probe")

PROBE_FILE_ENV = "SERVICE_FRAMEWORK_PROBE_FILE"
BEAT_S = 0.5  # how often the heartbeat thread looks at the loop's progress
DEFAULT_MAX_AGE_S = 10.0  # older than this, the loop is taken to be stuck


class Heartbeat:
    """Keeps ``path`` fresh while ``progress()`` keeps changing.

    ``progress`` and ``status`` are read from the heartbeat's own thread: ``progress``
    returns a number that grows while the service loop turns, ``status`` the rest of what
    the file says (connections, endpoints, peers). The file is written whole to a temporary
    name and renamed, so a probe never reads half of it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        service: str,
        progress: Callable[[], int],
        status: Callable[[], Mapping[str, Any]],
        beat_s: float = BEAT_S,
    ) -> None:
        self.path = Path(path)
        self.service = service
        self._progress = progress
        self._status = status
        self._beat_s = beat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: int | None = None

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else "stopped"
        return f"<Heartbeat {self.service} {self.path} {state}>"

    def start(self) -> None:
        """Write the first beat once the loop has started, then keep beating."""
        self._thread = threading.Thread(
            target=self._run, name=f"{self.service}-heartbeat", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove the file: a stopping service is not alive."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _run(self) -> None:
        failing = False
        while True:
            try:
                self._beat()
                failing = False
            except OSError as exc:  # a full disk or a bad path must not stop the service
                if not failing:  # once per spell of failures, not every beat
                    LOG.error(
                        "%s: cannot write heartbeat file %s (%s); probes will fail",
                        self.service,
                        self.path,
                        exc.strerror or exc,
                    )
                failing = True
            if self._stop.wait(self._beat_s):
                return

    def _beat(self) -> None:
        progress = self._progress()
        if progress == self._last or progress == 0:
            return  # the loop has not turned since the last look (or not yet at all)
        self._last = progress
        body = {
            "service": self.service,
            "pid": os.getpid(),
            "time": time.time(),
            "progress": progress,
            **self._status(),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(body, sort_keys=True))
        if self._stop.is_set():  # stop() may have removed the file meanwhile: keep it gone
            temporary.unlink()
            return
        os.replace(temporary, self.path)


def check_probe_file(
    path: str | os.PathLike[str], *, max_age_s: float = DEFAULT_MAX_AGE_S, connected: bool = False
) -> str | None:
    """Why the service behind ``path`` is not live (or, with ``connected``, not
    connected to its peers); ``None`` when it is."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return f"{path}: no heartbeat file (the service has not started, or has stopped)"
    except OSError as exc:
        return f"{path}: cannot read the heartbeat file: {exc.strerror or exc}"
    try:
        beat = json.loads(text)
        service, pid, written = str(beat["service"]), int(beat["pid"]), float(beat["time"])
        connections: dict[str, Any] = beat.get("connections", {})
    except (ValueError, KeyError, TypeError):
        return f"{path}: not a heartbeat file: {text[:80]!r}"
    if not _alive(pid):
        return f"{service}: process {pid} is gone (heartbeat file {path})"
    age = time.time() - written
    if age > max_age_s:
        return (
            f"{service}: the service loop last turned {age:.1f}s ago (more than "
            f"{max_age_s:g}s): stuck in a handler? (heartbeat file {path})"
        )
    if connected:
        waiting = sorted(
            name
            for side in connections.values()
            for name, info in side.items()
            if info.get("watched") and not info.get("binds") and info.get("peers", 0) < 1
        )
        if waiting:
            names = ", ".join(map(repr, waiting))
            return f"{service}: connection(s) {names} have no peer connected yet"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def probe_main(argv: Sequence[str]) -> int:
    """``service_framework probe``: exit 0 when every service named is live, 1 if not."""
    parser = argparse.ArgumentParser(
        prog="service_framework probe",
        description="Exit 0 when the service's loop is turning (its heartbeat file is fresh "
        "and its process alive), 1 otherwise. For exec liveness/readiness probes.",
    )
    parser.add_argument(
        "probe_files",
        nargs="*",
        metavar="PROBE_FILE",
        help=f"heartbeat file(s) given to the service(s) with --probe_file "
        f"(default: ${PROBE_FILE_ENV})",
    )
    parser.add_argument(
        "--max_age_s",
        type=float,
        default=DEFAULT_MAX_AGE_S,
        help=f"fail when the loop last turned longer ago than this (default {DEFAULT_MAX_AGE_S:g})",
    )
    parser.add_argument(
        "--connected",
        action="store_true",
        help="also require a peer on every connecting socket the service watches",
    )
    parser.add_argument(
        "--wait_s",
        type=float,
        default=0.0,
        help="keep trying for up to this long before failing (a readiness gate)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(list(argv))
    files = list(args.probe_files)
    if not files:
        env_file = os.environ.get(PROBE_FILE_ENV)
        if not env_file:
            parser.error(f"no heartbeat file given: pass PROBE_FILE or set ${PROBE_FILE_ENV}")
        files = [env_file]
    if args.max_age_s <= BEAT_S:
        parser.error(f"--max_age_s must be more than the heartbeat interval ({BEAT_S:g}s)")
    deadline = time.monotonic() + args.wait_s
    for path in files:
        while True:
            problem = check_probe_file(path, max_age_s=args.max_age_s, connected=args.connected)
            if problem is None or time.monotonic() >= deadline:
                break
            time.sleep(0.1)  # polling a file: no event announces that it changed
        if problem is not None:
            print(f"service_framework probe: {problem}", file=sys.stderr)
            return 1
    if not args.quiet:
        print(f"ok: {', '.join(files)}")
    return 0
