"""Pricing: quotes a price for a symbol and side (a replyer)."""

from decimal import Decimal

from service_framework import get_logger

LOG = get_logger()

MID_PRICES = {
    "BTC-USD": Decimal("64000.00"),
    "ETH-USD": Decimal("3200.00"),
    "SOL-USD": Decimal("145.50"),
}


def setup_config(config):
    return {"spread_bps": config.get("spread_bps", 5)}


def on_quote(args, to_send, config):
    mid = MID_PRICES[args["symbol"]]  # an unknown symbol reaches the caller as RemoteError
    spread = mid * config["spread_bps"] / 10_000
    price = mid + spread if args["side"] == "buy" else mid - spread
    LOG.info("quote %s %s at %s", args["side"], args["symbol"], price)
    return {"symbol": args["symbol"], "price": price.quantize(Decimal("0.01"))}


config_model = {"optional": {"spread_bps": int}}

connection_models = {
    "in": {
        "quote": {
            "connection_type": "replyer",
            "required_creation_arguments": {"connection_function": on_quote},
            "required_arguments": {"symbol": str, "side": {"buy", "sell"}},
            "required_return_arguments": {"symbol": str, "price": Decimal},
        }
    }
}
