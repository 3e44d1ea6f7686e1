"""Envelopes to bytes and back (codec.py): requests, replies, errors, publish frames.

Decoding validates the payload against the connection's compiled model: payload problems
are ``ValidationError`` with paths rooted at ``$`` (the payload, not the envelope), and
envelope problems are ``DecodeError``. No input may raise anything else, hang, or run code.
"""

import gc
import pickle
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service_framework.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ENVELOPE_VERSION,
    PUBLISHER_MAX_CHARS,
    WORKFLOW_ID_MAX_CHARS,
    MessageCodec,
    PublishCodec,
    Reply,
    Request,
    topic_prefix,
    topic_prefixes,
)
from service_framework.errors import DecodeError, ValidationError
from service_framework.validation import UnsupportedOnWire, Validator, compile_fields

UUID_A = uuid.UUID("12345678-1234-5678-1234-567812345678")
EXPECTED_ERRORS = (DecodeError, ValidationError)
FUZZ = settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def pack(obj: Any) -> bytes:
    return msgspec.msgpack.encode(obj)


def validator(required: Any, optional: Any = None, direction: str = "args") -> Validator:
    return Validator(
        compile_fields(required, optional),
        service="shop",
        connection="orders",
        direction=direction,
    )


ARGS_REQUIRED = {
    "order_id": uuid.UUID,
    "qty": int,
    "price": Decimal,
    "tags": {str},
    "pair": (int, str),
    "blob": bytes,
    "orders": [{"sku": str, "qty": int}],
    "side": {"buy", "sell"},
}
ARGS_OPTIONAL = {"note": str, "prices": {str: Decimal}}
RETURNS_REQUIRED = {"order_id": uuid.UUID, "filled": Decimal}
RETURNS_OPTIONAL = {"reason": str}

ARGS = {
    "order_id": UUID_A,
    "qty": 3,
    "price": Decimal("10.50"),
    "tags": {"a", "b"},
    "pair": (1, "one"),
    "blob": b"\x00\xff",
    "orders": [{"sku": "s1", "qty": 1}, {"sku": "s2", "qty": 2}, {"sku": "s3", "qty": 3}],
    "side": "buy",
}
RETURNS = {"order_id": UUID_A, "filled": Decimal("2.000")}
ALLOWED = ", ".join(repr(key) for key in [*ARGS_REQUIRED, *ARGS_OPTIONAL])


@pytest.fixture(scope="module")
def codec() -> MessageCodec:
    return MessageCodec(
        validator(ARGS_REQUIRED, ARGS_OPTIONAL, "args"),
        validator(RETURNS_REQUIRED, RETURNS_OPTIONAL, "returns"),
    )


def request_frame(args: Any, **envelope: Any) -> bytes:
    return pack({"v": ENVELOPE_VERSION, "workflow_id": "wf-1", "args": args, **envelope})


def publish_frame(topic: str, args: Any, v: int = 1, workflow_id: str = "wf-1") -> bytes:
    return pack([topic, v, workflow_id, args, None])


def reply_frame(**envelope: Any) -> bytes:
    return pack({"v": ENVELOPE_VERSION, "workflow_id": "wf-1", **envelope})


# --------------------------------------------------------------------------- collector


def test_decoded_envelopes_are_not_tracked_and_nothing_else_holds_them(
    codec: MessageCodec,
) -> None:
    """The Structs values decode into are left out of the garbage collector's
    bookkeeping (``gc=False``); that is safe only because no cycle can run through one,
    and a collection could not see one that did. So the test asks the reference count:
    a decoded envelope of every kind (nested dicts and lists of dicts included) is held
    by nothing but the caller, so it is freed as soon as the caller drops it."""
    publish = PublishCodec(validator({"orders": [{"sku": str}]}), "t", publisher="p")
    frames = (
        (codec.decode_request, codec.encode_request(ARGS, "wf-1", {"trace": [1]})),
        (codec.decode_reply, codec.encode_reply(RETURNS, "wf-1")),
        (codec.decode_reply, MessageCodec.encode_error("KeyError", "k", "wf-1")),
        (publish.decode, publish.encode({"orders": [{"sku": "a"}]}, "wf-1", 1)),
    )
    for decode, frame in frames:
        envelope = decode(frame)
        assert not gc.is_tracked(envelope)
        assert sys.getrefcount(envelope) == 2  # the local, and getrefcount's argument


# --------------------------------------------------------------------------- requests


