"""Request/reply over real sockets: replyer and requester."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any

import msgspec
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from conftest import wait_until
from service_framework import (
    RemoteError,
    RequestTimeout,
    UnknownConnectionError,
    ValidationError,
)
from service_framework.codec import MessageCodec

REPLYER = """
import queue
calls = queue.Queue()

def on_request(args, to_send, config):
    calls.put(args)
    if args.get('fail'):
        raise KeyError('boom')
    if args.get('bad_return'):
        return {'order_id': args['order_id'], 'total': 'not a float'}
    return {'order_id': args['order_id'], 'total': args['qty'] * args['price']}

connection_models = {
    'in': {
        'reply': {
            'connection_type': 'replyer',
            'required_creation_arguments': {'connection_function': on_request},
            'required_arguments': {'order_id': str, 'qty': int, 'price': float},
            'optional_arguments': {'fail': bool, 'bad_return': bool},
            'required_return_arguments': {'order_id': str, 'total': float},
        }
    }
}
"""

ORDER = {"order_id": "o-1", "qty": 3, "price": 2.5}


def requester_models(**creation: Any) -> dict[str, Any]:
    return {
        "out": {
            "request": {
                "connection_type": "requester",
                "optional_creation_arguments": creation,
                "required_arguments": {"order_id": str, "qty": int, "price": float},
                "optional_arguments": {"fail": bool, "bad_return": bool},
                "required_return_arguments": {"order_id": str, "total": float},
            }
        }
    }


@pytest.fixture
def replyer(write_service, run_service):
    path = write_service("replyer", REPLYER)
    return run_service(path, addresses={"in": {"reply": {"replyer": "127.0.0.1:0"}}})


@pytest.fixture
def requester(replyer, client):
    address = {"out": {"request": {"requester": replyer.address("reply")}}}
    return client(requester_models(timeout_s=5), address)


def test_round_trip_returns_validated_reply(replyer, requester) -> None:
    assert requester.to_send("request", ORDER) == {"order_id": "o-1", "total": 7.5}
    assert replyer.module.calls.get(timeout=5) == ORDER


def test_args_are_validated_before_anything_is_sent(replyer, requester) -> None:
    with pytest.raises(ValidationError, match=r"request\.args: expected int, got str at \$\.qty"):
        requester.to_send("request", {**ORDER, "qty": "3"})
    with pytest.raises(ValueError, match="unexpected key 'colour'"):
        requester.to_send("request", {**ORDER, "colour": "red"})
    assert requester.to_send("request", ORDER)["total"] == 7.5
    assert replyer.module.calls.get(timeout=5) == ORDER  # only the valid one arrived
    assert replyer.module.calls.empty()


def test_unknown_connection_lists_the_valid_names(requester) -> None:
    with pytest.raises(UnknownConnectionError, match=r"no outbound connection 'requst'.*'request'"):
        requester.to_send("requst", ORDER)


def test_handler_error_reaches_caller_and_service_keeps_serving(replyer, requester) -> None:
    with pytest.raises(RemoteError) as caught:
        requester.to_send("request", {**ORDER, "fail": True})
    assert caught.value.remote_type == "KeyError"
    assert "boom" in caught.value.remote_message
    assert requester.to_send("request", ORDER)["total"] == 7.5
    stats = replyer.runtime.stats()["reply"]
    assert stats.failed == 1
    assert stats.handled == 1


def test_invalid_handler_return_is_an_error_reply(replyer, requester) -> None:
    with pytest.raises(RemoteError) as caught:
        requester.to_send("request", {**ORDER, "bad_return": True})
    assert caught.value.remote_type == "ValidationError"
    assert "reply.return_args: expected float, got str at $.total" in caught.value.remote_message


def test_reply_is_validated_on_the_requester_side(replyer, client) -> None:
    models = requester_models(timeout_s=5)
    models["out"]["request"]["required_return_arguments"] = {"order_id": str, "total": int}
    runtime = client(models, {"out": {"request": {"requester": replyer.address("reply")}}})
    with pytest.raises(ValidationError, match=r"request\.return_args: expected int, got float"):
        runtime.to_send("request", ORDER)
    # The connection is fine afterwards: the reply was received, just not accepted.
    with pytest.raises(ValidationError):
        runtime.to_send("request", ORDER)


def raw_request(zctx, address: str, *frames: bytes) -> dict[str, Any]:
    sock = zctx.socket(zmq.REQ)
    sock.rcvtimeo = 5000
    sock.connect(f"tcp://{address}")
    sock.send_multipart(list(frames))
    reply = msgspec.msgpack.decode(sock.recv())
    sock.close(linger=0)
    return reply  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("frames", "error_type", "detail"),
    [
        ([b"\xc1garbage"], "DecodeError", "not a msgpack message"),
        ([b""], "DecodeError", "not a msgpack message"),
        ([msgspec.msgpack.encode([1, 2, 3])], "DecodeError", "malformed envelope"),
        ([msgspec.msgpack.encode({"v": 1, "workflow_id": "w"})], "DecodeError", "missing"),
        (
            [msgspec.msgpack.encode({"v": 1, "workflow_id": "w1", "args": {**ORDER, "qty": 1.5}})],
            "ValidationError",
            "reply.args: expected int, got float at $.qty",
        ),
        (
            [msgspec.msgpack.encode({"v": 1, "workflow_id": "w1", "args": {**ORDER, "x": 1}})],
            "ValidationError",
            "unexpected key 'x' at $",
        ),
        (
            [msgspec.msgpack.encode({"v": 1, "workflow_id": "w1", "args": {"qty": 1}})],
            "ValidationError",
            "missing required key 'order_id' at $",
        ),
        (
            [msgspec.msgpack.encode({"v": 9, "workflow_id": "w1", "args": ORDER})],
            "DecodeError",
            "unsupported envelope version 9",
        ),
        ([b"part one", b"part two"], "DecodeError", "single frame"),
    ],
)
def test_bad_requests_get_an_error_reply_and_never_reach_the_handler(
    replyer, requester, zctx, frames, error_type, detail
) -> None:
    reply = raw_request(zctx, replyer.address("reply"), *frames)
    assert reply["error"]["type"] == error_type
    assert detail in reply["error"]["message"]
    assert replyer.module.calls.empty()
    assert requester.to_send("request", ORDER)["total"] == 7.5  # still serving
    assert replyer.runtime.stats()["reply"].rejected == 1


def test_a_valid_request_with_extra_frames_never_runs_the_handler(replyer, zctx) -> None:
    # A retrying caller must not repeat a side effect for a request answered with an
    # error: the extra frames are seen before the handler would run.
    frame = MessageCodec.encode_request(ORDER, "w-multi")
    reply = raw_request(zctx, replyer.address("reply"), frame, b"extra", b"more")
    assert reply["error"] == {"type": "DecodeError", "message": "a request must be a single frame"}
    assert reply["workflow_id"] == "w-multi"
    assert replyer.module.calls.empty()
    stats = replyer.runtime.stats()["reply"]
    assert (stats.rejected, stats.handled, stats.failed) == (1, 0, 0)
    assert raw_request(zctx, replyer.address("reply"), frame)["return_args"]["total"] == 7.5
    assert replyer.module.calls.get(timeout=5) == ORDER


def test_error_reply_keeps_the_workflow_id_of_a_bad_request(replyer, zctx) -> None:
    frame = msgspec.msgpack.encode({"v": 1, "workflow_id": "wf-42", "args": {"qty": "x"}})
    assert raw_request(zctx, replyer.address("reply"), frame)["workflow_id"] == "wf-42"


def test_oversized_message_drops_that_peer_only(write_service, run_service, client, zctx) -> None:
    source = REPLYER.replace(
        "'required_creation_arguments': {'connection_function': on_request},",
        "'required_creation_arguments': {'connection_function': on_request},\n"
        "            'optional_creation_arguments':"
        " {'socket_options': {'max_message_bytes': 4096}},",
    )
    service = run_service(
        write_service("small_replyer", source),
        addresses={"in": {"reply": {"replyer": "127.0.0.1:0"}}},
    )
    address = service.address("reply")
    big = zctx.socket(zmq.REQ)
    events = big.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    big.connect(f"tcp://{address}")
    big.send(b"x" * 100_000)
    seen = []
    while zmq.EVENT_DISCONNECTED not in seen:  # the replyer drops the peer that sent it
        assert events.poll(10_000), f"no disconnect; events so far: {seen}"
        seen.append(recv_monitor_message(events)["event"])
    assert seen == [zmq.EVENT_CONNECTED, zmq.EVENT_DISCONNECTED]
    big.disable_monitor()
    events.close(linger=0)
    big.close(linger=0)
    good = client(requester_models(timeout_s=5), {"out": {"request": {"requester": address}}})
    assert good.to_send("request", ORDER)["total"] == 7.5
    assert service.module.calls.get(timeout=5) == ORDER


def test_decimal_uuid_bytes_set_tuple_survive_the_wire(write_service, run_service, client) -> None:
    source = """
