"""The codec seam (codec.py): connections build their codecs through the codec on their
environment, and msgspec stays inside the msgpack codec module."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

import service_framework
from service_framework.codec import (
    DEFAULT_CODEC,
    Codec,
    OneWayCodec,
    Published,
    Request,
    RequestReplyCodec,
)
from service_framework.connections.base import ConnectionEnv
from service_framework.errors import ValidationError
from service_framework.generated import build, indent, merge
from service_framework.models import parse_connection_models
from service_framework.msgpack_codec import MSGPACK
from service_framework.validation import Node, Validator

PACKAGE = Path(service_framework.__file__).parent


def handler(args: Any, to_send: Any, config: Any) -> None:
    return None


def _model(kind: str, **creation: Any) -> dict[str, Any]:
    return {
        "connection_type": kind,
        "optional_creation_arguments": creation,
        "required_arguments": {"n": int},
    }


MODELS = {
    "in": {
        "answer": {
            **_model("replyer"),
            "required_creation_arguments": {"connection_function": handler},
        },
        "listen": {
            **_model("subscriber", topic="news"),
            "required_creation_arguments": {"connection_function": handler},
        },
        "work": {
            **_model("puller"),
            "required_creation_arguments": {"connection_function": handler},
        },
    },
    "out": {
        "ask": {**_model("requester"), "required_return_arguments": {"ok": bool}},
        "tell": _model("publisher", topic="news"),
        "hand_out": _model("pusher"),
    },
}


class RecordingCodec:
    """A :class:`Codec` that builds the msgpack codec's codecs and records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Validator, Any, int]] = []
        self.built: list[Any] = []

    def request_reply(
        self, args: Validator, returns: Validator, *, max_bytes: int = 1 << 20
    ) -> RequestReplyCodec:
        self.calls.append(("request_reply", args, returns, max_bytes))
        self.built.append(MSGPACK.request_reply(args, returns, max_bytes=max_bytes))
        return self.built[-1]  # type: ignore[no-any-return]

    def one_way(
        self, args: Validator, topic: str, *, max_bytes: int = 1 << 20, publisher: str = ""
    ) -> OneWayCodec:
        self.calls.append(("one_way", args, topic, max_bytes))
        self.built.append(MSGPACK.one_way(args, topic, max_bytes=max_bytes, publisher=publisher))
        return self.built[-1]  # type: ignore[no-any-return]

    def check_wire(self, node: Node) -> None:
        MSGPACK.check_wire(node)


@pytest.mark.parametrize(
    ("side", "name", "built_with"),
    [
        ("in", "answer", "request_reply"),
        ("in", "listen", "one_way"),
        ("in", "work", "one_way"),
        ("out", "ask", "request_reply"),
        ("out", "tell", "one_way"),
        ("out", "hand_out", "one_way"),
    ],
)
def test_connections_build_their_codec_through_the_environment(
    side: str, name: str, built_with: str
) -> None:
    models = parse_connection_models("svc", MODELS)
    model = (models.inbound if side == "in" else models.outbound)[name]
    codec = RecordingCodec()
    env = ConnectionEnv(
        service="svc", config={}, context=None, to_send=lambda *_: None, codec=codec
    )
    connection = model.kind(model, env)
    ((method, args, third, max_bytes),) = codec.calls
    assert method == built_with
    assert args is model.args
    assert max_bytes == connection.socket_options.max_message_bytes
    if built_with == "request_reply":
        assert third is model.returns
    else:
        assert third == ("news" if name in ("listen", "tell") else "")
    assert connection.codec is codec.built[0]  # type: ignore[attr-defined]


