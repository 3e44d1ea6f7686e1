"""Compile type specs once into validators.

A *spec* is what a service writes in its models: ``str``, ``[int]``, ``(int, str)``,
``{str}``, ``{'buy', 'sell'}``, ``{str: Decimal}``, ``{'qty': int}``, or a modern annotation
(``list[int]``, ``int | None``, ``Literal[...]``, a ``TypedDict``, a dataclass, a
``msgspec.Struct``). :func:`compile_spec` turns one into a tree of nodes; from that tree
we derive, once, at start-up:

* a generated Python function that answers "is this value valid?" with no per-call
  walking of the spec (the fast path, run on every message);
* an explainer that says *why* a value is invalid, with the path to it (only run after
  the fast path said no);
* the tree itself, which a codec walks to build its own wire types (the msgpack codec,
  ``msgpack_codec.py``, turns it into msgspec types that validate while they decode).

Nothing here knows a wire format: which specs can travel, and how, is the codec's
business (it raises :class:`UnsupportedOnWire` for those that cannot).

``numpy.ndarray`` (and ``numpy.typing.NDArray[...]``) is a spec too when numpy is
installed; arrays travel as msgpack extension types (see ``arrays.py``).

Semantics follow SPEC section 2: a value must be an instance of the declared type
(``bool`` is not an ``int``, ``int`` is not a ``float``, ``datetime`` is not a ``date``);
dict-shaped specs reject keys they do not declare.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import sys
import types
import typing
from collections.abc import Callable, Hashable, Iterable
from typing import Any, ClassVar, Union

from .arrays import keep_large_blocks, unsendable_dtype
from .errors import ValidationError
from .generated import Fragment, function_of, unique_prefix

__all__ = [
    "MISSING",
    "CodeGen",
    "FieldsNode",
    "NdarrayNode",
    "Node",
    "TypedDictNode",
    "UnsupportedOnWire",
    "Validator",
    "child_path",
    "compile_fields",
    "compile_spec",
    "contains_arrays",
]


class _Missing:
    """The type of :data:`MISSING`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # "key absent", in generated checks (None may be a value)


class UnsupportedOnWire(TypeError):
    """A spec is valid in-process but has no unambiguous form on the wire (raised by
    the codec when it builds its wire types, at start-up)."""


# --------------------------------------------------------------------------- codegen


class CodeGen:
    """Accumulates generated functions and the objects they reference (the checks here;
    a codec's converters too)."""

    _ids = itertools.count()

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {"MISSING": MISSING}
        self.defs: list[str] = []  # top-level function definitions
        self.lines: list[str] = []  # the body being written now
        self._funcs: dict[object, str] = {}
        self._consts: dict[int, str] = {}

    def const(self, obj: object) -> str:
        # Exact types only: a str subclass (an Enum member, say) has a repr that is not
        # source code.
        if type(obj) in (str, int, bool) or obj is None:
            return repr(obj)
        key = id(obj)
        name = self._consts.get(key)
        if name is None:
            name = f"_c{next(self._ids)}"
            self._consts[key] = name
            self.ns[name] = obj
        return name

    def var(self) -> str:
        return f"v{next(self._ids)}"

    def function(self, key: object, prefix: str, write_body: Callable[[], None]) -> str:
        """Define ``def <name>(x):`` once per ``key``; ``write_body`` appends its body
        (indented four spaces) to ``self.lines``. Returns the function's name."""
        name = self._funcs.get(key)
        if name is None:
            name = f"{prefix}{next(self._ids)}"
            self._funcs[key] = name  # before the body: a node may refer to itself
            saved, self.lines = self.lines, []
            write_body()
            body, self.lines = self.lines, saved
            self.defs.extend([f"def {name}(x):", *body])
        return name

    def check_function(self, node: Node) -> str:
        """Name of a generated ``def f(x) -> bool`` checking ``node``."""

        def body() -> None:
            node.emit_body(self, "x", "    ")
            self.lines.append("    return True")

        return self.function(("check", id(node)), "_f", body)

    def build(self, entry: str) -> Callable[..., Any]:
        source = "\n".join(self.defs)
        exec(compile(source, f"<service_framework {entry}>", "exec"), self.ns)
        return typing.cast(Callable[..., Any], self.ns[entry])


def child_path(path: str, key: object) -> str:
    """The path of ``key`` inside ``path``: ``$.qty``, or ``$['my-key']`` for a key that
    is not an identifier."""
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


def _tname(value: object) -> str:
    return "None" if value is None else type(value).__name__


