"""The ``Service`` object: run a service in a background process or right here.

``run_service()`` / ``run_service_as_main()`` start a fresh interpreter (the ``spawn``
start method: no inherited sockets, threads or locks) and return once the service is
ready to serve - connections open and ``init_function`` done - or raise the start-up
error the child hit. ``stop_service()`` sends SIGTERM (a graceful stop), then SIGKILL
after ``stop_timeout_s``. The ``*_blocking`` variants run the service in this process
and return its exit code.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import StartupError, ValidationError
from .logs import DEFAULT_LOG_MAX_BYTES, configure_logging
from .runtime import RunOptions, ServiceRuntime
from .security import Curve

__all__ = ["Service"]

_SPAWN = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class _Launch:
    """Everything a child process needs, in picklable form."""

    source: str  # a .py path
    config: dict[str, Any] | None
    addresses: dict[str, Any] | None
    cli_strings: dict[str, str] | None
    options: RunOptions
    logging: dict[str, Any]


class Service:
    """One service, run as a process or in this process.

    ``Service(service_path=None, service_module=None, addresses=None, config=None,
    console_loglevel='INFO', log_path=None, file_loglevel='INFO', backup_count=24,
    service_loop_min_wait_time=0)``; the first positional argument may be a path or a
    module, and ``service_loop_min_wait_time_s`` is accepted as the 0.0.20 name.
    ``curve`` turns on CURVE for every socket (see ``security.Curve``);
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
        self._process: multiprocessing.process.BaseProcess | None = None
        self._runtime: ServiceRuntime | None = None
        self._lock = threading.Lock()
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
        with self._lock:
            if self.is_running:
                raise RuntimeError(f"{self!r} is already running; stop it first")
            launch = _Launch(
                source=self._source_path(),
                config=self.config,
                addresses=self.addresses,
                cli_strings=self._cli_strings,
                options=self._options(main_mode),
                logging=self._logging,
            )
            parent, child = _SPAWN.Pipe(duplex=False)
            process = _SPAWN.Process(
                target=_child_main, args=(launch, child), name=f"service:{Path(launch.source).stem}"
            )
            process.start()
            child.close()
            self.ready.clear()
            try:
                self.endpoints = _await_ready(process, parent, self.start_timeout_s)
            except BaseException:
                _terminate(process, self.stop_timeout_s)
                raise
            finally:
                parent.close()
            self._process = process
            self.ready.set()

    def stop_service(self) -> int | None:
        """Stop gracefully (SIGTERM), forcibly after ``stop_timeout_s``; returns the exit
        code, or ``None`` when nothing was running. Does nothing for an ended service."""
        runtime = self._runtime
        if runtime is not None:
            runtime.stop()
            return None
        with self._lock:
            process, self._process = self._process, None
        if process is None:
            return None
        self.ready.clear()
        return _terminate(process, self.stop_timeout_s)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for a background service to end; its exit code, or ``None`` on timeout."""
        process = self._process
        if process is None:
            return None
        process.join(timeout)
        return process.exitcode

    @property
    def is_running(self) -> bool:
        process = self._process
        return process is not None and process.is_alive()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_service()

    def __del__(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None and process.is_alive():
            process.kill()

    # ------------------------------------------------------------------ blocking
    def run_service_blocking(self) -> int:
        """Run the service loop in this process until stopped; returns the exit code."""
        return self._run_here(main_mode=False)

    def run_service_as_main_blocking(self) -> int:
        """Run ``main`` here (serving inbound connections in a thread); returns 0 when
        ``main`` returned, 1 when it raised (the traceback is logged)."""
        return self._run_here(main_mode=True)

    def _run_here(self, *, main_mode: bool) -> int:
        with self._lock:
            if self._runtime is not None or self.is_running:
                raise RuntimeError(f"{self!r} is already running")
            configure_logging(**self._logging)
            runtime = ServiceRuntime(
                self.source,
                config=self.config,
                addresses=self.addresses,
                cli_strings=self._cli_strings,
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
    def _options(self, main_mode: bool) -> RunOptions:
        return RunOptions(
            main_mode=main_mode,
            min_wait_s=self.min_wait_s,
            curve=self.curve,
            stop_timeout_s=self.stop_timeout_s,
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


def _child_main(launch: _Launch, pipe: Pipe) -> None:
    """Entry point of a background service process."""
    configure_logging(**launch.logging)
    runtime = ServiceRuntime(
        launch.source,
        config=launch.config,
        addresses=launch.addresses,
        cli_strings=launch.cli_strings,
        options=launch.options,
    )
    try:
        runtime.start()
    except (StartupError, ValidationError) as exc:
        pipe.send(("error", exc))
        pipe.close()
        raise SystemExit(2) from None
    except BaseException as exc:
        pipe.send(("error", StartupError(f"{type(exc).__name__}: {exc}")))
        pipe.close()
        raise

    def ready(rt: ServiceRuntime) -> None:
        pipe.send(("ready", rt.endpoints()))
        pipe.close()

    code = runtime.run(on_ready=ready)
    raise SystemExit(code)


def _await_ready(
    process: multiprocessing.process.BaseProcess, pipe: Pipe, timeout_s: float
) -> dict[str, dict[str, list[str]]]:
    if not pipe.poll(timeout_s):
        raise StartupError(f"service process did not become ready within {timeout_s:g}s")
    try:
        kind, payload = pipe.recv()
    except EOFError:
        process.join(5)
        raise StartupError(
            f"service process exited (code {process.exitcode}) before it was ready; see its log"
        ) from None
    if kind == "error":
        process.join(5)
        raise payload
    return payload  # type: ignore[no-any-return]


def _terminate(process: multiprocessing.process.BaseProcess, timeout_s: float) -> int | None:
    if process.is_alive() and process.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        process.join(timeout_s)
        if process.is_alive():
            process.kill()
            process.join(5)
    else:
        process.join(0)
    return process.exitcode
