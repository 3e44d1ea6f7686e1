"""The msgpack codec: envelopes to bytes and back through msgspec (the default codec).

Everything that knows msgspec lives here: the msgspec types built from the validation
node tree (so a decode validates in the same C pass and restores ``Decimal``, ``UUID``,
``bytes``, sets and tuples), the generated converters from decoded values back to plain
dicts, the rewriting of msgspec's error texts in the validator's words, the envelope and
frame layout with its topic prefixes, and the hookup of numpy arrays as extension types.
``codec.py`` states what the connections need of a codec; :data:`MSGPACK` is this one.

Wire format. Request/reply envelopes are msgpack maps (receivers ignore keys they do
not know, so later versions can add keys without breaking older peers):

* request  ``{"v": 1, "workflow_id": str, "args": {...}, "meta": {...}?}``
* reply    ``{"v": 1, "workflow_id": str, "return_args": {...}}``
* error    ``{"v": 1, "workflow_id": str, "error": {"type": str, "message": str}}``

A published message is the throughput path, so its frame is a msgpack array of exactly
seven: ``[topic, 1, workflow_id, args, meta, publisher, seq]`` (``meta`` is nil when
there is none). ``publisher`` is the publishing socket's tag (8 random hex digits, new
each time it starts, logged by the publisher with its service and connection: short,
since it travels in every frame) and ``seq`` counts its messages from 0, so a
subscriber sees which messages it missed (a gap in ``seq``) and from whom.
Positions instead of keys make the frame cheaper to encode and to decode, and the fixed
length keeps its leading bytes - the array header, then the topic as a msgpack str,
whose header holds its length - the same for every message on a topic. SUB sockets
filter on those bytes, so topic ``"orders"`` never matches ``"orders_eu"``. Receivers
also accept the earlier five-element frame, ``[topic, 1, workflow_id, args, meta]``
(no sequence: nothing to count), and subscribe to both headers; they ignore elements
after the seventh. New fields travel in ``meta``. A pushed message is a publish frame
with an empty topic.

``v`` changes only for an incompatible change; a receiver rejects versions it does not
know. ``meta`` is room for metadata that travels with a message (deadlines, tracing).

A workflow id is at most ``WORKFLOW_ID_MAX_CHARS`` (256) characters and a publisher
name at most ``PUBLISHER_MAX_CHARS`` (256): msgspec checks both in the same decode pass
and a longer one is refused like any malformed envelope. Error texts quote what a peer
sent cut short and escaped (see :func:`service_framework.logs.clip`), so neither a
log line nor an error reply can be made huge or split into forged lines.

Decoding a request validates its ``args`` against the connection's compiled model in
the same msgspec pass. Nothing is ever unpickled: msgpack has no code-bearing types.
numpy arrays travel as msgpack extension types holding dtype, shape and the raw elements
(``arrays.py``); only decoders whose models declare an array get the hooks.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import itertools
import keyword
import re
import typing
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Union

import msgspec
import zmq

from .arrays import ARRAY_DATA, ARRAY_HEADER, array_parts, read_part, rebuild
from .errors import DecodeError
from .generated import Fragment, function_of, unique_prefix
from .logs import ERROR_TEXT_MAX, clip
from .validation import (
    AnyNode,
    ClassNode,
    CodeGen,
    DictNode,
    FieldsNode,
    ListNode,
    LiteralNode,
    NdarrayNode,
    Node,
    NoneNode,
    SetNode,
    TupleNode,
    TypedDictNode,
    TypeNode,
    UnionNode,
    UnsupportedOnWire,
    Validator,
    VarTupleNode,
    child_path,
    contains_arrays,
)
from .workflow import WORKFLOW_ID_MAX_CHARS

if TYPE_CHECKING:
    from .codec import Buffer, Published, Reply, Request

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ENVELOPE_VERSION",
    "GENERATED_SCHEMA_NAME",
    "MSGPACK",
    "PUBLISHER_MAX_CHARS",
    "MessageCodec",
    "MsgpackCodec",
    "PublishCodec",
    "StructKey",
    "build_converter",
    "check_wire",
    "json_schemas",
    "struct_keys",
    "topic_prefix",
    "topic_prefixes",
    "wire_type",
]

ENVELOPE_VERSION: Final = 1
DEFAULT_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
PUBLISHER_MAX_CHARS: Final = 256

# Checked by msgspec while it decodes: a longer id is refused, never logged whole.
WorkflowId = Annotated[str, msgspec.Meta(max_length=WORKFLOW_ID_MAX_CHARS)]
PublisherName = Annotated[str, msgspec.Meta(max_length=PUBLISHER_MAX_CHARS)]
SeqNumber = Annotated[int, msgspec.Meta(ge=0)]


# --------------------------------------------------------------------------- wire types

# Types msgspec encodes and decodes natively (besides builtins, Structs, dataclasses).
_NATIVE_TYPES = frozenset(
    {
        int,
        float,
        bool,
        str,
        bytes,
        bytearray,
        dict,
        list,
        set,
        frozenset,
        tuple,
        decimal.Decimal,
        uuid.UUID,
        _dt.datetime,
        _dt.date,
        _dt.time,
        _dt.timedelta,
        memoryview,
        type(None),
    }
)

# One wire type per node, built once: a dict-shaped node's generated Struct must be the
# very class its decoders produce (the converters test for it by identity).
_WIRE: weakref.WeakKeyDictionary[Node, Any] = weakref.WeakKeyDictionary()
_STRUCT_NAMES = itertools.count()
GENERATED_SCHEMA_NAME: Final = re.compile(r"^Fields\d+$")  # names of the Structs made here


def _subscript(generic: Any, params: Any) -> Any:
    """``generic[params]`` for types built at run time (``Literal[...]``, ``Union[...]``)."""
    return generic[params]


def wire_type(node: Node) -> Any:
    """The msgspec type values described by ``node`` decode as (built once per node).

    Raises :class:`UnsupportedOnWire` for a spec that has no unambiguous msgpack form.
    """
    found = _WIRE.get(node)
    if found is None:
        found = _WIRE[node] = _build_wire(node)
    return found


def check_wire(node: Node) -> None:
    """Raise :class:`UnsupportedOnWire` unless values of ``node`` can travel."""
    wire_type(node)


def _build_wire(node: Node) -> Any:
    if isinstance(node, AnyNode):
        return Any
    if isinstance(node, NoneNode):
        return None
    if isinstance(node, TypeNode):
        return _class_wire(node.cls)
    if isinstance(node, ListNode):
        return list[wire_type(node.item)]  # type: ignore[misc]
    if isinstance(node, SetNode):
        return set[wire_type(node.item)]  # type: ignore[misc]
    if isinstance(node, VarTupleNode):
        return tuple[wire_type(node.item), ...]  # type: ignore[misc]
    if isinstance(node, TupleNode):
        if not node.items:
            return tuple[()]
        return tuple[tuple(wire_type(i) for i in node.items)]  # type: ignore[misc]
    if isinstance(node, LiteralNode):
        return _literal_wire(node)
    if isinstance(node, DictNode):
        return dict[wire_type(node.key), wire_type(node.value)]  # type: ignore[misc]
    if isinstance(node, TypedDictNode):  # before FieldsNode, which it is
        return node.td
    if isinstance(node, FieldsNode):
        return _fields_wire(node)
    if isinstance(node, UnionNode):
        return _union_wire(node)
    if isinstance(node, ClassNode):
        return node.cls
    if isinstance(node, NdarrayNode):
        # A custom type to msgspec: rebuilt by the arrays hooks, which decoders of
        # models containing this node get.
        return node.ndarray
    raise UnsupportedOnWire(f"{node.describe()} has no msgpack form")


def _class_wire(cls: type) -> Any:
    if cls in _NATIVE_TYPES:
        return cls
    if issubclass(cls, enum.Enum) or hasattr(cls, "__attrs_attrs__"):
        return cls
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):  # NamedTuple
        return cls
    # msgspec would accept any class here and defer to a decode hook at run time;
    # we set none, so refuse up front rather than fail on the first message.
    raise UnsupportedOnWire(f"type {cls.__qualname__} cannot be sent as msgpack")


def _literal_wire(node: LiteralNode) -> Any:
    for v in node.values:
        if not (v is None or isinstance(v, (str, int))):
            raise UnsupportedOnWire(
                f"literal {v!r} cannot be sent as msgpack (only str, int, bool, None)"
            )
    lit = _subscript(typing.Literal, node.values)
    if node.allow_collection:
        return _subscript(Union, (lit, list[lit]))  # type: ignore[valid-type]
    return lit


def _field_attrs(node: FieldsNode) -> tuple[str, ...]:
    """The attribute names of a dict-shaped node's Struct: its keys, when every key can
    be one (then ``msgspec.structs.asdict`` turns a decoded value into the dict, in C);
    else ``f0``, ``f1``... (a key need not be an identifier, or may be a keyword), which
    ``rename`` maps to the keys on the wire."""
    keys = node.keys
    if all(
        isinstance(key, str)
        and key.isidentifier()
        and not keyword.iskeyword(key)
        and not key.startswith("_")
        for key in keys
    ):
        return tuple(typing.cast(Sequence[str], keys))
    return tuple(f"f{i}" for i in range(len(keys)))


def wire_struct(name: str, fields: list[tuple[Any, ...]], **options: Any) -> Any:
    """A ``msgspec.Struct`` type that values are decoded into on their way to plain
    values (``defstruct(name, fields, **options)``), never tracked by the garbage
    collector (``gc=False``).

    Safe because no cycle can pass through one: an instance is made by a decoder from
    bytes (which hold no references), converted or unpacked by the framework's own
    generated code and dropped; a handler gets plain values, never the Struct. Not
    tracked, it skips the collector's bookkeeping on every decode and adds nothing to
    the count that triggers a collection (measured in one process: about 50 ns less
    to decode a six-key published message)."""
    return msgspec.defstruct(name, fields, gc=False, **options)


def _fields_wire(node: FieldsNode) -> Any:
    fields: list[tuple[Any, ...]] = []
    rename: dict[str, str] = {}
    for attr, key in zip(_field_attrs(node), node.keys, strict=True):
        if not isinstance(key, str):
            raise UnsupportedOnWire(f"key {key!r} is not a str; msgpack maps need str keys")
        if attr != key:
            rename[attr] = key
        wire = _key_wire(node.required.get(key) or node.optional[key], key)
        if key in node.required:
            fields.append((attr, wire))
        else:
            fields.append((attr, Union[wire, msgspec.UnsetType], msgspec.UNSET))  # noqa: UP007
    return wire_struct(
        f"Fields{next(_STRUCT_NAMES)}",
        fields,
        rename=rename or None,
        forbid_unknown_fields=True,
        omit_defaults=True,
    )


def _key_wire(node: Node, key: object) -> Any:
    try:
        return wire_type(node)
    except UnsupportedOnWire as exc:
        if str(exc).startswith("key "):
            raise
        raise UnsupportedOnWire(f"key {key!r}: {exc}") from exc


def _union_wire(node: UnionNode) -> Any:
    union = _subscript(Union, tuple(wire_type(m) for m in node.members))
    try:
        msgspec.msgpack.Decoder(union)
    except TypeError as exc:
        raise UnsupportedOnWire(
            f"{node.describe()} cannot be told apart in msgpack: {exc}"
        ) from exc
    return union


# --------------------------------------------------------------------------- converters


def build_converter(node: Node) -> Callable[[Any], Any] | None:
    """A generated function turning a value decoded as :func:`wire_type` into plain
    dicts/lists, or ``None`` when the decoded value already is plain."""
    cg = CodeGen()
    cg.ns["UNSET"] = msgspec.UNSET
    holder: list[str | None] = []

    def body() -> None:
        holder.append(_conv(node, cg, "x"))
        cg.lines.append(f"    return {holder[0]}")

    name = cg.function("entry", "_entry", body)
    if holder[0] is None:
        return None
    convert = cg.build(name)
    # An entry that only calls one generated function is that function: one call less.
    called = holder[0].removesuffix("(x)")
    return typing.cast(Callable[[Any], Any], cg.ns[called]) if called in cg.ns else convert


def _conv(node: Node, cg: CodeGen, var: str) -> str | None:
    """An expression turning the decoded ``var`` into its plain value, if it differs."""
    if isinstance(node, TypedDictNode):  # decoded natively: a dict already
        return None
    if isinstance(node, FieldsNode):
        return _fields_conv(node, cg, var)
    if isinstance(node, (ListNode, VarTupleNode)):
        v = cg.var()
        inner = _conv(node.item, cg, v)
        if inner is None:
            return None
        if isinstance(node, ListNode):
            return f"[{inner} for {v} in {var}]"
        return f"tuple({inner} for {v} in {var})"
    if isinstance(node, TupleNode):
        parts = [_conv(i, cg, f"{var}[{n}]") for n, i in enumerate(node.items)]
        if all(p is None for p in parts):
            return None
        exprs = [p if p is not None else f"{var}[{n}]" for n, p in enumerate(parts)]
        return f"({', '.join(exprs)},)"
    if isinstance(node, DictNode):
        k, v = cg.var(), cg.var()
        inner = _conv(node.value, cg, v)
        return None if inner is None else f"{{{k}: {inner} for {k}, {v} in {var}.items()}}"
    if isinstance(node, UnionNode):
        return _union_conv(node, cg, var)
    return None  # scalars, sets, literals, classes, arrays: decoded as they are


def _fields_conv(node: FieldsNode, cg: CodeGen, var: str) -> str:
    attrs = _field_attrs(node)
    if not node.optional:
        convs = [
            _conv(item, cg, f"{var}.{attr}")
            for attr, item in zip(attrs, node.required.values(), strict=True)
        ]
        if attrs == tuple(node.required) and all(conv is None for conv in convs):
            # Attributes named as the keys, values as decoded: msgspec's asdict, in C.
            cg.ns["asdict"] = msgspec.structs.asdict
            return f"asdict({var})"
        # A dict display in place: no call per dict (a list of 8 of them makes 8 calls
        # fewer). ``var`` is a name, attribute or index: cheap to read once per key.
        items = [
            f"{cg.const(key)}: {conv or f'{var}.{attr}'}"
            for key, attr, conv in zip(node.required, attrs, convs, strict=True)
        ]
        return f"{{{', '.join(items)}}}"

    def body() -> None:
        items = []
        for attr, key in zip(attrs, node.required, strict=False):
            value = f"x.{attr}"
            items.append(f"{cg.const(key)}: {_conv(node.required[key], cg, value) or value}")
        cg.lines.append(f"    d = {{{', '.join(items)}}}")
        offset = len(node.required)
        for i, (key, item) in enumerate(node.optional.items()):
            v = cg.var()
            cg.lines.append(f"    {v} = x.{attrs[offset + i]}")
            expr = _conv(item, cg, v) or v
            cg.lines.append(f"    if {v} is not UNSET: d[{cg.const(key)}] = {expr}")
        cg.lines.append("    return d")

    return f"{cg.function(('conv', id(node)), '_conv', body)}({var})"


def _union_conv(node: UnionNode, cg: CodeGen, var: str) -> str | None:
    convs = [(m, _conv(m, cg, "x")) for m in node.members]
    if all(c is None for _, c in convs):
        return None

    def body() -> None:
        for m, c in convs:
            if c is None:
                continue
            if isinstance(m, FieldsNode):
                guard = f"type(x) is {cg.const(wire_type(m))}"
            elif isinstance(m, (ListNode, VarTupleNode)):
                guard = "type(x) is list"
            elif isinstance(m, TupleNode):
                guard = "type(x) is tuple"
            else:
                guard = "type(x) is dict"
            cg.lines.append(f"    if {guard}: return {c}")
        cg.lines.append("    return x")

    name = cg.function(("uconv", id(node)), "_uconv", body)
    return f"{name}({var})"


# --------------------------------------------------------------------------- error texts

# msgspec's names for what it found on the wire, in the validator's words.
_WIRE_NAMES = {"array": "list", "object": "dict", "null": "None"}
# DOTALL: a name or value quoted from the peer may hold any character, newlines too.
_EXPECTED = re.compile(r"^Expected `(.+?)`, got `(.+?)`$", re.DOTALL)
_LENGTH = re.compile(r"^Expected `array` of length (\d+), got (\d+)$")
_MISSING = re.compile(r"^Object missing required field `(.+?)`$", re.DOTALL)
_UNKNOWN = re.compile(r"^Object contains unknown field `(.+?)`$", re.DOTALL)
_ENUM = re.compile(r"^Invalid enum value (.+)$", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[]*)|\[(\d+|\.\.\.)\]")


def _split_msgspec_error(text: str) -> tuple[str, str, bool]:
    """``"Expected `int`, got `str` - at `$.args.qty`"`` -> (message, path, about_key).

    A bad dict key reads ``... - at `key` in `$.args.prices```."""
    message, sep, where = text.rpartition(" - at `")
    if not sep:
        return text, "$", False
    where = where.rstrip("`")
    if where.startswith("key` in `"):
        return message, where[len("key` in `") :], True
    return message, where, False


def node_at(node: Node, path: str) -> tuple[Node | None, str]:
    """The node a msgspec error path (``$.orders[2].qty``, ``$.m[...]``) points into, and
    the path rewritten in the validator's notation (``$['my-key']`` for a key that is not
    an identifier). ``(None, path)`` when the path cannot be followed."""
    if not path.startswith("$"):
        return None, path
    position, shown = 1, "$"
    while position < len(path):
        match = _SEGMENT.match(path, position)
        if match is None:
            return None, path
        position = match.end()
        key, index = match.groups()
        found: Node | None = None
        if key is not None and isinstance(node, FieldsNode):
            found = node.required.get(key) or node.optional.get(key)
            shown = child_path(shown, key)
        elif key is not None and isinstance(node, ClassNode):
            found = node.fields.get(key)
            shown = child_path(shown, key)
        elif index == "..." and isinstance(node, DictNode):
            found, shown = node.value, f"{shown}[...]"
        elif index is not None and isinstance(node, (ListNode, SetNode, VarTupleNode)):
            found, shown = node.item, f"{shown}[{index}]"
        elif (
            index is not None
            and index != "..."
            and isinstance(node, TupleNode)
            and int(index) < len(node.items)
        ):
            found, shown = node.items[int(index)], f"{shown}[{index}]"
        if found is None:
            return None, path
        node = found
    return node, shown


def _translate(text: str, root: str, node: Node) -> tuple[str, bool]:
    """Rewrite a msgspec error about ``$.<field>...`` in the framework's words (the
    validator's words for the same problem, as far as the wire lets us know them).

    Returns ``(detail, inside)`` where ``inside`` says whether the error is about the
    payload (``args``/``return_args``) rather than the envelope around it.
    """
    message, path, about_key = _split_msgspec_error(text)
    inside = path == root or path.startswith((root + ".", root + "["))
    if not inside:
        return f"{_generic(message)} at {path}", False
    at, path = node_at(node, "$" + path[len(root) :])
    if about_key and isinstance(at, DictNode):
        found = _EXPECTED.match(message)
        got = _WIRE_NAMES.get(found.group(2), found.group(2)) if found else "?"
        return f"expected key of type {at.key.describe()}, got {got} at {path}", True
    if about_key:
        return f"{_generic(message)} at key in {path}", True
    unknown = _UNKNOWN.match(message)
    if unknown and isinstance(at, FieldsNode):
        return at.unexpected(_shorten(unknown.group(1)), path), True
    if at is not None:
        found = _EXPECTED.match(message)
        if found:
            got = _WIRE_NAMES.get(found.group(2), found.group(2))
            return f"expected {at.describe()}, got {got} at {path}", True
        length = _LENGTH.match(message)
        if length:
            got_length = length.group(2)
            return f"expected {at.describe()}, got list of length {got_length} at {path}", True
        enum = _ENUM.match(message)
        if enum:
            return f"expected {at.describe()}, got {clip(enum.group(1))} at {path}", True
    return f"{_generic(message)} at {path}", True


def _shorten(text: str) -> str:
    """A peer's string cut to what an error text quotes (the quoting escapes it)."""
    return text if len(text) <= _QUOTED else f"{text[:_QUOTED]}...({len(text):,} chars)"


