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


def _touch(path):
    with open(path + ".tmp", "w"):
        pass
    os.replace(path + ".tmp", path)


def _handler():
    """The handler, its counters in a closure: the nearest a handler has to the bare
    loop's locals (module globals cost it about 20 ns a message more, a dict of state
    twice the bare loop's work - the handler's choice, not the framework's cost)."""
    count, first, last, last_seq, cpu_first = 0, 0.0, 0.0, -1, 0.0
    ready, done = False, False
    perf_counter = time.perf_counter

    def on_tick(args, to_send, config):
        nonlocal count, first, last, last_seq, cpu_first, ready, done
        phase = args["phase"]
        if phase == "data":
            now = perf_counter()
            if not count:
                first = now
                cpu_first = time.process_time()
            count += 1
            last = now
            last_seq = args["seq"]
        elif phase == "warmup":
            if not ready:
                ready = True
                _touch(config["ready_path"])
        elif not done:
            done = True
            cpu_s = time.process_time() - cpu_first
            seconds = last - first
            with open(config["result_path"], "w") as f:
                json.dump(
                    {
                        "count": count,
                        "seconds": seconds,
                        "rate": (count - 1) / seconds if seconds > 0 else 0.0,
                        "last_seq": last_seq,
                        "cpu_s": cpu_s,
                    },
                    f,
                )
            _touch(config["done_path"])

    return on_tick


on_tick = _handler()


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