class TestRequests:
    def test_round_trip_preserves_types(self, codec: MessageCodec) -> None:
        request = codec.decode_request(codec.encode_request(ARGS, "wf-1"))
        assert isinstance(request, Request)
        assert request.args == ARGS
        assert request.workflow_id == "wf-1"
        assert request.meta is None
        args = request.args
        assert type(args) is dict
        assert type(args["order_id"]) is uuid.UUID
        assert type(args["price"]) is Decimal and str(args["price"]) == "10.50"
        assert type(args["tags"]) is set
        assert type(args["pair"]) is tuple
        assert type(args["blob"]) is bytes
        assert all(type(order) is dict for order in args["orders"])

    def test_meta_travels(self, codec: MessageCodec) -> None:
        meta = {"deadline": 1.5, "trace": ["a", 1]}
        request = codec.decode_request(codec.encode_request(ARGS, "wf-2", meta))
        assert request.meta == meta
        assert request.workflow_id == "wf-2"

    def test_optional_keys(self, codec: MessageCodec) -> None:
        args = {**ARGS, "note": "n", "prices": {"AAPL": Decimal("1.1")}}
        decoded = codec.decode_request(codec.encode_request(args, "w")).args
        assert decoded == args
        assert type(decoded["prices"]["AAPL"]) is Decimal
        assert "note" not in codec.decode_request(codec.encode_request(ARGS, "w")).args

    def test_accepts_memoryview(self, codec: MessageCodec) -> None:
        frame = codec.encode_request(ARGS, "wf-1")
        assert codec.decode_request(memoryview(frame)).args == ARGS

    def test_unknown_envelope_keys_are_ignored(self, codec: MessageCodec) -> None:
        frame = request_frame(ARGS, future_key={"x": 1})
        assert codec.decode_request(frame).args == ARGS

    def test_encode_request_envelope_shape(self) -> None:
        envelope = msgspec.msgpack.decode(MessageCodec.encode_request({"a": 1}, "w", {"m": 1}))
        assert envelope == {"v": 1, "workflow_id": "w", "args": {"a": 1}, "meta": {"m": 1}}
        envelope = msgspec.msgpack.decode(MessageCodec.encode_request({"a": 1}, "w"))
        assert envelope == {"v": 1, "workflow_id": "w", "args": {"a": 1}}

    def test_request_and_reply_frames_are_the_documented_maps_byte_for_byte(
        self, codec: MessageCodec
    ) -> None:
        # The generated lines and the methods write the maps of the README, keys in
        # this order, as another msgpack writer lays them out.
        import msgpack

        from service_framework.generated import function_of

        send = function_of(codec.encode_request_source("a", "w", "out"), "a, w", "out", "t")
        reply = function_of(codec.encode_reply_source("r", "w", "out"), "r, w", "out", "t")
        args, result = {"sku": "s1", "qty": 2, "tags": ["a"]}, {"total": 1.5}
        request = {"v": 1, "workflow_id": "wf-9_2", "args": args}
        answer = {"v": 1, "workflow_id": "wf-9_2", "return_args": result}
        for frame in (MessageCodec.encode_request(args, "wf-9_2"), send(args, "wf-9_2")):
            assert frame == msgpack.packb(request)
        for frame in (MessageCodec.encode_reply(result, "wf-9_2"), reply(result, "wf-9_2")):
            assert frame == msgpack.packb(answer)

    def test_unencodable_args_raise_type_error(self) -> None:
        with pytest.raises(TypeError):
            MessageCodec.encode_request({"x": object()}, "w")

    @pytest.mark.parametrize(
        ("change", "detail"),
        [
            ({"qty": "3"}, "expected int, got str at $.qty"),
            ({"qty": True}, "expected int, got bool at $.qty"),
            ({"zzz": 1}, f"unexpected key 'zzz' at $ (allowed: {ALLOWED})"),
            ({"qty": None}, "expected int, got None at $.qty"),
            ({"blob": "text"}, "expected bytes, got str at $.blob"),
            ({"pair": [1, 2]}, "expected str, got int at $.pair[1]"),
            ({"orders": [*ARGS["orders"][:2], {"sku": "c", "qty": ""}]},
             "expected int, got str at $.orders[2].qty"),
            ({"orders": [{"sku": "a", "qty": 1, "zzz": 0}]},
             "unexpected key 'zzz' at $.orders[0] (allowed: 'sku', 'qty')"),
            ({"orders": [{"sku": "a"}]}, "missing required key 'qty' at $.orders[0]"),
        ],
    )  # fmt: skip
    def test_invalid_args_raise_validation_error_rooted_at_payload(
        self, codec: MessageCodec, change: dict[str, Any], detail: str
    ) -> None:
        with pytest.raises(ValidationError) as info:
            codec.decode_request(request_frame({**ARGS, **change}))
        error = info.value
        assert isinstance(error, ValueError)
        assert error.detail == detail
        assert str(error) == f"shop: orders.args: {detail}"
        assert (error.service, error.connection, error.direction) == ("shop", "orders", "args")

    def test_missing_required_arg(self, codec: MessageCodec) -> None:
        args = {k: v for k, v in ARGS.items() if k != "qty"}
        with pytest.raises(ValidationError) as info:
            codec.decode_request(request_frame(args))
        assert info.value.detail == "missing required key 'qty' at $"

    def test_bad_literal_names_its_path(self, codec: MessageCodec) -> None:
        with pytest.raises(ValidationError, match=r"'hold' at \$\.side$"):
            codec.decode_request(request_frame({**ARGS, "side": "hold"}))

    @pytest.mark.parametrize("args", [5, "x", [1], None])
    def test_args_not_a_map_is_a_validation_error(self, codec: MessageCodec, args: Any) -> None:
        with pytest.raises(ValidationError) as info:
            codec.decode_request(request_frame(args))
        assert info.value.detail.endswith(" at $")

    def test_dict_key_of_wrong_type_is_a_validation_error(self, codec: MessageCodec) -> None:
        with pytest.raises(ValidationError) as info:
            codec.decode_request(request_frame({**ARGS, "prices": {1: Decimal(1)}}))
        assert info.value.detail.endswith(" at $.prices")

    @pytest.mark.parametrize(
        ("spec", "value", "arrives_as"),
        [(float, 3, 3.0), (Decimal, 3, Decimal(3)), (Decimal, 1.5, Decimal("1.5"))],
    )
    def test_wire_converts_numbers_losslessly(
        self, spec: type, value: Any, arrives_as: Any
    ) -> None:
        # Documented decision (README, "Validation"): a framework sender never sends these
        # (its check rejects them first), but a peer in another language may encode 3.0 as
        # 3; the receiver converts instead of rejecting, and the handler gets the declared
        # type.
        args = validator({"x": spec})
        assert args.check({"x": value}) is False
        decoded = MessageCodec(args, validator({})).decode_request(request_frame({"x": value}))
        assert decoded.args == {"x": arrives_as}
        assert type(decoded.args["x"]) is spec

    @pytest.mark.parametrize(
        ("spec", "value"),
        [
            ({"qty": int}, {"qty": "x"}),
            ({"qty": int}, {"qty": True}),
            ({"qty": int}, {}),
            ({"qty": int}, {"qty": 1, "zzz": 1}),
            ({"qty": int}, {"zzz": 1}),  # two problems: the same one is reported
            ({"o": [{"q": int}]}, {"o": [{"q": 1}, {"q": 1, "z": 2}]}),
            ({"o": [{"q": int}]}, {"o": [{}]}),
            ({"o": [{"q": int}]}, {"o": [{"q": 1}, {"q": "x"}]}),
            ({"n": {"a": {"b": int}}}, {"n": {"a": {"c": 1}}}),
            ({"x": bytes}, {"x": "a"}),
            ({"x": str}, {"x": None}),
            ({"my-key": int}, {"my-key": "x"}),
            ({"": int}, {"": "x"}),
            ({"s": {"buy", "sell"}}, {"s": "hold"}),
            ({"t": (int, str)}, {"t": [1]}),
            ({"x": [int]}, {"x": "a"}),
            ({"x": {"a": int}}, {"x": []}),
            ({"x": int | None}, {"x": "a"}),
        ],
    )
    def test_wire_error_reads_like_the_explainer(self, spec: Any, value: Any) -> None:
        args = validator(spec)
        with pytest.raises(ValidationError) as in_process:
            args(value)
        with pytest.raises(ValidationError) as on_wire:
            MessageCodec(args, validator({})).decode_request(request_frame(value))
        assert on_wire.value.detail == in_process.value.detail
        assert str(on_wire.value) == str(in_process.value)

    @pytest.mark.xfail(
        strict=True,
        reason="Known limit: msgspec's path names no dict key ('$.m[...]', not '$.m.a'), so "
        "the wire cannot say which key held the bad value",
    )
    @pytest.mark.parametrize(
        ("spec", "value"),
        [({"m": {str: int}}, {"m": {"a": "x"}})],
        ids=["dict-value"],
    )
    def test_wire_error_reads_like_the_explainer_known_gaps(self, spec: Any, value: Any) -> None:
        args = validator(spec)
        with pytest.raises(ValidationError) as in_process:
            args(value)
        with pytest.raises(ValidationError) as on_wire:
            MessageCodec(args, validator({})).decode_request(request_frame(value))
        assert on_wire.value.detail == in_process.value.detail

    @pytest.mark.parametrize(
        ("frame", "match"),
        [
            (b"", "not a msgpack message"),
            (b"\xc1", "not a msgpack message"),
            (pack([1, 2]), "malformed envelope: expected dict, got list at \\$$"),
            (pack({"v": 1, "workflow_id": "w"}), "missing required key 'args' at \\$$"),
            (request_frame(ARGS, workflow_id=7), "at \\$\\.workflow_id$"),
            (request_frame(ARGS, v="1"), "at \\$\\.v$"),
            (request_frame(ARGS, meta=3), "at \\$\\.meta$"),
            (request_frame(ARGS) + b"\x00", "trailing"),
            (request_frame(ARGS)[:-1], "not a msgpack message"),
        ],
        ids=["empty", "bad-opcode", "array", "no-args", "wid-int", "v-str", "meta-int",
             "trailing", "truncated"],
    )  # fmt: skip
    def test_envelope_problems_are_decode_errors(
        self, codec: MessageCodec, frame: bytes, match: str
    ) -> None:
        with pytest.raises(DecodeError, match=match) as info:
            codec.decode_request(frame)
        assert isinstance(info.value, ValueError)
        assert not isinstance(info.value, ValidationError)

    @pytest.mark.parametrize("version", [0, 2, -1, 2**40])
    def test_unknown_envelope_version_is_rejected(self, codec: MessageCodec, version: int) -> None:
        with pytest.raises(DecodeError, match=f"unsupported envelope version {version}"):
            codec.decode_request(request_frame(ARGS, v=version))

    def test_another_version_is_named_even_when_its_args_do_not_fit(
        self, codec: MessageCodec
    ) -> None:
        # A peer of another version may shape args differently: the version is the news.
        with pytest.raises(DecodeError, match="unsupported envelope version 2"):
            codec.decode_request(request_frame({"renamed": 1}, v=2))

    def test_size_cap_is_enforced_at_the_boundary(self) -> None:
        args, returns = validator({"s": str}), validator({})
        frame = request_frame({"s": "x" * 100})
        assert MessageCodec(args, returns, max_bytes=len(frame)).decode_request(frame).args
        capped = MessageCodec(args, returns, max_bytes=len(frame) - 1)
        with pytest.raises(DecodeError, match=f"{len(frame)} bytes exceeds the {len(frame) - 1}"):
            capped.decode_request(frame)

    def test_default_cap(self) -> None:
        codec = MessageCodec(validator({}), validator({}))
        assert codec.max_bytes == DEFAULT_MAX_MESSAGE_BYTES
        with pytest.raises(DecodeError, match="exceeds"):
            codec.decode_request(b"\x00" * (DEFAULT_MAX_MESSAGE_BYTES + 1))

    def test_unchecked_args_pass_anything(self) -> None:
        codec = MessageCodec(validator(None), validator(None))
        for args in ([1, "a"], None, {"any": {"thing": 1}}):
            assert codec.decode_request(request_frame(args)).args == args

    def test_codec_for_a_spec_without_wire_form_fails_at_construction(self) -> None:
        with pytest.raises(UnsupportedOnWire):
            MessageCodec(validator({"x": str | Decimal}), validator({}))