def test_the_default_codec_is_msgpack_and_round_trips() -> None:
    env = ConnectionEnv(service="svc", config={}, context=None, to_send=lambda *_: None)
    assert env.codec is DEFAULT_CODEC is MSGPACK
    codec: Codec = env.codec
    models = parse_connection_models("svc", MODELS)
    ask = models.outbound["ask"]
    assert ask.returns is not None
    pair = codec.request_reply(ask.args, ask.returns)
    request = pair.decode_request(pair.encode_request({"n": 1}, "wf"))
    assert isinstance(request, Request)
    assert (request.args, request.workflow_id) == ({"n": 1}, "wf")
    one_way = codec.one_way(ask.args, "news", publisher="p1")
    frame = one_way.encode({"n": 2}, "wf", 5)
    assert frame.startswith(one_way.prefix) and one_way.prefix in one_way.prefixes
    published = one_way.decode(frame)
    assert isinstance(published, Published)
    assert (published.args, published.publisher, published.seq) == ({"n": 2}, "p1", 5)
    with pytest.raises(ValidationError, match=r"^svc: ask\.args: expected int, got str at \$\.n$"):
        one_way.decode(one_way.encode({"n": "x"}, "wf"))


def _imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def test_msgspec_is_imported_by_the_msgpack_codec_alone() -> None:
    importers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "msgspec" in _imports_of(path)
    )
    assert importers == ["msgpack_codec.py"]


def test_validation_imports_no_wire_format() -> None:
    imported = _imports_of(PACKAGE / "validation.py")
    assert "msgspec" not in imported and "msgpack" not in imported and "zmq" not in imported


def test_array_models_get_codecs_that_send_large_frames_without_a_copy() -> None:
    np = pytest.importorskip("numpy")
    import zmq

    models = parse_connection_models(
        "svc",
        {
            "out": {
                "ask": {
                    "connection_type": "requester",
                    "required_arguments": {"a": np.ndarray},
                    "required_return_arguments": {"ok": bool},
                },
                "tell": {"connection_type": "publisher", "required_arguments": {"a": np.ndarray}},
            }
        },
    )
    ask, tell = models.outbound["ask"], models.outbound["tell"]
    assert ask.returns is not None
    big, small = {"a": np.zeros(zmq.COPY_THRESHOLD)}, {"a": np.zeros(1)}
    pair = DEFAULT_CODEC.request_reply(ask.args, ask.returns)
    one_way = DEFAULT_CODEC.one_way(tell.args, "")
    for frame in (pair.encode_request(big, "w"), one_way.encode(big, "w")):
        assert isinstance(frame, zmq.Frame)
        assert len(frame) > zmq.COPY_THRESHOLD
    assert type(pair.encode_request(small, "w")) is bytes
    decoded = pair.decode_request(bytes(pair.encode_request(big, "w")))
    assert (decoded.args["a"] == big["a"]).all()
    plain = DEFAULT_CODEC.request_reply(ask.returns, ask.returns)  # no arrays: plain bytes
    assert type(plain.encode_request({"ok": True}, "w")) is bytes


def _compiled(fragment: Any, params: str, result: str) -> Any:
    """A codec fragment compiled into a function of its own: a host other than the one
    the codec's methods are compiled into, so lines leaning on their host would show."""
    from service_framework.generated import function_of

    return function_of(fragment, params, result, "test fragment")


def _outcome(function: Any, *args: Any) -> Any:
    try:
        return ("ok", function(*args))
    except Exception as error:  # the error, as text: the fragment must raise the same
        return (type(error).__name__, str(error))


def _fields(value: Any) -> Any:
    return value if value[0] != "ok" else ("ok", msgspec_fields(value[1]))


def msgspec_fields(envelope: Any) -> dict[str, Any]:
    return {name: getattr(envelope, name) for name in envelope.__struct_fields__}


def _decoded(value: Any, field: str) -> Any:
    """A decode fragment's outcome (the envelope and the plain payload beside it) as
    its method gives it: the envelope with the plain payload in ``field``."""
    if value[0] != "ok":
        return value
    envelope, plain = value[1]
    return ("ok", {**msgspec_fields(envelope), field: plain})


