"""Shared fixtures: service files in a temp dir, services run in threads or processes.

Every socket binds to a random free port on 127.0.0.1 (port 0, read back from the
running service), every wait has a timeout, and every thread or process a test starts
is stopped when it ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import zmq

from service_framework.runtime import RunOptions, ServiceRuntime

REPO = Path(__file__).resolve().parents[1]
READY = re.compile(r": ready(?: \((?P<endpoints>.*)\))?$")


@pytest.fixture
def write_service(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a service module ``name.py`` into the test's temp dir; returns its path."""

    def write(name: str, source: str) -> Path:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return path

    return write


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def host_port(url: str) -> str:
    """``tcp://127.0.0.1:5555`` -> ``127.0.0.1:5555`` (the addresses-file form)."""
    return url.removeprefix("tcp://")


class Running:
    """A ServiceRuntime serving in a background thread."""

    def __init__(self, runtime: ServiceRuntime, thread: threading.Thread) -> None:
        self.runtime = runtime
        self.thread = thread
        self.exit_code: int | None = None

    def address(self, connection: str, side: str = "in") -> str:
        return host_port(self.runtime.endpoints()[side][connection][0])

    @property
    def module(self) -> Any:
        assert self.runtime.prepared is not None
        return self.runtime.prepared.module

    def stop(self, timeout: float = 10.0) -> int | None:
        self.runtime.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "service thread did not stop"
        return self.exit_code