_QUOTED = 200  # characters of a peer's string quoted in an error text


def _generic(message: str) -> str:
    found = _EXPECTED.match(message)
    if found:
        expected, got = (_WIRE_NAMES.get(g, g) for g in found.groups())
        return f"expected {expected}, got {got}"
    found = _MISSING.match(message)
    if found:
        return f"missing required key '{found.group(1)}'"
    found = _UNKNOWN.match(message)
    if found:
        return f"unexpected key {_shorten(found.group(1))!r}"
    return clip(message, ERROR_TEXT_MAX)


# --------------------------------------------------------------------------- arrays


def _encode_hook(obj: Any) -> Any:
    """msgspec ``enc_hook``: a numpy array becomes its two extension values (msgspec
    calls it only for values it cannot encode itself: no cost for other messages)."""
    header, elements = array_parts(obj)
    return msgspec.msgpack.Ext(ARRAY_HEADER, header), msgspec.msgpack.Ext(ARRAY_DATA, elements)


def _decode_ext(code: int, data: memoryview) -> Any:
    """msgspec ``ext_hook``: array parts for the two array codes; any other extension
    type stays :class:`msgspec.msgpack.Ext`, as without a hook."""
    part = read_part(code, data)
    return msgspec.msgpack.Ext(code, bytes(data)) if part is None else part


