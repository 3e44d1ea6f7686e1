"""Benchmark replyer (used by inline.py): the handler being measured."""


def on_request(args, to_send, config):
    return {"order_id": args["order_id"], "total": args["qty"] * args["price"]}


connection_models = {
    "in": {
        "reply": {
            "connection_type": "replyer",
            "required_creation_arguments": {"connection_function": on_request},
            "required_arguments": {"order_id": str, "qty": int, "price": float},
            "required_return_arguments": {"order_id": str, "total": float},
        },
    },
}
