"""Benchmark publisher (main mode, used by pubsub.py).

1. Publishes ``phase='warmup'`` messages every 2 ms until the subscriber has written
   ``ready_path`` (so it is connected and handling before anything is timed).
2. Publishes ``n`` ``phase='data'`` messages as fast as ``to_send`` allows.
3. Writes ``{"sent", "seconds", "rate", "cpu_s"}`` to ``result_path``, then publishes
   ``phase='end'`` markers every 10 ms until the subscriber has written ``done_path``
   (a single marker could be dropped at the high-water mark).

Addresses: ``{"in": {}, "out": {"ticks": {"publisher": "127.0.0.1:0"}}}``. ``hwm`` sets
``sndhwm``/``rcvhwm`` of the PUB socket (via ``setup_connections``).
"""

import json
import os
import time

from bench_models import TICK

config_model = {
    "required": {
        "n": int,
        "hwm": int,
        "ready_path": str,
        "done_path": str,
        "result_path": str,
    },
    "optional": {"timeout_s": float},
}

connection_models = {
    "in": {},
    "out": {
        "ticks": {
            "connection_type": "publisher",
            "required_arguments": TICK,
        },
    },
}


def setup_connections(config):
    hwm = config["hwm"]
    return {
        "ticks": {
            # Readiness is observed (ready_path), so no slow-joiner pause is needed.
            "wait_after_creation_s": 0,
            "socket_options": {"sndhwm": hwm, "rcvhwm": hwm},
        }
    }


def _wait_for(path, deadline, to_send, phase, pause_s):
    message = {
        "seq": -1,
        "order_id": "ORD-000123",
        "qty": 3,
        "price": 101.25,
        "side": "buy",
        "phase": phase,
    }
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear (phase {phase})")
        to_send("ticks", message)
        time.sleep(pause_s)


def main(to_send, config):
    timeout_s = config.get("timeout_s", 30.0)
    n = config["n"]
    _wait_for(config["ready_path"], time.monotonic() + timeout_s, to_send, "warmup", 0.002)
    perf_counter = time.perf_counter
    cpu_started = time.process_time()
    started = perf_counter()
    for seq in range(n):
        to_send(
            "ticks",
            {
                "seq": seq,
                "order_id": "ORD-000123",
                "qty": 3,
                "price": 101.25,
                "side": "buy",
                "phase": "data",
            },
        )
    seconds = perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    with open(config["result_path"], "w") as f:
        json.dump({"sent": n, "seconds": seconds, "rate": n / seconds, "cpu_s": cpu_s}, f)
    _wait_for(config["done_path"], time.monotonic() + timeout_s, to_send, "end", 0.01)