# --------------------------------------------------------------------------- nodes


class Node:
    """One position in a spec. Subclasses know how to check and explain it."""

    def describe(self) -> str:
        raise NotImplementedError

    def test(self, cg: CodeGen, var: str) -> str | None:
        """An inline boolean expression for simple nodes, ``None`` for compound ones."""
        return None

    def emit(self, cg: CodeGen, var: str, ind: str) -> None:
        """Append statements that ``return False`` when ``var`` is invalid."""
        expr = self.test(cg, var)
        if expr is None:
            self.emit_body(cg, var, ind)
        elif expr != "True":
            cg.lines.append(f"{ind}if not ({expr}): return False")

    def emit_body(self, cg: CodeGen, var: str, ind: str) -> None:
        """The statements themselves (compound nodes override this)."""
        expr = self.test(cg, var)
        if expr is not None and expr != "True":
            cg.lines.append(f"{ind}if not ({expr}): return False")

    def explain(self, value: Any, path: str) -> str | None:
        raise NotImplementedError

    def expected(self, value: Any, path: str) -> str:
        return f"expected {self.describe()}, got {_tname(value)} at {path}"

    def compiled_check(self) -> Callable[[Any], bool]:
        """The generated ``check(value) -> bool`` for this node (built once)."""
        check: Callable[[Any], bool] | None = self.__dict__.get("_compiled_check")
        if check is None:
            check = _always_true if isinstance(self, AnyNode) else _build_check(self)
            self._compiled_check = check
        return check

    def fast(self, cg: CodeGen, var: str) -> str:
        """An expression that is true only for valid values, built from exact-type tests
        (``type(v) is int``): cheaper than the full check and true for the usual message.
        When it is false the full check decides (subclasses, collections, ...). Compound
        nodes default to calling their full check."""
        expr = self.test(cg, var)
        return expr if expr is not None else f"{cg.check_function(self)}({var})"


class AnyNode(Node):
    def describe(self) -> str:
        return "any"

    def test(self, cg: CodeGen, var: str) -> str:
        return "True"

    def explain(self, value: Any, path: str) -> str | None:
        return None


class NoneNode(Node):
    def describe(self) -> str:
        return "None"

    def test(self, cg: CodeGen, var: str) -> str:
        return f"{var} is None"

    def explain(self, value: Any, path: str) -> str | None:
        return None if value is None else self.expected(value, path)


class TypeNode(Node):
    """A plain class: the value must be an instance of it."""

    # A subclass that is *not* an acceptable instance: bool is an int, datetime a date.
    _EXCLUDED: ClassVar[dict[type, type]] = {int: bool, _dt.date: _dt.datetime}
    _BUILTINS: ClassVar[frozenset[type]] = frozenset(
        {int, float, bool, str, bytes, bytearray, dict, list, set, frozenset, tuple}
    )

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def describe(self) -> str:
        return self.cls.__name__

    def test(self, cg: CodeGen, var: str) -> str:
        cls = self.cls
        if cls is bool:
            return f"({var} is True or {var} is False)"
        name = cls.__name__ if cls in self._BUILTINS else cg.const(cls)
        excluded = self._EXCLUDED.get(cls)
        if excluded is not None:
            ex = cg.const(excluded)
            return (
                f"(type({var}) is {name} or "
                f"(isinstance({var}, {name}) and not isinstance({var}, {ex})))"
            )
        return f"(type({var}) is {name} or isinstance({var}, {name}))"

    def fast(self, cg: CodeGen, var: str) -> str:
        # An exact match is valid whatever the class (bool is not int, datetime not date).
        cls = self.cls
        if cls is bool:
            return f"({var} is True or {var} is False)"
        name = cls.__name__ if cls in self._BUILTINS else cg.const(cls)
        return f"type({var}) is {name}"

    def ok(self, value: Any) -> bool:
        excluded = self._EXCLUDED.get(self.cls)
        if excluded is not None and isinstance(value, excluded):
            return False
        return isinstance(value, self.cls)

    def explain(self, value: Any, path: str) -> str | None:
        return None if self.ok(value) else self.expected(value, path)