import uuid
from decimal import Decimal
seen = []
def echo(args, to_send, config):
    seen.append(args)
    return args
spec = {'d': Decimal, 'u': uuid.UUID, 'b': bytes, 's': {str}, 't': (int, str),
        'n': {str: [Decimal]}}
connection_models = {'in': {'echo': {
    'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': echo},
    'required_arguments': spec, 'required_return_arguments': spec}}}
"""
    import uuid

    service = run_service(
        write_service("echo", source), addresses={"in": {"echo": {"replyer": "127.0.0.1:0"}}}
    )
    spec = {
        "d": Decimal,
        "u": uuid.UUID,
        "b": bytes,
        "s": {str},
        "t": (int, str),
        "n": {str: [Decimal]},
    }
    models = {
        "out": {
            "echo": {
                "connection_type": "requester",
                "required_arguments": spec,
                "required_return_arguments": spec,
            }
        }
    }
    runtime = client(models, {"out": {"echo": {"requester": service.address("echo")}}})
    value = {
        "d": Decimal("1.10"),
        "u": uuid.uuid4(),
        "b": b"\x00\xff",
        "s": {"a", "b"},
        "t": (1, "x"),
        "n": {"k": [Decimal("0.1")]},
    }
    back = runtime.to_send("echo", value)
    assert back == value
    assert type(back["d"]) is Decimal and type(back["t"]) is tuple and type(back["s"]) is set
    assert service.module.seen[0] == value


class ControlledServer:
    """A ROUTER that answers REQ clients only when the test says so."""

    def __init__(self, zctx: zmq.Context[Any]) -> None:
        self.sock = zctx.socket(zmq.ROUTER)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"127.0.0.1:{port}"

    def receive(self, timeout_ms: int = 5000) -> tuple[list[bytes], dict[str, Any]]:
        assert self.sock.poll(timeout_ms), "no request arrived"
        *envelope, body = self.sock.recv_multipart()
        return envelope, msgspec.msgpack.decode(body)

    def answer(self, envelope: list[bytes], return_args: dict[str, Any], wid: str = "") -> None:
        self.sock.send_multipart([*envelope, MessageCodec.encode_reply(return_args, wid)])


@pytest.fixture
def server(zctx):
    controlled = ControlledServer(zctx)
    yield controlled
    controlled.sock.close(linger=0)


def test_timeout_raises_after_retries_and_connection_recovers(client, server) -> None:
    runtime = client(
        requester_models(timeout_s=0.2, retries=2),
        {"out": {"request": {"requester": server.address}}},
    )
    started = time.monotonic()
    with pytest.raises(RequestTimeout, match="no reply after 3 attempt"):
        runtime.to_send("request", ORDER)
    assert time.monotonic() - started >= 0.6
    attempts = [server.receive()[1]["workflow_id"] for _ in range(3)]
    assert len(set(attempts)) == 1  # the same request, resent
    stats = runtime.stats()["request"]
    assert (stats.timeouts, stats.retries) == (3, 2)

    # Usable right away: the next request is answered.
    import threading

    reply: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: reply.update(runtime.to_send("request", ORDER)), daemon=True
    )
    thread.start()
    envelope, request = server.receive()
    server.answer(envelope, {"order_id": request["args"]["order_id"], "total": 1.0})
    thread.join(5)
    assert reply == {"order_id": "o-1", "total": 1.0}


def test_late_reply_is_never_taken_for_a_later_request(client, server) -> None:
    runtime = client(
        requester_models(timeout_s=0.3, retries=0),
        {"out": {"request": {"requester": server.address}}},
    )
    with pytest.raises(RequestTimeout):
        runtime.to_send("request", {**ORDER, "order_id": "first"})
    first_envelope, first = server.receive()
    assert first["args"]["order_id"] == "first"

    import threading

    reply: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: reply.update(runtime.to_send("request", {**ORDER, "order_id": "second"})),
        daemon=True,
    )
    thread.start()
    second_envelope, second = server.receive()
    assert second["args"]["order_id"] == "second"
    # The late answer to the abandoned request goes first; it must not be returned.
    server.answer(first_envelope, {"order_id": "first", "total": 1.0})
    server.answer(second_envelope, {"order_id": "second", "total": 2.0})
    thread.join(5)
    assert reply == {"order_id": "second", "total": 2.0}


def test_a_multi_frame_reply_does_not_wedge_the_requester(client, server) -> None:
    import threading

    runtime = client(
        requester_models(timeout_s=5), {"out": {"request": {"requester": server.address}}}
    )
    replies: list[dict[str, Any]] = []

    def call(order_id: str) -> None:
        replies.append(runtime.to_send("request", {**ORDER, "order_id": order_id}))

    first = threading.Thread(target=call, args=("a",))
    first.start()
    envelope, _ = server.receive()
    reply = MessageCodec.encode_reply({"order_id": "a", "total": 1.0}, "")
    server.sock.send_multipart([*envelope, reply, b"an extra frame"])
    first.join(5)
    # The next request goes out on a fresh socket (REQ would refuse to send on the old
    # one with a frame still unread) and is answered normally.
    second = threading.Thread(target=call, args=("b",))
    second.start()
    envelope, request = server.receive()
    server.answer(envelope, {"order_id": request["args"]["order_id"], "total": 2.0})
    second.join(5)
    assert replies == [{"order_id": "a", "total": 1.0}, {"order_id": "b", "total": 2.0}]


def test_requester_is_thread_safe(replyer, requester) -> None:
    import threading

    replies: dict[int, list[dict[str, Any]]] = {n: [] for n in range(4)}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(n: int) -> None:
        try:
            start.wait(10)  # all four call at once, so their calls interleave
            for i in range(20):
                order = {"order_id": f"{n}-{i}", "qty": i, "price": 1.0}
                replies[n].append(requester.to_send("request", order))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    # Each thread got the replies to its own requests, in the order it made them.
    for n in range(4):
        assert [r["order_id"] for r in replies[n]] == [f"{n}-{i}" for i in range(20)]
        assert [r["total"] for r in replies[n]] == [float(i) for i in range(20)]


def test_requester_spreads_over_a_list_of_replyers(write_service, run_service, client) -> None:
    one = run_service(
        write_service("r1", REPLYER), addresses={"in": {"reply": {"replyer": "127.0.0.1:0"}}}
    )
    two = run_service(
        write_service("r2", REPLYER), addresses={"in": {"reply": {"replyer": "127.0.0.1:0"}}}
    )
    runtime = client(
        requester_models(timeout_s=5),
        {"out": {"request": {"requester": [one.address("reply"), two.address("reply")]}}},
    )
    for i in range(10):
        runtime.to_send("request", {**ORDER, "order_id": str(i)})
    assert one.module.calls.qsize() + two.module.calls.qsize() == 10
    assert one.module.calls.qsize() > 0 and two.module.calls.qsize() > 0


def test_request_timeout_is_a_timeout_error() -> None:
    # Callers may catch the builtin: `except TimeoutError` covers a request that timed out.
    assert issubclass(RequestTimeout, TimeoutError)


SIZED_REPLYER = """
import queue
calls = queue.Queue()

