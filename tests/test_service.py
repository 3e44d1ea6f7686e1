"""The Service object: background processes, readiness, stopping, blocking runs."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest

from conftest import echo_requester
from service_framework import Service, StartupError, ValidationError

ECHO = """
def on_echo(args, to_send, config):
    return {'text': config['prefix'] + args['text']}

config_model = {'required': {'prefix': str}}
connection_models = {'in': {'echo': {
    'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': on_echo},
    'required_arguments': {'text': str},
    'required_return_arguments': {'text': str},
}}}
"""

ECHO_OUT = echo_requester(timeout_s=10)
ADDRESSES = {"in": {"echo": {"replyer": "127.0.0.1:0"}}}


@pytest.fixture
def services():
    made: list[Service] = []

    def make(*args: Any, **kwargs: Any) -> Service:
        kwargs.setdefault("console_loglevel", "WARNING")
        service = Service(*args, **kwargs)
        made.append(service)
        return service

    yield make
    for service in made:
        service.stop_service()


def echo_client(client, service: Service) -> Any:
    address = service.endpoints["in"]["echo"][0]
    return client({"out": {"e": ECHO_OUT}}, {"out": {"e": {"requester": address}}})


def test_run_service_returns_when_ready_and_stops_gracefully(
    write_service, services, client
) -> None:
    service = services(write_service("echo", ECHO), addresses=ADDRESSES, config={"prefix": ">"})
    service.run_service()
    assert service.is_running and service.ready.is_set()
    assert echo_client(client, service).to_send("e", {"text": "hi"}) == {"text": ">hi"}
    with pytest.raises(RuntimeError, match="already running"):
        service.run_service()
    assert service.stop_service() == 0
    assert not service.is_running
    assert service.stop_service() is None  # nothing left to stop


def test_startup_errors_from_the_child_are_raised_here(write_service, services) -> None:
    service = services(write_service("echo", ECHO), addresses=ADDRESSES, config={})
    with pytest.raises(ValidationError, match=r"echo: config: missing required key 'prefix'"):
        service.run_service()
    assert not service.is_running
    missing = services("does/not/exist.py")
    with pytest.raises(StartupError, match=r"service file not found: does/not/exist\.py"):
        missing.run_service()


def test_module_objects_run_in_the_background(write_service, services, client, tmp_path) -> None:
    write_service("echo_mod", ECHO)
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module("echo_mod")
    finally:
        sys.path.remove(str(tmp_path))
    # The first positional argument may be a module.
    service = services(module, addresses=ADDRESSES, config={"prefix": "m:"})
    service.run_service()
    assert echo_client(client, service).to_send("e", {"text": "x"}) == {"text": "m:x"}
    keyword = services(service_module=module, addresses=ADDRESSES, config={"prefix": "k:"})
    keyword.run_service()
    assert echo_client(client, keyword).to_send("e", {"text": "x"}) == {"text": "k:x"}


def test_main_mode_in_the_background_and_exit_codes(write_service, services) -> None:
    ok = services(write_service("ok", "def main(to_send, config):\n    pass\n"))
    ok.run_service_as_main()
    assert ok.wait(20) == 0
    assert ok.stop_service() == 0  # already ended: nothing to do but report
    boom = services(write_service("boom", "def main(to_send, config):\n    raise ValueError()\n"))
    boom.run_service_as_main()
    assert boom.wait(20) == 1


def test_both_spellings_of_the_wait_time(write_service) -> None:
    path = write_service("echo", ECHO)
    assert Service(path, service_loop_min_wait_time=0.5).min_wait_s == 0.5
    assert Service(path, service_loop_min_wait_time_s=0.25).min_wait_s == 0.25
    with pytest.raises(ValueError, match=">= 0"):
        Service(path, service_loop_min_wait_time=-1)
    with pytest.raises(ValueError, match="not both"):
        Service(path, service_module=sys)
    with pytest.raises(ValueError, match="needs a service_path"):
        Service()


def test_blocking_run_stops_from_another_thread(write_service, client) -> None:
    service = Service(
        write_service("echo", ECHO),
        addresses=ADDRESSES,
        config={"prefix": "b:"},
        console_loglevel="WARNING",
    )
    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(service.run_service_blocking()), daemon=True
    )
    thread.start()
    try:
        assert service.ready.wait(10)
        assert echo_client(client, service).to_send("e", {"text": "x"}) == {"text": "b:x"}
    finally:
        service.stop_service()  # also when an assertion failed: never leave it serving
        thread.join(10)
    assert codes == [0]


PRICING = """
def on_quote(args, to_send, config):
    return {'price': config['spread_bps']}

