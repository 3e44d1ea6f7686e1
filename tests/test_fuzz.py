"""Fuzz running services with arbitrary frames (bounded): nothing crashes, every request
is answered, handlers only ever see valid messages, and the service keeps serving."""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import sync
from service_framework.codec import topic_prefix
from service_framework.validation import Validator, compile_fields

SPEC = {"order_id": str, "qty": int, "lines": [{"sku": str, "px": float}]}
OPTIONAL = {"note": str}
CHECK = Validator(compile_fields(SPEC, OPTIONAL))
VALID = {"order_id": "o-1", "qty": 2, "lines": [{"sku": "a", "px": 1.5}]}

SERVICE = """
import queue
from collections.abc import Callable
seen = queue.Queue()

def on_message(args, to_send, config):
    seen.put(args)
    return {{'ok': True}}

SPEC = {{'order_id': str, 'qty': int, 'lines': [{{'sku': str, 'px': float}}]}}
connection_models = {{'in': {{'target': {{
    'connection_type': '{kind}',
    'required_creation_arguments': {{'connection_function': on_message}},
    {extra}
    'required_arguments': SPEC,
    'optional_arguments': {{'note': str}},
    {returns}
}}}}}}
"""

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.binary(max_size=8),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
# Near-valid args: the right keys with arbitrary values, plus random extra keys.
args_like = st.fixed_dictionaries(
    {},
    optional={
        "order_id": values,
        "qty": values,
        "lines": st.one_of(
            values, st.lists(st.dictionaries(st.sampled_from(["sku", "px", "x"]), values))
        ),
        "note": values,
    },
).flatmap(
    lambda d: st.dictionaries(st.text(max_size=4), values, max_size=2).map(lambda e: {**d, **e})
)


def envelope(args: Any, workflow_id: Any = "w", v: Any = 1) -> bytes:
    """A request frame."""
    return msgspec.msgpack.encode({"v": v, "workflow_id": workflow_id, "args": args})


def publication(args: Any, workflow_id: Any = "w", v: Any = 1) -> bytes:
    """A publish frame on the empty topic."""
    return msgspec.msgpack.encode(["", v, workflow_id, args, None])


def mutate(frame: bytes, data: st.DataObject) -> bytes:
    """Flip, drop or truncate bytes of a valid frame."""
    buf = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        if not buf:
            break
        i = data.draw(st.integers(0, len(buf) - 1))
        action = data.draw(st.sampled_from(["flip", "drop", "cut"]))
        if action == "flip":
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "drop":
            del buf[i]
        else:
            del buf[i:]
    return bytes(buf)


@st.composite
def frames(draw: st.DrawFn, encode: Callable[..., bytes] = envelope) -> list[bytes]:
    """Messages of mostly bad frames, built with ``encode`` (a request or publish frame)."""
    kind = draw(st.sampled_from(["bytes", "args", "envelope", "mutated", "multipart"]))
    if kind == "bytes":
        return [draw(st.binary(max_size=64))]
    if kind == "args":
        return [encode(draw(args_like))]
    if kind == "envelope":
        return [encode(draw(values), draw(values), draw(st.one_of(st.just(1), values)))]
    if kind == "mutated":
        return [mutate(encode(VALID), draw(st.data()))]
    return [encode(VALID), draw(st.binary(max_size=16))]


FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def replyer(write_service, run_service):
    source = SERVICE.format(
        kind="replyer", extra="", returns="'required_return_arguments': {'ok': bool},"
    )
    return run_service(
        write_service("fuzz_replyer", source),
        addresses={"in": {"target": {"replyer": "127.0.0.1:0"}}},
    )


@pytest.fixture
def raw_req(replyer, zctx):
    sock = zctx.socket(zmq.REQ)
    sock.rcvtimeo = 5000
    sock.connect(f"tcp://{replyer.address('target')}")
    yield sock
    sock.close(linger=0)


@FUZZ
@given(message=frames())
def test_replyer_answers_every_frame_and_handlers_see_only_valid_args(
    replyer, raw_req, message
) -> None:
    raw_req.send_multipart(message)
    reply = msgspec.msgpack.decode(raw_req.recv())  # an answer always comes back
    assert set(reply) >= {"v", "workflow_id"}
    assert ("error" in reply) != ("return_args" in reply)
    while True:
        try:
            args = replyer.module.seen.get_nowait()
        except queue.Empty:
            break
        assert CHECK.check(args), args  # the handler never saw an invalid message


def test_replyer_still_serves_after_fuzzing(replyer, raw_req) -> None:
    for junk in (b"", b"\x00" * 10, envelope({"qty": "x"}), envelope(VALID, v=7)):
        raw_req.send(junk)
        assert "error" in msgspec.msgpack.decode(raw_req.recv())
    raw_req.send(envelope(VALID, "good"))
    assert msgspec.msgpack.decode(raw_req.recv()) == {
        "v": 1,
        "workflow_id": "good",
        "return_args": {"ok": True},
    }
    stats = replyer.runtime.stats()["target"]
    assert stats.received == stats.handled + stats.rejected + stats.failed


@pytest.fixture
def subscriber(write_service, run_service):
    source = SERVICE.format(
        kind="subscriber", extra="'optional_creation_arguments': {'is_binder': True},", returns=""
    )
    return run_service(
        write_service("fuzz_subscriber", source),
        addresses={"in": {"target": {"subscriber": "127.0.0.1:0"}}},
    )


@pytest.fixture
def raw_pub(subscriber, zctx):
    sock = zctx.socket(zmq.PUB)
    sock.connect(f"tcp://{subscriber.address('target')}")
    # Late markers are valid messages: the test below reads past them.
    sync(lambda args: sock.send(publication(args, "sync")), subscriber.module.seen, VALID)
    yield sock
    sock.close(linger=0)


@FUZZ
@given(message=frames(publication), with_prefix=st.booleans())
def test_subscriber_drops_bad_frames_and_handles_the_rest(
    subscriber, raw_pub, message, with_prefix
) -> None:
    # With the prefix, even random bytes start the way a publish frame does.
    prefix = topic_prefix("") if with_prefix else b""
    raw_pub.send_multipart([prefix + message[0], *message[1:]])
    # A valid marker behind the fuzzed frame must always get through.
    raw_pub.send(publication({**VALID, "note": "marker"}))
    while True:
        args = subscriber.module.seen.get(timeout=5)
        assert CHECK.check(args), args
        if args.get("note") == "marker":
            break
