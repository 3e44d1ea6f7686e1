"""The ``Service`` object: run a service in a background process or right here.

``run_service()`` / ``run_service_as_main()`` start a fresh interpreter (no inherited
sockets, threads or locks) and return once the service is ready to serve - connections
open and ``init_function`` done - or raise the start-up error the child hit.

The child is started with ``subprocess`` rather than ``multiprocessing``'s ``spawn``:
``spawn`` re-imports the parent's ``__main__`` in the child before any of our code runs,
so a launch script without an ``if __name__ == "__main__":`` guard dies there with a
bootstrapping ``RuntimeError`` that only the child's stderr ever sees. Our child imports
nothing but the framework and the service file, and everything it does - rebuilding
its arguments included - runs inside code that reports failures to the parent over a
socket pair, so the parent's :class:`StartupError` carries the child's own error.

``stop_service()`` sends SIGTERM (a graceful stop), then SIGKILL after
``stop_timeout_s`` plus :data:`STOP_GRACE_S`. The ``*_blocking`` variants run the service
in this process and return its exit code.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .config import environment_config
from .errors import StartupError, ValidationError
from .logs import DEFAULT_LOG_MAX_BYTES, configure_logging
from .runtime import RunOptions, ServiceRuntime, signals_blocked
from .security import Curve

__all__ = ["Service"]

# The child's first code: take the parent's sys.path (so the same framework and the
# user's modules import), then hand over to _child_main with the socket's descriptor.
_BOOTSTRAP = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from service_framework.service import _child_main; _child_main(int(sys.argv[2]))"
)

# True in a service process while it imports its service file and runs the start-up
# hooks: a Service started then comes from the file's top level, which would otherwise
# start a process that imports the same file and starts another, without end.
_LOADING_SERVICE_FILE = False

# Background service processes not yet stopped. A script that ends while they run waits
# for them, as multiprocessing does for its non-daemon processes (0.0.20 forked those):
# a launch script may simply end after run_service() and leave its services serving.
_RUNNING: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _wait_for_running_services() -> None:
    try:
        for process in list(_RUNNING):
            process.wait()
    except KeyboardInterrupt:  # Ctrl-C while waiting: stop what is left, then exit
        for process in list(_RUNNING):
            _terminate(process, 10.0)


@dataclass(frozen=True)
class _Launch:
    """Everything a child process needs, in picklable form."""

    source: str  # a .py path
    config: dict[str, Any] | None
    addresses: dict[str, Any] | None
    cli_strings: dict[str, str] | None
    options: RunOptions
    logging: dict[str, Any]
    argv: list[str]  # the parent's sys.argv, which the service sees as its own


class Service:
    """One service, run as a process or in this process.

    ``Service(service_path=None, service_module=None, addresses=None, config=None,
    console_loglevel='INFO', log_path=None, file_loglevel='INFO', backup_count=24,
    service_loop_min_wait_time=0)``; the first positional argument may be a path or a
    module, and ``service_loop_min_wait_time_s`` is accepted as the 0.0.20 name.
    ``curve`` turns on CURVE for every socket (see ``security.Curve``). ``env_prefix``
    adds config from environment variables (``APP_NUM=3`` -> ``num``, converted like
    command-line strings), read when the service starts; ``config=`` wins over them.
    ``probe_file`` is a heartbeat file kept fresh while the loop turns (see ``probe.py``).
    ``log_max_bytes`` rotates the log file on size as well as hourly (0: hourly only).
    """

    def __init__(
        self,
        service_path: str | os.PathLike[str] | ModuleType | None = None,
        service_module: ModuleType | str | os.PathLike[str] | None = None,
        addresses: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        console_loglevel: str | None = "INFO",
        log_path: str | os.PathLike[str] | None = None,
        file_loglevel: str = "INFO",
        backup_count: int = 24,
        service_loop_min_wait_time: float = 0,
        *,
        service_loop_min_wait_time_s: float | None = None,
        curve: Curve | None = None,
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 10.0,
        cli_strings: Mapping[str, str] | None = None,
        env_prefix: str | None = None,
        probe_file: str | os.PathLike[str] | None = None,
        log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
    ) -> None:
        if service_path is not None and service_module is not None:
            raise ValueError("give service_path or service_module, not both")
        source = service_path if service_path is not None else service_module
        if source is None:
            raise ValueError("Service needs a service_path (a .py file) or a service_module")
        self.source = source
        self.addresses = dict(addresses) if addresses is not None else None
        self.config = dict(config) if config is not None else None
        self._logging: dict[str, Any] = {
            "console_loglevel": console_loglevel,
            "log_path": os.fspath(log_path) if log_path is not None else None,
            "file_loglevel": file_loglevel,
            "backup_count": int(backup_count),
            "log_max_bytes": log_max_bytes,
        }
        wait = (
            service_loop_min_wait_time_s
            if service_loop_min_wait_time_s is not None
            else service_loop_min_wait_time
        )
        if wait < 0:
            raise ValueError(f"service_loop_min_wait_time must be >= 0, got {wait}")
        self.min_wait_s = float(wait)
        self.curve = curve
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._cli_strings = dict(cli_strings) if cli_strings else None
        if env_prefix is not None and not env_prefix:
            raise ValueError("env_prefix must not be empty (it would read every variable)")
        self.env_prefix = env_prefix
        self.probe_file = os.fspath(probe_file) if probe_file is not None else None
        self._process: subprocess.Popen[bytes] | None = None
        self._runtime: ServiceRuntime | None = None
        self._lock = threading.Lock()
        # The socket pair to a background service, kept after it is ready: stats() asks
        # over it (one question at a time: _channel_lock).
        self._channel: socket.socket | None = None
        self._channel_lock = threading.Lock()
        self.endpoints: dict[str, dict[str, list[str]]] = {}
        # Set once the service is ready to serve (background or blocking run).
        self.ready = threading.Event()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<Service {self._source_text()} {state}>"

    # ------------------------------------------------------------------ background
    def run_service(self) -> None:
        """Start the service loop in a background process; return once it is ready."""
        self._start_background(main_mode=False)

    def run_service_as_main(self) -> None:
        """Start the service in main mode in a background process; return once
        ``init_function`` is done and ``main`` is about to run."""
        self._start_background(main_mode=True)

    def _start_background(self, *, main_mode: bool) -> None:
        _refuse_while_loading()
        with self._lock:
            if self.is_running:
                raise RuntimeError(f"{self!r} is already running; stop it first")
            config, strings = self._config_and_strings()
            launch = _Launch(
                source=self._source_path(),
                config=config,
                addresses=self.addresses,
                cli_strings=strings,
                options=self._options(main_mode),
                logging=self._logging,
                argv=list(sys.argv),
            )
            payload = _pickled_launch(launch)
            ours, theirs = socket.socketpair()
            try:
                process = subprocess.Popen(
                    [sys.executable, "-c", _BOOTSTRAP, _sys_path_json(), str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                )
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()  # the child holds it now: EOF here means the child is gone
            self.ready.clear()
            try:
                ours.settimeout(self.start_timeout_s)  # a child that never reads
                with contextlib.suppress(OSError):  # one that died early: see _await_ready
                    _send_frame(ours, payload)
                self.endpoints = _await_ready(process, ours, self.start_timeout_s, launch.source)
            except BaseException:
                _terminate(process, self.stop_timeout_s)
                ours.close()
                raise
            self._channel = ours
            self._process = process
            _RUNNING.add(process)
            self.ready.set()

    def stop_service(self) -> int | None:
        """Stop gracefully (SIGTERM), forcibly after ``stop_timeout_s`` + ``STOP_GRACE_S``;
        returns the exit code, or ``None`` when nothing was running. Does nothing for an
        ended service."""
        runtime = self._runtime
        if runtime is not None:
            runtime.stop()
            return None
        with self._lock:
            process, self._process = self._process, None
        if process is None:
            return None
        self.ready.clear()
        try:
            return _terminate(process, self.stop_timeout_s + STOP_GRACE_S)
        finally:
            _RUNNING.discard(process)
            self._close_channel()

    def stats(self, timeout_s: float = 5.0) -> dict[str, dict[str, int]]:
        """The counters of every connection of the running service (``received``,
        ``handled``, ``failed``, ``rejected``, ``timeouts``, ... - see the README's
        Guarantees), read while it runs: from this process for a blocking run, asked of
        the child for a background one. Raises ``RuntimeError`` when nothing runs."""
        runtime = self._runtime
        if runtime is not None:
            return _stats_of(runtime)
        with self._channel_lock:
            channel = self._channel
            if channel is None or not self.is_running:
                raise RuntimeError(f"{self!r} is not running")
            try:
                channel.settimeout(timeout_s)
                _send_frame(channel, b"stats")
                frame = _recv_frame(channel, time.monotonic() + timeout_s)
            except OSError as exc:
                raise RuntimeError(f"{self!r} did not answer for its stats: {exc}") from None
        if frame is None:
            raise RuntimeError(f"{self!r} ended before it answered for its stats")
        stats: dict[str, dict[str, int]] = pickle.loads(frame)
        return stats

    def _close_channel(self) -> None:
        with self._channel_lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for a background service to end; its exit code, or ``None`` on timeout."""
        process = self._process
        if process is None:
            return None
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    @property
    def is_running(self) -> bool:
        process = self._process
        return process is not None and process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_service()

    def __del__(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)  # reap it

    # ------------------------------------------------------------------ blocking
    def run_service_blocking(self) -> int:
        """Run the service loop in this process until stopped; returns the exit code."""
        return self._run_here(main_mode=False)

    def run_service_as_main_blocking(self) -> int:
        """Run ``main`` here (serving inbound connections in a thread); returns 0 when
        ``main`` returned, 1 when it raised (the traceback is logged)."""
        return self._run_here(main_mode=True)

    def _run_here(self, *, main_mode: bool) -> int:
        _refuse_while_loading()
        with self._lock:
            if self._runtime is not None or self.is_running:
                raise RuntimeError(f"{self!r} is already running")
            config, strings = self._config_and_strings()
            configure_logging(**self._logging)
            runtime = ServiceRuntime(
                self.source,
                config=config,
                addresses=self.addresses,
                cli_strings=strings,
                options=self._options(main_mode),
            )
            self._runtime = runtime
            self.ready.clear()

        def on_ready(rt: ServiceRuntime) -> None:
            self.endpoints = rt.endpoints()
            self.ready.set()

        try:
            runtime.start()
            return runtime.run(on_ready=on_ready)
        finally:
            self._runtime = None
            self.ready.clear()

    # ------------------------------------------------------------------ helpers
    def _config_and_strings(self) -> tuple[dict[str, Any] | None, dict[str, str] | None]:
        """The config to start with and which of its values are strings to convert:
        the environment (with ``env_prefix``) below ``config=``."""
        if self.env_prefix is None:
            return self.config, self._cli_strings
        from_env = environment_config(self.env_prefix, os.environ)
        config = {**from_env, **(self.config or {})}
        # A key that config= also gives keeps config='s value: coerce_strings converts
        # only values that are still the very string listed here.
        strings = {**from_env, **(self._cli_strings or {})}
        return config or None, strings or None

    def _options(self, main_mode: bool) -> RunOptions:
        return RunOptions(
            main_mode=main_mode,
            min_wait_s=self.min_wait_s,
            curve=self.curve,
            stop_timeout_s=self.stop_timeout_s,
            probe_file=self.probe_file,
        )

    def _source_text(self) -> str:
        source = self.source
        return source.__name__ if isinstance(source, ModuleType) else os.fspath(source)

    def _source_path(self) -> str:
        """A path the child can load: the file itself, or a module's file."""
        source = self.source
        if isinstance(source, ModuleType):
            file = getattr(source, "__file__", None)
            if not file:
                raise StartupError(
                    f"module {source.__name__} has no file, so it cannot be run in a "
                    "background process; use run_service_blocking() instead"
                )
            return str(file)
        path = Path(source)
        if not path.is_file():
            raise StartupError(f"service file not found: {os.fspath(source)}")
        return os.fspath(path)


