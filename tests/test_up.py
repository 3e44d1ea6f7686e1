"""``service_framework up``: a topology runs locally on honcho, binders first, with
prefixed logs; Ctrl-C stops every service gracefully; a main-mode service's end stops
the system with its exit code."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("honcho")

ECHO = """
def on_echo(args, to_send, config):
    return {'text': args['text']}

connection_models = {'in': {'echo': {
    'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': on_echo},
    'required_arguments': {'text': str},
    'required_return_arguments': {'text': str},
}}}
"""

# Connects to echo and serves a replyer of its own, so it runs until stopped.
RELAY = """
def on_relay(args, to_send, config):
    return to_send('echo', args)

connection_models = {
    'in': {'relay': {
        'connection_type': 'replyer',
        'required_creation_arguments': {'connection_function': on_relay},
        'required_arguments': {'text': str},
        'required_return_arguments': {'text': str},
    }},
    'out': {'echo': {
        'connection_type': 'requester',
        'required_arguments': {'text': str},
        'required_return_arguments': {'text': str},
    }},
}
"""

CALLER = """
def main(to_send, config):
    answer = to_send('relay', {'text': 'hello'})
    print('caller got', answer['text'])
    raise SystemExit(config['code'])

config_model = {'required': {'code': int}}
connection_models = {'out': {'relay': {
    'connection_type': 'requester',
    'optional_creation_arguments': {'timeout_s': 20},
    'required_arguments': {'text': str},
    'required_return_arguments': {'text': str},
}}}
"""

STARTED = re.compile(r"system\s+\| (?P<name>\S+) started \(pid=(?P<pid>\d+)\)")


class Up:
    """``service_framework up`` in a session of its own; its stdout read line by line."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "service_framework", "up", "--no_colour", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        regex = re.compile(pattern)
        for line in self.lines:
            if regex.search(line):
                return line
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {pattern!r}:\n" + self.output) from None
            if line is None:
                raise AssertionError(f"up ended before {pattern!r}:\n" + self.output)
            self.lines.append(line)
            if regex.search(line):
                return line

    def finish(self, timeout: float = 40.0) -> int:
        code = self.popen.wait(timeout)
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def pids(self) -> dict[str, int]:
        return {
            found["name"]: int(found["pid"])
            for line in self.lines
            if (found := STARTED.search(line))
        }

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        self._reader.join(10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Callable[..., Up]]:
    started: list[Up] = []

    def start(*args: str) -> Up:
        process = Up(*args, cwd=tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        # Whatever the services' own sessions hold is gone as well.
        for pid in process.pids().values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def write_system(tmp_path: Path, extra: str = "", *, code: int | None = None) -> Path:
    (tmp_path / "echo.py").write_text(ECHO)
    (tmp_path / "relay.py").write_text(RELAY)
    (tmp_path / "caller.py").write_text(CALLER)
    caller = ""
    # The relay's replyer, when no caller is linked to it: a port of its own choosing.
    relay_address = 'addresses = { in = { relay = { replyer = "127.0.0.1:0" } } }\n'
    links = ['"relay.echo -> echo.echo"']
    if code is not None:
        caller = (
            f'[services.caller]\nfile = "caller.py"\nmain = true\nconfig = {{ code = {code} }}\n'
        )
        links.append('"caller.relay -> relay.relay"')
        relay_address = ""
    text = (
        f'name = "small"\nlinks = [{", ".join(links)}]\n'
        '[services.relay]\nfile = "relay.py"\n'
        f"{relay_address}"
        '[services.echo]\nfile = "echo.py"\n'
        f"{caller}{extra}"
    )
    path = tmp_path / "system.toml"
    path.write_text(text)
    return path


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_sigint_stops_every_service_gracefully_and_exits_0(up, tmp_path) -> None:
    system = write_system(tmp_path)
    process = up("--free_ports", str(system))
    process.wait_for(r"echo\s+\| .*echo: ready")
    process.wait_for(r"relay\s+\| .*relay: ready")
    os.kill(process.popen.pid, signal.SIGINT)  # what Ctrl-C sends
    assert process.finish() == 0, process.output
    for name in ("echo", "relay"):
        assert re.search(rf"{name}\s+\| .*{name}: got SIGTERM; stopping gracefully", process.output)
        assert f"{name} stopped (rc=0)" in process.output
    assert "up: stopped on request; exit codes: echo 0, relay 0" in process.output
    assert all(gone(pid) for pid in process.pids().values())


def test_binders_start_first_and_connectors_learn_their_free_ports(up, tmp_path) -> None:
    system = write_system(tmp_path)
    process = up("--free_ports", str(system))
    # relay is listed first, but it connects to echo: it waits for echo to be ready.
    process.wait_for(r"relay\s+\| waiting for echo$")
    echo_ready = process.wait_for(r"echo\s+\| .*echo: ready \(echo=tcp://127\.0\.0\.1:(\d+)\)")
    relay_ready = process.wait_for(r"relay\s+\| .*relay: ready")
    port = re.search(r":(\d+)\)$", echo_ready)
    assert port is not None and port.group(1) != "47800"  # a free port, not the default one
    assert f"echo=tcp://127.0.0.1:{port.group(1)}" in relay_ready
    os.kill(process.popen.pid, signal.SIGINT)
    assert process.finish() == 0, process.output


def test_a_main_mode_service_ending_stops_the_system_with_its_exit_code(up, tmp_path) -> None:
    system = write_system(tmp_path, code=3)
    process = up("--free_ports", str(system))
    assert process.finish() == 3, process.output
    assert re.search(r"caller\s+\| caller got hello$", process.output, re.M)
    assert "caller stopped (rc=3)" in process.output
    assert "up: the system stopped; exit codes:" in process.output
    assert all(gone(pid) for pid in process.pids().values())


def test_a_main_mode_service_ending_well_exits_0(up, tmp_path) -> None:
    system = write_system(tmp_path, code=0)
    process = up("--free_ports", str(system))
    assert process.finish() == 0, process.output
    assert "exit codes: echo 0, relay 0, caller 0" in process.output


def test_connectors_scale_with_replicas(up, tmp_path) -> None:
    system = write_system(tmp_path)
    system.write_text(
        system.read_text().replace('file = "relay.py"', 'file = "relay.py"\nreplicas = 2')
    )
    process = up("--free_ports", str(system))
    process.wait_for(r"relay\.1\s+\| .*relay: ready")
    process.wait_for(r"relay\.2\s+\| .*relay: ready")
    os.kill(process.popen.pid, signal.SIGTERM)
    assert process.finish() == 0, process.output
    assert set(process.pids()) == {"echo", "relay.1", "relay.2"}


def test_a_binder_with_replicas_is_refused(up, tmp_path) -> None:
    system = write_system(tmp_path)
    system.write_text(
        system.read_text().replace('file = "echo.py"', 'file = "echo.py"\nreplicas = 2')
    )
    process = up(str(system))
    assert process.finish() == 2
    assert "echo binds port(s) 47800, so it cannot run 2 replicas on one host" in process.output


def test_a_topology_with_findings_is_refused(up, tmp_path) -> None:
    system = write_system(tmp_path)
    system.write_text(system.read_text().replace("echo.echo", "echo.nothing"))
    process = up(str(system))
    assert process.finish() == 2
    assert "finding(s) (see 'service_framework check" in process.output
    assert (
        "unknown-connection: link relay.echo -> echo.nothing: echo has no inbound" in process.output
    )


def test_a_contract_mismatch_stops_up_before_anything_starts(up, tmp_path) -> None:
    system = write_system(tmp_path)
    (tmp_path / "echo.py").write_text(ECHO.replace("'text': str}", "'text': int}", 1))
    process = up(str(system))
    assert process.finish() == 2
    assert "type-mismatch" in process.output and "relay.echo -> echo.echo" in process.output
    assert "started (pid=" not in process.output


def test_the_example_runs_with_curve_on_every_link(up, tmp_path) -> None:
    from conftest import REPO
    from service_framework.security import create_keypair

    example = REPO / "examples" / "orders"
    shutil.copytree(example / "services", tmp_path / "services")
    keys = tmp_path / "keys"
    for name in ("pricing", "router", "ledger", "trader"):
        create_keypair(keys, name)
    (keys / "clients").mkdir()
    for client in ("ledger", "trader"):
        shutil.copy(keys / f"{client}.key", keys / "clients" / f"{client}.key")
    text = (example / "system.toml").read_text()
    for name in ("pricing", "router", "ledger"):
        line = f'file = "services/{name}.py"'
        text = text.replace(
            line,
            f'{line}\ncurve = {{ secret_key = "keys/{name}.key_secret", '
            'authorized_keys = "keys/clients" }',
        )
    text = text.replace(
        "main = true",
        'main = true\ncurve = { secret_key = "keys/trader.key_secret", allow_any = true }',
    )
    (tmp_path / "system.toml").write_text(text)
    process = up("--free_ports", str(tmp_path / "system.toml"))
    assert process.finish() == 0, process.output
    assert "ledger: 5 fills" in process.output


# A binder that also subscribes to a publisher outside the system: until that publisher is
# there, the services that need it wait.
LONELY = """
def on_echo(args, to_send, config):
    return {'text': args['text']}

def on_tick(args, to_send, config):
    pass

connection_models = {'in': {
    'echo': {
        'connection_type': 'replyer',
        'required_creation_arguments': {'connection_function': on_echo},
        'required_arguments': {'text': str},
        'required_return_arguments': {'text': str},
    },
    'ticks': {
        'connection_type': 'subscriber',
        'required_creation_arguments': {'connection_function': on_tick},
        'required_arguments': {'n': int},
    },
}}
"""


@pytest.fixture
def waiting_system(tmp_path: Path) -> Iterator[Path]:
    """relay needs echo, whose subscriber never gets a peer: a port bound, never listened on."""
    system = write_system(tmp_path)
    (tmp_path / "echo.py").write_text(LONELY)
    with socket.socket() as unserved:
        unserved.bind(("127.0.0.1", 0))
        port = unserved.getsockname()[1]
        text = system.read_text().replace(
            '[services.echo]\nfile = "echo.py"\n',
            '[services.echo]\nfile = "echo.py"\n'
            f'addresses = {{ in = {{ ticks = {{ subscriber = "127.0.0.1:{port}" }} }} }}\n',
        )
        system.write_text(text)
        yield system


def test_a_binder_that_never_gets_ready_stops_the_system(up, waiting_system) -> None:
    process = up("--free_ports", "--ready_timeout_s", "2", str(waiting_system))
    assert process.finish() == 1, process.output
    assert "relay: echo was not ready within 2s: echo: connection(s) 'ticks' have no peer" in (
        process.output
    )
    assert "relay stopped (rc=1)" in process.output
    assert "relay: ready" not in process.output


def test_sigint_while_a_service_waits_is_a_clean_stop(up, waiting_system) -> None:
    process = up("--free_ports", str(waiting_system))
    process.wait_for(r"echo\s+\| .*echo: ready")
    process.wait_for(r"relay\s+\| waiting for echo$")
    os.kill(process.popen.pid, signal.SIGINT)
    assert process.finish() == 0, process.output
    assert "up: stopped on request; exit codes: echo 0, relay 0" in process.output


def test_without_honcho_up_says_which_extra_to_install(tmp_path) -> None:
    shadow = tmp_path / "shadow" / "honcho"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no honcho here')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shadow")}
    result = subprocess.run(
        [sys.executable, "-m", "service_framework", "up", str(write_system(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2
    assert "needs honcho: pip install 'service-framework[up]'" in result.stderr


PEER = """
def on_ask(args, to_send, config):
    return {'text': args['text']}

connection_models = {
    'in': {'ask': {
        'connection_type': 'replyer',
        'required_creation_arguments': {'connection_function': on_ask},
        'required_arguments': {'text': str},
        'required_return_arguments': {'text': str},
    }},
    'out': {'other': {
        'connection_type': 'requester',
        'required_arguments': {'text': str},
        'required_return_arguments': {'text': str},
    }},
}
"""


def write_cycle(tmp_path: Path) -> Path:
    for name in ("left", "right"):
        (tmp_path / f"{name}.py").write_text(PEER)
    system = tmp_path / "cycle.toml"
    system.write_text(
        'links = ["left.other -> right.ask", "right.other -> left.ask"]\n'
        '[services.left]\nfile = "left.py"\n[services.right]\nfile = "right.py"\n'
    )
    return system


def test_two_services_that_connect_to_each_other_start_one_after_the_other(tmp_path) -> None:
    from service_framework.deploy import plan_system
    from service_framework.topology import load_topology

    plan = plan_system(load_topology(write_cycle(tmp_path)))
    assert plan.order == ("right", "left")  # left connects to right first
    assert plan.services["right"].needs == ()  # it does not wait for left, which waits for it
    assert plan.services["left"].needs == ("right",)


def test_free_ports_refuse_services_that_connect_to_each_other(up, tmp_path) -> None:
    process = up("--free_ports", str(write_cycle(tmp_path)))
    assert process.finish() == 2
    assert "connect to each other's binders" in process.output
    assert "started (pid=" not in process.output


SLOW = """
import time

def on_work(args, to_send, config):
    print('working', flush=True)
    time.sleep(args['seconds'])
    return {'done': True}

connection_models = {'in': {'work': {
    'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': on_work},
    'required_arguments': {'seconds': float},
    'required_return_arguments': {'done': bool},
}}}
"""


def test_a_request_in_flight_at_ctrl_c_is_answered_though_it_outlasts_honchos_wait(
    up, tmp_path, client
) -> None:
    # honcho's 5 s count from the first service that stopped: echo stops at once.
    (tmp_path / "slow.py").write_text(SLOW)
    (tmp_path / "echo.py").write_text(ECHO)
    system = tmp_path / "system.toml"
    system.write_text(
        'name = "slow"\n[services.slow]\nfile = "slow.py"\n'
        'addresses = { in = { work = { replyer = "127.0.0.1:0" } } }\n'
        '[services.echo]\nfile = "echo.py"\n'
        'addresses = { in = { echo = { replyer = "127.0.0.1:0" } } }\n'
    )
    process = up("--free_ports", str(system))
    process.wait_for(r"echo\s+\| .*echo: ready")
    ready = process.wait_for(r"slow\s+\| .*slow: ready \(work=tcp://127\.0\.0\.1:(\d+)\)")
    port = re.search(r":(\d+)\)$", ready)
    assert port is not None
    caller = client(
        {
            "out": {
                "work": {
                    "connection_type": "requester",
                    "optional_creation_arguments": {"timeout_s": 30},
                    "required_arguments": {"seconds": float},
                    "required_return_arguments": {"done": bool},
                }
            }
        },
        {"out": {"work": {"requester": f"127.0.0.1:{port.group(1)}"}}},
    )
    replies: queue.Queue[object] = queue.Queue()

    def call() -> None:
        try:
            replies.put(caller.to_send("work", {"seconds": 6.5}))  # honcho's wait is 5 s
        except Exception as exc:  # the test reads it below
            replies.put(exc)

    threading.Thread(target=call, daemon=True).start()
    process.wait_for(r"slow\s+\| working$")
    os.kill(process.popen.pid, signal.SIGINT)
    assert replies.get(timeout=30) == {"done": True}
    assert process.finish() == 0, process.output
    assert "slow stopped (rc=0)" in process.output
    assert "echo stopped (rc=0)" in process.output
