"""The command line, run as real processes: flags, config, errors, exit codes, signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from conftest import echo_requester, write_json
from service_framework import RequestTimeout
from service_framework.cli import split_arguments

ECHO = """
from service_framework import get_logger
LOG = get_logger()

def on_echo(args, to_send, config):
    LOG.info('echo %s', args['text'])
    return {'text': config.get('prefix', '') + args['text']}

config_model = {'optional': {'prefix': str}}
connection_models = {'in': {'echo': {
    'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': on_echo},
    'required_arguments': {'text': str},
    'required_return_arguments': {'text': str},
}}}
"""

ECHO_OUT = echo_requester(timeout_s=10)


@pytest.fixture
def echo_files(write_service, tmp_path):
    write_service("echo", ECHO)
    write_json(tmp_path / "echo_addresses.json", {"in": {"echo": {"replyer": "127.0.0.1:0"}}})
    return ["-s", "echo.py", "-a", "echo_addresses.json"]


def run_cli(tmp_path: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service_framework", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_split_arguments_keeps_config_pairs_apart() -> None:
    known, extra = split_arguments(
        [
            *("-s", "x.py", "-symbol", "BTC", "--con", "5", "-m", "--depth=3", "-cl", "DEBUG"),
            *("venue", "X", "--offset", "-5"),
        ]
    )
    # "-symbol" is not "-s ymbol", and "--con" does not abbreviate --config_path.
    assert known == ["-s", "x.py", "-m", "-cl", "DEBUG"]
    assert extra == ["-symbol", "BTC", "--con", "5", "--depth=3", "venue", "X", "--offset", "-5"]


def test_help_lists_every_flag(tmp_path) -> None:
    result = run_cli(tmp_path, "-h")
    assert result.returncode == 0
    for flag in ("-s", "-a", "-c", "-m", "-wt", "-cl", "-f", "-bc", "-l", "--traceback"):
        assert f"{flag} " in result.stdout or f"{flag}," in result.stdout


@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        ({}, ["-s", "nope.py"], "service file not found: nope.py"),
        ({}, [], "no service given: use -s/--service_path PATH"),
        (
            {"cfg.json": "{not json"},
            ["-s", "echo.py", "-c", "cfg.json"],
            "config file cfg.json is not valid JSON: Expecting property name enclosed in double "
            "quotes (line 1, column 2)",
        ),
        ({}, ["-s", "echo.py", "-c", "absent.json"], "config file not found: absent.json"),
        (
            {"cfg.json": "[1]"},
            ["-s", "echo.py", "-c", "cfg.json"],
            "config file cfg.json must hold a JSON object, not list",
        ),
        (
            {},
            ["-s", "echo.py"],
            "echo: connection 'echo' has no address (add addresses['in']['echo'] = "
            "{'replyer': 'host:port'})",
        ),
        ({}, ["-s", "echo.py", "-a", "missing.json"], "addresses file not found: missing.json"),
        (
            {"a.json": '{"in": {"echo": {"replyer": "127.0.0.1:0"}}}'},
            ["-s", "echo.py", "-a", "a.json", "--colour", "red"],
            "echo: config: unexpected key 'colour' at $ (allowed: 'prefix')",
        ),
        (
            {"bad.py": "connection_models = {'in': {'x': {'connection_type': 'replier'}}}"},
            ["-s", "bad.py"],
            "bad: connection 'x': unknown connection_type 'replier' (known: external_target, "
            "publisher, puller, pusher, replyer, requester, subscriber, timer)",
        ),
        (
            {},
            ["-s", "echo.py", "--dangling"],
            "config key 'dangling' has no value (expected --dangling VALUE)",
        ),
        (
            {},
            ["-s", "echo.py", "dangling", "-a", "a.json"],
            "config key 'dangling' has no value (expected dangling VALUE)",
        ),
        (
            {},
            ["-s", "echo.py", "--env_prefix", ""],
            "env_prefix must not be empty (it would read every variable)",
        ),
    ],
)
def test_errors_are_one_clear_line_and_a_nonzero_exit(
    write_service, tmp_path, files, args, message
) -> None:
    write_service("echo", ECHO)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = run_cli(tmp_path, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"service_framework: error: {message}"], result.stderr
    assert "Traceback" not in result.stderr


def test_traceback_flag_shows_the_trace(tmp_path) -> None:
    result = run_cli(tmp_path, "-s", "nope.py", "--traceback")
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().endswith(
        "service_framework: error: service file not found: nope.py"
    )


def test_config_precedence_file_then_command_line(write_service, tmp_path, cli, client) -> None:
    write_service("echo", ECHO)
    write_json(tmp_path / "a.json", {"in": {"echo": {"replyer": "127.0.0.1:0"}}})
    write_json(tmp_path / "cfg.json", {"required": {}, "optional": {"prefix": "file:"}})
    from_file = cli("-s", "echo.py", "-a", "a.json", "-c", "cfg.json")
    overridden = cli("-s", "echo.py", "-a", "a.json", "-c", "cfg.json", "-prefix", "cli:")
    for process, expected in ((from_file, "file:x"), (overridden, "cli:x")):
        address = process.ready()["echo"]
        runtime = client({"out": {"e": ECHO_OUT}}, {"out": {"e": {"requester": address}}})
        assert runtime.to_send("e", {"text": "x"}) == {"text": expected}


def test_command_line_values_are_converted_by_the_config_model(write_service, tmp_path) -> None:
    write_service(
        "typed",
        """
