"""The Service object: background processes, readiness, stopping, blocking runs."""

from __future__ import annotations

import importlib
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