class TestWorkflowIdOf:
    def test_valid_frame(self, codec: MessageCodec) -> None:
        assert codec.workflow_id_of(codec.encode_request(ARGS, "wf-9")) == "wf-9"

    def test_frame_with_invalid_args_still_has_its_id(self, codec: MessageCodec) -> None:
        frame = request_frame({"qty": "bad"}, workflow_id="wf-bad")
        with pytest.raises(ValidationError):
            codec.decode_request(frame)
        assert codec.workflow_id_of(frame) == "wf-bad"

    @pytest.mark.parametrize(
        "frame",
        [b"", b"\xc1", b"\x01", pack([1]), pack({"workflow_id": 5}), pack("wf"),
         pack({"workflow_id": None}), pickle.dumps({"workflow_id": "x"}), b"\x81\xabworkflow_id"],
    )  # fmt: skip
    def test_garbage_gives_empty_string(self, frame: bytes) -> None:
        assert MessageCodec.workflow_id_of(frame) == ""


class TestPeerText:
    """What a peer sent is capped on receipt and quoted short and escaped in errors."""

    def test_workflow_id_at_the_cap_is_accepted(self, codec: MessageCodec) -> None:
        workflow_id = "w" * WORKFLOW_ID_MAX_CHARS
        assert codec.decode_request(codec.encode_request(ARGS, workflow_id)).workflow_id == (
            workflow_id
        )

    def test_workflow_id_over_the_cap_is_refused_and_not_echoed(self, codec: MessageCodec) -> None:
        frame = codec.encode_request(ARGS, "w" * (8 * 1024 * 1024))
        with pytest.raises(DecodeError) as info:
            codec.decode_request(frame)
        assert str(info.value) == (
            "workflow_id of 8,388,608 characters is longer than the 256-character cap"
        )
        assert codec.workflow_id_of(frame) == ""
        reply = MessageCodec.encode_reply({}, "w" * (WORKFLOW_ID_MAX_CHARS + 1))
        with pytest.raises(DecodeError, match="longer than the 256-character cap"):
            codec.decode_reply(reply)

    def test_publish_workflow_id_over_the_cap_is_refused(self, pub_args: Validator) -> None:
        codec = PublishCodec(pub_args, "")
        frame = codec.encode({"qty": 1}, "w" * (WORKFLOW_ID_MAX_CHARS + 1))
        with pytest.raises(DecodeError, match="257 characters is longer than the 256-character"):
            codec.decode(frame)
        assert codec.workflow_id_of(frame) == ""

    def test_unknown_key_is_quoted_short_and_escaped(self, codec: MessageCodec) -> None:
        key = "zz\n2026-01-01 00:00:00 INFO forged line\x1b[31m" + "k" * 1_000_000
        frame = pack({"v": 1, "workflow_id": "w", "args": {**ARGS, key: 1}})
        with pytest.raises(ValidationError) as info:
            codec.decode_request(frame)
        text = str(info.value)
        assert len(text) < 1_000
        assert "\n" not in text and "\x1b" not in text
        assert "'zz\\n2026-01-01 00:00:00 INFO forged line\\x1b[31mkkk" in text
        assert f"...({len(key):,} chars)' at $ (allowed: " in text

    def test_unknown_topic_is_quoted_short(self, pub_args: Validator) -> None:
        frame = PublishCodec(pub_args, "t\r" * 10_000).encode({"qty": 1}, "w")
        with pytest.raises(DecodeError) as info:
            PublishCodec(pub_args, "orders").decode(frame)
        assert len(str(info.value)) < 500 and "\r" not in str(info.value)

    def test_error_reply_text_is_capped_and_escaped(self) -> None:
        frame = MessageCodec.encode_error("ValueError", "bad\n" * 100_000, "w")
        message = msgspec.msgpack.decode(frame)["error"]["message"]
        assert len(message) < 2_000 and "\n" not in message
        assert message.startswith("bad\\nbad\\n")


