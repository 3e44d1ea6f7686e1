"""Specs and payloads of the validation benchmark, shared as source text with the
0.0.20 interpreter (so: plain Python, no imports, no ``__future__`` import)."""

FLAT_REQUIRED = {
    "order_id": str,
    "qty": int,
    "price": float,
    "side": {"buy", "sell"},
    "urgent": bool,
}
FLAT_OPTIONAL = {"note": str}
FLAT_ARGS = {
    "order_id": "ORD-2024-000123",
    "qty": 250,
    "price": 101.25,
    "side": "buy",
    "urgent": False,
    "note": "client 42",
}

NESTED_REQUIRED = {
    "order_id": str,
    "lines": [{"sku": str, "qty": int, "price": float}],
    "fx": {str: float},
}
NESTED_OPTIONAL = {"note": str}
NESTED_ARGS = {
    "order_id": "ORD-2024-000124",
    "lines": [{"sku": f"SKU-{i:05d}", "qty": 1 + i * 3, "price": 9.99 + i * 1.5} for i in range(8)],
    "fx": {"EUR": 1.0, "USD": 1.0843, "GBP": 0.8571, "JPY": 162.31},
    "note": "batch 7",
}

# 0.0.20 reads a *required* literal set as "the value must contain every listed item"
# ('buy' fails {'buy', 'sell'}) and cannot check a scalar against an optional one
# (isinstance TypeError). The only literal-set form both releases read alike is an
# optional key whose value is a collection of allowed strs, so the comparison's flat
# message carries the literal set that way. Nested: the same spec as the wire part.
CMP_FLAT_REQUIRED = {"order_id": str, "qty": int, "price": float, "urgent": bool}
CMP_FLAT_OPTIONAL = {"side": {"buy", "sell"}, "note": str}
CMP_FLAT_ARGS = {
    "order_id": "ORD-2024-000123",
    "qty": 250,
    "price": 101.25,
    "side": {"buy"},
    "urgent": False,
    "note": "client 42",
}
CMP_CASES = {
    "flat": (CMP_FLAT_ARGS, CMP_FLAT_REQUIRED, CMP_FLAT_OPTIONAL),
    "nested": (NESTED_ARGS, NESTED_REQUIRED, NESTED_OPTIONAL),
}
