"""Benchmark array replyer: sends back the array it got (service loop, used by ndarray.py).

Addresses: ``{"in": {"array": {"replyer": "127.0.0.1:0"}}, "out": {}}``.
"""

from bench_models import array_model


def on_array(args, to_send, config):
    return {"data": args["data"]}


connection_models = {
    "in": {
        "array": {
            "connection_type": "replyer",
            "required_creation_arguments": {"connection_function": on_array},
            "required_arguments": array_model(),
            "required_return_arguments": array_model(),
        },
    },
    "out": {},
}