# --------------------------------------------------------------------------- replies


class TestReplies:
    def test_round_trip_preserves_types(self, codec: MessageCodec) -> None:
        reply = codec.decode_reply(codec.encode_reply({**RETURNS, "reason": "ok"}, "wf-1"))
        assert isinstance(reply, Reply)
        assert reply.error is None
        assert reply.workflow_id == "wf-1"
        assert reply.return_args == {**RETURNS, "reason": "ok"}
        assert type(reply.return_args) is dict
        assert type(reply.return_args["order_id"]) is uuid.UUID
        assert type(reply.return_args["filled"]) is Decimal
        assert str(reply.return_args["filled"]) == "2.000"

    def test_error_reply(self, codec: MessageCodec) -> None:
        reply = codec.decode_reply(MessageCodec.encode_error("KeyError", "'sku' missing", "wf-3"))
        assert reply.return_args is None
        assert reply.workflow_id == "wf-3"
        assert reply.error is not None
        assert (reply.error.type, reply.error.message) == ("KeyError", "'sku' missing")

    def test_error_wins_over_return_args(self, codec: MessageCodec) -> None:
        frame = reply_frame(return_args=RETURNS, error={"type": "E", "message": "m"})
        reply = codec.decode_reply(frame)
        assert reply.return_args is None
        assert reply.error is not None and reply.error.type == "E"

    @pytest.mark.parametrize(
        ("return_args", "detail"),
        [
            ({"order_id": UUID_A}, "missing required key 'filled' at $"),
            (
                {**RETURNS, "zzz": 1},
                "unexpected key 'zzz' at $ (allowed: 'order_id', 'filled', 'reason')",
            ),
            ({**RETURNS, "reason": 5}, "expected str, got int at $.reason"),
        ],
    )
    def test_invalid_return_args_are_validation_errors(
        self, codec: MessageCodec, return_args: Any, detail: str
    ) -> None:
        with pytest.raises(ValidationError) as info:
            codec.decode_reply(reply_frame(return_args=return_args))
        assert info.value.detail == detail
        assert str(info.value) == f"shop: orders.returns: {detail}"

    @pytest.mark.parametrize(
        ("frame", "match"),
        [
            (reply_frame(), "neither return_args nor error"),
            (request_frame(ARGS), "neither return_args nor error"),
            (reply_frame(error={"type": 1, "message": "m"}), "at \\$\\.error\\.type$"),
            (reply_frame(error={"type": "E"}), "missing required key 'message' at \\$\\.error$"),
            (reply_frame(error="boom"), "at \\$\\.error$"),
            (reply_frame(return_args=RETURNS, v=2), "unsupported envelope version 2"),
            (b"\xc1", "not a msgpack message"),
            (pack(None), "malformed envelope"),
        ],
        ids=["empty", "request-as-reply", "error-type-int", "error-no-message", "error-str",
             "version", "bad-opcode", "nil"],
    )  # fmt: skip
    def test_malformed_replies_are_decode_errors(
        self, codec: MessageCodec, frame: bytes, match: str
    ) -> None:
        with pytest.raises(DecodeError, match=match):
            codec.decode_reply(frame)

    def test_reply_size_cap(self) -> None:
        frame = MessageCodec.encode_reply({"s": "x" * 50}, "w")
        args, returns = validator({}), validator({"s": str})
        assert MessageCodec(args, returns, max_bytes=len(frame)).decode_reply(frame).return_args
        with pytest.raises(DecodeError, match=r"^reply of \d+ bytes exceeds"):
            MessageCodec(args, returns, max_bytes=len(frame) - 1).decode_reply(frame)

    @pytest.mark.parametrize("return_args", [None, [1, 2], "text", {"k": {"n": 1}}])
    def test_unchecked_returns_pass_anything(self, return_args: Any) -> None:
        codec = MessageCodec(validator({}), validator(None, None))
        frame = MessageCodec.encode_reply(return_args, "w")
        assert codec.decode_reply(frame).return_args == return_args