def _decode_hook(kind: type, obj: Any) -> Any:
    """msgspec ``dec_hook``: the two parts of an array become the array."""
    return rebuild(obj)


# --------------------------------------------------------------------------- envelopes


class ErrorInfo(msgspec.Struct):
    type: str
    message: str


class _Loose(msgspec.Struct):
    """Just enough of an envelope to report on one that did not decode."""

    v: Any = None
    workflow_id: Any = ""


class _LooseFrame(msgspec.Struct, array_like=True):
    """Just enough of a publish frame to report on one that did not decode."""

    topic: Any = None
    v: Any = None
    workflow_id: Any = ""


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_encode_hook)
_LOOSE = msgspec.msgpack.Decoder(_Loose)
_LOOSE_FRAME = msgspec.msgpack.Decoder(_LooseFrame)


def encode_error(error_type: str, message: str, workflow_id: str) -> bytes:
    """An error reply. Its text may quote what a peer sent (a handler's message often
    does): it is cut to ``ERROR_TEXT_MAX`` characters and escaped, so an error reply is
    never much larger than the request that caused it, nor several lines in a log."""
    if len(message) > ERROR_TEXT_MAX or not message.isprintable():
        message = clip(message, ERROR_TEXT_MAX)
    return _ENCODER.encode(
        {
            "v": ENVELOPE_VERSION,
            "workflow_id": workflow_id,
            "error": {"type": error_type, "message": message},
        }
    )