class _ItemsNode(Node):
    """A collection whose every item matches one spec: ``[T]``, ``{T}``, ``tuple[T, ...]``."""

    kinds: ClassVar[tuple[type, ...]]  # the collection types accepted
    template: ClassVar[str]  # how it reads in messages, e.g. "list[{}]"

    def __init__(self, item: Node) -> None:
        self.item = item

    def describe(self) -> str:
        return self.template.format(self.item.describe())

    def emit_body(self, cg: CodeGen, var: str, ind: str) -> None:
        cg.lines.append(f"{ind}if not isinstance({var}, {cg.const(self.kinds)}): return False")
        if not isinstance(self.item, AnyNode):
            v = cg.var()
            cg.lines.append(f"{ind}for {v} in {var}:")
            self.item.emit(cg, v, ind + "    ")

    def explain(self, value: Any, path: str) -> str | None:
        if not isinstance(value, self.kinds):
            return self.expected(value, path)
        items = typing.cast(Iterable[Any], value)
        for i, item in enumerate(items):
            why = self.item.explain(item, self.item_path(path, i, item))
            if why:
                return why
        return None

    @staticmethod
    def item_path(path: str, index: int, item: object) -> str:
        return f"{path}[{index}]"


class ListNode(_ItemsNode):
    kinds = (list,)
    template = "list[{}]"


class SetNode(_ItemsNode):
    kinds = (set, frozenset)
    template = "set[{}]"

    @staticmethod
    def item_path(path: str, index: int, item: object) -> str:
        return f"{path}[{item!r}]"  # a set has no positions; name the item


class TupleNode(Node):
    """Fixed length, item by item; a list of the right length is accepted too."""

    def __init__(self, items: list[Node]) -> None:
        self.items = items

    def describe(self) -> str:
        return f"tuple[{', '.join(i.describe() for i in self.items) or '()'}]"

    def emit_body(self, cg: CodeGen, var: str, ind: str) -> None:
        cg.lines.append(
            f"{ind}if not isinstance({var}, (tuple, list)) or len({var}) != {len(self.items)}:"
            " return False"
        )
        for i, item in enumerate(self.items):
            v = cg.var()
            cg.lines.append(f"{ind}{v} = {var}[{i}]")
            item.emit(cg, v, ind)

    def explain(self, value: Any, path: str) -> str | None:
        if not isinstance(value, (tuple, list)) or len(value) != len(self.items):
            got = (
                f"{_tname(value)} of length {len(value)}"
                if isinstance(value, (tuple, list))
                else _tname(value)
            )
            return f"expected {self.describe()}, got {got} at {path}"
        for i, (item, node) in enumerate(zip(value, self.items, strict=False)):
            why = node.explain(item, f"{path}[{i}]")
            if why:
                return why
        return None


class VarTupleNode(_ItemsNode):
    """``tuple[T, ...]`` (a list is accepted too, as for fixed tuples)."""

    kinds = (tuple, list)
    template = "tuple[{}, ...]"


def _literal_ok(pairs: frozenset[tuple[type, object]], value: object) -> bool:
    try:
        return (type(value), value) in pairs
    except TypeError:  # unhashable
        return False


class LiteralNode(Node):
    """One of a fixed set of values (type and value must both match: ``True`` is not ``1``).

    The seed grammar's literal sets (``{'buy', 'sell'}``) also accept a collection whose
    items are all allowed values; ``Literal[...]`` annotations do not.
    """

    _COLLECTIONS = (list, tuple, set, frozenset)

    def __init__(self, values: Iterable[object], *, allow_collection: bool) -> None:
        self.values = tuple(values)
        self.pairs = frozenset((type(v), v) for v in self.values)
        self.allow_collection = allow_collection

    def describe(self) -> str:
        shown = ", ".join(repr(v) for v in sorted(self.values, key=repr))
        return f"one of {{{shown}}}"

    def emit_body(self, cg: CodeGen, var: str, ind: str) -> None:
        # Group the allowed values by exact type so the common case is one set lookup:
        # `type(v) is str and v in {...}` (exact type, so True never passes for 1).
        by_type: dict[type, set[object]] = {}
        for value in self.values:
            by_type.setdefault(type(value), set()).add(value)
        self._emit_one(cg, var, ind, by_type, allow_collection=self.allow_collection)

    def fast(self, cg: CodeGen, var: str) -> str:
        if self.values and all(type(v) is str for v in self.values):
            v = cg.var()
            return f"(type({v} := {var}) is str and {v} in {cg.const(frozenset(self.values))})"
        return super().fast(cg, var)

    def _emit_one(
        self,
        cg: CodeGen,
        var: str,
        ind: str,
        by_type: dict[type, set[object]],
        *,
        allow_collection: bool,
    ) -> None:
        keyword = "if"
        for typ, values in by_type.items():
            if typ is type(None):
                cg.lines.append(f"{ind}{keyword} {var} is None: pass")
            else:
                allowed = cg.const(frozenset(values))
                cg.lines.append(f"{ind}{keyword} type({var}) is {cg.const(typ)}:")
                cg.lines.append(f"{ind}    if {var} not in {allowed}: return False")
            keyword = "elif"
        if allow_collection:
            v = cg.var()
            cg.lines.append(f"{ind}elif isinstance({var}, {cg.const(self._COLLECTIONS)}):")
            cg.lines.append(f"{ind}    for {v} in {var}:")
            self._emit_one(cg, v, ind + "        ", by_type, allow_collection=False)
        cg.lines.append(f"{ind}else: return False")

    def explain(self, value: Any, path: str) -> str | None:
        if self.allow_collection and isinstance(value, self._COLLECTIONS):
            for i, item in enumerate(value):
                if not _literal_ok(self.pairs, item):
                    return f"expected {self.describe()}, got {item!r} at {path}[{i}]"
            return None
        if _literal_ok(self.pairs, value):
            return None
        return f"expected {self.describe()}, got {value!r} at {path}"