from decimal import Decimal
config_model = {'required': {'n': int, 'px': Decimal, 'on': bool}, 'optional': {'tags': [str]}}
def main(to_send, config):
    print(repr(sorted(config.items())))
""",
    )
    result = run_cli(
        tmp_path, "-s", "typed.py", "-m", "--n", "3", "--px=1.10", "-on", "false", "--tags", '["a"]'
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "[('n', 3), ('on', False), ('px', Decimal('1.10')), ('tags', ['a'])]"
    )
    bad = run_cli(tmp_path, "-s", "typed.py", "-m", "--n", "x", "--px", "1", "--on", "maybe")
    assert bad.returncode == 2
    assert "typed: config key 'n' has value 'x', which is not a valid int" in bad.stderr


def test_main_mode_exit_codes(write_service, tmp_path) -> None:
    write_service("ok", "def main(to_send, config):\n    print('main ran')\n")
    write_service("boom", "def main(to_send, config):\n    raise RuntimeError('kaput')\n")
    ok = run_cli(tmp_path, "-s", "ok.py", "-m")
    assert (ok.returncode, ok.stdout.strip()) == (0, "main ran")
    boom = run_cli(tmp_path, "-s", "boom.py", "-m")
    assert boom.returncode == 1
    assert "boom: main raised; stopping" in boom.stderr
    assert "RuntimeError: kaput" in boom.stderr  # the traceback is logged


def test_log_file_gets_workflow_ids(echo_files, tmp_path, cli, client) -> None:
    process = cli(*echo_files, "-l", "logs/echo.log", "-f", "DEBUG", "-cl", "INFO", "-bc", "3")
    port = process.ready()["echo"]
    log = tmp_path / "logs" / "echo.log"
    runtime = client({"out": {"e": ECHO_OUT}}, {"out": {"e": {"requester": port}}})
    runtime.to_send("e", {"text": "traced"})
    process.signal(signal.SIGTERM)
    assert process.finish() == 0
    text = log.read_text()
    line = next(line for line in text.splitlines() if "echo traced" in line)
    workflow_id = line.split("[")[1].split("]")[0]
    assert workflow_id != "-"
    assert f"echo: handling 'echo' [{workflow_id}]" in text


SLOW = """
import time
from service_framework import get_logger
LOG = get_logger()

def on_work(args, to_send, config):
    LOG.info('started %s', args['n'])
    time.sleep(args['seconds'])
    return {'n': args['n']}

def sigterm_handler(signum, frame, to_send, config):
    LOG.info('sigterm_handler ran')