def topic_prefix(topic: str) -> bytes:
    """The leading bytes of every frame published on ``topic``: a publish frame is a
    msgpack array of seven, so it starts with the array's header byte and the topic as a
    msgpack str (whose header holds its length: an exact match)."""
    return _ARRAY_OF_SEVEN + _ENCODER.encode(topic)


def topic_prefixes(topic: str) -> tuple[bytes, bytes]:
    """What a subscriber to ``topic`` subscribes to: the frame of today
    (:func:`topic_prefix`) and the earlier five-element frame, which has no sequence."""
    return topic_prefix(topic), _ARRAY_OF_FIVE + _ENCODER.encode(topic)


_ARRAY_OF_SEVEN = b"\x97"
_ARRAY_OF_FIVE = b"\x95"


def _read_loose(loose: msgspec.msgpack.Decoder[Any], frame: Buffer) -> Any:
    """``frame`` decoded with a ``_Loose``/``_LooseFrame`` decoder; ``None`` if it is not
    even that."""
    try:
        return loose.decode(frame)  # type: ignore[arg-type]  # a zmq.Frame is a buffer
    except Exception:
        return None


def _workflow_id_in(loose: msgspec.msgpack.Decoder[Any], frame: Buffer) -> str:
    wid = getattr(_read_loose(loose, frame), "workflow_id", "")
    # An over-long id was the reason to refuse the frame: it is not echoed or logged.
    return wid if isinstance(wid, str) and len(wid) <= WORKFLOW_ID_MAX_CHARS else ""


