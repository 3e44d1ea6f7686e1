"""The per-message path stays short: the Python functions one request runs on each side,
counted with a profile hook (deterministic: calls are counted, not timed).

Every Python function a message runs is a function object, its code and its cells to
fetch, and with many busy processes on few cores they are fetched cache-cold after each
blocking receive (``benchmarks/coldpath.py``). These bounds hold the path to what it is.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import types
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from service_framework.generated import Fragment
from service_framework.observe import ConnectionStats
from service_framework.pipeline import Entry, Receiver, compile_delivery

REPLYER = """
def on_order(args, to_send, config):
    return {"order_id": args["order_id"], "total": args["qty"] * args["price"]}

ORDER = {"order_id": str, "qty": int, "price": float, "side": {"buy", "sell"}}
connection_models = {
    "in": {
        "order": {
            "connection_type": "replyer",
            "required_creation_arguments": {"connection_function": on_order},
            "required_arguments": ORDER,
            "required_return_arguments": {"order_id": str, "total": float},
        }
    },
    "out": {},
}
"""
ORDER = {"order_id": str, "qty": int, "price": float, "side": {"buy", "sell"}}
PAYLOAD = {"order_id": "ORD-1", "qty": 3, "price": 2.5, "side": "buy"}
N = 50


def per_message(counts: collections.Counter[tuple[bool, str]], main: bool) -> list[str]:
    """The functions of one side that ran once (or more) per request: the others ran at
    start-up or on an idle wake-up."""
    return sorted(name for (side, name), n in counts.items() if side == main and n >= N)


def test_a_request_runs_two_functions_in_the_caller_and_one_besides_the_handler_in_the_replyer(
    write_service: Callable[[str, str], Any], run_service: Any, client: Any
) -> None:
    counts: collections.Counter[tuple[bool, str]] = collections.Counter()
    counting = threading.Event()
    main_thread = threading.main_thread()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and counting.is_set():
            counts[threading.current_thread() is main_thread, frame.f_code.co_name] += 1

    threading.setprofile(profile)  # the replyer's threads start with it
    try:
        replyer = run_service(
            write_service("path_replyer", REPLYER),
            addresses={"in": {"order": {"replyer": "127.0.0.1:0"}}, "out": {}},
        )
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
    caller = client(
        {
            "in": {},
            "out": {
                "order": {
                    "connection_type": "requester",
                    "required_arguments": ORDER,
                    "required_return_arguments": {"order_id": str, "total": float},
                }
            },
        },
        {"in": {}, "out": {"order": {"requester": replyer.address("order")}}},
    )
    to_send = caller.to_send
    for _ in range(N):  # warm: connected, everything built
        assert to_send("order", PAYLOAD) == {"order_id": "ORD-1", "total": 7.5}
    sys.setprofile(profile)
    counting.set()
    try:
        for _ in range(N):
            to_send("order", PAYLOAD)
    finally:
        counting.clear()
        sys.setprofile(None)

    # to_send and the generated request function: the args check, the envelope's
    # encoding, the new workflow id, the reply's decoding and its conversion to a dict
    # are written into it or run in C.
    assert per_message(counts, main=True) == ["request", "to_send"]
    # The generated delivery - the size cap and decode, the flow scope, the return
    # check, the reply's encoding and its send - and the handler.
    assert per_message(counts, main=False) == ["deliver", "on_order"]


def test_an_entry_cannot_replace_the_pipelines_own_names() -> None:
    receiver = Receiver(
        "svc",
        "conn",
        lambda args, to_send, config: None,
        None,
        {},
        ConnectionStats(),
        logging.getLogger("test"),
    )

    def as_message(frame: Any) -> Any:
        return types.SimpleNamespace(args=frame, workflow_id="w")

    call = Fragment.call("message", as_message, "frame")
    decode = Fragment((*call.lines, "args = message.args"), call.names)  # and the args
    entry = Entry(decode, lambda frame: "w", names={"handler": print})
    with pytest.raises(ValueError, match=r"must not replace the pipeline's: \['handler'\]"):
        compile_delivery(receiver, answer=None, refuse=lambda *a: None, scope=None, entry=entry)
    ok = Entry(decode, lambda frame: "w", names={"unpack": print})
    deliver = compile_delivery(receiver, answer=None, refuse=lambda *a: None, scope=None, entry=ok)
    assert deliver.deliver({"a": 1}) is None
    assert receiver.observer.handled == 1  # type: ignore[attr-defined]