# --------------------------------------------------------------------------- publish


@pytest.fixture(scope="module")
def pub_args() -> Validator:
    return validator({"qty": int}, {"note": str})


class TestPublish:
    def test_prefix_is_the_msgpack_topic(self, pub_args: Validator) -> None:
        codec = PublishCodec(pub_args, "orders")
        assert codec.prefix == topic_prefix("orders") == b"\x97" + pack("orders")
        assert codec.encode({"qty": 1}, "w").startswith(codec.prefix)
        # Subscribers also take the earlier five-element frame.
        assert (
            codec.prefixes
            == topic_prefixes("orders")
            == (
                b"\x97" + pack("orders"),
                b"\x95" + pack("orders"),
            )
        )

    def test_frame_layout(self, pub_args: Validator) -> None:
        codec = PublishCodec(pub_args, "orders", publisher="shop.orders/1a2b3c")
        frame = codec.encode({"qty": 1}, "wf-7", 41)
        assert msgspec.msgpack.decode(frame) == [
            "orders", 1, "wf-7", {"qty": 1}, None, "shop.orders/1a2b3c", 41
        ]  # fmt: skip
        decoded = codec.decode(frame)
        assert (decoded.publisher, decoded.seq) == ("shop.orders/1a2b3c", 41)

    def test_five_element_frame_has_no_sequence(self, pub_args: Validator) -> None:
        decoded = PublishCodec(pub_args, "orders").decode(
            pack(["orders", 1, "w", {"qty": 1}, None])
        )
        assert (decoded.args, decoded.publisher, decoded.seq) == ({"qty": 1}, "", -1)

    def test_meta_and_later_elements(self, pub_args: Validator) -> None:
        codec = PublishCodec(pub_args, "orders")
        frame = pack(["orders", 1, "w", {"qty": 1}, {"deadline": 5}, "p", 3, "later"])
        decoded = codec.decode(frame)
        assert (decoded.args, decoded.meta, decoded.seq) == ({"qty": 1}, {"deadline": 5}, 3)

    @pytest.mark.parametrize(
        "tail", [["p", -1], ["p", "3"], [3, 3], ["p" * (PUBLISHER_MAX_CHARS + 1), 3]]
    )
    def test_bad_publisher_or_sequence_is_rejected(self, pub_args: Validator, tail: list) -> None:
        with pytest.raises(DecodeError, match="malformed envelope"):
            PublishCodec(pub_args, "").decode(pack(["", 1, "w", {"qty": 1}, None, *tail]))

    def test_topic_is_not_a_prefix_of_a_longer_topic(self, pub_args: Validator) -> None:
        short, long = PublishCodec(pub_args, "orders"), PublishCodec(pub_args, "orders_eu")
        long_frame = long.encode({"qty": 1}, "w")
        short_frame = short.encode({"qty": 1}, "w")
        assert b"orders" in long_frame  # the raw name would match...
        assert not long_frame.startswith(short.prefix)  # ...the msgpack-encoded one does not
        assert not short_frame.startswith(long.prefix)

    def test_topic_codec_rejects_a_frame_of_another_topic(self, pub_args: Validator) -> None:
        # SUB filters only a message's first frame; later frames reach the decoder as is.
        orders, other = PublishCodec(pub_args, "orders"), PublishCodec(pub_args, "fills")
        with pytest.raises(DecodeError, match="frame is for topic 'fills', not 'orders'"):
            orders.decode(other.encode({"qty": 1}, "w"))

    def test_round_trip(self, pub_args: Validator) -> None:
        codec = PublishCodec(pub_args, "orders")
        request = codec.decode(codec.encode({"qty": 2, "note": "n"}, "wf-p"))
        assert (request.args, request.workflow_id, request.meta) == (
            {"qty": 2, "note": "n"},
            "wf-p",
            None,
        )

    def test_round_trip_preserves_types(self) -> None:
        codec = PublishCodec(validator(ARGS_REQUIRED, ARGS_OPTIONAL), "t")
        assert codec.decode(codec.encode(ARGS, "w")).args == ARGS

    @pytest.mark.parametrize("length", [0, 1, 5, 31, 32, 255, 256, 65535, 65536])
    def test_empty_topic_codec_decodes_any_topic(self, pub_args: Validator, length: int) -> None:
        sender = PublishCodec(pub_args, "t" * length)
        receiver = PublishCodec(pub_args, "")
        frame = sender.encode({"qty": length}, "wf")
        decoded = receiver.decode(frame)
        assert (decoded.args, decoded.workflow_id) == ({"qty": length}, "wf")
        assert receiver.workflow_id_of(frame) == "wf"

    @pytest.mark.parametrize("topic", ["", "orders"])
    @pytest.mark.parametrize(
        "frame",
        [b"", b"\x01", b"\xa3ab", b"\xa6orders", b"\xa6orders\xc1", b"\xa6orders\x93\x01\x02\x03",
         pack({"v": 1, "args": {"qty": 1}}), pack(["orders", 1, "w"]),
         pack(["orders", 1, "w", {"qty": 1}, "meta"]), b"\xd9", b"\xdb\xff\xff\xff\xff"],
    )  # fmt: skip
    def test_garbage_frames_raise_decode_error(
        self, pub_args: Validator, topic: str, frame: bytes
    ) -> None:
        with pytest.raises(DecodeError):
            PublishCodec(pub_args, topic).decode(frame)

    def test_invalid_args_raise_validation_error(self, pub_args: Validator) -> None:
        codec = PublishCodec(pub_args, "orders")
        frame = publish_frame("orders", {"qty": "1"})
        with pytest.raises(ValidationError) as info:
            codec.decode(frame)
        assert str(info.value) == "shop: orders.args: expected int, got str at $.qty"
        frame = publish_frame("orders", {"qty": 1, "zzz": 1})
        with pytest.raises(
            ValidationError, match=r"unexpected key 'zzz' at \$ \(allowed: 'qty', 'note'\)$"
        ):
            codec.decode(frame)

    def test_version_is_checked(self, pub_args: Validator) -> None:
        codec = PublishCodec(pub_args, "")
        with pytest.raises(DecodeError, match="unsupported envelope version 3"):
            codec.decode(publish_frame("", {"qty": 1}, v=3))
        # A later version may lay its frame out differently: still named as the version.
        with pytest.raises(DecodeError, match="unsupported envelope version 2"):
            codec.decode(pack(["", 2, {"new": "layout"}]))

    def test_size_cap(self, pub_args: Validator) -> None:
        frame = PublishCodec(pub_args, "t").encode({"qty": 1, "note": "x" * 40}, "w")
        assert PublishCodec(pub_args, "t", max_bytes=len(frame)).decode(frame).args["qty"] == 1
        with pytest.raises(DecodeError, match="exceeds"):
            PublishCodec(pub_args, "t", max_bytes=len(frame) - 1).decode(frame)

    def test_workflow_id_of_an_invalid_frame(self, pub_args: Validator) -> None:
        frame = publish_frame("orders", {"qty": "x"}, workflow_id="wf-bad")
        assert PublishCodec(pub_args, "orders").workflow_id_of(frame) == "wf-bad"

    @pytest.mark.parametrize("frame", [b"", b"\x01", b"\xa6orders", b"\xa6orders\xc1"])
    def test_workflow_id_of_garbage(self, pub_args: Validator, frame: bytes) -> None:
        assert PublishCodec(pub_args, "orders").workflow_id_of(frame) == ""