def _too_large_error(what: str, max_bytes: int) -> Callable[[int], DecodeError]:
    """The error for a frame of ``size`` bytes over the cap, which is not decoded."""

    def too_large(size: int) -> DecodeError:
        return DecodeError(f"{what} of {size} bytes exceeds the {max_bytes}-byte cap")

    return too_large


# The name generated code calls the one encoder by (the same object in every fragment).
_ENCODE: Final = "_msgpack_encode"
_ENCODE_FN: Final = _ENCODER.encode  # bound once: merge() tells names apart by identity


def _envelope_source(into: str, workflow_id: str, key: str, value: str) -> Fragment:
    """The line that encodes a request or reply envelope (``key``: its payload's key)."""
    envelope = f"{{'v': {ENVELOPE_VERSION}, 'workflow_id': {workflow_id}, {key!r}: {value}}}"
    return Fragment((f"{into} = {_ENCODE}({envelope})",), {_ENCODE: _ENCODE_FN})


def _decoder(lines: Callable[[str, str, str], Fragment], field: str, what: str) -> Any:
    """The callable form of a decode: ``lines(frame, into, plain)`` (a decode's lines,
    which set ``into`` to the envelope and ``plain`` to its payload as plain values)
    compiled on their own, the plain payload put back into the envelope as ``field``:
    ``decode(frame)`` returns the envelope alone."""
    fragment = lines("frame", "env", "plain")
    body = Fragment((*fragment.lines, f"env.{field} = plain"), fragment.names)
    return function_of(body, "frame", "env", f"decode {what}")


