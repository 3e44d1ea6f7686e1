"""Benchmark load requester (main mode, used by reqrep_clients.py): one of many clients
of one replyer, timed in windows that every client shares.

``warmup`` untimed round trips, then ``ready_path`` is created. Then, for each window
``r`` in 1..``windows``: wait for ``<go_prefix><r>`` (it holds the window's start, a
``time.monotonic()`` time, and its length in seconds), make round trips from the start
until the window ends, and write ``{"count", "seconds", "rate", "cpu_s"}`` as JSON to
``<result_prefix><r>.json`` (``cpu_s``: this process's CPU time, all threads, over the
window). Every client's window is the same span of time, so the sum of the clients'
rates is the replyer's throughput with all of them at once.

Addresses: ``{"in": {}, "out": {"order": {"requester": "127.0.0.1:PORT"}}}``.
"""

import json
import os
import time

from bench_models import ORDER, ORDER_REPLY

config_model = {
    "required": {
        "windows": int,
        "ready_path": str,
        "go_prefix": str,
        "result_prefix": str,
    },
    "optional": {"warmup": int},
}

connection_models = {
    "in": {},
    "out": {
        "order": {
            "connection_type": "requester",
            "optional_creation_arguments": {"timeout_s": 10},
            "required_arguments": ORDER,
            "required_return_arguments": ORDER_REPLY,
        },
    },
}

PAYLOAD = {"order_id": "ORD-000123", "qty": 3, "price": 101.25, "side": "buy"}
EXPECTED = {"order_id": "ORD-000123", "total": 303.75}
GO_POLL_S = 0.01  # an idle client looks for its next window this often
GO_TIMEOUT_S = 600.0


def _touch(path):
    with open(path + ".tmp", "w"):
        pass
    os.replace(path + ".tmp", path)


def _window(go_path):
    deadline = time.monotonic() + GO_TIMEOUT_S
    while not os.path.exists(go_path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{go_path} did not appear")
        time.sleep(GO_POLL_S)
    with open(go_path) as f:
        start, length = map(float, f.read().split())
    return start, length


def main(to_send, config):
    for _ in range(config.get("warmup", 200)):
        reply = to_send("order", PAYLOAD)
    _touch(config["ready_path"])
    now = time.monotonic
    for window in range(1, config["windows"] + 1):
        start, length = _window(f"{config['go_prefix']}{window}")
        time.sleep(max(0.0, start - now()))
        end = start + length
        count, cpu_started = 0, time.process_time()
        while now() < end:
            reply = to_send("order", PAYLOAD)
            count += 1
        seconds, cpu_s = now() - start, time.process_time() - cpu_started
        if count and reply != EXPECTED:
            raise RuntimeError(f"unexpected reply {reply!r}")
        result = f"{config['result_prefix']}{window}.json"
        with open(result + ".tmp", "w") as f:
            json.dump(
                {"count": count, "seconds": seconds, "rate": count / seconds, "cpu_s": cpu_s}, f
            )
        os.replace(result + ".tmp", result)  # the benchmark reads it once it exists