# --------------------------------------------------------------------------- topics


@pytest.mark.parametrize(
    ("length", "header"),
    [(0, 0xA0), (1, 0xA1), (31, 0xBF), (32, 0xD9), (255, 0xD9), (256, 0xDA), (65535, 0xDA),
     (65536, 0xDB)],
)  # fmt: skip
def test_topic_prefix_for_every_str_header_size(length: int, header: int) -> None:
    # A publish frame is a msgpack array of seven, topic first: its first bytes are the
    # array header and the topic as a msgpack str, whose header holds its length.
    topic = "t" * length
    prefix = topic_prefix(topic)
    assert prefix[0] == 0x97 and prefix[1] == header
    frame = PublishCodec(validator({"qty": int}), topic).encode({"qty": 1}, "w")
    assert frame.startswith(prefix)
    assert msgspec.msgpack.decode(frame)[0] == topic


# --------------------------------------------------------------------------- fuzz


def outcome(decode: Any, frame: bytes) -> Any:
    """Run a decoder: return its result or the expected error; anything else propagates."""
    try:
        return decode(frame)
    except EXPECTED_ERRORS as exc:
        return exc


@pytest.fixture(scope="module")
def decoders(codec: MessageCodec) -> list[Any]:
    publish = validator(ARGS_REQUIRED, ARGS_OPTIONAL)
    return [
        codec.decode_request,
        codec.decode_reply,
        PublishCodec(publish, "").decode,
        PublishCodec(publish, "orders").decode,
    ]