def _sys_path_json() -> str:
    # sys.path may hold Path objects (or, rarely, other things import ignores).
    return json.dumps([os.fspath(p) for p in sys.path if isinstance(p, (str, os.PathLike))])


def _refuse_while_loading() -> None:
    if _LOADING_SERVICE_FILE:
        raise RuntimeError(
            "a Service was started while a service process was importing its service "
            "file: put the code that starts services under "
            "'if __name__ == \"__main__\":' so that importing the file does not start them"
        )


def _pickled_launch(launch: _Launch) -> bytes:
    try:
        return pickle.dumps(launch)
    except Exception as exc:
        raise StartupError(
            f"{Path(launch.source).stem}: the config or addresses cannot be sent to a "
            f"background process ({type(exc).__name__}: {exc}); use plain data, or "
            "run_service_blocking() to run the service here"
        ) from exc


# Frames on the parent/child socket: an 8-byte length, then a pickle. Only this
# process's own child is on the other end (a socket pair, never the network).
_HEADER = struct.Struct("!Q")


def _send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_HEADER.pack(len(payload)) + payload)


def _recv_exactly(sock: socket.socket, size: int, deadline: float | None) -> bytes | None:
    """``size`` bytes, or ``None`` at EOF; ``TimeoutError`` at the deadline."""
    chunks: list[bytes] = []
    while size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                raise TimeoutError
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _recv_frame(sock: socket.socket, deadline: float | None = None) -> bytes | None:
    header = _recv_exactly(sock, _HEADER.size, deadline)
    if header is None:
        return None
    return _recv_exactly(sock, _HEADER.unpack(header)[0], deadline)


