"""One behaviour suite, run over real sockets and inline: same results, same errors.

A contract bug found inline must be the one a deployment would hit, so every case here
asserts the same outcome - return value, exception type and message - in both modes.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import types
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from conftest import after_markers, sync, wait_until
from service_framework import InlineServices, RemoteError, ValidationError
from service_framework.workflow import current_workflow_id

SERVER = """
import queue
received = queue.Queue()
fills = queue.Queue()

def on_quote(args, to_send, config):
    received.put(args)
    if args['symbol'] == 'FAIL':
        raise LookupError('no such symbol')
    if args['symbol'] == 'BADRETURN':
        return {'price': 'free'}
    if args['symbol'] == 'NONE':
        return None
    if args['symbol'] == 'UNPRINTABLE':
        raise Unprintable()
    return {'price': args['qty'] * Decimal('1.5'), 'tags': ('a', 1)}

class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError('no text for this one')

def on_measure(args, to_send, config):
    # What the handler got, and a reply with an int where the client declares float.
    return {'types': [type(args['x']).__name__, type(args['d']).__name__], 'n': 3}

def on_fill(args, to_send, config):
    fills.put(args)
    if args['n'] < 0:
        raise RuntimeError('subscriber failure')

work = queue.Queue()

def on_ack(args, to_send, config):
    return None  # allowed: the return model has no required keys

def on_work(args, to_send, config):
    work.put(args)
    if args['n'] < 0:
        raise RuntimeError('puller failure')
    return 'ignored: a puller never replies'