class _Decoding:
    """A typed decoder for one envelope shape plus the converter back to plain dicts.

    Every envelope declares ``v`` as ``Literal[ENVELOPE_VERSION]``, so msgspec checks
    the version in its one pass; :meth:`fail` explains a frame that did not decode,
    off the per-message path.
    """

    __slots__ = ("check_loose", "convert", "decoder", "loose", "root", "validator")

    def __init__(
        self,
        envelope: type[msgspec.Struct],
        node: Node,
        root: str,
        validator: Validator,
        loose: msgspec.msgpack.Decoder[Any],
        check_loose: Callable[[Any], Exception | None] | None = None,
    ):
        # Envelope structs are built at run time; read their fields as Any.
        arrays = contains_arrays(node)
        self.decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(
            envelope,
            ext_hook=_decode_ext if arrays else None,
            dec_hook=_decode_hook if arrays else None,
        )
        self.convert = build_converter(node)
        self.root = root  # where the payload sits in the frame, e.g. "$.args"
        self.validator = validator
        self.loose = loose  # reads v and workflow_id from a frame that did not decode
        self.check_loose = check_loose  # any further check on that loose reading

    def reader(self, max_bytes: int, what: str) -> Callable[[Buffer], Any]:
        """The per-message decode as a function: the size cap, one msgspec pass, errors
        explained by :meth:`fail`, and ``args`` turned into plain values -
        :meth:`source`'s lines, compiled on their own, the plain args put back into the
        envelope they return."""
        read: Callable[[Buffer], Any] = _decoder(
            lambda frame, into, plain: self.source(frame, into, max_bytes, what, args=plain),
            "args",
            what,
        )
        return read

    def source(
        self, frame: str, into: str, max_bytes: int, what: str, *, args: str | None = None
    ) -> Fragment:
        """:meth:`reader` as lines of a generated function: they set ``into`` to the
        decoded envelope of the local ``frame``, or raise as ``read`` does; and, given
        ``args``, that local to the envelope's args as plain values (``into.args`` is
        left as decoded: a msgspec Struct's attribute costs ~40 ns more to set than a
        local)."""
        p = unique_prefix()
        names: dict[str, Any] = {
            f"{p}decode": self.decoder.decode,
            f"{p}fail": self.fail,
            f"{p}too_large": _too_large_error(what, max_bytes),
        }
        lines = [
            f"if len({frame}) > {max_bytes}:",
            f"    raise {p}too_large(len({frame}))",
            "try:",
            f"    {into} = {p}decode({frame})",
            f"except Exception as {p}exc:",
            f"    raise {p}fail({p}exc, {frame}) from None",
        ]
        if args is not None:
            lines.append(self.plain(args, f"{into}.args", names, p))
        return Fragment(tuple(lines), names)

    def plain(self, into: str, value: str, names: dict[str, Any], p: str) -> str:
        """The line that sets ``into`` to the decoded payload ``value`` as plain values
        (adding the converter to ``names`` under the prefix ``p``)."""
        if self.convert is None:
            return f"{into} = {value}"
        names[f"{p}convert"] = self.convert
        return f"{into} = {p}convert({value})"

    def fail(self, exc: Exception, frame: Buffer) -> Exception:
        # Another version may lay the frame out differently: say so rather than
        # reporting whatever its layout made fail.
        loose = _read_loose(self.loose, frame)
        if loose is not None:
            if type(loose.v) is int and loose.v != ENVELOPE_VERSION:
                return DecodeError(
                    f"unsupported envelope version {loose.v} (this side speaks {ENVELOPE_VERSION})"
                )
            wid = loose.workflow_id
            if type(wid) is str and len(wid) > WORKFLOW_ID_MAX_CHARS:
                return DecodeError(
                    f"workflow_id of {len(wid):,} characters is longer than the "
                    f"{WORKFLOW_ID_MAX_CHARS}-character cap"
                )
            error = self.check_loose(loose) if self.check_loose is not None else None
            if error is not None:
                return error
        if isinstance(exc, msgspec.ValidationError):
            detail, inside = _translate(str(exc), self.root, self.validator.node)
            detail = clip(detail, ERROR_TEXT_MAX)  # whatever of the peer's text it quotes
            if inside:
                return self.validator.error_from_detail(detail)
            return DecodeError(f"malformed envelope: {detail}")
        if isinstance(exc, msgspec.DecodeError):
            return DecodeError(f"not a msgpack message: {clip(exc, ERROR_TEXT_MAX)}")
        return DecodeError(
            f"undecodable message: {type(exc).__name__}: {clip(exc, ERROR_TEXT_MAX)}"
        )