class DictNode(Node):
    """``{K: V}``: any number of keys of type K, values of spec V."""

    def __init__(self, key: Node, value: Node) -> None:
        self.key = key
        self.value = value

    def describe(self) -> str:
        return f"dict[{self.key.describe()}, {self.value.describe()}]"

    def emit_body(self, cg: CodeGen, var: str, ind: str) -> None:
        cg.lines.append(f"{ind}if not isinstance({var}, dict): return False")
        if isinstance(self.key, AnyNode) and isinstance(self.value, AnyNode):
            return
        k, v = cg.var(), cg.var()
        cg.lines.append(f"{ind}for {k}, {v} in {var}.items():")
        self.key.emit(cg, k, ind + "    ")
        self.value.emit(cg, v, ind + "    ")
        if cg.lines[-1].endswith(f"for {k}, {v} in {var}.items():"):
            cg.lines.append(f"{ind}    pass")

    def explain(self, value: Any, path: str) -> str | None:
        if not isinstance(value, dict):
            return self.expected(value, path)
        for key, item in value.items():
            if self.key.explain(key, path):
                return f"expected key of type {self.key.describe()}, got {_tname(key)} at {path}"
            why = self.value.explain(item, child_path(path, key))
            if why:
                return why
        return None


class FieldsNode(Node):
    """A dict with declared keys: required ones must be present, optional ones may be,
    and any other key is rejected. The top level of every model is one of these."""

    def __init__(
        self, required: dict[Any, Node], optional: dict[Any, Node], name: str = ""
    ) -> None:
        self.required = required
        self.optional = optional
        self.name = name

    @property
    def keys(self) -> list[Any]:
        return [*self.required, *self.optional]

    def describe(self) -> str:
        return self.name or "dict with keys " + ", ".join(map(repr, self.keys))

    def emit_body(self, cg: CodeGen, var: str, ind: str) -> None:
        cg.lines.append(f"{ind}if not isinstance({var}, dict): return False")
        if not self.keys:
            cg.lines.append(f"{ind}if {var}: return False")
            return
        req = [(key, node, cg.var()) for key, node in self.required.items()]
        if req:
            cg.lines.append(f"{ind}try:")
            for key, _, v in req:
                cg.lines.append(f"{ind}    {v} = {var}[{cg.const(key)}]")
            cg.lines.append(f"{ind}except KeyError: return False")
            for _, node, v in req:
                node.emit(cg, v, ind)
        if not self.optional:
            cg.lines.append(f"{ind}if len({var}) != {len(req)}: return False")
            return
        n = cg.var()
        cg.lines.append(f"{ind}{n} = {len(req)}")
        for key, node in self.optional.items():
            v = cg.var()
            cg.lines.append(f"{ind}{v} = {var}.get({cg.const(key)}, MISSING)")
            cg.lines.append(f"{ind}if {v} is not MISSING:")
            cg.lines.append(f"{ind}    {n} += 1")
            node.emit(cg, v, ind + "    ")
        cg.lines.append(f"{ind}if len({var}) != {n}: return False")

    def fast(self, cg: CodeGen, var: str) -> str:
        # Covers messages that carry no optional key; others take the full check.
        parts = [f"type({var}) is dict", f"len({var}) == {len(self.required)}"]
        parts += [node.fast(cg, f"{var}[{cg.const(key)}]") for key, node in self.required.items()]
        return "(" + " and ".join(parts) + ")"

    def explain(self, value: Any, path: str) -> str | None:
        # Same order as the msgpack codec reports while decoding: keys as they come,
        # then any missing required key, so the wire and in-process errors read the same.
        if not isinstance(value, dict):
            return self.expected(value, path)
        for key, item in value.items():
            node = self.required.get(key) or self.optional.get(key)
            if node is None:
                return self.unexpected(key, path)
            why = node.explain(item, child_path(path, key))
            if why:
                return why
        for key in self.required:
            if key not in value:
                return f"missing required key {key!r} at {path}"
        return None

    def unexpected(self, key: object, path: str) -> str:
        allowed = ", ".join(map(repr, self.keys)) or "none"
        return f"unexpected key {key!r} at {path} (allowed: {allowed})"


