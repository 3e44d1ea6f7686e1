"""The runtime in one process: hooks, start-up errors, external targets, workflow ids,
main mode, the loop's pacing, logging."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import types
from typing import Any

import pytest

from conftest import echo_requester, wait_until
from service_framework import (
    AddressError,
    ConfigError,
    HookError,
    ModelError,
    StartupError,
    ValidationError,
)
from service_framework.logs import configure_logging
from service_framework.runtime import RunOptions, ServiceRuntime

ECHO = """
import queue
from service_framework.workflow import current_workflow_id
seen = queue.Queue()

def on_echo(args, to_send, config):
    seen.put((args, current_workflow_id()))
    return {'text': args['text']}

connection_models = {'in': {'echo': {
    'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': on_echo},
    'required_arguments': {'text': str},
    'required_return_arguments': {'text': str},
}}}
"""

ECHO_OUT = echo_requester(timeout_s=5)


def start(module: Any, **kwargs: Any) -> ServiceRuntime:
    runtime = ServiceRuntime(module, options=RunOptions(install_signals=False), **kwargs)
    runtime.start()
    runtime.close()
    return runtime


def module(name: str = "svc", **attributes: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    for key, value in attributes.items():
        setattr(mod, key, value)
    return mod


# --------------------------------------------------------------------------- hooks


def test_hooks_run_in_order_and_shape_the_service() -> None:
    calls: list[str] = []

    def setup_config(config: dict[str, Any]) -> dict[str, Any]:
        calls.append("setup_config")
        return {"required": {"port": 0}, "optional": {"extra": "x"}}  # seed shape, flattened

    def setup_addresses(addresses: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        calls.append("setup_addresses")
        assert config["port"] == 0
        return {"in": {"echo": {"replyer": f"127.0.0.1:{config['port']}"}}}

    def setup_connection_models(models: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        calls.append("setup_connection_models")
        return {"in": {"echo": {**models["in"]["echo"], "optional_arguments": {"n": int}}}}

    def setup_connections(config: dict[str, Any]) -> dict[str, Any]:
        calls.append("setup_connections")
        return {"echo": {"socket_options": {"rcvhwm": 10}}}

    mod = module(
        config_model={"required": {"port": int}, "optional": {"extra": str, "given": str}},
        connection_models={
            "in": {
                "echo": {
                    "connection_type": "replyer",
                    "required_creation_arguments": {"connection_function": lambda a, t, c: a},
                }
            }
        },
        setup_config=setup_config,
        setup_addresses=setup_addresses,
        setup_connection_models=setup_connection_models,
        setup_connections=setup_connections,
    )
    runtime = start(mod, config={"given": "yes"})
    assert calls == [
        "setup_config",
        "setup_connection_models",
        "setup_connections",
        "setup_addresses",
    ]
    assert runtime.prepared is not None
    assert runtime.prepared.config == {"given": "yes", "port": 0, "extra": "x"}
    model = runtime.prepared.models.inbound["echo"]
    assert model.creation_arguments["socket_options"] == {"rcvhwm": 10}
    assert model.args.check({"n": 1}) and not model.args.check({"n": "1"})


def test_setup_config_may_return_only_new_keys() -> None:
    mod = module(
        config_model={"required": {"a": int, "b": int}},
        setup_config=lambda config: {"b": config["a"] + 1},
    )
    runtime = start(mod, config={"a": 1})
    assert runtime.prepared is not None and runtime.prepared.config == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    ("hook", "value", "message"),
    [
        ("setup_config", None, "svc: setup_config must return a dict, but returned NoneType"),
        ("setup_addresses", [], "svc: setup_addresses must return a dict, but returned list"),
        ("setup_connections", 3, "svc: setup_connections must return a dict, but returned int"),
        (
            "setup_connection_models",
            "x",
            "svc: setup_connection_models must return a dict, but returned str",
        ),
    ],
)
def test_a_hook_returning_the_wrong_kind_stops_startup(hook: str, value: Any, message: str) -> None:
    arity = {"setup_config": 1, "setup_connections": 1}.get(hook, 2)
    fn = (lambda a: value) if arity == 1 else (lambda a, b: value)
    mod = module(config_model={"optional": {"x": int}}, **{hook: fn})
    with pytest.raises(HookError, match=re.escape(message)):
        start(mod)


def test_a_hook_that_raises_is_named() -> None:
    def setup_config(config: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("num")

    with pytest.raises(HookError, match=r"svc: setup_config raised KeyError: 'num'"):
        start(module(config_model={}, setup_config=setup_config))


def test_config_without_config_model_is_passed_through_and_setup_config_runs() -> None:
    strings = {"n": "3"}
    plain = start(module(), config={"a": 1, **strings}, cli_strings=strings)
    assert plain.prepared is not None
    assert plain.prepared.config == {"a": 1, "n": "3"}  # unvalidated, strings stay strings

    def setup_config(config: dict[str, Any]) -> dict[str, Any]:
        return {"b": config.get("a", 0) + 1}

    hooked = start(module(setup_config=setup_config), config={"a": 1})
    assert hooked.prepared is not None and hooked.prepared.config == {"a": 1, "b": 2}
    with pytest.raises(HookError, match="svc: setup_config must return a dict"):
        start(module(setup_config=lambda config: None))


def test_config_is_validated_against_the_model() -> None:
    mod = module(config_model={"required": {"symbol": str}, "optional": {"depth": int}})
    with pytest.raises(ValidationError, match=r"svc: config: missing required key 'symbol'"):
        start(mod, config={})
    with pytest.raises(ValueError, match=r"svc: config: expected int, got str at \$\.depth"):
        start(mod, config={"symbol": "BTC", "depth": "3"})
    with pytest.raises(ValidationError, match="unexpected key 'colour'"):
        start(mod, config={"symbol": "BTC", "colour": "red"})


def test_command_line_strings_are_converted_per_config_model() -> None:
    from decimal import Decimal

    mod = module(
        config_model={
            "required": {"n": int, "ratio": float, "on": bool, "px": Decimal, "name": str},
            "optional": {"tags": [str], "maybe": int | None},
        }
    )
    strings = {
        "n": "3",
        "ratio": "0.5",
        "on": "yes",
        "px": "1.10",
        "name": "007",
        "tags": '["a", "b"]',
        "maybe": "null",
    }
    runtime = start(mod, config=dict(strings), cli_strings=strings)
    assert runtime.prepared is not None
    assert runtime.prepared.config == {
        "n": 3,
        "ratio": 0.5,
        "on": True,
        "px": Decimal("1.10"),
        "name": "007",
        "tags": ["a", "b"],
        "maybe": None,
    }
    bad = ServiceRuntime(
        mod, config={**strings, "n": "three"}, cli_strings={**strings, "n": "three"}
    )
    with pytest.raises(
        ConfigError, match=r"svc: config key 'n' has value 'three', which is not a valid int"
    ):
        bad.start()


def test_a_setup_config_that_casts_itself_keeps_working() -> None:
    def setup_config(config: dict[str, Any]) -> dict[str, Any]:
        config["n"] = int(config["n"]) * 2  # 0.0.20 style
        return config

    strings = {"n": "4"}
    mod = module(config_model={"required": {"n": int}}, setup_config=setup_config)
    runtime = start(mod, config=dict(strings), cli_strings=strings)
    assert runtime.prepared is not None and runtime.prepared.config == {"n": 8}


# --------------------------------------------------------------------------- addresses


def replyer_module(**extra: Any) -> types.ModuleType:
    return module(
        connection_models={
            "in": {
                "echo": {
                    "connection_type": "replyer",
                    "required_creation_arguments": {"connection_function": lambda a, t, c: a},
                }
            }
        },
        **extra,
    )


@pytest.mark.parametrize(
    ("addresses", "error", "message"),
    [
        (None, AddressError, r"svc: connection 'echo' has no address"),
        ({"in": {}}, AddressError, r"svc: connection 'echo' has no address"),
        ({"in": {"echo": {"requester": "127.0.0.1:1"}}}, AddressError, r"need key 'replyer'"),
        ({"in": {"echo": {"replyer": "127.0.0.1"}}}, AddressError, r"has no port"),
        ({"in": {"echo": {"replyer": "127.0.0.1:99999"}}}, AddressError, r"out of range"),
        ({"in": {"echo": {"replyer": "127.0.0.1:abc"}}}, AddressError, r"not a number"),
        ({"in": {"echo": {"replyer": 5}}}, AddressError, r"expected a 'host:port' string"),
        ({"up": {}}, AddressError, r"unknown side 'up'"),
        # An address of no interface here (TEST-NET-1, RFC 5737): bind fails, nothing is sent.
        ({"in": {"echo": {"replyer": "192.0.2.1:0"}}}, AddressError, r"cannot bind"),
    ],
)
def test_address_errors_name_the_connection(addresses: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        start(replyer_module(), addresses=addresses)


def test_address_for_an_undeclared_connection_is_a_warning(caplog) -> None:
    caplog.set_level(logging.WARNING)
    start(replyer_module(), addresses={"in": {"echo": {"replyer": "127.0.0.1:0"}, "nope": {}}})
    assert (
        "addresses give 'in' connection 'nope', which the service does not declare" in caplog.text
    )


def test_binding_to_port_zero_reports_the_real_port(run_service, write_service) -> None:
    service = run_service(
        write_service("echo", ECHO), addresses={"in": {"echo": {"replyer": "127.0.0.1:0"}}}
    )
    host, port = service.address("echo").rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0


def test_a_bad_service_path_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(StartupError, match=r"service file not found: .*missing\.py"):
        start(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("def oops(:\n")
    with pytest.raises(StartupError, match=r"cannot import service file .*broken\.py: SyntaxError"):
        start(str(broken))


def test_unknown_model_key_is_a_startup_error() -> None:
    mod = module(connection_models={"out": {"x": {"connection_type": "requester", "timeout": 1}}})
    with pytest.raises(ModelError, match=r"svc: connection 'x': unknown model key 'timeout'"):
        start(mod)


# --------------------------------------------------------------------------- external targets


class Exchange:
    def __init__(self) -> None:
        self.cancelled: list[str] = []

    def cancel_order(self, order_id: str) -> dict[str, Any]:
        self.cancelled.append(order_id)
        return {"order_id": order_id, "status": "cancelled"}


def target_module(target: Any, returns: Any = "checked", **extra: Any) -> types.ModuleType:
    model: dict[str, Any] = {
        "connection_type": "external_target",
        "required_creation_arguments": {"target": target},
        "required_arguments": {"order_id": str},
    }
    if returns == "checked":
        model["required_return_arguments"] = {"order_id": str, "status": str}
    else:
        model["required_return_arguments"] = returns
        model["optional_return_arguments"] = returns
    return module(connection_models={"out": {"cancel": model}}, **extra)


def test_external_target_by_dotted_name_in_the_module_namespace() -> None:
    client = Exchange()
    runtime = ServiceRuntime(target_module("CbproClient.cancel_order", CbproClient=client))
    runtime.start()
    try:
        assert runtime.to_send is not None
        reply = runtime.to_send("cancel", {"order_id": "o-9"})
        assert reply == {"order_id": "o-9", "status": "cancelled"}
        assert client.cancelled == ["o-9"]
        with pytest.raises(ValidationError, match=r"cancel\.args: missing required key"):
            runtime.to_send("cancel", {})
        assert client.cancelled == ["o-9"]
    finally:
        runtime.close()


def test_external_target_by_import_path_with_unchecked_return() -> None:
    runtime = ServiceRuntime(
        module(
            connection_models={
                "out": {
                    "dump": {
                        "connection_type": "external_request",  # the 0.0.20 name
                        "required_creation_arguments": {"func_to_call": "json.dumps"},
                        "required_arguments": {"obj": [int]},
                        "required_return_arguments": None,
                        "optional_return_arguments": None,
                    }
                }
            }
        )
    )
    runtime.start()
    try:
        assert runtime.to_send is not None
        assert runtime.to_send("dump", {"obj": [1, 2]}) == "[1, 2]"
    finally:
        runtime.close()


def test_external_target_return_is_validated() -> None:
    runtime = ServiceRuntime(target_module(lambda order_id: {"order_id": order_id}))
    runtime.start()
    try:
        assert runtime.to_send is not None
        with pytest.raises(
            ValidationError, match=r"cancel\.return_args: missing required key 'status'"
        ):
            runtime.to_send("cancel", {"order_id": "x"})
    finally:
        runtime.close()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("NoSuchClient.cancel", r"'NoSuchClient\.cancel' is neither a name in the service module"),
        ("json.nope", r"'json' has no attribute 'nope'"),
        ("not a name", r"is not a dotted name"),
        ("json.__doc__", r"resolved to a str, which is not callable"),
    ],
)
def test_unresolvable_target_is_a_startup_error(target: str, message: str) -> None:
    with pytest.raises(ModelError, match=r"^svc: connection 'cancel': target .*" + message):
        start(target_module(target))


# --------------------------------------------------------------------------- workflow ids


def test_workflow_ids_pass_through_handlers_with_a_call_counter(
    run_service, write_service, client
) -> None:
    leaf = run_service(
        write_service("leaf", ECHO), addresses={"in": {"echo": {"replyer": "127.0.0.1:0"}}}
    )
    middle_source = """