config_model = {'optional': {'spread_bps': int}}
connection_models = {'in': {'quote': {
    'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': on_quote},
    'required_arguments': {'symbol': str},
    'required_return_arguments': {'price': int},
}}}
"""

QUOTE_OUT = {
    "connection_type": "requester",
    "optional_creation_arguments": {"timeout_s": 10},
    "required_arguments": {"symbol": str},
    "required_return_arguments": {"price": int},
}

# The README's Service snippet as a script, at its top level (no __main__ guard).
TOP_LEVEL_LAUNCHER = """
from service_framework import Service

service = Service("pricing.py", addresses={"in": {"quote": {"replyer": "127.0.0.1:0"}}},
                  config={"spread_bps": 5}, console_loglevel="WARNING")
service.run_service()
print(service.endpoints["in"]["quote"][0], flush=True)
input()  # the test asks the service, then lets the script go on
print("stopped", service.stop_service(), flush=True)
"""


def run_script(tmp_path, source: str) -> subprocess.Popen[str]:
    (tmp_path / "launch.py").write_text(source)
    return subprocess.Popen(
        [sys.executable, "launch.py"],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_readme_snippet_runs_at_a_scripts_top_level(write_service, tmp_path, client) -> None:
    write_service("pricing", PRICING)
    script = run_script(tmp_path, TOP_LEVEL_LAUNCHER)
    try:
        assert script.stdout is not None and script.stdin is not None
        address = script.stdout.readline().strip()
        assert address.startswith("tcp://127.0.0.1:"), script.communicate(timeout=20)
        runtime = client({"out": {"q": QUOTE_OUT}}, {"out": {"q": {"requester": address}}})
        assert runtime.to_send("q", {"symbol": "BTC-USD"}) == {"price": 5}
        out, err = script.communicate("\n", timeout=30)
        assert (script.returncode, out) == (0, "stopped 0\n"), err
    finally:
        script.kill()
        script.communicate(timeout=10)


# A service file that also starts itself, without the guard: the service process,
# importing the file, would start another and so on. The parent must say so.
SELF_STARTING = """
from service_framework import Service, StartupError

connection_models = {}

def main(to_send, config):
    pass

try:
    Service(__file__, console_loglevel="CRITICAL").run_service_as_main()
except StartupError as error:
    print("parent got:", error)
"""


def test_the_childs_own_error_reaches_the_parent(tmp_path) -> None:
    script = run_script(tmp_path, SELF_STARTING)
    out, err = script.communicate(timeout=60)
    assert script.returncode == 0, err
    assert out.startswith("parent got: cannot import service file "), out
    assert out.rstrip().endswith(
        "launch.py: RuntimeError: a Service was started while a service process was importing "
        "its service file: put the code that starts services under "
        "'if __name__ == \"__main__\":' so that importing the file does not start them"
    ), out


# Objects the child cannot rebuild: the child imports the service file, not the script.
MAIN_CLASS_IN_CONFIG = """
from service_framework import Service, StartupError

class Limit:
    pass

if __name__ == "__main__":
    try:
        Service("plain.py", config={"limit": Limit()}).run_service_as_main()
    except StartupError as error:
        print("parent got:", error)
"""


def test_config_objects_the_child_cannot_rebuild_are_a_clear_error(write_service, tmp_path) -> None:
    write_service("plain", "def main(to_send, config):\n    pass\n")
    script = run_script(tmp_path, MAIN_CLASS_IN_CONFIG)
    out, err = script.communicate(timeout=60)
    assert script.returncode == 0, err
    assert out.startswith(
        "parent got: the service process could not rebuild the arguments it was given: "
        "AttributeError: "
    ), out
    assert "Limit" in out and "classes defined in a script run as __main__ are not" in out


def test_a_child_that_dies_silently_is_reported_with_its_exit(write_service, services) -> None:
    service = services(write_service("dies", "import os\nos._exit(7)\n"))
    with pytest.raises(StartupError, match=r"dies\.py exited with code 7 before it was ready"):
        service.run_service()
    assert not service.is_running


ENV_CONFIG = """
import json
config_model = {'required': {'num': int, 'out': str}, 'optional': {'name': str}}
def main(to_send, config):
    with open(config['out'], 'w') as file:
        json.dump(config, file)