def _report(sock: socket.socket, kind: str, payload: object) -> None:
    """Tell the parent ``(kind, payload)``; an error that does not pickle is sent as its
    text, and a parent that is gone is not an error."""
    try:
        data = pickle.dumps((kind, payload))
    except Exception:
        text = f"{type(payload).__name__}: {payload}" if isinstance(payload, BaseException) else ""
        data = pickle.dumps((kind, StartupError(text or repr(payload))))
    with contextlib.suppress(OSError):
        _send_frame(sock, data)


def _child_main(fd: int) -> None:
    """Entry point of a background service process (see ``_BOOTSTRAP``).

    Every failure up to readiness is sent to the parent as the error itself (start-up
    errors) or a :class:`StartupError` naming the child's exception, then the child
    exits non-zero.
    """
    global _LOADING_SERVICE_FILE
    os.set_inheritable(fd, False)  # the service's own subprocesses must not hold it
    channel = socket.socket(fileno=fd)
    try:
        frame = _recv_frame(channel)
        if frame is None:
            raise SystemExit(2)  # the parent is gone before sending anything
        launch: _Launch = pickle.loads(frame)
    except Exception as exc:
        _report(
            channel,
            "error",
            StartupError(
                f"the service process could not rebuild the arguments it was given: "
                f"{type(exc).__name__}: {exc} (objects in config or addresses must be "
                "importable by the child; classes defined in a script run as __main__ "
                "are not)"
            ),
        )
        raise SystemExit(2) from None
    sys.argv = launch.argv
    try:
        configure_logging(**launch.logging)
        runtime = ServiceRuntime(
            launch.source,
            config=launch.config,
            addresses=launch.addresses,
            cli_strings=launch.cli_strings,
            options=launch.options,
        )
        _LOADING_SERVICE_FILE = True
        try:
            runtime.start()
        finally:
            _LOADING_SERVICE_FILE = False
    except (StartupError, ValidationError) as exc:
        _report(channel, "error", exc)
        channel.close()
        raise SystemExit(2) from None
    except BaseException as exc:
        _report(channel, "error", StartupError(f"{type(exc).__name__}: {exc}"))
        channel.close()
        raise

    def ready(rt: ServiceRuntime) -> None:
        _report(channel, "ready", rt.endpoints())
        # From now on the parent may ask for the counters (Service.stats()); a thread of
        # its own answers, off the service loop. EOF: the parent is gone.
        answering = threading.Thread(
            target=_answer_stats, args=(channel, rt), name="stats", daemon=True
        )
        with signals_blocked():
            answering.start()

    code = runtime.run(on_ready=ready)
    raise SystemExit(code)