# Only types whose msgpack form is unambiguous: whatever the decoder accepts from these,
# the in-process validator must accept too.
STRICT_REQUIRED = {
    "qty": int,
    "name": str,
    "tags": {str},
    "pair": (int, str),
    "blob": bytes,
    "orders": [{"sku": str, "qty": int}],
    "side": {"buy", "sell"},
    "flag": bool,
}
STRICT_ARGS = {
    "qty": 3,
    "name": "n",
    "tags": {"a"},
    "pair": (1, "x"),
    "blob": b"\x01\x02",
    "orders": [{"sku": "s", "qty": 1}],
    "side": ["buy", "sell"],
    "flag": True,
}


class TestFuzz:
    @pytest.mark.timeout(30)
    @FUZZ
    @given(frame=st.binary(max_size=256))
    @example(frame=b"\xdd\xff\xff\xff\xff")  # array32 claiming 4G items
    @example(frame=b"\xdf\xff\xff\xff\xff")  # map32 claiming 4G pairs
    @example(frame=b"\xc7\x05\x01abcde")  # an ext type no hook knows
    def test_random_bytes(self, decoders: list[Any], frame: bytes) -> None:
        for decode in decoders:
            outcome(decode, frame)
        assert isinstance(MessageCodec.workflow_id_of(frame), str)

    @pytest.mark.timeout(30)
    @FUZZ
    @given(tail=st.binary(max_size=64))
    def test_random_envelope_contents(self, decoders: list[Any], tail: bytes) -> None:
        # A plausible map header and keys followed by random bytes reaches deeper code.
        frame = b"\x83\xa1v\x01\xabworkflow_id\xa1w\xa4args" + tail
        for decode in decoders:
            outcome(decode, frame)
            outcome(decode, b"\xa6orders" + frame)

    def test_every_truncation_of_a_valid_frame_is_rejected(self, codec: MessageCodec) -> None:
        frame = codec.encode_request(ARGS, "wf-1", {"m": 1})
        assert codec.decode_request(frame).args == ARGS
        for end in range(len(frame)):
            result = outcome(codec.decode_request, frame[:end])
            assert isinstance(result, EXPECTED_ERRORS), end

    @pytest.mark.timeout(30)
    @FUZZ
    @given(data=st.data())
    def test_bit_flips_of_a_valid_frame(self, data: st.DataObject) -> None:
        args = validator(STRICT_REQUIRED)
        codec = MessageCodec(args, validator(STRICT_REQUIRED, direction="returns"))
        frames = [codec.encode_request(STRICT_ARGS, "wf"), codec.encode_reply(STRICT_ARGS, "wf")]
        for frame, decode in zip(frames, (codec.decode_request, codec.decode_reply), strict=True):
            flips = data.draw(st.lists(st.integers(0, len(frame) * 8 - 1), min_size=1, max_size=3))
            mutated = bytearray(frame)
            for bit in flips:
                mutated[bit // 8] ^= 1 << (bit % 8)
            result = outcome(decode, bytes(mutated))
            payload = result.args if isinstance(result, Request) else None
            if isinstance(result, Reply) and result.error is None:
                payload = result.return_args
            if payload is not None:  # accepted: it must be a valid value after all
                assert args.check(payload), (bytes(mutated), payload)

    @pytest.mark.timeout(30)
    @pytest.mark.parametrize("depth", [1_000, 10_000, 100_000])
    @pytest.mark.parametrize("container", [b"\x91", b"\x81\xa1k"], ids=["arrays", "maps"])
    def test_deep_nesting_is_rejected(self, depth: int, container: bytes) -> None:
        nested = container * depth + b"\xc0"
        args_x = b"\x82\xa1v\x01\xa4args\x81\xa1x" + nested  # {"v": 1, "args": {"x": ...}}
        loose = MessageCodec(validator({"x": list}), validator({"x": list}))
        frames = {
            loose.decode_request: args_x,
            loose.decode_reply: b"\x82\xa1v\x01\xabreturn_args\x81\xa1x" + nested,
            # ["t", 1, "w", {"x": ...}] (no meta)
            PublishCodec(validator({"x": list}), "").decode: b"\x94\xa1t\x01\xa1w\x81\xa1x"
            + nested,
        }
        # The same depth where the model wants an int, and in an ignored envelope key.
        strict = MessageCodec(validator({"x": int}), validator({}))
        frames[strict.decode_request] = args_x
        frames[strict.decode_reply] = b"\x82\xa1v\x01\xa3zzz" + nested
        for decode, frame in frames.items():
            result = outcome(decode, frame)
            assert isinstance(result, EXPECTED_ERRORS), decode
        # Best effort, but never an exception.
        assert MessageCodec.workflow_id_of(b"\x82\xabworkflow_id\xa1w\xa1z" + nested) in ("w", "")

    def test_pickle_payload_is_never_unpickled(self, tmp_path: Path, codec: MessageCodec) -> None:
        marker = tmp_path / "pwned"

        class Touch:
            def __reduce__(self) -> tuple[Any, ...]:
                return (Path.touch, (marker,))

        payloads = [pickle.dumps(Touch(), protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
        # Control: the payload really would create the marker if it were unpickled.
        pickle.loads(payloads[-1])
        assert marker.exists()
        marker.unlink()

        blob_codec = MessageCodec(validator({"blob": bytes}), validator({}))
        publish = validator(ARGS_REQUIRED, ARGS_OPTIONAL)
        for payload in payloads:
            for decode in (
                codec.decode_request,
                codec.decode_reply,
                PublishCodec(publish, "").decode,
                PublishCodec(publish, "orders").decode,
            ):
                assert isinstance(outcome(decode, payload), EXPECTED_ERRORS)
            assert MessageCodec.workflow_id_of(payload) == ""
            # Carried as bytes inside a valid message, it stays bytes.
            frame = blob_codec.encode_request({"blob": payload}, "w")
            assert blob_codec.decode_request(frame).args == {"blob": payload}
        assert not marker.exists()


# --------------------------------------------------------------------------- properties

ROUND_TRIP_ARGS = st.fixed_dictionaries(
    {
        "order_id": st.uuids(),
        "qty": st.integers(-(2**63), 2**64 - 1),
        "price": st.decimals(allow_nan=False, allow_infinity=False),
        "tags": st.sets(st.text(max_size=4), max_size=3),
        "pair": st.tuples(st.integers(-100, 100), st.text(max_size=4)),
        "blob": st.binary(max_size=8),
        "orders": st.lists(
            st.fixed_dictionaries({"sku": st.text(max_size=4), "qty": st.integers(0, 9)}),
            max_size=3,
        ),
        "side": st.sampled_from(["buy", "sell"]),
    },
    optional={
        "note": st.text(max_size=8),
        "prices": st.dictionaries(
            st.text(max_size=4), st.decimals(allow_nan=False, allow_infinity=False), max_size=3
        ),
    },
)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(args=ROUND_TRIP_ARGS, workflow_id=st.text(max_size=8))
def test_request_round_trip_property(codec: MessageCodec, args: Any, workflow_id: str) -> None:
    request = codec.decode_request(codec.encode_request(args, workflow_id))
    assert request.args == args
    assert request.workflow_id == workflow_id
    assert validator(ARGS_REQUIRED, ARGS_OPTIONAL).check(request.args)
    publish = PublishCodec(validator(ARGS_REQUIRED, ARGS_OPTIONAL), workflow_id)
    assert publish.decode(publish.encode(args, workflow_id)).args == args