def on_request(args, to_send, config):
    calls.put(args)
    return {'text': 'x' * args['reply_bytes']}

connection_models = {
    'in': {
        'reply': {
            'connection_type': 'replyer',
            'required_creation_arguments': {'connection_function': on_request},
            'optional_creation_arguments': {'socket_options': {'max_message_bytes': 4096}},
            'required_arguments': {'text': str, 'reply_bytes': int},
            'required_return_arguments': {'text': str},
        }
    }
}
"""


@pytest.fixture
def sized(write_service, run_service, client):
    """A replyer and a requester that both cap messages at 4096 bytes."""
    service = run_service(
        write_service("sized", SIZED_REPLYER),
        addresses={"in": {"reply": {"replyer": "127.0.0.1:0"}}},
    )
    models = {
        "out": {
            "sized": {
                "connection_type": "requester",
                "optional_creation_arguments": {
                    "timeout_s": 5,
                    "socket_options": {"max_message_bytes": 4096},
                },
                "required_arguments": {"text": str, "reply_bytes": int},
                "required_return_arguments": {"text": str},
            }
        }
    }
    return service, client(models, {"out": {"sized": {"requester": service.address("reply")}}})


def test_an_oversized_reply_reaches_the_caller_as_an_error(sized) -> None:
    service, caller = sized
    with pytest.raises(RemoteError) as caught:
        caller.to_send("sized", {"text": "hi", "reply_bytes": 5000})
    assert caught.value.remote_type == "ValidationError"
    message = caught.value.remote_message
    assert message.startswith("sized: reply.return_args: the encoded reply is 5,0")
    assert message.endswith("bytes, over this connection's max_message_bytes of 4,096")
    stats = service.runtime.stats()["reply"]
    assert (stats.handled, stats.failed) == (0, 1)
    # The connection is fine: the next, small reply comes back.
    assert caller.to_send("sized", {"text": "hi", "reply_bytes": 10}) == {"text": "x" * 10}
    assert service.runtime.stats()["reply"].handled == 1


def test_an_oversized_request_is_refused_before_sending(sized) -> None:
    service, caller = sized
    with pytest.raises(ValidationError) as caught:
        caller.to_send("sized", {"text": "y" * 5000, "reply_bytes": 1})
    message = str(caught.value)
    assert message.startswith("client: sized.args: the encoded request is 5,0")
    assert message.endswith("bytes, over this connection's max_message_bytes of 4,096")
    assert caller.stats()["sized"].received == 0  # no attempt was made
    assert caller.to_send("sized", {"text": "small", "reply_bytes": 1}) == {"text": "x"}
    assert service.module.calls.get(timeout=5)["text"] == "small"
    assert service.module.calls.empty()


SLOW_REPLYER = """
import threading, time
started = threading.Event()

