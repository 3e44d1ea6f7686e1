"""Benchmark replyer: answers an order with its total (service loop, used by reqrep.py).

Addresses: ``{"in": {"order": {"replyer": "127.0.0.1:0"}}, "out": {}}`` (port 0: any free
port; the ``ready`` line on stderr names the one picked).
"""


def on_order(args, to_send, config):
    return {"order_id": args["order_id"], "total": args["qty"] * args["price"]}


connection_models = {
    "in": {
        "order": {
            "connection_type": "replyer",
            "required_creation_arguments": {"connection_function": on_order},
            "required_arguments": {
                "order_id": str,
                "qty": int,
                "price": float,
                "side": {"buy", "sell"},
            },
            "required_return_arguments": {"order_id": str, "total": float},
        },
    },
    "out": {},
}