import queue
from service_framework.workflow import current_workflow_id
seen = queue.Queue()
def relay(args, to_send, config):
    seen.put(current_workflow_id())
    to_send('down', args)
    return to_send('down', args)
connection_models = {
    'in': {'echo': {'connection_type': 'replyer',
        'required_creation_arguments': {'connection_function': relay},
        'required_arguments': {'text': str}, 'required_return_arguments': {'text': str}}},
    'out': {'down': {'connection_type': 'requester',
        'required_arguments': {'text': str}, 'required_return_arguments': {'text': str}}},
}
"""
    middle = run_service(
        write_service("middle", middle_source),
        addresses={
            "in": {"echo": {"replyer": "127.0.0.1:0"}},
            "out": {"down": {"requester": leaf.address("echo")}},
        },
    )
    runtime = client(
        {"out": {"up": ECHO_OUT}}, {"out": {"up": {"requester": middle.address("echo")}}}
    )
    assert runtime.to_send is not None
    runtime.to_send("up", {"text": "a"})
    runtime.to_send("up", {"text": "b"})
    first, second = middle.module.seen.get(timeout=5), middle.module.seen.get(timeout=5)
    assert first != second  # each send from outside a handler starts a workflow
    leaf_ids = [leaf.module.seen.get(timeout=5)[1] for _ in range(4)]
    assert leaf_ids == [f"{first}_1", f"{first}_2", f"{second}_1", f"{second}_2"]


def test_log_lines_written_in_a_handler_carry_the_workflow_id(
    run_service, write_service, client, tmp_path
) -> None:
    source = ECHO.replace(
        "seen.put((args, current_workflow_id()))",
        "seen.put((args, current_workflow_id()))\n"
        "    import logging; logging.getLogger('user.code').warning('handling %s', args['text'])",
    )
    log_file = tmp_path / "logs" / "svc.log"
    configure_logging(
        console_loglevel=None, log_path=log_file, file_loglevel="DEBUG", backup_count=2
    )
    try:
        service = run_service(
            write_service("logged", source), addresses={"in": {"echo": {"replyer": "127.0.0.1:0"}}}
        )
        runtime = client(
            {"out": {"e": ECHO_OUT}}, {"out": {"e": {"requester": service.address("echo")}}}
        )
        assert runtime.to_send is not None
        runtime.to_send("e", {"text": "hello"})
        workflow_id = service.module.seen.get(timeout=5)[1]
        service.stop()
    finally:
        configure_logging(console_loglevel="WARNING")
    text = log_file.read_text()
    assert re.search(rf"WARNING user\.code \[{re.escape(workflow_id)}\] handling hello", text)
    # At DEBUG the framework logs each message it sends and handles, with the id.
    assert f"logged: handling 'echo' [{workflow_id}]" in text
    assert f"client: sending on 'e' [{workflow_id}]" in text


def test_log_file_rotates_hourly_keeping_backup_count(tmp_path) -> None:
    from logging.handlers import TimedRotatingFileHandler

    configure_logging(console_loglevel=None, log_path=tmp_path / "a.log", backup_count=5)
    try:
        handlers = [
            h for h in logging.getLogger().handlers if isinstance(h, TimedRotatingFileHandler)
        ]
        assert len(handlers) == 1
        assert handlers[0].when == "H" and handlers[0].backupCount == 5
    finally:
        configure_logging(console_loglevel="WARNING")
    assert not [h for h in logging.getLogger().handlers if isinstance(h, TimedRotatingFileHandler)]


# --------------------------------------------------------------------------- main mode


def test_main_mode_serves_inbound_while_main_runs(run_service, write_service, client) -> None:
    source = """