class UnionNode(Node):
    def __init__(self, members: list[Node]) -> None:
        self.members = members

    def describe(self) -> str:
        return " | ".join(m.describe() for m in self.members)

    def test(self, cg: CodeGen, var: str) -> str:
        parts = []
        for m in self.members:
            expr = m.test(cg, var)
            parts.append(expr if expr is not None else f"{cg.check_function(m)}({var})")
        return "(" + " or ".join(parts) + ")"

    def explain(self, value: Any, path: str) -> str | None:
        reasons: list[str] = []
        for member in self.members:
            reason = member.explain(value, path)
            if reason is None:
                return None
            reasons.append(reason)
        # A member whose reason points deeper than ``path`` matched the value's outer
        # shape; its reason is the useful one. Otherwise no member came close.
        deepest = max(reasons, key=lambda r: len(r.rpartition(" at ")[2]))
        if len(deepest.rpartition(" at ")[2]) > len(path):
            return deepest
        return self.expected(value, path)


class ClassNode(Node):
    """A dataclass or ``msgspec.Struct``: an instance whose fields match their annotations."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.fields: dict[str, Node] = {}

    def describe(self) -> str:
        return self.cls.__name__

    def test(self, cg: CodeGen, var: str) -> str:
        # Always a named function: a class may refer to itself.
        return f"{cg.check_function(self)}({var})"

    def emit_body(self, cg: CodeGen, var: str, ind: str) -> None:
        cg.lines.append(f"{ind}if not isinstance({var}, {cg.const(self.cls)}): return False")
        for field, node in self.fields.items():
            v = cg.var()
            cg.lines.append(f"{ind}{v} = {var}.{field}")
            node.emit(cg, v, ind)

    def explain(self, value: Any, path: str) -> str | None:
        if not isinstance(value, self.cls):
            return self.expected(value, path)
        for name, node in self.fields.items():
            why = node.explain(getattr(value, name), child_path(path, name))
            if why:
                return why
        return None


class NdarrayNode(Node):
    """``numpy.ndarray`` (also written ``numpy.typing.NDArray[...]``; its dtype parameter
    is not checked: the decoder could not check it). Only arrays that can travel byte for
    byte pass: object and structured dtypes (object arrays would need pickle) and masked
    arrays (whose mask would be lost) are refused before sending."""

    def __init__(self, ndarray: type) -> None:
        self.ndarray = ndarray

    def describe(self) -> str:
        return "ndarray"

    def test(self, cg: CodeGen, var: str) -> str:
        return f"{cg.const(self.ok)}({var})"

    def ok(self, value: Any) -> bool:
        return self.why_not(value) is None

    def why_not(self, value: Any) -> str | None:
        """Why ``value`` does not match (without the path), or ``None``."""
        if not isinstance(value, self.ndarray):
            return f"expected ndarray, got {_tname(value)}"
        if type(value) is not self.ndarray and isinstance(
            value, sys.modules["numpy"].ma.MaskedArray
        ):
            return "a masked array cannot be sent (its mask would be lost)"
        return unsendable_dtype(typing.cast(Any, value).dtype)

    def explain(self, value: Any, path: str) -> str | None:
        why = self.why_not(value)
        return None if why is None else f"{why} at {path}"


def _array_node(spec: object) -> NdarrayNode | None:
    """The node for ``numpy.ndarray`` / ``NDArray[...]``, or ``None`` for other specs.
    numpy is not imported here: a spec naming an array type has imported it already."""
    np: Any = sys.modules.get("numpy")
    if np is None:
        return None
    ndarray: type = np.ndarray
    if spec is ndarray or typing.get_origin(spec) is ndarray:
        keep_large_blocks()  # array messages are large: see there
        return NdarrayNode(ndarray)
    return None


def contains_arrays(node: Node) -> bool:
    """Whether an array may appear anywhere in what ``node`` describes (decoders for
    such nodes need the arrays extension hook; others get no hook at all)."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, NdarrayNode):
            return True
        if isinstance(current, _ItemsNode):
            stack.append(current.item)
        elif isinstance(current, TupleNode):
            stack.extend(current.items)
        elif isinstance(current, DictNode):
            stack.extend((current.key, current.value))
        elif isinstance(current, FieldsNode):
            stack.extend((*current.required.values(), *current.optional.values()))
        elif isinstance(current, UnionNode):
            stack.extend(current.members)
        elif isinstance(current, ClassNode):
            stack.extend(current.fields.values())
    return False


