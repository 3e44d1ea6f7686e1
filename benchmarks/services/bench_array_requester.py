"""Benchmark array requester (main mode, used by ndarray.py): ``warmup`` untimed round
trips of a ``size_bytes`` float64 array, then ``n`` timed ones; writes ``{"n", "seconds",
"rate", "cpu_s"}`` as JSON to ``result_path``.

Addresses: ``{"in": {}, "out": {"array": {"requester": "127.0.0.1:PORT"}}}``.
"""

import json
import time

import numpy as np
from bench_models import array_model

config_model = {
    "required": {"n": int, "result_path": str, "size_bytes": int},
    "optional": {"warmup": int},
}

connection_models = {
    "in": {},
    "out": {
        "array": {
            "connection_type": "requester",
            "optional_creation_arguments": {"timeout_s": 10},
            "required_arguments": array_model(),
            "required_return_arguments": array_model(),
        },
    },
}


def main(to_send, config):
    n = config["n"]
    payload = {"data": np.random.default_rng(1).random(config["size_bytes"] // 8)}
    for _ in range(config.get("warmup", 50)):
        to_send("array", payload)
    perf_counter = time.perf_counter
    cpu_started = time.process_time()
    started = perf_counter()
    for _ in range(n):
        reply = to_send("array", payload)
    seconds = perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    if not np.array_equal(reply["data"], payload["data"]):
        raise RuntimeError("the array came back changed")
    with open(config["result_path"], "w") as f:
        json.dump({"n": n, "seconds": seconds, "rate": n / seconds, "cpu_s": cpu_s}, f)
