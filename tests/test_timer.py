"""The ``timer`` connection type: ticks, skipping, ``eager``, failures, shutdown, inline."""

from __future__ import annotations

import queue
import re
import signal
from typing import Any

import pytest

from conftest import echo_requester, write_json
from service_framework import InlineServices

TICK = r"tick (\d+) \[([^\]]+)\]"

# A timer whose handler logs its tick number and workflow id, and optionally calls a
# replyer, sleeps, or raises (chosen by config, so one source serves every test).
TIMER_SERVICE = """
import itertools, time
from service_framework import get_logger
from service_framework.workflow import current_workflow_id

log = get_logger()
ticks = itertools.count()

def on_tick(args, to_send, config):
    n = next(ticks)
    log.info("tick %d [%s] args=%r", n, current_workflow_id(), args)
    if config.get("call"):
        to_send("echo", {{"text": str(n)}})
    if config.get("sleep_s"):
        time.sleep(float(config["sleep_s"]))  # the handler is slower than the interval
    if config.get("explode"):
        raise RuntimeError("tick failure " + str(n))

connection_models = {{
    "in": {{
        "tick": {{
            "connection_type": "timer",
            "required_creation_arguments": {{
                "connection_function": on_tick, "interval_s": {interval}
            }},
            "optional_creation_arguments": {creation},
        }},
        {extra_in}
    }},
    "out": {{ {extra_out} }},
}}
"""

ECHO_REPLYER = """
import queue
from service_framework.workflow import current_workflow_id
received = queue.Queue()

def echo(args, to_send, config):
    received.put((args["text"], current_workflow_id()))
    return args

connection_models = {"in": {"echo": {
    "connection_type": "replyer",
    "required_creation_arguments": {"connection_function": echo},
    "required_arguments": {"text": str},
    "required_return_arguments": {"text": str},
}}}
"""

ECHO_IN = """"echo": {
            "connection_type": "replyer",
            "required_creation_arguments": {"connection_function": lambda a, t, c: a},
            "required_arguments": {"text": str},
            "required_return_arguments": {"text": str},
        },"""

ECHO_OUT = """"echo": {
            "connection_type": "requester",
            "optional_creation_arguments": {"timeout_s": 5.0},
            "required_arguments": {"text": str},
            "required_return_arguments": {"text": str},
        },"""


def timer_source(
    interval: float = 0.05, *, extra_in: str = "", extra_out: str = "", **creation: Any
) -> str:
    return TIMER_SERVICE.format(
        interval=interval, creation=repr(creation), extra_in=extra_in, extra_out=extra_out
    )


def stats_of(log: str, connection: str) -> dict[str, int]:
    found = re.search(rf"connection '{connection}' \w*Stats\(([^)]*)\)", log)
    assert found, f"no stats line for {connection}:\n{log}"
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", found.group(1))}


def test_timer_ticks_and_calls_a_replyer_with_a_new_workflow_per_tick(
    cli, write_service, run_service, tmp_path
):
    replyer = run_service(
        write_service("echo_service", ECHO_REPLYER),
        addresses={"in": {"echo": {"replyer": "127.0.0.1:0"}}},
    )
    source = timer_source(0.05, extra_out=ECHO_OUT)
    addresses = write_json(
        tmp_path / "addresses.json", {"out": {"echo": {"requester": replyer.address("echo")}}}
    )
    process = cli("-s", str(write_service("ticker", source)), "-a", str(addresses), "--call", "1")
    process.ready()
    received: queue.Queue[tuple[str, str]] = replyer.module.received
    calls = [received.get(timeout=10) for _ in range(5)]
    process.signal(signal.SIGTERM)
    assert process.finish() == 0

    # Ticks arrive in order, each through to_send inside the handler.
    assert [text for text, _ in calls] == ["0", "1", "2", "3", "4"]
    # Each tick starts a workflow: the call carries "<new id>_1", a different id each time.
    ids = [workflow_id for _, workflow_id in calls]
    assert all(workflow_id.endswith("_1") for workflow_id in ids), ids
    assert len({workflow_id.removesuffix("_1") for workflow_id in ids}) == 5
    ticks = re.findall(TICK + r" args=(.*)", process.log())
    assert [(n, f"{wid}_1") for n, wid, _ in ticks[:5]] == [(str(i), ids[i]) for i in range(5)]
    assert {args for _, _, args in ticks} == {"{}"}  # the handler always gets {}
    stats = stats_of(process.log(), "tick")
    assert stats["received"] >= 5 and stats["handled"] >= 5 and stats["failed"] == 0


def test_a_slow_handler_skips_missed_ticks_instead_of_catching_up(cli, write_service):
    # A handler sleeping 0.2 s on a 0.05 s timer: every tick's run overlaps the next 4
    # scheduled times, which must be skipped (counted), not run back to back afterwards.
    process = cli("-s", str(write_service("slow", timer_source(0.05))), "--sleep_s", "0.2")
    process.ready()
    process.wait_for_count(TICK, 4)
    process.signal(signal.SIGTERM)
    assert process.finish() == 0
    numbers = [int(n) for n, _ in re.findall(TICK, process.log())]
    assert numbers == list(range(len(numbers)))
    stats = stats_of(process.log(), "tick")
    assert stats["handled"] >= 4
    assert stats["skipped"] >= 4 * stats["handled"], stats


