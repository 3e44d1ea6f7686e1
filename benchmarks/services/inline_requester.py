"""Benchmark requester (used by inline.py): ``main`` times ``N_CALLS`` to_send calls
and returns the elapsed ``perf_counter_ns``."""

from time import perf_counter_ns

N_CALLS = 1
ARGS = {"order_id": "ORD-2024-000123", "qty": 250, "price": 101.25}
LAST_REPLY = None

connection_models = {
    "out": {
        "request": {
            "connection_type": "requester",
            "required_arguments": {"order_id": str, "qty": int, "price": float},
            "required_return_arguments": {"order_id": str, "total": float},
        },
    },
}


def main(to_send, config):
    global LAST_REPLY
    args = ARGS
    reply = None
    t0 = perf_counter_ns()
    for _ in range(N_CALLS):
        reply = to_send("request", args)
    elapsed = perf_counter_ns() - t0
    LAST_REPLY = reply
    return elapsed
