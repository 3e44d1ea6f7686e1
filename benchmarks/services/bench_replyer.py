"""Benchmark replyer: answers an order with its total (service loop, used by reqrep.py).

Addresses: ``{"in": {"order": {"replyer": "127.0.0.1:0"}}, "out": {}}`` (port 0: any free
port; the ``ready`` line on stderr names the one picked).
"""

from bench_models import ORDER, ORDER_REPLY


def on_order(args, to_send, config):
    return {"order_id": args["order_id"], "total": args["qty"] * args["price"]}


connection_models = {
    "in": {
        "order": {
            "connection_type": "replyer",
            "required_creation_arguments": {"connection_function": on_order},
            "required_arguments": ORDER,
            "required_return_arguments": ORDER_REPLY,
        },
    },
    "out": {},
}