def test_the_codecs_lines_do_what_their_methods_do() -> None:
    args = Validator(parse_connection_models("svc", MODELS).inbound["answer"].args.node)
    returns = parse_connection_models("svc", MODELS).outbound["ask"].returns
    assert returns is not None
    codec = MSGPACK.request_reply(args, returns, max_bytes=64)
    encode_request = _compiled(codec.encode_request_source("a", "w", "out"), "a, w", "out")
    encode_reply = _compiled(codec.encode_reply_source("a", "w", "out"), "a, w", "out")
    assert encode_request({"n": 1}, "w1") == codec.encode_request({"n": 1}, "w1")
    assert encode_reply({"ok": True}, "w1") == codec.encode_reply({"ok": True}, "w1")
    decode_request = _compiled(
        codec.decode_request_source("frame", "out", "plain"), "frame", "out, plain"
    )
    decode_reply = _compiled(
        codec.decode_reply_source("frame", "out", "plain"), "frame", "out, plain"
    )
    requests = [
        codec.encode_request({"n": 1}, "w1"),
        codec.encode_request({"n": "one"}, "w1"),  # breaks the model
        codec.encode_request({"n": 1, "pad": "x" * 80}, "w1"),  # over the cap
        b"\xc1 not msgpack",
    ]
    for frame in requests:
        assert _decoded(_outcome(decode_request, frame), "args") == _fields(
            _outcome(codec.decode_request, frame)
        )
    replies = [
        codec.encode_reply({"ok": True}, "w1"),
        codec.encode_reply({"ok": "yes"}, "w1"),
        codec.encode_error("KeyError", "boom", "w1"),
        codec.encode_request({"n": 1}, "w1"),  # neither return_args nor error
        codec.encode_reply({"ok": True}, "w" * 80),  # over the cap
        b"\x93\x01\x02\x03",
    ]
    for frame in replies:
        assert _decoded(_outcome(decode_reply, frame), "return_args") == _fields(
            _outcome(codec.decode_reply, frame)
        )
    one_way = MSGPACK.one_way(args, "news", max_bytes=64, publisher="p1")
    encode = _compiled(one_way.encode_source("a", "w", "s", "out"), "a, w, s", "out")
    decode = _compiled(one_way.decode_source("frame", "out", "plain"), "frame", "out, plain")
    assert encode({"n": 1}, "w1", 7) == one_way.encode({"n": 1}, "w1", 7)
    frames = [
        one_way.encode({"n": 1}, "w1", 7),
        one_way.encode({"n": "one"}, "w1", 7),
        MSGPACK.one_way(args, "sport").encode({"n": 1}, "w1", 7),  # another topic
        one_way.encode({"n": 1}, "x" * 80, 7),
    ]
    for frame in frames:
        assert _decoded(_outcome(decode, frame), "args") == _fields(_outcome(one_way.decode, frame))


def test_the_lines_of_several_codecs_can_share_one_generated_function() -> None:
    args = Validator(parse_connection_models("svc", MODELS).inbound["answer"].args.node)
    returns = parse_connection_models("svc", MODELS).outbound["ask"].returns
    assert returns is not None
    one = MSGPACK.request_reply(args, returns)
    other = MSGPACK.request_reply(args, returns)
    fragments = [
        one.encode_request_source("a", "w", "x"),
        other.encode_request_source("a", "w", "y"),
        one.encode_reply_source("r", "w", "z"),
        one.decode_reply_source("z", "d", "dr"),
        other.decode_request_source("y", "e", "ea"),
    ]
    names = merge({}, *(f.names for f in fragments))  # no two objects under one name
    both = build(
        [
            "def f(a, r, w):",
            *indent(line for f in fragments for line in f.lines),
            "    return x, y, d, dr, e, ea",
        ],
        names,
        "test two codecs",
        "f",
    )
    x, y, d, dr, e, ea = both({"n": 1}, {"ok": True}, "w1")
    assert x == y == one.encode_request({"n": 1}, "w1")
    assert (dr, d.workflow_id, ea, e.workflow_id) == (
        {"ok": True},
        "w1",
        {"n": 1},
        "w1",
    )