# --------------------------------------------------------------------------- compile


class SpecError(TypeError):
    """A spec is not part of the grammar (raised with the path to the bad part)."""


def _is_typeddict(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, dict) and hasattr(obj, "__total__")


def _is_struct(cls: type) -> bool:
    """A ``msgspec.Struct`` subclass, told by the attribute every Struct class has (a
    model naming a Struct has imported msgspec itself; nothing here needs to)."""
    return isinstance(getattr(cls, "__struct_fields__", None), tuple)


def _is_type_like(obj: object) -> bool:
    """True for a class or a typing construct (as opposed to a literal value)."""
    if isinstance(obj, type) or obj is Any or obj is None:
        return True
    return typing.get_origin(obj) is not None or isinstance(obj, typing.TypeVar)


def compile_spec(spec: object, _memo: dict[int, Node] | None = None) -> Node:
    """Compile one spec (see the module docstring) into a node tree."""
    memo = {} if _memo is None else _memo
    return _compile(spec, memo, "$")


def _compile(spec: object, memo: dict[int, Node], where: str) -> Node:
    if spec is Any or spec is object:
        return AnyNode()
    if spec is None or spec is type(None):
        return NoneNode()
    # ---- seed grammar: containers used as specs
    if isinstance(spec, list):
        if len(spec) == 0:
            return TypeNode(list)
        if len(spec) != 1:
            raise SpecError(f"{where}: a list spec holds exactly one item spec, got {spec!r}")
        return ListNode(_compile(spec[0], memo, f"{where}[]"))
    if isinstance(spec, tuple):
        if len(spec) == 0:
            return TypeNode(tuple)
        return TupleNode([_compile(s, memo, f"{where}[{i}]") for i, s in enumerate(spec)])
    if isinstance(spec, (set, frozenset)):
        if len(spec) == 0:
            return TypeNode(set)
        members = list(spec)
        if all(_is_type_like(m) and m is not None for m in members):
            nodes = [_compile(m, memo, f"{where}{{}}") for m in members]
            return SetNode(nodes[0] if len(nodes) == 1 else UnionNode(nodes))
        if any(isinstance(m, type) for m in members):
            raise SpecError(f"{where}: a set spec mixes types and values: {spec!r}")
        return LiteralNode(sorted(members, key=repr), allow_collection=True)
    if isinstance(spec, dict):
        if len(spec) == 0:
            return TypeNode(dict)
        keys = list(spec)
        if len(keys) == 1 and _is_type_like(keys[0]) and keys[0] is not None:
            key_node = _compile(keys[0], memo, f"{where}{{key}}")
            return DictNode(key_node, _compile(spec[keys[0]], memo, f"{where}{{value}}"))
        if any(isinstance(k, type) for k in keys):
            raise SpecError(f"{where}: a dict spec mixes a type key with literal keys: {spec!r}")
        return FieldsNode({k: _compile(v, memo, child_path(where, k)) for k, v in spec.items()}, {})
    array = _array_node(spec)
    if array is not None:
        return array
    # ---- annotations
    origin = typing.get_origin(spec)
    if origin is typing.Annotated:
        return _compile(typing.get_args(spec)[0], memo, where)
    if hasattr(spec, "__supertype__"):  # typing.NewType
        return _compile(spec.__supertype__, memo, where)
    if origin is Union or origin is types.UnionType:
        return UnionNode([_compile(a, memo, where) for a in typing.get_args(spec)])
    if origin is typing.Literal:
        return LiteralNode(typing.get_args(spec), allow_collection=False)
    if origin in (list, typing.List):  # noqa: UP006
        (item,) = typing.get_args(spec) or (Any,)
        return ListNode(_compile(item, memo, f"{where}[]"))
    if origin in (set, frozenset, typing.Set, typing.FrozenSet):  # noqa: UP006
        (item,) = typing.get_args(spec) or (Any,)
        return SetNode(_compile(item, memo, f"{where}{{}}"))
    if origin in (tuple, typing.Tuple):  # noqa: UP006
        args = typing.get_args(spec)
        if len(args) == 2 and args[1] is Ellipsis:
            return VarTupleNode(_compile(args[0], memo, f"{where}[]"))
        if args == ((),):
            return TupleNode([])
        return TupleNode([_compile(a, memo, f"{where}[{i}]") for i, a in enumerate(args)])
    if origin in (dict, typing.Dict):  # noqa: UP006
        k, v = typing.get_args(spec) or (Any, Any)
        return DictNode(
            _compile(k, memo, f"{where}{{key}}"), _compile(v, memo, f"{where}{{value}}")
        )
    if origin is not None and isinstance(origin, type):
        # Other generics (collections.abc.Sequence[int], ...): check the origin class only.
        return TypeNode(origin)
    if isinstance(spec, type):
        if _is_typeddict(spec):
            return _compile_typeddict(spec, memo, where)
        if dataclasses.is_dataclass(spec) or _is_struct(spec):
            return _compile_class(spec, memo, where)
        return TypeNode(spec)
    raise SpecError(f"{where}: {spec!r} is not a type spec")


