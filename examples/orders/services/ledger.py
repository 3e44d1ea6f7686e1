"""Ledger: keeps positions from published fills (a subscriber) and answers queries."""

from collections import defaultdict
from decimal import Decimal

from service_framework import get_logger

LOG = get_logger()

positions = defaultdict(int)
state = {"fills": 0, "notional": Decimal("0")}


def on_fill(args, to_send, config):
    sign = 1 if args["side"] == "buy" else -1
    positions[args["symbol"]] += sign * args["qty"]
    state["fills"] += 1
    state["notional"] += args["qty"] * args["price"]
    LOG.info("booked %s: %s %s %s", args["order_id"], args["side"], args["qty"], args["symbol"])


def on_positions(args, to_send, config):
    return {"fills": state["fills"], "positions": dict(positions), "notional": state["notional"]}


connection_models = {
    "in": {
        "fills": {
            "connection_type": "subscriber",
            "required_creation_arguments": {"connection_function": on_fill},
            "optional_creation_arguments": {"topic": "fills"},
            "required_arguments": {
                "order_id": str,
                "symbol": str,
                "side": {"buy", "sell"},
                "qty": int,
                "price": Decimal,
            },
        },
        "positions": {
            "connection_type": "replyer",
            "required_creation_arguments": {"connection_function": on_positions},
            "required_return_arguments": {
                "fills": int,
                "positions": {str: int},
                "notional": Decimal,
            },
        },
    }
}
