"""Order router: executes orders on the (simulated) exchange and publishes each fill."""

import itertools
from decimal import Decimal

from service_framework import get_logger

LOG = get_logger()


class SimulatedExchange:
    """Stands in for an exchange client library; fills at the limit price."""

    def __init__(self):
        self._ids = itertools.count(1)

    def execute(self, symbol, side, qty, limit):
        return {"exchange_id": f"X{next(self._ids):05d}", "price": limit}


exchange = SimulatedExchange()


def on_place(args, to_send, config):
    execution = to_send("execute", {k: args[k] for k in ("symbol", "side", "qty", "limit")})
    fill = {
        "order_id": args["order_id"],
        "symbol": args["symbol"],
        "side": args["side"],
        "qty": args["qty"],
        "price": execution["price"],
    }
    to_send("fills", fill)
    LOG.info("filled %s as %s", args["order_id"], execution["exchange_id"])
    return {"order_id": args["order_id"], "status": "filled", "price": execution["price"]}


ORDER = {
    "order_id": str,
    "symbol": str,
    "side": {"buy", "sell"},
    "qty": int,
    "limit": Decimal,
}
FILL = {"order_id": str, "symbol": str, "side": {"buy", "sell"}, "qty": int, "price": Decimal}

connection_models = {
    "in": {
        "place": {
            "connection_type": "replyer",
            "required_creation_arguments": {"connection_function": on_place},
            "required_arguments": ORDER,
            "required_return_arguments": {"order_id": str, "status": str, "price": Decimal},
        }
    },
    "out": {
        "execute": {
            "connection_type": "external_target",
            "required_creation_arguments": {"target": "exchange.execute"},
            "required_arguments": {"symbol": str, "side": str, "qty": int, "limit": Decimal},
            "required_return_arguments": {"exchange_id": str, "price": Decimal},
        },
        "fills": {
            "connection_type": "publisher",
            "optional_creation_arguments": {"topic": "fills"},
            "required_arguments": FILL,
        },
    },
}
