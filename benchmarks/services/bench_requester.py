"""Benchmark requester (main mode, used by reqrep.py): ``warmup`` untimed round trips,
then ``n`` timed ones; writes ``{"n", "seconds", "rate", "cpu_s"}`` as JSON to
``result_path`` (``cpu_s``: this process's CPU time during the timed loop).

Addresses: ``{"in": {}, "out": {"order": {"requester": "127.0.0.1:PORT"}}}``.
"""

import json
import time

from bench_models import ORDER, ORDER_REPLY

config_model = {
    "required": {"n": int, "result_path": str},
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


def main(to_send, config):
    n = config["n"]
    for _ in range(config.get("warmup", 1000)):
        to_send("order", PAYLOAD)
    perf_counter = time.perf_counter
    cpu_started = time.process_time()
    started = perf_counter()
    for _ in range(n):
        reply = to_send("order", PAYLOAD)
    seconds = perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    if reply != {"order_id": "ORD-000123", "total": 303.75}:
        raise RuntimeError(f"unexpected reply {reply!r}")
    with open(config["result_path"], "w") as f:
        json.dump({"n": n, "seconds": seconds, "rate": n / seconds, "cpu_s": cpu_s}, f)