connection_models = {'in': {'work': {
    'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': on_work},
    'required_arguments': {'n': int, 'seconds': float},
    'required_return_arguments': {'n': int},
}}}
"""

WORK_OUT = {
    "connection_type": "requester",
    "optional_creation_arguments": {"timeout_s": 15},
    "required_arguments": {"n": int, "seconds": float},
    "required_return_arguments": {"n": int},
}


@pytest.fixture
def slow_service(write_service, tmp_path, cli):
    write_service("slow", SLOW)
    write_json(tmp_path / "slow.json", {"in": {"work": {"replyer": "127.0.0.1:0"}}})
    process = cli("-s", "slow.py", "-a", "slow.json")
    return process, process.ready()["work"]


def test_sigterm_answers_every_request_in_flight_then_exits_0(slow_service, client) -> None:
    process, address = slow_service
    callers = [
        client({"out": {"w": WORK_OUT}}, {"out": {"w": {"requester": address}}}, name=f"c{i}")
        for i in range(4)
    ]
    replies: dict[int, Any] = {}
    calling = [threading.Event() for _ in range(4)]

    def call(i: int) -> None:
        calling[i].set()
        try:
            replies[i] = callers[i].to_send("w", {"n": i, "seconds": 0.3})
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            replies[i] = exc

    # Every caller is connected, so each request goes out the moment it is made.
    process.wait_for_count(r"connection 'work' peer connected", 4)
    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    assert all(event.wait(10) for event in calling)
    process.wait_for(r"started \d")  # one is being handled, the others are queued
    process.signal(signal.SIGTERM)
    for thread in threads:
        thread.join(20)
    assert replies == {i: {"n": i} for i in range(4)}
    assert process.finish() == 0
    assert "sigterm_handler ran" in process.log()
    # New work is refused: the endpoint is gone.
    late = client(
        {"out": {"w": {**WORK_OUT, "optional_creation_arguments": {"timeout_s": 0.3}}}},
        {"out": {"w": {"requester": address}}},
        name="late",
    )
    with pytest.raises(RequestTimeout):
        late.to_send("w", {"n": 9, "seconds": 0.0})


def test_second_signal_exits_at_once(slow_service, client) -> None:
    process, address = slow_service
    out = {**WORK_OUT, "optional_creation_arguments": {"timeout_s": 3}}
    caller = client({"out": {"w": out}}, {"out": {"w": {"requester": address}}})
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            caller.to_send("w", {"n": 1, "seconds": 30.0})
        except RequestTimeout as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    process.wait_for(r"started 1")
    process.signal(signal.SIGTERM)
    process.wait_for(r"got SIGTERM; stopping gracefully")
    process.signal(signal.SIGINT)
    # The first signal restored the default action, so the second one ends the process
    # itself - no Python code has to run for that.
    assert process.finish(timeout=10) == -signal.SIGINT
    thread.join(10)
    assert len(outcome) == 1  # the handler never finished, so no reply came


def test_second_signal_ends_the_process_while_the_first_handler_still_runs(
    write_service, cli
) -> None:
    write_service(
        "stubborn",
        """
import threading
from service_framework import get_logger
LOG = get_logger()

def main(to_send, config):
    LOG.info('main waiting')
    threading.Event().wait(30)

def sigterm_handler(signum, frame, to_send, config):
    LOG.info('handler busy')
    threading.Event().wait(30)  # a handler that never finishes on its own
""",
    )
    process = cli("-s", "stubborn.py", "-m")
    process.wait_for("main waiting")
    process.signal(signal.SIGTERM)
    process.wait_for("handler busy")
    process.signal(signal.SIGTERM)
    assert process.finish(timeout=10) == -signal.SIGTERM


def test_sigint_in_main_mode_runs_the_handler_with_to_send_and_exits_130(
    write_service, cli
) -> None:
    write_service(
        "waiter",
        """
import threading
from service_framework import get_logger
LOG = get_logger()

def note(text):
    print(text, flush=True)

def main(to_send, config):
    LOG.info('main waiting')
    threading.Event().wait(30)  # interrupted by the signal
    print('main finished normally', flush=True)

def sigint_handler(signum, frame, to_send, config):
    to_send('note', {'text': f'sigint_handler got {signum}'})

connection_models = {'out': {'note': {
    'connection_type': 'external_target',
    'required_creation_arguments': {'target': note},
    'required_arguments': {'text': str},
    'required_return_arguments': None, 'optional_return_arguments': None,
}}}
""",
    )
    process = cli("-s", "waiter.py", "-m")
    process.wait_for("main waiting")
    process.signal(signal.SIGINT)
    assert process.finish() == 128 + signal.SIGINT  # main was interrupted, not finished
    assert process.stdout().splitlines() == [f"sigint_handler got {int(signal.SIGINT)}"]


def test_main_that_returns_after_a_signal_exits_0(write_service, cli) -> None:
    write_service(
        "graceful",
        """
import threading
from service_framework import get_logger
LOG = get_logger()

def main(to_send, config):
    try:
        LOG.info('main waiting')
        threading.Event().wait(30)
    except BaseException:
        print('main cleaned up', flush=True)  # main handles the interruption and returns