def test_eager_timer_ticks_at_start(cli, write_service):
    # An hour-long interval: the only tick that can come in this test is the eager one.
    process = cli("-s", str(write_service("eager", timer_source(3600, eager=True))))
    process.ready()
    process.wait_for(TICK)
    process.signal(signal.SIGTERM)
    assert process.finish() == 0
    assert stats_of(process.log(), "tick")["handled"] == 1


def test_a_timer_without_eager_waits_one_interval(run_service, write_service, client):
    service = run_service(
        write_service("lazy", timer_source(3600, extra_in=ECHO_IN)),
        addresses={"in": {"echo": {"replyer": "127.0.0.1:0"}}},
    )
    caller = client(
        {"out": {"echo": echo_requester(5.0)}},
        {"out": {"echo": {"requester": service.address("echo")}}},
    )
    # The loop is serving (the replyer answers), and the timer has not ticked.
    assert caller.to_send("echo", {"text": "hi"}) == {"text": "hi"}
    service.stop()
    stats = service.runtime.stats()
    assert stats["echo"].handled == 1
    assert stats["tick"].received == 0


def test_a_raising_timer_is_logged_counted_and_the_service_keeps_serving(
    cli, write_service, client, tmp_path
):
    source = timer_source(0.05, extra_in=ECHO_IN)
    addresses = write_json(tmp_path / "a.json", {"in": {"echo": {"replyer": "127.0.0.1:0"}}})
    process = cli(
        "-s", str(write_service("failing", source)), "-a", str(addresses), "--explode", "1"
    )
    endpoints = process.ready()
    process.wait_for_count(r"handler of connection 'tick' raised RuntimeError: tick failure", 3)
    caller = client(
        {"out": {"echo": echo_requester(5.0)}}, {"out": {"echo": {"requester": endpoints["echo"]}}}
    )
    assert caller.to_send("echo", {"text": "still here"}) == {"text": "still here"}
    process.wait_for(r"tick failure 4")  # and it keeps ticking
    process.signal(signal.SIGTERM)
    assert process.finish() == 0
    stats = stats_of(process.log(), "tick")
    assert stats["failed"] >= 5 and stats["handled"] == 0
    assert stats_of(process.log(), "echo")["handled"] == 1


@pytest.mark.parametrize("creation", [{}, {"jitter_s": 0.05}])
def test_a_timer_only_service_runs_and_stops_on_sigterm(cli, write_service, creation):
    process = cli("-s", str(write_service("only", timer_source(0.05, **creation))))
    process.ready()
    process.wait_for_count(TICK, 2)
    process.signal(signal.SIGTERM)
    assert process.finish() == 0
    assert "got SIGTERM" in process.log()


MAIN_WAITS_FOR_A_TICK = """
import threading
ticked = threading.Event()

def on_tick(args, to_send, config):
    ticked.set()

def main(to_send, config):
    if not ticked.wait(10):
        raise RuntimeError("the timer never ticked while main ran")

connection_models = {"in": {"tick": {
    "connection_type": "timer",
    "required_creation_arguments": {"connection_function": on_tick, "interval_s": 0.05},
}}}
"""


def test_timer_ticks_beside_main_in_main_mode(cli, write_service):
    process = cli("-s", str(write_service("with_main", MAIN_WAITS_FOR_A_TICK)), "-m")
    assert process.finish() == 0, process.log()


@pytest.mark.parametrize(
    ("model_part", "message"),
    [
        (
            "'required_arguments': {'n': int}",
            r"model key 'required_arguments' must be empty for a timer .*'n'",
        ),
        (
            "'optional_arguments': {'why': str}",
            r"model key 'optional_arguments' must be empty for a timer .*'why'",
        ),
        (
            "'required_creation_arguments': {'connection_function': on_tick, 'interval_s': 0}",
            r"creation argument 'interval_s' must be a positive number",
        ),
        (
            "'optional_creation_arguments': {'jitter_s': -1}",
            r"creation argument 'jitter_s' must be a number of seconds >= 0",
        ),
        (
            "'required_creation_arguments': {'connection_function': on_tick}",
            r"missing required creation argument 'interval_s'",
        ),
    ],
)
def test_bad_timer_models_are_start_up_errors(cli, write_service, model_part, message):
    source = (
        "def on_tick(args, to_send, config):\n    pass\n"
        "model = {'connection_type': 'timer', 'required_creation_arguments': "
        "{'connection_function': on_tick, 'interval_s': 1}}\n"
        f"model.update({{{model_part}}})\n"
        "connection_models = {'in': {'tick': model}}\n"
    )
    process = cli("-s", str(write_service("bad_timer", source)))
    assert process.finish() != 0
    assert re.search(r"bad_timer: connection 'tick'.*" + message, process.log()), process.log()
    assert "Traceback" not in process.log()


def test_a_timer_does_not_tick_inline(write_service):
    source = timer_source(0.05) + (
        "\nran = []\ndef main(to_send, config):\n    ran.append('main')\n"
    )
    inline = InlineServices()
    inline.set_main_service("ticker", str(write_service("inline_ticker", source)))
    inline.start()
    module = inline.get_service_module("ticker")
    assert module.ran == ["main"]
    assert next(module.ticks) == 0  # the handler was never called
