"""Trader (main mode): quotes and places orders, then checks the ledger agrees."""

import time
from decimal import Decimal

from service_framework import RemoteError, ValidationError, get_logger

LOG = get_logger()

ORDERS = [
    ("BTC-USD", "buy", 2),
    ("ETH-USD", "sell", 5),
    ("SOL-USD", "buy", 40),
    ("BTC-USD", "sell", 1),
    ("ETH-USD", "buy", 3),
]


def main(to_send, config):
    placed = []
    for n, (symbol, side, qty) in enumerate(ORDERS[: config["orders"]], start=1):
        quote = to_send("quote", {"symbol": symbol, "side": side})
        order = {
            "order_id": f"T{n:03d}",
            "symbol": symbol,
            "side": side,
            "qty": qty,
            "limit": quote["price"],
        }
        result = to_send("place", order)
        placed.append(result)
        status = f"{result['status']} at {result['price']}"
        print(f"{result['order_id']}  {side:4} {qty:>3} {symbol}  {status}")

    # Contract bugs are caught before anything reaches a socket...
    try:
        bad = {
            "order_id": "T999",
            "symbol": "BTC-USD",
            "side": "hold",
            "qty": 1,
            "limit": Decimal(1),
        }
        to_send("place", bad)
    except ValidationError as error:
        print(f"refused locally: {error}")
    # ...and a failure on the far side comes back as an exception, not a hang.
    try:
        to_send("quote", {"symbol": "DOGE-USD", "side": "buy"})
    except RemoteError as error:
        print(f"pricing answered with an error: {error.remote_type} {error.remote_message}")

    # Fills travel by publish/subscribe, so the ledger may be a moment behind.
    deadline = time.monotonic() + 5
    book = to_send("positions", {})
    while book["fills"] < len(placed) and time.monotonic() < deadline:
        time.sleep(0.05)
        book = to_send("positions", {})
    expected = sum(
        r["price"] * qty for r, (_, _, qty) in zip(placed, ORDERS[: len(placed)], strict=True)
    )
    print(f"ledger: {book['fills']} fills, positions {book['positions']}")
    print(f"ledger notional {book['notional']} (expected {expected})")
    if book["fills"] != len(placed) or book["notional"] != expected:
        raise SystemExit("ledger does not match the orders placed")


config_model = {"optional": {"orders": int}}


def setup_config(config):
    return {"orders": config.get("orders", len(ORDERS))}


connection_models = {
    "out": {
        "quote": {
            "connection_type": "requester",
            "optional_creation_arguments": {"timeout_s": 5, "retries": 1},
            "required_arguments": {"symbol": str, "side": {"buy", "sell"}},
            "required_return_arguments": {"symbol": str, "price": Decimal},
        },
        "place": {
            "connection_type": "requester",
            "optional_creation_arguments": {"timeout_s": 5},
            "required_arguments": {
                "order_id": str,
                "symbol": str,
                "side": {"buy", "sell"},
                "qty": int,
                "limit": Decimal,
            },
            "required_return_arguments": {"order_id": str, "status": str, "price": Decimal},
        },
        "positions": {
            "connection_type": "requester",
            "optional_creation_arguments": {"timeout_s": 5},
            "required_return_arguments": {
                "fills": int,
                "positions": {str: int},
                "notional": Decimal,
            },
        },
    }
}