def _stats_of(runtime: ServiceRuntime) -> dict[str, dict[str, int]]:
    return {name: dataclasses.asdict(stats) for name, stats in runtime.stats().items()}


def _answer_stats(channel: socket.socket, runtime: ServiceRuntime) -> None:
    """In a background service: answer each ``stats`` question with the counters."""
    with contextlib.suppress(OSError):
        while _recv_frame(channel) is not None:
            _send_frame(channel, pickle.dumps(_stats_of(runtime)))


def _await_ready(
    process: subprocess.Popen[bytes], sock: socket.socket, timeout_s: float, source: str
) -> dict[str, dict[str, list[str]]]:
    try:
        frame = _recv_frame(sock, time.monotonic() + timeout_s)
    except TimeoutError:
        raise StartupError(
            f"service process for {source} did not become ready within {timeout_s:g}s"
        ) from None
    if frame is None:
        # It ended without a word: killed, os._exit(), a crash in C code. What it wrote
        # went to this process's stderr, which it shares.
        try:
            code = process.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        raise StartupError(
            f"service process for {source} {_ended(code)} before it was ready, without "
            "reporting an error (its output went to stderr)"
        )
    kind, payload = pickle.loads(frame)
    if kind == "error":
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        raise payload
    return payload  # type: ignore[no-any-return]


def _ended(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


# After stop_timeout_s the child still refuses what is queued (up to 1 s) and closes its
# sockets with a bounded linger: killing it at stop_timeout_s sharp would cut that short.
STOP_GRACE_S = 3.0


def _terminate(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
    return process.returncode