class MessageCodec:
    """Requests and replies for one request/reply connection.

    Built once at start-up from the connection's compiled models; the per-message
    methods do a dict literal plus one msgspec call each way. ``decode_request(frame)``
    decodes and validates a request; it raises :class:`DecodeError` or
    :class:`ValidationError` (both carry a message fit for an error reply).
    """

    __slots__ = ("_reply", "_request", "decode_reply", "decode_request", "max_bytes")

    def __init__(
        self,
        args: Validator,
        returns: Validator,
        *,
        max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.max_bytes = max_bytes
        request = wire_struct(
            "RequestEnvelope",
            [
                ("args", wire_type(args.node)),
                ("v", Literal[ENVELOPE_VERSION], ENVELOPE_VERSION),
                ("workflow_id", WorkflowId, ""),
                ("meta", dict[str, Any] | None, None),
            ],
        )
        reply = wire_struct(
            "ReplyEnvelope",
            [
                ("v", Literal[ENVELOPE_VERSION], ENVELOPE_VERSION),
                ("workflow_id", WorkflowId, ""),
                ("return_args", wire_type(returns.node) | msgspec.UnsetType, msgspec.UNSET),
                ("error", ErrorInfo | None, None),
            ],
        )
        decoding = self._request = _Decoding(request, args.node, "$.args", args, _LOOSE)
        self.decode_request: Callable[[Buffer], Request] = decoding.reader(max_bytes, "message")
        self._reply = _Decoding(reply, returns.node, "$.return_args", returns, _LOOSE)
        self.decode_reply: Callable[[Buffer], Reply] = self._reply_reader()

    # ---- requests
    @staticmethod
    def encode_request(args: Any, workflow_id: str, meta: dict[str, Any] | None = None) -> bytes:
        if meta is None:
            return _ENCODER.encode(
                {"v": ENVELOPE_VERSION, "workflow_id": workflow_id, "args": args}
            )
        return _ENCODER.encode(
            {"v": ENVELOPE_VERSION, "workflow_id": workflow_id, "args": args, "meta": meta}
        )

    def encode_request_source(self, args: str, workflow_id: str, into: str) -> Fragment:
        """:meth:`encode_request` (no ``meta``) as a line of a generated function."""
        return _envelope_source(into, workflow_id, "args", args)

    def decode_request_source(self, frame: str, into: str, args: str) -> Fragment:
        """:meth:`decode_request` as lines of a generated function (the plain args in the
        local ``args``)."""
        return self._request.source(frame, into, self.max_bytes, "message", args=args)

    @staticmethod
    def workflow_id_of(frame: Buffer) -> str:
        """Best-effort workflow id of a frame that failed to decode ('' if none)."""
        return _workflow_id_in(_LOOSE, frame)

    # ---- replies
    @staticmethod
    def encode_reply(return_args: Any, workflow_id: str) -> bytes:
        return _ENCODER.encode(
            {"v": ENVELOPE_VERSION, "workflow_id": workflow_id, "return_args": return_args}
        )

    def encode_reply_source(self, return_args: str, workflow_id: str, into: str) -> Fragment:
        """:meth:`encode_reply` as a line of a generated function."""
        return _envelope_source(into, workflow_id, "return_args", return_args)

    def decode_reply_source(self, frame: str, into: str, result: str) -> Fragment:
        """:meth:`decode_reply` as lines of a generated function: the envelope's decode,
        then the local ``result`` set to its result as plain values, or to ``None`` for
        an error reply."""
        reply, p = self._reply, unique_prefix()
        decode = reply.source(frame, into, self.max_bytes, "reply")
        names: dict[str, Any] = {f"{p}UNSET": msgspec.UNSET, f"{p}DecodeError": DecodeError}
        lines = [
            *decode.lines,
            f"if {into}.error is not None:",
            f"    {result} = None",  # an error reply carries no result
            f"elif {into}.return_args is {p}UNSET:",
            f"    raise {p}DecodeError('reply has neither return_args nor error')",
            "else:",
            f"    {reply.plain(result, f'{into}.return_args', names, p)}",
        ]
        return Fragment(tuple(lines), {**decode.names, **names})

    encode_error = staticmethod(encode_error)

    def _reply_reader(self) -> Callable[[Buffer], Reply]:
        """``decode_reply(frame)``: :meth:`decode_reply_source`'s lines, compiled on
        their own."""
        decode_reply: Callable[[Buffer], Reply] = _decoder(
            self.decode_reply_source, "return_args", "reply"
        )
        return decode_reply


class PublishCodec:
    """Frames for one publish/subscribe (or push/pull) connection (see the module
    docstring).

    ``encode(args, workflow_id, seq)`` writes a frame as ``publisher`` (the publishing
    side's name). ``decode(frame)`` decodes a frame received on a SUB socket subscribed
    to this codec's ``prefixes`` (an empty topic receives every topic); it raises
    :class:`DecodeError` or :class:`ValidationError`. A decoded frame's ``publisher``
    and ``seq`` are ``""`` and ``-1`` for a five-element frame.
    """

    __slots__ = ("_decoding", "_publisher", "_topic", "decode", "max_bytes", "prefix", "prefixes")

    def __init__(
        self,
        args: Validator,
        topic: str,
        *,
        max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        publisher: str = "",
    ) -> None:
        if len(publisher) > PUBLISHER_MAX_CHARS:
            raise ValueError(f"publisher name longer than {PUBLISHER_MAX_CHARS} characters")
        self.prefix = topic_prefix(topic)
        self.prefixes: tuple[bytes, ...] = topic_prefixes(topic)
        self._topic = topic
        self._publisher = publisher
        self.max_bytes = max_bytes
        # msgspec checks the topic (SUB filters only the first frame of a message; later
        # frames arrive as they are) while it decodes; a frame of another topic is
        # explained by _other_topic, off the per-message path.
        frame = wire_struct(
            "PublishFrame",
            [
                ("topic", Literal[topic] if topic else str),
                ("v", Literal[ENVELOPE_VERSION]),
                ("workflow_id", WorkflowId),
                ("args", wire_type(args.node)),
                ("meta", dict[str, Any] | None, None),
                ("publisher", PublisherName, ""),
                ("seq", SeqNumber, -1),
            ],
            array_like=True,
        )
        decoding = self._decoding = _Decoding(
            frame, args.node, "$[3]", args, _LOOSE_FRAME, self._other_topic
        )
        self.decode: Callable[[Buffer], Published] = decoding.reader(max_bytes, "message")

    def encode(self, args: Any, workflow_id: str, seq: int = 0) -> bytes:
        return _ENCODER.encode(
            (self._topic, ENVELOPE_VERSION, workflow_id, args, None, self._publisher, seq)
        )

    def encode_source(self, args: str, workflow_id: str, seq: str, into: str) -> Fragment:
        """:meth:`encode` as a line of a generated function."""
        p = unique_prefix()
        return Fragment(
            (
                f"{into} = {_ENCODE}(({p}topic, {ENVELOPE_VERSION}, {workflow_id}, {args}, None, "
                f"{p}publisher, {seq}))",
            ),
            {_ENCODE: _ENCODE_FN, f"{p}topic": self._topic, f"{p}publisher": self._publisher},
        )

    def decode_source(self, frame: str, into: str, args: str) -> Fragment:
        """:meth:`decode` as lines of a generated function (the plain args in the local
        ``args``)."""
        return self._decoding.source(frame, into, self.max_bytes, "message", args=args)

    def _other_topic(self, loose: Any) -> Exception | None:
        if self._topic and type(loose.topic) is str and loose.topic != self._topic:
            return DecodeError(f"frame is for topic {_shorten(loose.topic)!r}, not {self._topic!r}")
        return None

    @staticmethod
    def workflow_id_of(frame: Buffer) -> str:
        """Best-effort workflow id of a frame that failed to decode ('' if none)."""
        return _workflow_id_in(_LOOSE_FRAME, frame)


# Frames of models that carry numpy arrays are often megabytes: handing one to libzmq
# as is, rather than copied into a message of its own, saves a copy of every array per
# send (about a fifth of a 1 MB round trip's CPU). Below pyzmq's copy threshold a copy
# is cheaper than the bookkeeping, so small frames stay bytes. Every send in this
# package takes a zmq.Frame as well as bytes.
_ZERO_COPY_BYTES: Final = zmq.COPY_THRESHOLD


def _zero_copy(frame: bytes) -> Any:
    return zmq.Frame(frame, copy=False) if len(frame) >= _ZERO_COPY_BYTES else frame


class _ArrayMessageCodec(MessageCodec):
    """A :class:`MessageCodec` for models with arrays: large frames leave as zmq.Frame."""

    __slots__ = ()

    @staticmethod
    def encode_request(args: Any, workflow_id: str, meta: dict[str, Any] | None = None) -> Any:
        return _zero_copy(MessageCodec.encode_request(args, workflow_id, meta))

    @staticmethod
    def encode_reply(return_args: Any, workflow_id: str) -> Any:
        return _zero_copy(MessageCodec.encode_reply(return_args, workflow_id))

    def encode_request_source(self, args: str, workflow_id: str, into: str) -> Fragment:
        return Fragment.call(into, self.encode_request, args, workflow_id)

    def encode_reply_source(self, return_args: str, workflow_id: str, into: str) -> Fragment:
        return Fragment.call(into, self.encode_reply, return_args, workflow_id)


class _ArrayPublishCodec(PublishCodec):
    """A :class:`PublishCodec` for models with arrays: large frames leave as zmq.Frame."""

    __slots__ = ()

    def encode(self, args: Any, workflow_id: str, seq: int = 0) -> Any:
        return _zero_copy(PublishCodec.encode(self, args, workflow_id, seq))

    def encode_source(self, args: str, workflow_id: str, seq: str, into: str) -> Fragment:
        return Fragment.call(into, self.encode, args, workflow_id, seq)


# --------------------------------------------------------------------------- tools


def json_schemas(
    nodes: Sequence[Node], ref_template: str
) -> tuple[tuple[dict[str, Any], ...], dict[str, Any]]:
    """JSON Schemas (msgspec's view: 2020-12) of the values ``nodes`` describe, in one
    pass: ``(one schema per node, shared components)``. Components of the dict shapes
    built here are named like :data:`GENERATED_SCHEMA_NAME`, for the caller to rename."""
    return msgspec.json.schema_components(
        [wire_type(node) for node in nodes], ref_template=ref_template
    )


@dataclasses.dataclass(frozen=True)
class StructKey:
    """One field of a ``msgspec.Struct`` as its map travels."""

    key: str  # the key on the wire (the field's encode name)
    field: str  # the attribute
    has_default: bool  # may be omitted by a sender


def struct_keys(cls: type) -> Iterable[StructKey]:
    """The fields of a ``msgspec.Struct`` class (a model naming one), in order."""
    for info in msgspec.structs.fields(cls):
        has_default = (
            info.default is not msgspec.NODEFAULT or info.default_factory is not msgspec.NODEFAULT
        )
        yield StructKey(info.encode_name, info.name, has_default)


# --------------------------------------------------------------------------- the codec


class MsgpackCodec:
    """The msgpack codec (see the module docstring), as a :class:`~.codec.Codec`."""

    __slots__ = ()

    def request_reply(
        self, args: Validator, returns: Validator, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> MessageCodec:
        # Models with arrays get the codec whose large frames are sent without a copy.
        arrays = contains_arrays(args.node) or contains_arrays(returns.node)
        kind = _ArrayMessageCodec if arrays else MessageCodec
        return kind(args, returns, max_bytes=max_bytes)

    def one_way(self, args: Validator, topic: str, **options: Any) -> PublishCodec:
        """A :class:`PublishCodec` (``options``: its ``max_bytes`` and ``publisher``)."""
        kind = _ArrayPublishCodec if contains_arrays(args.node) else PublishCodec
        return kind(args, topic, **options)

    @staticmethod
    def check_wire(node: Node) -> None:
        check_wire(node)

    def __repr__(self) -> str:
        return "<MsgpackCodec>"


MSGPACK: Final = MsgpackCodec()