from decimal import Decimal
connection_models = {
    'in': {
        'quote': {
            'connection_type': 'replyer',
            'required_creation_arguments': {'connection_function': on_quote},
            'required_arguments': {'symbol': str, 'qty': int},
            'required_return_arguments': {'price': Decimal},
            'optional_return_arguments': {'tags': (str, int)},
        },
        'measure': {
            'connection_type': 'replyer',
            'required_creation_arguments': {'connection_function': on_measure},
            'required_arguments': {'x': float, 'd': Decimal},
            'required_return_arguments': {'types': [str], 'n': int},
        },
        'fills': {
            'connection_type': 'subscriber',
            'required_creation_arguments': {'connection_function': on_fill},
            'optional_creation_arguments': {'topic': 'fills', 'is_binder': True},
            'required_arguments': {'n': int},
        },
        'ack': {
            'connection_type': 'replyer',
            'required_creation_arguments': {'connection_function': on_ack},
            'required_arguments': {'n': int},
            'optional_return_arguments': {'note': str},
        },
        'work': {
            'connection_type': 'puller',
            'required_creation_arguments': {'connection_function': on_work},
            'required_arguments': {'n': int},
        },
    }
}
"""

# The client's models are deliberately looser than the server's in places: extra
# optional keys the server does not accept, a wider return model.
CLIENT_MODELS: dict[str, Any] = {
    "out": {
        "quote": {
            "connection_type": "requester",
            "optional_creation_arguments": {"timeout_s": 5},
            "required_arguments": {"symbol": str, "qty": int},
            "optional_arguments": {"note": str},
            "required_return_arguments": {"price": Decimal},
            "optional_return_arguments": {"tags": (str, int), "unused": str},
        },
        "narrow": {
            "connection_type": "requester",
            "optional_creation_arguments": {"timeout_s": 5},
            "required_arguments": {"symbol": str, "qty": int},
            "required_return_arguments": {"price": int},
        },
        "measure": {
            "connection_type": "requester",
            "optional_creation_arguments": {"timeout_s": 5},
            "required_arguments": {"x": int, "d": int},
            "required_return_arguments": {"types": [str], "n": float},
        },
        "fills": {
            "connection_type": "publisher",
            "optional_creation_arguments": {
                "topic": "fills",
                "is_x_pub": True,
                "wait_after_creation_s": 0,
            },
            "required_arguments": {"n": int},
        },
        "ack": {
            "connection_type": "requester",
            "optional_creation_arguments": {"timeout_s": 5},
            "required_arguments": {"n": int},
            "optional_return_arguments": {"note": str},
        },
        "work": {
            "connection_type": "pusher",
            "optional_creation_arguments": {"timeout_s": 5},
            "required_arguments": {"n": int},
            "optional_arguments": {"note": str},
        },
    }
}


class Harness:
    """``send(connection, args)`` from the client; ``server`` is the server module,
    ``stats()`` its connections' counters, ``lines`` what the server logged (each line's
    text and the workflow id it was logged under)."""

    send: Callable[[str, Any], Any]
    server: Any
    mode: str
    stats: Callable[[], dict[str, Any]]
    lines: list[tuple[str, str | None]]


class _Lines(logging.Handler):
    """The server's log lines: text and the workflow id current when each was logged
    (the serving thread's over sockets, the calling thread's inline)."""

    def __init__(self, lines: list[tuple[str, str | None]]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), current_workflow_id()))


SYNC_MARKER = {"n": 0}  # published until the subscription is in place (sockets mode)


@pytest.fixture(params=["sockets", "inline"])
def harness(request, write_service, run_service, client) -> Iterator[Harness]:
    harness = Harness()
    harness.mode = request.param
    harness.lines = []
    lines = _Lines(harness.lines)
    server_log = logging.getLogger("service_framework.service.server")
    server_log.addHandler(lines)
    request.addfinalizer(lambda: server_log.removeHandler(lines))
    server_path = write_service("server", SERVER)
    if request.param == "sockets":
        server = run_service(
            server_path,
            addresses={
                "in": {
                    "quote": {"replyer": "127.0.0.1:0"},
                    "measure": {"replyer": "127.0.0.1:0"},
                    "fills": {"subscriber": "127.0.0.1:0"},
                    "work": {"puller": "127.0.0.1:0"},
                    "ack": {"replyer": "127.0.0.1:0"},
                }
            },
        )
        runtime = client(
            CLIENT_MODELS,
            {
                "out": {
                    "quote": {"requester": server.address("quote")},
                    "narrow": {"requester": server.address("quote")},
                    "measure": {"requester": server.address("measure")},
                    "fills": {"publisher": server.address("fills")},
                    "work": {"pusher": server.address("work")},
                    "ack": {"requester": server.address("ack")},
                }
            },
        )
        harness.send = runtime.to_send  # type: ignore[assignment]
        harness.server = server.module
        harness.stats = lambda: {
            name: dataclasses.asdict(stats) for name, stats in server.runtime.stats().items()
        }
        sync(lambda args: runtime.to_send("fills", args), server.module.fills, SYNC_MARKER)
        yield harness
        return
    holder: dict[str, Any] = {}
    driver = types.ModuleType("driver")
    driver.connection_models = CLIENT_MODELS  # type: ignore[attr-defined]
    driver.main = lambda to_send, config: holder.update(send=to_send)  # type: ignore[attr-defined]
    services = InlineServices(console_loglevel="WARNING")
    services.set_main_service_by_module("client", driver)
    services.add_service("server", str(server_path))
    services.add_relation("client", "quote", "server", "quote")
    services.add_relation("client", "narrow", "server", "quote")
    services.add_relation("client", "measure", "server", "measure")
    services.add_relation("client", "fills", "server", "fills")
    services.add_relation("client", "work", "server", "work")
    services.add_relation("client", "ack", "server", "ack")
    services.start()
    harness.send = holder["send"]
    harness.server = services.get_service_module("server")
    harness.stats = lambda: services.stats()["server"]
    yield harness


def outcome(harness: Harness, connection: str, args: Any) -> tuple[str, Any]:
    """What a call produced, in a form that compares across modes: for a remote error,
    its type, message, whole text (the workflow id made a placeholder) and the
    connection it names; the server's log line about it must carry the same id."""
    try:
        return ("ok", harness.send(connection, args))
    except RemoteError as error:
        assert error.workflow_id
        assert any(wid == error.workflow_id for _, wid in harness.lines), harness.lines
        text = str(error).replace(error.workflow_id, "<id>")
        return ("remote", (error.remote_type, error.remote_message, text, error.connection))
    except ValidationError as error:
        return ("local", str(error))


def remote(connection: str, remote_type: str, message: str) -> tuple[str, Any]:
    """A remote error as the caller sees it: naming the caller's own connection."""
    where = f"client: connection '{connection}'"
    text = f"{where}: remote {remote_type}: {message} [workflow <id>]"
    return ("remote", (remote_type, message, text, where))