def on_request(args, to_send, config):
    started.set()
    time.sleep(0.2)  # the workload: a slow handler, so requests queue behind it
    return {'text': args['text']}

connection_models = {
    'in': {
        'reply': {
            'connection_type': 'replyer',
            'required_creation_arguments': {'connection_function': on_request},
            'required_arguments': {'text': str},
            'required_return_arguments': {'text': str},
        }
    }
}
"""


def test_requests_still_queued_at_the_stop_timeout_get_a_stopping_error(
    write_service, run_service, client
) -> None:
    service = run_service(
        write_service("slow", SLOW_REPLYER),
        addresses={"in": {"reply": {"replyer": "127.0.0.1:0"}}},
        stop_timeout_s=0.5,
    )
    address = service.address("reply")
    count = 20
    model = {
        "connection_type": "requester",
        "optional_creation_arguments": {"timeout_s": 10},
        "required_arguments": {"text": str},
        "required_return_arguments": {"text": str},
    }
    # One requester connection per caller, so every request waits at the replyer's socket.
    caller = client(
        {"out": {f"c{i}": model for i in range(count)}},
        {"out": {f"c{i}": {"requester": address} for i in range(count)}},
    )
    outcomes: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            outcomes[i] = caller.to_send(f"c{i}", {"text": str(i)})
        except Exception as exc:  # judged below
            outcomes[i] = exc

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    stats = service.runtime.stats()["reply"]
    assert service.module.started.wait(10)
    assert wait_until(lambda: stats.peers_connected >= count, 10), stats
    service.stop()  # 0.5 s for 20 requests of 0.2 s each: most are still queued then
    for thread in threads:
        thread.join(15)
    assert not any(thread.is_alive() for thread in threads), "a caller hung"
    served = sorted(i for i, got in outcomes.items() if got == {"text": str(i)})
    refused = sorted(
        i
        for i, got in outcomes.items()
        if isinstance(got, RemoteError)
        and got.remote_type == "ServiceStopping"
        and "slow: stopping" in got.remote_message
    )
    # Every caller got its reply or the stopping error at once; none waited out its
    # timeout (a RequestTimeout would be in neither list).
    assert sorted(served + refused) == list(range(count)), outcomes
    assert served and refused, outcomes
    assert stats.handled == len(served) and stats.rejected == len(refused), stats


def test_a_reply_after_the_first_receive_slice_counts_one_attempt(client, server) -> None:
    # A reply within the first receive slice (0.1 s) is read on the requester's straight
    # line; a later one, or one sent before any connection was up, on its long way,
    # which carries on with the same attempt: one call, one attempt, both ways.
    runtime = client(
        requester_models(timeout_s=10, retries=2),
        {"out": {"request": {"requester": server.address}}},
    )
    replies: list[Any] = []
    for order_id in ("slow", "fast"):
        thread = threading.Thread(
            target=lambda o=order_id: replies.append(
                runtime.to_send("request", {**ORDER, "order_id": o})
            ),
            daemon=True,
        )
        thread.start()
        envelope, request = server.receive()
        if order_id == "slow":
            time.sleep(0.3)  # the scenario: answered after the first slice has passed
        server.answer(envelope, {"order_id": request["args"]["order_id"], "total": 1.0})
        thread.join(10)
    assert replies == [{"order_id": "slow", "total": 1.0}, {"order_id": "fast", "total": 1.0}]
    stats = runtime.stats()["request"]
    counts = (stats.received, stats.handled, stats.failed, stats.timeouts, stats.retries)
    assert counts == (2, 2, 0, 0, 0)