""",
    )
    process = cli("-s", "graceful.py", "-m")
    process.wait_for("main waiting")
    process.signal(signal.SIGTERM)
    assert process.finish() == 0
    assert process.stdout().splitlines() == ["main cleaned up"]


def test_signal_handler_may_use_the_connection_main_was_blocked_on(
    write_service, tmp_path, cli, zctx, request
) -> None:
    """main waits on a reply that never comes; the signal unwinds it first, so the
    service's handler can call the same requester (whose lock main held)."""
    router = zctx.socket(zmq.ROUTER)
    request.addfinalizer(router.close)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    write_service(
        "asker",
        """
from service_framework import get_logger
LOG = get_logger()

def main(to_send, config):
    LOG.info('main asking')
    to_send('ask', {'text': 'from main'})

def sigterm_handler(signum, frame, to_send, config):
    print('handler got', to_send('ask', {'text': 'from handler'})['text'], flush=True)

connection_models = {'out': {'ask': {
    'connection_type': 'requester',
    'optional_creation_arguments': {'timeout_s': 20},
    'required_arguments': {'text': str},
    'required_return_arguments': {'text': str},
}}}
""",
    )
    write_json(tmp_path / "asker.json", {"out": {"ask": {"requester": f"127.0.0.1:{port}"}}})
    process = cli("-s", "asker.py", "-a", "asker.json", "-m")
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)

    def next_request() -> tuple[bytes, dict[str, Any]]:
        if not poller.poll(10_000):
            process.kill()
            process.finish(timeout=10)
            raise AssertionError("no request arrived; the service's log:\n" + process.log())
        peer, empty, body = router.recv_multipart()
        assert empty == b""
        return peer, msgspec.msgpack.decode(body)

    process.wait_for("main asking")
    _, first = next_request()
    assert first["args"] == {"text": "from main"}  # never answered: main is blocked
    process.signal(signal.SIGTERM)
    peer, second = next_request()
    assert second["args"] == {"text": "from handler"}
    reply = {"v": 1, "workflow_id": second["workflow_id"], "return_args": {"text": "answered"}}
    router.send_multipart([peer, b"", msgspec.msgpack.encode(reply)])
    assert process.finish() == 128 + signal.SIGTERM
    assert process.stdout().splitlines() == ["handler got answered"]


CONFIG_SOURCES = """
import json
config_model = {
    'required': {'num': int, 'name': str},
    'optional': {'flag': bool, 'from_file': str},
}
def main(to_send, config):
    print(json.dumps(config, sort_keys=True))
"""


def test_config_from_the_environment_and_its_precedence(write_service, tmp_path, cli) -> None:
    write_service("sources", CONFIG_SOURCES)
    write_json(tmp_path / "cfg.json", {"num": 1, "name": "file", "from_file": "kept"})
    env = {"APP_NUM": "3", "APP_NAME": "env", "APP_FLAG": "yes", "OTHER_NUM": "9"}
    # file < environment < command line; environment strings are converted like CLI ones.
    files = ("-s", "sources.py", "-m", "-c", "cfg.json")
    both = cli(*files, "--env_prefix", "APP_", "--name", "cli", env=env)
    assert both.finish() == 0, both.log()
    assert json.loads(both.stdout()) == {"num": 3, "name": "cli", "flag": True, "from_file": "kept"}
    # Without --env_prefix the environment is not config.
    unprefixed = cli(*files, env=env)
    assert unprefixed.finish() == 0, unprefixed.log()
    assert json.loads(unprefixed.stdout()) == {"num": 1, "name": "file", "from_file": "kept"}
    # Every prefixed variable is a key, checked by the config_model like any other.
    strict = cli(*files, "--env_prefix", "APP_", env={**env, "APP_COLOUR": "red"})
    assert strict.finish() == 2
    assert strict.lines == [
        "service_framework: error: sources: config: unexpected key 'colour' at $ "
        "(allowed: 'num', 'name', 'flag', 'from_file')"
    ]
    bad = cli("-s", "sources.py", "-m", "--env_prefix", "APP_", env={**env, "APP_NUM": "x"})
    assert bad.finish() == 2
    assert "sources: config key 'num' has value 'x', which is not a valid int" in bad.log()


def test_environment_config_maps_variable_names_to_keys() -> None:
    from service_framework import ConfigError
    from service_framework.config import environment_config

    environ = {"APP_NUM_REQ": "10", "APP_Mixed": "x", "app_lower": "no", "HOME": "/root"}
    # The prefix matches exactly; the rest of the name, lowercased, is the key.
    assert environment_config("APP_", environ) == {"num_req": "10", "mixed": "x"}
    assert environment_config("NONE_", environ) == {}
    with pytest.raises(ConfigError, match="'APP_X' and 'APP_x' both give config key 'x'"):
        environment_config("APP_", {"APP_x": "1", "APP_X": "2"})
    with pytest.raises(ConfigError, match="'APP_' is the prefix alone"):
        environment_config("APP_", {"APP_": "1"})
    with pytest.raises(ConfigError, match="must not be empty"):
        environment_config("", environ)
