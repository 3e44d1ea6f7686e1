"""The message models both sides of each socket benchmark declare (one definition, so
the two sides cannot drift apart). Imported by the services in this folder, which the
framework puts on ``sys.path`` when it loads them."""

# reqrep.py: bench_requester -> bench_replyer
ORDER = {"order_id": str, "qty": int, "price": float, "side": {"buy", "sell"}}
ORDER_REPLY = {"order_id": str, "total": float}

# pubsub.py: bench_publisher -> bench_subscriber
TICK = {
    "seq": int,
    "order_id": str,
    "qty": int,
    "price": float,
    "side": {"buy", "sell"},
    "phase": {"warmup", "data", "end"},
}
# ndarray.py: bench_array_requester -> bench_array_replyer. Imports numpy only when a
# service asks for this model.


def array_model() -> dict[str, object]:
    import numpy

    return {"data": numpy.ndarray}