def _compile_typeddict(spec: type, memo: dict[int, Node], where: str) -> Node:
    if id(spec) in memo:
        return memo[id(spec)]
    node = TypedDictNode(spec)
    memo[id(spec)] = node  # before the fields: a TypedDict may refer to itself
    hints = typing.get_type_hints(spec)
    required = getattr(spec, "__required_keys__", frozenset(hints))
    for key, hint in hints.items():
        target = node.required if key in required else node.optional
        target[key] = _compile(_strip_required(hint), memo, child_path(where, key))
    return node


def _strip_required(hint: object) -> object:
    origin = typing.get_origin(hint)
    names = {"Required", "NotRequired", "ReadOnly"}
    if origin is not None and getattr(origin, "_name", None) in names:
        return typing.get_args(hint)[0]
    return hint


class TypedDictNode(FieldsNode):
    """A TypedDict: checked like a nested dict spec; a codec may decode it natively
    (the msgpack codec does, and so drops keys it does not declare)."""

    def __init__(self, td: type) -> None:
        super().__init__({}, {}, name=td.__name__)
        self.td = td

    def test(self, cg: CodeGen, var: str) -> str:
        return f"{cg.check_function(self)}({var})"

    fast = test  # a call, not FieldsNode's inline expression: it may refer to itself


def _compile_class(spec: type, memo: dict[int, Node], where: str) -> Node:
    if id(spec) in memo:
        return memo[id(spec)]
    node = ClassNode(spec)
    memo[id(spec)] = node
    hints = typing.get_type_hints(spec)
    if dataclasses.is_dataclass(spec):
        names = [f.name for f in dataclasses.fields(spec)]
    else:
        names = list(spec.__struct_fields__)  # type: ignore[attr-defined]
    for name in names:
        node.fields[name] = _compile(hints.get(name, Any), memo, child_path(where, name))
    return node


def compile_fields(required: object, optional: object, *, what: str = "model") -> Node:
    """Compile a model's top level: ``{'key': spec}`` required and optional dicts.

    ``None`` for both means "not checked": any value passes (the seed's external target
    writes ``'required_return_arguments': None``). A missing side is an empty dict.
    """
    if required is None and optional is None:
        return AnyNode()
    parts: dict[str, dict[Any, Any]] = {}
    for label, part in (("required", required), ("optional", optional)):
        part = {} if part is None else part
        if not isinstance(part, dict):
            raise SpecError(f"{label} {what} must be a dict of key: spec, got {_tname(part)}")
        parts[label] = part
        for key in part:
            if not isinstance(key, str):
                raise SpecError(f"{label} {what} key {key!r} must be a str")
    req, opt = parts["required"], parts["optional"]
    both = set(req) & set(opt)
    if both:
        raise SpecError(f"key {sorted(both)[0]!r} is both required and optional")
    key = _spec_key((req, opt))
    cached = _MODEL_CACHE.get(key) if key is not None else None
    if cached is not None:
        return cached
    memo: dict[int, Node] = {}
    node = FieldsNode(
        {k: _compile(v, memo, child_path("$", k)) for k, v in req.items()},
        {k: _compile(v, memo, child_path("$", k)) for k, v in opt.items()},
    )
    if key is not None:
        _MODEL_CACHE[key] = node
    return node