import threading
served = threading.Event()
result = {}
def on_ping(args, to_send, config):
    served.set()
    return {'text': args['text']}
def main(to_send, config):
    result['served'] = served.wait(10)
connection_models = {'in': {'ping': {
    'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': on_ping},
    'required_arguments': {'text': str}, 'required_return_arguments': {'text': str}}}}
"""
    service = run_service(
        write_service("mainer", source),
        addresses={"in": {"ping": {"replyer": "127.0.0.1:0"}}},
        main_mode=True,
    )
    runtime = client(
        {"out": {"p": ECHO_OUT}}, {"out": {"p": {"requester": service.address("ping")}}}
    )
    assert runtime.to_send is not None
    assert runtime.to_send("p", {"text": "hi"}) == {"text": "hi"}
    service.thread.join(10)
    assert service.exit_code == 0
    assert service.module.result == {"served": True}


def test_main_that_raises_exits_1_with_the_traceback_logged(
    run_service, write_service, caplog
) -> None:
    source = """
def main(to_send, config):
    raise ValueError('main went wrong')
"""
    service = run_service(write_service("crasher", source), main_mode=True, wait_ready=False)
    service.thread.join(10)
    assert service.exit_code == 1
    assert "crasher: main raised; stopping" in caplog.text
    assert "ValueError: main went wrong" in caplog.text


def test_init_function_runs_before_main_with_to_send(run_service, write_service) -> None:
    source = """