"""


def test_env_prefix_keyword_below_the_config_argument(
    write_service, services, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("SFTEST_NUM", "4")
    monkeypatch.setenv("SFTEST_NAME", "env")
    out = tmp_path / "config.json"
    service = services(
        write_service("envcfg", ENV_CONFIG),
        config={"name": "object", "out": str(out)},
        env_prefix="SFTEST_",
    )
    service.run_service_as_main()
    assert service.wait(20) == 0
    assert json.loads(out.read_text()) == {"num": 4, "name": "object", "out": str(out)}
    with pytest.raises(ValueError, match="env_prefix must not be empty"):
        Service("envcfg.py", env_prefix="")


ENDPOINTS = """
def on_quote(args, to_send, config):
    return {}

connection_models = {
    'in': {'quote': {
        'connection_type': 'replyer',
        'required_creation_arguments': {'connection_function': on_quote},
    }},
    'out': {
        'prices': {'connection_type': 'publisher',
                   'optional_creation_arguments': {'wait_after_creation_s': 0}},
        'audit': {'connection_type': 'external_target',
                  'required_creation_arguments': {'target': print}},
    },
}
"""


def test_endpoints_shape_as_the_readme_shows(write_service, services) -> None:
    service = services(
        write_service("shape", ENDPOINTS),
        addresses={
            "in": {"quote": {"replyer": "127.0.0.1:0"}},
            "out": {"prices": {"publisher": "127.0.0.1:0"}},
        },
    )
    service.run_service()
    endpoints = service.endpoints
    assert set(endpoints) == {"in", "out"}
    assert endpoints["out"]["audit"] == []
    for url in (*endpoints["in"]["quote"], *endpoints["out"]["prices"]):
        assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", url) and not url.endswith(":0"), url
    assert len(endpoints["in"]["quote"]) == len(endpoints["out"]["prices"]) == 1


ENDS_WHILE_SERVING = """
from service_framework import Service

service = Service("pricing.py", addresses={"in": {"quote": {"replyer": "127.0.0.1:0"}}},
                  config={"spread_bps": 7}, console_loglevel="WARNING")
service.run_service()
print(service.pid, service.endpoints["in"]["quote"][0], flush=True)
print("script done", flush=True)
"""


def test_a_script_that_ends_waits_for_its_running_services(write_service, tmp_path, client) -> None:
    write_service("pricing", PRICING)
    script = run_script(tmp_path, ENDS_WHILE_SERVING)
    child_pid = None
    try:
        assert script.stdout is not None
        pid, address = script.stdout.readline().split()
        child_pid = int(pid)
        assert script.stdout.readline() == "script done\n"
        # The script's own code is over; the service serves on, and the script waits.
        runtime = client({"out": {"q": QUOTE_OUT}}, {"out": {"q": {"requester": address}}})
        assert runtime.to_send("q", {"symbol": "BTC-USD"}) == {"price": 7}
        assert script.poll() is None
        os.kill(child_pid, signal.SIGTERM)  # the service stops: the script may end
        assert script.wait(30) == 0
    finally:
        if child_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child_pid, signal.SIGKILL)
        script.kill()
        script.communicate(timeout=10)


def test_stats_are_read_while_the_service_runs(write_service, services, client) -> None:
    service = services(write_service("echo", ECHO), addresses=ADDRESSES, config={"prefix": ">"})
    with pytest.raises(RuntimeError, match="not running"):
        service.stats()
    service.run_service()
    assert service.stats()["echo"]["handled"] == 0
    caller = echo_client(client, service)
    for text in ("a", "b", "c"):
        caller.to_send("e", {"text": text})
    counts = service.stats()["echo"]  # asked of the background process, as it runs
    assert (counts["received"], counts["handled"], counts["failed"]) == (3, 3, 0)
    assert service.stop_service() == 0
    with pytest.raises(RuntimeError, match="not running"):
        service.stats()


def test_stats_of_a_blocking_run_come_from_this_process(write_service, services, client) -> None:
    service = services(write_service("echo", ECHO), addresses=ADDRESSES, config={"prefix": ">"})
    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(service.run_service_blocking()))
    thread.start()
    try:
        assert service.ready.wait(20)
        echo_client(client, service).to_send("e", {"text": "x"})
        assert service.stats()["echo"]["handled"] == 1
    finally:
        service.stop_service()
        thread.join(20)
    assert outcome == [0]
