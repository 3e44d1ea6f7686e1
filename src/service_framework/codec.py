"""The codec seam: what a connection needs to turn messages into frames and back.

A :class:`Codec` builds, once per connection at start-up, a :class:`RequestReplyCodec`
(requester, replyer) or a :class:`OneWayCodec` (publisher, subscriber, pusher, puller)
from the connection's compiled models; the connections call only what these protocols
state. A connection finds its codec on its environment (``ConnectionEnv.codec``), whose
default, :data:`DEFAULT_CODEC`, is the msgpack codec (``msgpack_codec.py``: msgspec
types built from the validation nodes, the envelope layout, the topic prefixes). The
names the msgpack codec has always had are importable from here too.

Every ``decode*`` raises :class:`~service_framework.errors.DecodeError` for a frame that
is not a message and :class:`~service_framework.errors.ValidationError` for a payload
that breaks its model, each with a text fit for an error reply. ``encode*`` returns the
frame to send: ``bytes``, typed so; a codec may hand over a large frame as a
``zmq.Frame`` instead (the msgpack codec does for array models, to save a copy), which
every send in this package takes alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias, runtime_checkable

from .msgpack_codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ENVELOPE_VERSION,
    MSGPACK,
    PUBLISHER_MAX_CHARS,
    MessageCodec,
    PublishCodec,
    topic_prefix,
    topic_prefixes,
)
from .workflow import WORKFLOW_ID_MAX_CHARS

if TYPE_CHECKING:
    import zmq

    from .generated import Fragment
    from .validation import Node, Validator

#: What a codec decodes: bytes, or a buffer such as a ``zmq.Frame`` received without a
#: copy (a replyer's or puller's, which read ``frame.more`` off it).
Buffer: TypeAlias = "bytes | memoryview | zmq.Frame"

__all__ = [
    "DEFAULT_CODEC",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ENVELOPE_VERSION",
    "PUBLISHER_MAX_CHARS",
    "WORKFLOW_ID_MAX_CHARS",
    "Buffer",
    "Codec",
    "ErrorInfo",
    "MessageCodec",
    "OneWayCodec",
    "PublishCodec",
    "Published",
    "Reply",
    "Request",
    "RequestReplyCodec",
    "topic_prefix",
    "topic_prefixes",
]


@runtime_checkable
class Request(Protocol):
    """A decoded request or published message (the envelope itself, ``args`` already
    converted to plain values: no per-message wrapper object is built)."""

    args: Any
    workflow_id: str
    meta: dict[str, Any] | None


@runtime_checkable
class Published(Request, Protocol):
    """A decoded published message: a :class:`Request` plus who sent it and its number
    (``""`` and ``-1`` when the frame carries none)."""

    publisher: str
    seq: int


class ErrorInfo(Protocol):
    """The far side's error in a reply: its exception type's name and its message."""

    type: str
    message: str


@runtime_checkable
class Reply(Protocol):
    """A decoded reply: ``error`` is ``None`` or the far side's error; otherwise
    ``return_args`` holds the (converted) reply."""

    return_args: Any
    error: ErrorInfo | None
    workflow_id: str


class RequestReplyCodec(Protocol):
    """Requests and replies of one request/reply connection."""

    max_bytes: int  # frames longer than this are refused undecoded

    def encode_request(
        self, args: Any, workflow_id: str, meta: dict[str, Any] | None = None
    ) -> bytes: ...

    def decode_request(self, frame: Buffer, /) -> Request:
        """Decode and validate a request (the args against the args model)."""
        ...

    def workflow_id_of(self, frame: Buffer, /) -> str:
        """Best-effort workflow id of a frame that failed to decode (``""`` if none)."""
        ...

    def encode_reply(self, return_args: Any, workflow_id: str) -> bytes: ...

    def encode_error(self, error_type: str, message: str, workflow_id: str) -> bytes:
        """An error reply (its message cut short and escaped)."""
        ...

    def decode_reply(self, frame: Buffer, /) -> Reply:
        """Decode a reply; its ``return_args`` are validated against the returns model."""
        ...

    # The same four as lines of a connection's generated per-message function (see
    # generated.py): each sets the local ``into`` from the locals it is given, or
    # raises as its method does; a decode also sets the local it is given last to the
    # payload as plain values (``args``; ``result``: the return args, or None for an
    # error reply), as its method's result holds them. A codec without lines of its
    # own returns ``Fragment.call(into, method, ...)``, plus a line reading the payload
    # off ``into`` for a decode.
    def encode_request_source(self, args: str, workflow_id: str, into: str) -> Fragment: ...

    def decode_request_source(self, frame: str, into: str, args: str) -> Fragment: ...

    def encode_reply_source(self, return_args: str, workflow_id: str, into: str) -> Fragment: ...

    def decode_reply_source(self, frame: str, into: str, result: str) -> Fragment: ...


class OneWayCodec(Protocol):
    """Frames of one publish/subscribe or push/pull connection."""

    max_bytes: int  # frames longer than this are refused undecoded
    prefix: bytes  # what every frame this codec encodes starts with
    prefixes: tuple[bytes, ...]  # what a subscriber to this codec's topic subscribes to

    def encode(self, args: Any, workflow_id: str, seq: int = 0) -> bytes: ...

    def decode(self, frame: Buffer, /) -> Published:
        """Decode and validate a frame (the args against the args model)."""
        ...

    def workflow_id_of(self, frame: Buffer, /) -> str:
        """Best-effort workflow id of a frame that failed to decode (``""`` if none)."""
        ...

    # encode and decode as lines of a generated function (as RequestReplyCodec's).
    def encode_source(self, args: str, workflow_id: str, seq: str, into: str) -> Fragment: ...

    def decode_source(self, frame: str, into: str, args: str) -> Fragment: ...


class Codec(Protocol):
    """Builds the per-connection codecs (once, at start-up) and says which models can
    travel at all."""

    def request_reply(
        self, args: Validator, returns: Validator, *, max_bytes: int = ...
    ) -> RequestReplyCodec:
        """The codec of a requester or replyer with these models."""
        ...

    def one_way(
        self, args: Validator, topic: str, *, max_bytes: int = ..., publisher: str = ""
    ) -> OneWayCodec:
        """The codec of a publisher, subscriber (``topic``: ``""`` for every topic),
        pusher or puller (``topic`` ``""``); ``publisher`` names the sending side."""
        ...

    def check_wire(self, node: Node) -> None:
        """Raise :class:`~service_framework.validation.UnsupportedOnWire` unless values
        of ``node`` can travel (a start-up check of every model)."""
        ...


DEFAULT_CODEC: Final[Codec] = MSGPACK