CASES: list[tuple[str, str, Any, tuple[str, Any]]] = [
    (
        # A handler's exception whose str() fails still gets an error reply.
        "handler error without text",
        "quote",
        {"symbol": "UNPRINTABLE", "qty": 1},
        remote("quote", "Unprintable", "<Unprintable whose str() failed>"),
    ),
    (
        "round trip with types restored",
        "quote",
        {"symbol": "BTC", "qty": 2},
        ("ok", {"price": Decimal("3.0"), "tags": ("a", 1)}),
    ),
    (
        "handler returning None with an optional-only return model is not enough",
        "quote",
        {"symbol": "NONE", "qty": 1},
        remote(
            "quote",
            "ValidationError",
            "server: quote.return_args: expected dict with keys 'price', 'tags', got None at $",
        ),
    ),
    (
        "a None return is an empty reply where the return model requires nothing",
        "ack",
        {"n": 1},
        ("ok", {}),
    ),
    (
        "sender validates first",
        "quote",
        {"symbol": "BTC", "qty": "2"},
        ("local", "client: quote.args: expected int, got str at $.qty"),
    ),
    (
        "receiver validates what the sender allowed",
        "quote",
        {"symbol": "BTC", "qty": 1, "note": "hi"},
        remote(
            "quote",
            "ValidationError",
            "server: quote.args: unexpected key 'note' at $ (allowed: 'symbol', 'qty')",
        ),
    ),
    (
        "handler error",
        "quote",
        {"symbol": "FAIL", "qty": 1},
        remote("quote", "LookupError", "no such symbol"),
    ),
    (
        "handler return validated by the server",
        "quote",
        {"symbol": "BADRETURN", "qty": 1},
        remote(
            "quote",
            "ValidationError",
            "server: quote.return_args: expected Decimal, got str at $.price",
        ),
    ),
    (
        # A value the receiver's check refuses is judged as the wire would judge it, so
        # "got" names the type it travels as (a Decimal travels as a str) inline too.
        "reply validated by the client",
        "narrow",
        {"symbol": "BTC", "qty": 2},
        ("local", "client: narrow.return_args: expected int, got str at $.price"),
    ),
]


@pytest.mark.parametrize(
    ("label", "connection", "args", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_request_reply_contract(harness: Harness, label, connection, args, expected) -> None:
    assert outcome(harness, connection, args) == expected


def test_numbers_are_converted_losslessly_as_the_wire_does(harness: Harness) -> None:
    """An int where the receiver declares float or Decimal arrives as that type - over
    the wire, where msgpack carries a number, and inline alike - both ways."""
    reply = harness.send("measure", {"x": 2, "d": 7})
    assert reply == {"types": ["float", "Decimal"], "n": 3.0}
    assert type(reply["n"]) is float


def test_publish_contract(harness: Harness) -> None:
    assert harness.send("fills", {"n": -1}) is None  # the subscriber's failure stays there
    assert harness.send("fills", {"n": 5}) is None
    with pytest.raises(ValidationError, match=r"client: fills\.args: expected int, got str"):
        harness.send("fills", {"n": "5"})
    got = [after_markers(harness.server.fills, SYNC_MARKER)["n"] for _ in range(2)]
    assert got == [-1, 5]
    failure = [(text, wid) for text, wid in harness.lines if "raised" in text]
    assert [text for text, _ in failure] == [
        "server: handler of connection 'fills' raised RuntimeError: subscriber failure"
    ]
    assert failure[0][1] not in (None, "-")


def test_push_contract(harness: Harness) -> None:
    """A puller's failure, and a message its model refuses, stay with it - logged the
    same way, under the message's workflow id - and the pusher carries on; what its
    handler returns is ignored. Counted alike in both modes."""
    assert harness.send("work", {"n": -1}) is None
    assert harness.send("work", {"n": 1, "note": "the puller allows no note"}) is None
    assert harness.send("work", {"n": 2}) is None
    with pytest.raises(ValidationError, match=r"client: work\.args: expected int, got str"):
        harness.send("work", {"n": "5"})
    got = [harness.server.work.get(timeout=5)["n"] for _ in range(2)]
    assert got == [-1, 2]
    assert wait_until(lambda: harness.stats()["work"]["handled"] == 1, timeout=5)
    counts = {key: harness.stats()["work"][key] for key in ("received", "handled", "failed")}
    assert counts == {"received": 3, "handled": 1, "failed": 1}
    assert harness.stats()["work"]["rejected"] == 1
    failure = [(text, wid) for text, wid in harness.lines if "raised" in text]
    assert [text for text, _ in failure] == [
        "server: handler of connection 'work' raised RuntimeError: puller failure"
    ]
    assert failure[0][1] not in (None, "-")
    rejection = [text for text, _ in harness.lines if "rejected" in text]
    assert len(rejection) == 1
    assert re.fullmatch(
        r"server: connection 'work' rejected a message \[[^\]]+\]: server: work\.args: "
        r"unexpected key 'note' at \$ \(allowed: 'n'\)",
        rejection[0],
    ), rejection


def test_handled_failed_and_rejected_are_counted_alike(harness: Harness) -> None:
    for args in (
        {"symbol": "BTC", "qty": 1},
        {"symbol": "FAIL", "qty": 1},
        {"symbol": "BTC", "qty": 1, "note": "refused by the server"},
    ):
        outcome(harness, "quote", args)
    stats = harness.stats()["quote"]
    assert {key: stats[key] for key in ("received", "handled", "failed", "rejected")} == {
        "received": 3,
        "handled": 1,
        "failed": 1,
        "rejected": 1,
    }