@pytest.fixture
def run_service() -> Iterator[Callable[..., Running]]:
    """Start a service in a thread (no signal handlers); stopped at test end."""
    started: list[Running] = []

    def start(
        source: Any,
        *,
        config: Mapping[str, Any] | None = None,
        addresses: Mapping[str, Any] | None = None,
        main_mode: bool = False,
        wait_ready: bool = True,
        **options: Any,
    ) -> Running:
        runtime = ServiceRuntime(
            source,
            config=config,
            addresses=addresses,
            options=RunOptions(main_mode=main_mode, install_signals=False, **options),
        )
        runtime.start()
        ready = threading.Event()
        holder: list[Running] = []

        def target() -> None:
            code = runtime.run(on_ready=lambda _: ready.set())
            holder[0].exit_code = code

        thread = threading.Thread(target=target, daemon=True)
        running = Running(runtime, thread)
        holder.append(running)
        started.append(running)
        thread.start()
        if wait_ready:
            assert ready.wait(10), "service did not become ready"
        return running

    yield start
    for running in reversed(started):
        running.stop()


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    """A zmq context for test-side sockets: LINGER=0, terminated under a watchdog."""
    context: zmq.Context[Any] = zmq.Context()
    context.linger = 0
    yield context
    thread = threading.Thread(target=context.destroy, kwargs={"linger": 0}, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "context could not terminate"


class Process:
    """A CLI service process whose stderr is read line by line in the background."""

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        env: Mapping[str, str] | None = None,
        *,
        command: list[str] | None = None,
    ) -> None:
        """``python -m service_framework ARGS``, or ``command`` as given (e.g. the same
        run inside a namespace)."""
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            command or [sys.executable, "-m", "service_framework", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 20.0) -> re.Match[str]:
        """The first stderr line (from now on, or already seen) matching ``pattern``."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        for line in self.lines:
            found = regex.search(line)
            if found:
                return found
        deadline = _deadline(timeout)
        while True:
            found = regex.search(self._next_line(deadline, regex))
            if found:
                return found

    def wait_for_count(self, pattern: str, count: int, timeout: float = 20.0) -> None:
        """Wait until ``count`` stderr lines in all match ``pattern``."""
        regex = re.compile(pattern)
        deadline = _deadline(timeout)
        seen = sum(1 for line in self.lines if regex.search(line))
        while seen < count:
            seen += bool(regex.search(self._next_line(deadline, regex)))

    def _next_line(self, deadline: Callable[[], float], regex: re.Pattern[str]) -> str:
        """The next stderr line, kept in ``lines``; fails at the deadline or at exit."""
        while True:
            remaining = deadline()
            if remaining <= 0:
                raise AssertionError(f"no line matching {regex.pattern!r}; got:\n" + self.log())
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"process exited ({self.popen.wait()}) before {regex.pattern!r}:\n" + self.log()
                )
            self.lines.append(line)
            return line

    def ready(self, timeout: float = 20.0) -> dict[str, str]:
        """Wait for the ready line; returns connection -> 'host:port'."""
        found = self.wait_for(READY, timeout)
        endpoints: dict[str, str] = {}
        for part in (found.group("endpoints") or "").split("; "):
            if "=" in part:
                name, urls = part.split("=", 1)
                endpoints[name] = host_port(urls.split(",")[0])
        return endpoints

    def finish(self, timeout: float = 20.0) -> int:
        code = self.popen.wait(timeout)
        self._reader.join(5)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return code

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.popen.send_signal(signum)

    def log(self) -> str:
        return "\n".join(self.lines)

    def stdout(self) -> str:
        assert self.popen.stdout is not None
        return self.popen.stdout.read()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` (a condition no event announces) until it holds or ``timeout``
    passes; returns whether it held."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def sync(
    publish: Callable[[Any], object], received: queue.Queue[Any], marker: Any, timeout: float = 10.0
) -> None:
    """Publish ``marker`` until one reaches ``received``: the subscription is then in
    place (the slow joiner). Markers still in flight may arrive after this returns, but
    always before anything published later: read on with :func:`after_markers`."""
    remaining = _deadline(timeout)
    while remaining() > 0:
        publish(marker)
        try:
            received.get(timeout=0.05)
        except queue.Empty:
            continue
        return
    raise AssertionError("the subscriber never connected")


def after_markers(received: queue.Queue[Any], marker: Any, timeout: float = 5.0) -> Any:
    """The next message on ``received`` that is not a :func:`sync` marker."""
    while True:
        message = received.get(timeout=timeout)
        if message != marker:
            return message


def resync(
    publish: Callable[[Any], object], received: queue.Queue[Any], marker: Any, timeout: float = 20.0
) -> None:
    """Publish ``marker`` (one never sent before) until it arrives: unlike ``sync``, an
    older message still on its way cannot end the wait early."""
    remaining = _deadline(timeout)
    while remaining() > 0:
        publish(marker)
        try:
            while received.get(timeout=0.05) != marker:
                pass
        except queue.Empty:
            continue
        return
    raise AssertionError(f"{marker} never arrived")


def _deadline(timeout: float) -> Callable[[], float]:
    import time

    end = time.monotonic() + timeout
    return lambda: end - time.monotonic()


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start ``python -m service_framework ARGS`` in the temp dir; killed at test end."""
    processes: list[Process] = []

    def start(*args: str, env: Mapping[str, str] | None = None) -> Process:
        process = Process(list(args), tmp_path, env)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()
        for pipe in (process.popen.stdout, process.popen.stderr):
            if pipe is not None:
                pipe.close()


def echo_requester(timeout_s: float) -> dict[str, Any]:
    """The outbound model matching the tests' echo replyers: ``{'text': str}`` both ways."""
    return {
        "connection_type": "requester",
        "optional_creation_arguments": {"timeout_s": timeout_s},
        "required_arguments": {"text": str},
        "required_return_arguments": {"text": str},
    }


@pytest.fixture
def client() -> Iterator[Callable[..., ServiceRuntime]]:
    """A started (not running) service built from models, used for its ``to_send``.

    ``client({'out': {...}}, addresses)`` returns the runtime; call
    ``runtime.to_send(name, args)`` from the test thread; ``curve=`` gives it a CURVE
    identity. Closed at test end.
    """
    import types

    made: list[ServiceRuntime] = []

    def make(
        connection_models: Mapping[str, Any],
        addresses: Mapping[str, Any] | None = None,
        *,
        name: str = "client",
        curve: Any = None,
        **attributes: Any,
    ) -> ServiceRuntime:
        module = types.ModuleType(name)
        module.connection_models = connection_models  # type: ignore[attr-defined]
        for key, value in attributes.items():
            setattr(module, key, value)
        runtime = ServiceRuntime(
            module, addresses=addresses, options=RunOptions(install_signals=False, curve=curve)
        )
        runtime.start()
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()