order = []
def init_function(to_send, config):
    order.append(('init', config['x']))
def main(to_send, config):
    order.append(('main', config['x']))
config_model = {'required': {'x': int}}
"""
    service = run_service(
        write_service("inits", source), config={"x": 1}, main_mode=True, wait_ready=False
    )
    service.thread.join(10)
    assert service.exit_code == 0
    assert service.module.order == [("init", 1), ("main", 1)]


def test_service_without_inbound_connections_ends_after_init(run_service, write_service) -> None:
    service = run_service(write_service("idle", "def init_function(to_send, config):\n    pass\n"))
    service.thread.join(10)
    assert service.exit_code == 0


# --------------------------------------------------------------------------- the loop


def test_min_wait_time_paces_the_loop(run_service, write_service, client) -> None:
    service = run_service(
        write_service("paced", ECHO),
        addresses={"in": {"echo": {"replyer": "127.0.0.1:0"}}},
        min_wait_s=0.05,
    )
    runtime = client(
        {"out": {"e": ECHO_OUT}}, {"out": {"e": {"requester": service.address("echo")}}}
    )
    assert runtime.to_send is not None
    started = time.monotonic()
    for i in range(5):
        runtime.to_send("e", {"text": str(i)})
    # At most one loop turn per 0.05 s. The first turn may have begun (waiting in poll)
    # long before the first request, so turns 2 to 5 give the bound: 3 full periods.
    assert time.monotonic() - started >= 3 * 0.05


@pytest.mark.parametrize("sockets", [1, 2])
def test_idle_loop_wakes_only_at_its_timeouts(run_service, write_service, sockets) -> None:
    """An idle loop sleeps in recv/poll and wakes only when the wait times out (100 ms
    for one socket, 1 s for several): counted, not timed - a spin would wake thousands
    of times, and a slow machine only wakes fewer times."""
    models = {"echo": {"replyer": "127.0.0.1:0"}}
    source = ECHO
    if sockets == 2:
        source = ECHO + "connection_models['in']['echo2'] = connection_models['in']['echo']\n"
        models["echo2"] = {"replyer": "127.0.0.1:0"}
    service = run_service(write_service(f"idler{sockets}", source), addresses={"in": models})
    runtime = service.runtime
    assert wait_until(lambda: runtime.loop_wakeups >= 2, 10)  # serving, and waking up
    before, started = runtime.loop_wakeups, time.monotonic()
    threading.Event().wait(1.0)  # idle on purpose
    woke = runtime.loop_wakeups - before
    timeout_s = 0.1 if sockets == 1 else 1.0
    assert woke <= (time.monotonic() - started) / timeout_s + 2


def test_idle_peer_watch_wakes_about_once_a_second(run_service, write_service) -> None:
    """The thread reading socket monitors sleeps in its poll when nothing happens (it
    once woke a thousand times a second when no periodic check was set: a spin)."""
    service = run_service(
        write_service("watched", ECHO), addresses={"in": {"echo": {"replyer": "127.0.0.1:0"}}}
    )
    peers = service.runtime._peers
    assert peers is not None
    assert wait_until(lambda: peers.wakeups >= 1, 10)
    threading.Event().wait(1.5)  # let a tick or two pass, then count over an idle stretch
    before, started = peers.wakeups, time.monotonic()
    threading.Event().wait(2.0)
    assert peers.wakeups - before <= (time.monotonic() - started) / 1.0 + 2


def test_stop_finishes_the_message_in_flight(run_service, write_service, client) -> None:
    source = """
