"""Benchmark subscriber (service loop, used by pubsub.py).

The handler writes ``ready_path`` on the first ``warmup`` message; counts ``data``
messages and stamps the first and the last with ``time.perf_counter()``; on the first
``end`` message writes ``{"count", "seconds", "rate", "last_seq", "cpu_s"}`` to
``result_path`` and then creates ``done_path``. ``cpu_s`` is this process's CPU time from
the first ``data`` message to the ``end`` marker.

Addresses: ``{"in": {"ticks": {"subscriber": "127.0.0.1:PORT"}}, "out": {}}``.
"""

import json
import os
import time

from bench_models import TICK

config_model = {
    "required": {"hwm": int, "ready_path": str, "done_path": str, "result_path": str},
}

_state = {
    "count": 0,
    "first": 0.0,
    "last": 0.0,
    "last_seq": -1,
    "cpu_first": 0.0,
    "ready": False,
    "done": False,
}
_perf_counter = time.perf_counter


def _touch(path):
    with open(path + ".tmp", "w"):
        pass
    os.replace(path + ".tmp", path)


def on_tick(args, to_send, config):
    state = _state
    phase = args["phase"]
    if phase == "data":
        now = _perf_counter()
        if not state["count"]:
            state["first"] = now
            state["cpu_first"] = time.process_time()
        state["count"] += 1
        state["last"] = now
        state["last_seq"] = args["seq"]
    elif phase == "warmup":
        if not state["ready"]:
            state["ready"] = True
            _touch(config["ready_path"])
    elif not state["done"]:
        state["done"] = True
        cpu_s = time.process_time() - state["cpu_first"]
        count, seconds = state["count"], state["last"] - state["first"]
        with open(config["result_path"], "w") as f:
            json.dump(
                {
                    "count": count,
                    "seconds": seconds,
                    "rate": (count - 1) / seconds if seconds > 0 else 0.0,
                    "last_seq": state["last_seq"],
                    "cpu_s": cpu_s,
                },
                f,
            )
        _touch(config["done_path"])


connection_models = {
    "in": {
        "ticks": {
            "connection_type": "subscriber",
            "required_creation_arguments": {"connection_function": on_tick},
            "required_arguments": TICK,
        },
    },
    "out": {},
}


def setup_connections(config):
    hwm = config["hwm"]
    return {"ticks": {"socket_options": {"sndhwm": hwm, "rcvhwm": hwm}}}