# Models with the same specs compile to the same node and so share one generated check:
# InlineServices then sees that sender and receiver checks are identical and runs it once.
_MODEL_CACHE: dict[Hashable, FieldsNode] = {}


def _spec_key(spec: object) -> Hashable | None:
    """A hashable, order-preserving key for a spec; ``None`` if it has none."""
    if isinstance(spec, (list, tuple, set, frozenset)):
        parts = [_spec_key(s) for s in spec]
        if None in parts:
            return None
        if isinstance(spec, (set, frozenset)):
            return ("set", frozenset(parts))
        return ("list" if isinstance(spec, list) else "tuple", tuple(parts))
    if isinstance(spec, dict):
        items = [(_spec_key(k), _spec_key(v)) for k, v in spec.items()]
        if any(k is None or v is None for k, v in items):
            return None
        return ("dict", tuple(items))
    try:
        hash(spec)
    except TypeError:
        return None
    # A literal keeps its type: True and 1 stay apart.
    return ("type", spec) if _is_type_like(spec) else ("value", type(spec), spec)


# --------------------------------------------------------------------------- validator


def _build_check(node: Node) -> Callable[[Any], bool]:
    if isinstance(node, FieldsNode):
        # The lines connections compile into their per-message functions, on their own.
        check: Callable[[Any], bool] = function_of(
            check_source(node, "x", "return False"), "x", "True", "check"
        )
        return check
    cg = CodeGen()
    return cg.build(cg.check_function(node))


def check_source(node: Node, value: str, invalid: str) -> Fragment:
    """``node``'s check as lines of a generated function (see ``generated.py``): they run
    the line ``invalid`` when the local ``value`` fails it. A dict model's exact-type
    expression comes first; anything it cannot vouch for (a subclass, an optional key,
    a missing key raising KeyError) goes to the full check, which alone decides."""
    cg = CodeGen()
    full = cg.check_function(node)
    prefix = unique_prefix()
    if not isinstance(node, FieldsNode):
        cg.build(full)
        call = (f"if not {prefix}full({value}):", f"    {invalid}")
        return Fragment(call, {f"{prefix}full": cg.ns[full]})
    fast = node.fast(cg, value)
    cg.build(full)
    ok = f"{prefix}ok"
    lines = (
        "try:",
        f"    {ok} = {fast}",
        "except Exception:",  # a missing key, say: the full check explains it
        f"    {ok} = False",
        f"if not {ok} and not {prefix}full({value}):",
        f"    {invalid}",
    )
    # The consts and check functions the expression names are unique to this CodeGen
    # (numbered from one counter shared by all); MISSING is one object.
    names = {key: obj for key, obj in cg.ns.items() if key != "__builtins__"}
    names[f"{prefix}full"] = cg.ns[full]
    return Fragment(lines, names)


class Validator:
    """A compiled check for one direction of one connection (or a config).

    ``validator.check(value)`` is the generated fast path (``True``/``False``);
    ``validator(value)`` raises :class:`ValidationError` naming the service, the
    connection, the direction and the path to the bad value.
    """

    __slots__ = ("check", "connection", "direction", "node", "service")

    def __init__(
        self,
        node: Node,
        *,
        service: str | None = None,
        connection: str | None = None,
        direction: str | None = None,
    ) -> None:
        self.node = node
        self.service = service
        self.connection = connection
        self.direction = direction
        self.check: Callable[[Any], bool] = node.compiled_check()

    @property
    def unchecked(self) -> bool:
        return isinstance(self.node, AnyNode)

    def __call__(self, value: Any) -> Any:
        if not self.check(value):
            raise self.error(value)
        return value

    def error(self, value: Any) -> ValidationError:
        detail = self.node.explain(value, "$") or f"invalid value {value!r}"
        return ValidationError(
            detail, service=self.service, connection=self.connection, direction=self.direction
        )

    def source(self, value: str, invalid: str) -> Fragment:
        """The check as lines of a generated function (see :func:`check_source`): they
        run the line ``invalid`` when the local ``value`` fails it, as ``check`` would
        return False."""
        if self.unchecked:
            return Fragment((), {})
        return check_source(self.node, value, invalid)

    def error_from_detail(self, detail: str) -> ValidationError:
        return ValidationError(
            detail, service=self.service, connection=self.connection, direction=self.direction
        )

    def __repr__(self) -> str:
        where = ".".join(p for p in (self.service, self.connection, self.direction) if p)
        return f"<Validator {where or '?'}: {self.node.describe()}>"


def _always_true(value: Any) -> bool:
    return True