import threading
entered = threading.Event()
release = threading.Event()
def slow(args, to_send, config):
    entered.set()
    release.wait(10)
    return {'text': args['text']}
connection_models = {'in': {'echo': {'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': slow},
    'required_arguments': {'text': str}, 'required_return_arguments': {'text': str}}}}
"""
    service = run_service(
        write_service("slow", source), addresses={"in": {"echo": {"replyer": "127.0.0.1:0"}}}
    )
    runtime = client(
        {"out": {"e": ECHO_OUT}}, {"out": {"e": {"requester": service.address("echo")}}}
    )
    assert runtime.to_send is not None
    reply: dict[str, Any] = {}
    caller = threading.Thread(target=lambda: reply.update(runtime.to_send("e", {"text": "x"})))
    caller.start()
    assert service.module.entered.wait(5)
    service.runtime.stop()  # while the handler runs
    service.module.release.set()
    caller.join(10)
    assert reply == {"text": "x"}
    service.thread.join(10)
    assert service.exit_code == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_makes_workflow_ids_of_its_own() -> None:
    from service_framework import workflow

    parent = [workflow.new_workflow_id(), workflow.new_workflow_id()]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent, then out at once
        try:
            os.write(write, " ".join([workflow.new_workflow_id(), workflow.next_id()]).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as pipe:
            child = pipe.read().decode().split()
    finally:
        os.waitpid(pid, 0)
    stem = parent[0].rsplit("-", 1)[0]
    assert parent[1] == f"{stem}-{int(parent[0].rsplit('-', 1)[1]) + 1}"
    assert len(child) == 2 and not any(c.startswith(stem) for c in child)
    assert child[1].endswith("-2")  # a fresh counter too


def test_new_workflow_ids_count_up_without_a_gap_across_the_blocks_they_are_made_in() -> None:
    from service_framework import workflow

    ids = [workflow.new_workflow_id() for _ in range(3 * workflow._ID_BLOCK + 5)]
    stem, first = ids[0].rsplit("-", 1)
    assert re.fullmatch(r"[0-9a-f]{12}", stem)
    assert ids == [f"{stem}-{int(first) + k}" for k in range(len(ids))]


def test_a_fresh_counter_starts_at_1_and_passes_each_power_of_ten_in_order() -> None:
    from service_framework import workflow

    take = workflow._fresh_ids()
    ids = [take() for _ in range(100_001)]
    stem = ids[0].rsplit("-", 1)[0]
    assert ids == [f"{stem}-{n}" for n in range(1, 100_002)]


def test_threads_taking_new_workflow_ids_at_once_never_get_the_same_one() -> None:
    from service_framework import workflow

    start = threading.Barrier(4)
    taken: list[list[str]] = [[] for _ in range(4)]

    def take(mine: list[str]) -> None:
        start.wait(10)
        mine.extend(workflow.new_workflow_id() for _ in range(5 * workflow._ID_BLOCK))

    threads = [threading.Thread(target=take, args=(mine,)) for mine in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    every = [i for mine in taken for i in mine]
    assert len(every) == 20 * workflow._ID_BLOCK == len(set(every))
