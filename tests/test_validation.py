"""Type specs (SPEC section 2) compiled into validators, and their msgpack wire form.

Every grammar form is checked with accepted values, rejected values and the exact error
detail; the generated fast path (``check``) must agree with the explainer on every value.
Property-based tests generate valid values for a handful of models, check they pass,
then mutate them once and check the rejection names the mutated key or path.
"""

import dataclasses
import datetime as dt
import enum
import pickle
import re
import sys
import typing
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from types import GenericAlias
from typing import Any, Literal, NamedTuple, Optional, TypedDict

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service_framework.errors import ValidationError
from service_framework.generated import function_of
from service_framework.msgpack_codec import build_converter, wire_type
from service_framework.validation import (
    SpecError,
    UnsupportedOnWire,
    Validator,
    compile_fields,
    compile_spec,
)

if sys.version_info >= (3, 11):
    from typing import NotRequired
else:  # pragma: no cover - the project venv runs 3.11
    from typing_extensions import NotRequired

PREFIX = "svc: conn.args: "
UUID_A = uuid.UUID("12345678-1234-5678-1234-567812345678")
AWARE = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)


# --------------------------------------------------------------------------- helpers


def make(required: Any, optional: Any = None) -> Validator:
    return Validator(
        compile_fields(required, optional), service="svc", connection="conn", direction="args"
    )


def assert_accepts(validator: Validator, value: Any) -> None:
    assert validator.check(value) is True
    assert validator(value) is value
    assert validator.node.explain(value, "$") is None


def rejection(validator: Validator, value: Any) -> str:
    """Assert ``value`` is rejected by both paths; return the error detail."""
    assert validator.check(value) is False
    with pytest.raises(ValidationError) as info:
        validator(value)
    error = info.value
    assert isinstance(error, ValueError)
    assert str(error) == PREFIX + error.detail
    assert (error.service, error.connection, error.direction) == ("svc", "conn", "args")
    return error.detail


# --------------------------------------------------------------------------- model classes


class Order(TypedDict):
    qty: int
    note: NotRequired[str]


class Options(TypedDict, total=False):
    verbose: bool


@dataclasses.dataclass
class Point:
    x: int
    y: float


@dataclasses.dataclass
class Chain:
    value: int
    next: "Chain | None" = None


class Item(msgspec.Struct):
    name: str
    qty: int = 0


class Tree(msgspec.Struct):
    value: int
    children: "list[Tree]" = []


class TreeDict(TypedDict):
    value: int
    children: "list[TreeDict]"


class Opaque:
    """A plain class: fine in-process, no msgpack form."""


class Side(str, enum.Enum):
    BUY = "buy"


# --------------------------------------------------------------------------- grammar table


class Case(NamedTuple):
    name: str
    spec: Any
    good: tuple[Any, ...]
    bad: tuple[tuple[Any, str], ...]  # (value of key 'x', exact error detail)


CASES = [
    # ---- python types
    Case(
        "str",
        str,
        ("", "abc"),
        (
            (1, "expected str, got int at $.x"),
            (b"abc", "expected str, got bytes at $.x"),
            (None, "expected str, got None at $.x"),
        ),
    ),
    Case(
        "int",
        int,
        (0, -7, 2**70),
        (
            (True, "expected int, got bool at $.x"),
            (1.0, "expected int, got float at $.x"),
            ("1", "expected int, got str at $.x"),
        ),
    ),
    Case(
        "float",
        float,
        (0.0, -1.5, float("inf")),
        (
            (1, "expected float, got int at $.x"),
            (False, "expected float, got bool at $.x"),
            (Decimal("1.5"), "expected float, got Decimal at $.x"),
        ),
    ),
    Case(
        "bool",
        bool,
        (True, False),
        (
            (1, "expected bool, got int at $.x"),
            (0, "expected bool, got int at $.x"),
            ("true", "expected bool, got str at $.x"),
        ),
    ),
    Case(
        "bytes",
        bytes,
        (b"", b"\x00\xff"),
        (
            ("abc", "expected bytes, got str at $.x"),
            (bytearray(b"a"), "expected bytes, got bytearray at $.x"),
        ),
    ),
    Case(
        "Decimal",
        Decimal,
        (Decimal("1.10"), Decimal("-0")),
        (
            (1.1, "expected Decimal, got float at $.x"),
            ("1.1", "expected Decimal, got str at $.x"),
            (1, "expected Decimal, got int at $.x"),
        ),
    ),
    Case(
        "UUID",
        uuid.UUID,
        (UUID_A,),
        ((str(UUID_A), "expected UUID, got str at $.x"),),
    ),
    Case(
        "dict",
        dict,
        ({}, {"a": 1, 2: [3]}),
        (([], "expected dict, got list at $.x"),),
    ),
    Case(
        "list",
        list,
        ([], [1, "a", None]),
        (
            ((1,), "expected list, got tuple at $.x"),
            ({1}, "expected list, got set at $.x"),
        ),
    ),
    Case(
        "datetime",
        dt.datetime,
        (AWARE, dt.datetime(2024, 1, 2)),
        (
            (dt.date(2024, 1, 2), "expected datetime, got date at $.x"),
            ("2024-01-02T00:00:00", "expected datetime, got str at $.x"),
        ),
    ),
    Case(
        "date",
        dt.date,
        (dt.date(2024, 1, 2),),
        (
            (dt.datetime(2024, 1, 2), "expected date, got datetime at $.x"),
            (AWARE, "expected date, got datetime at $.x"),
        ),
    ),
    # ---- [T]
    Case(
        "list-of-int",
        [int],
        ([], [1, 2, 3]),
        (
            ((1, 2), "expected list[int], got tuple at $.x"),
            ([1, "2"], "expected int, got str at $.x[1]"),
            ([1, 2, True], "expected int, got bool at $.x[2]"),
        ),
    ),
    Case(
        "list-of-nested-dict",
        [{"qty": int}],
        ([], [{"qty": 1}, {"qty": 2}]),
        (
            ([{"qty": 1}, {"qty": 2}, {"qty": "3"}], "expected int, got str at $.x[2].qty"),
            ([{"qty": 1}, {}], "missing required key 'qty' at $.x[1]"),
        ),
    ),
    # ---- (T1, T2)
    Case(
        "tuple",
        (int, str),
        ((1, "a"), [1, "a"]),
        (
            ((1,), "expected tuple[int, str], got tuple of length 1 at $.x"),
            ([1, "a", 2], "expected tuple[int, str], got list of length 3 at $.x"),
            (("a", "a"), "expected int, got str at $.x[0]"),
            ((1, 2), "expected str, got int at $.x[1]"),
            ("ab", "expected tuple[int, str], got str at $.x"),
        ),
    ),
    # ---- {T}
    Case(
        "set-of-int",
        {int},
        (set(), {1, 2}, frozenset({3})),
        (
            ([1], "expected set[int], got list at $.x"),
            ({1, "a"}, "expected int, got str at $.x['a']"),
            ({True}, "expected int, got bool at $.x[True]"),
        ),
    ),
    # ---- literal sets
    Case(
        "literal-set-str",
        {"buy", "sell"},
        ("buy", "sell", ["buy", "sell"], ("sell",), {"buy"}, frozenset({"sell"}), []),
        (
            ("hold", "expected one of {'buy', 'sell'}, got 'hold' at $.x"),
            (["buy", "hold"], "expected one of {'buy', 'sell'}, got 'hold' at $.x[1]"),
            (b"buy", "expected one of {'buy', 'sell'}, got b'buy' at $.x"),
            (None, "expected one of {'buy', 'sell'}, got None at $.x"),
            ({"side": "buy"}, "expected one of {'buy', 'sell'}, got {'side': 'buy'} at $.x"),
        ),
    ),
    Case(
        "literal-set-int",
        {1, 2},
        (1, 2, [2, 1]),
        (
            (True, "expected one of {1, 2}, got True at $.x"),
            (1.0, "expected one of {1, 2}, got 1.0 at $.x"),
            ([1, True], "expected one of {1, 2}, got True at $.x[1]"),
            ("1", "expected one of {1, 2}, got '1' at $.x"),
        ),
    ),
    Case(
        "literal-set-with-none",
        {"a", None},
        ("a", None),
        ((0, "expected one of {'a', None}, got 0 at $.x"),),
    ),
    # ---- {K: V}
    Case(
        "dict-of-str-to-int",
        {str: int},
        ({}, {"a": 1, "b c": 2}),
        (
            ({"a": "1"}, "expected int, got str at $.x.a"),
            ({"b c": True}, "expected int, got bool at $.x['b c']"),
            ({1: 1}, "expected key of type str, got int at $.x"),
            ([], "expected dict[str, int], got list at $.x"),
        ),
    ),
    Case(
        "dict-of-str-to-list-of-decimal",
        {str: [Decimal]},
        ({"a": [Decimal(1)]},),
        (({"a": [Decimal(1), 2.0]}, "expected Decimal, got float at $.x.a[1]"),),
    ),
    # ---- nested {'name': spec}
    Case(
        "nested-dict",
        {"qty": int, "side": {"buy", "sell"}},
        ({"qty": 1, "side": "buy"},),
        (
            ({"qty": 1}, "missing required key 'side' at $.x"),
            (
                {"qty": 1, "side": "buy", "zzz": 0},
                "unexpected key 'zzz' at $.x (allowed: 'qty', 'side')",
            ),
            ({"qty": 1, "side": "hold"}, "expected one of {'buy', 'sell'}, got 'hold' at $.x.side"),
            ([("qty", 1)], "expected dict with keys 'qty', 'side', got list at $.x"),
        ),
    ),
    Case(
        "nested-dict-non-identifier-key",
        {"my-key": int},
        ({"my-key": 1},),
        (({"my-key": "1"}, "expected int, got str at $.x['my-key']"),),
    ),
    # ---- empty containers
    Case(
        "empty-dict-any-dict",
        {},
        ({}, {"a": 1}, {1: object()}),
        (([], "expected dict, got list at $.x"),),
    ),
    Case(
        "empty-list-any-list",
        [],
        ([], [1, "a"]),
        (((), "expected list, got tuple at $.x"),),
    ),
    Case(
        "empty-tuple-any-tuple",
        (),
        ((), (1, "a")),
        (([], "expected tuple, got list at $.x"),),
    ),
    Case(
        "empty-set-any-set",
        set(),
        (set(), {1, "a"}),
        (([], "expected set, got list at $.x"),),
    ),
    # ---- modern annotations
    Case(
        "list[int]",
        list[int],
        ([], [1]),
        (
            ([1, None], "expected int, got None at $.x[1]"),
            ({1}, "expected list[int], got set at $.x"),
        ),
    ),
    Case(
        "dict[str, Decimal]",
        dict[str, Decimal],
        ({"a": Decimal("1.5")},),
        (
            ({"a": 1.5}, "expected Decimal, got float at $.x.a"),
            ({b"a": Decimal(1)}, "expected key of type str, got bytes at $.x"),
        ),
    ),
    Case(
        "int | None",
        int | None,
        (1, None),
        (
            ("a", "expected int | None, got str at $.x"),
            (True, "expected int | None, got bool at $.x"),
        ),
    ),
    Case(
        "Optional[str]",
        Optional[str],  # noqa: UP045 - the old spelling is part of the grammar
        ("a", None),
        ((1, "expected str | None, got int at $.x"),),
    ),
    Case(
        "list[int] | None points at the bad item",
        list[int] | None,
        ([1], None),
        (
            ([1, "a"], "expected int, got str at $.x[1]"),
            ("a", "expected list[int] | None, got str at $.x"),
        ),
    ),
    Case(
        "Literal",
        Literal["a", "b"],
        ("a", "b"),
        (
            ("c", "expected one of {'a', 'b'}, got 'c' at $.x"),
            # Literal[...] is one value; unlike a seed literal set, no collections.
            (["a"], "expected one of {'a', 'b'}, got ['a'] at $.x"),
        ),
    ),
    Case(
        "Literal-bool-is-not-int",
        Literal[1],
        (1,),
        ((True, "expected one of {1}, got True at $.x"),),
    ),
    Case(
        "tuple[int, ...]",
        tuple[int, ...],
        ((), (1, 2, 3), [4]),
        (
            ((1, "a"), "expected int, got str at $.x[1]"),
            ({1}, "expected tuple[int, ...], got set at $.x"),
        ),
    ),
    Case(
        "tuple[int, str]",
        tuple[int, str],
        ((1, "a"),),
        (((1, "a", 2), "expected tuple[int, str], got tuple of length 3 at $.x"),),
    ),
    Case(
        "TypedDict",
        Order,
        ({"qty": 1}, {"qty": 1, "note": "n"}),
        (
            ({}, "missing required key 'qty' at $.x"),
            ({"qty": 1, "zzz": 2}, "unexpected key 'zzz' at $.x (allowed: 'qty', 'note')"),
            ({"qty": 1, "note": 2}, "expected str, got int at $.x.note"),
            ({"qty": True}, "expected int, got bool at $.x.qty"),
            ([], "expected Order, got list at $.x"),
        ),
    ),
    Case(
        "TypedDict-total-false",
        Options,
        ({}, {"verbose": True}),
        (({"verbose": 1}, "expected bool, got int at $.x.verbose"),),
    ),
    Case(
        "dataclass",
        Point,
        (Point(1, 2.0),),
        (
            (Point(1, 2), "expected float, got int at $.x.y"),
            ({"x": 1, "y": 2.0}, "expected Point, got dict at $.x"),
        ),
    ),
    Case(
        "recursive-dataclass",
        Chain,
        (Chain(1), Chain(1, Chain(2, Chain(3)))),
        (
            (Chain(1, Chain(2, Chain("3"))), "expected int, got str at $.x.next.next.value"),
            (Chain(1, 2), "expected Chain | None, got int at $.x.next"),
        ),
    ),
    Case(
        "msgspec-Struct",
        Item,
        (Item("a"), Item("a", 3)),
        (
            (Item("a", "3"), "expected int, got str at $.x.qty"),
            ({"name": "a"}, "expected Item, got dict at $.x"),
        ),
    ),
    Case(
        "recursive-Struct",
        Tree,
        (Tree(1), Tree(1, [Tree(2, [Tree(3)])])),
        (
            (
                Tree(1, [Tree(2, [Tree(None)])]),
                "expected int, got None at $.x.children[0].children[0].value",
            ),
        ),
    ),
    Case(
        "Annotated-and-NewType",
        typing.Annotated[typing.NewType("Qty", int), "a note"],
        (5,),
        ((True, "expected int, got bool at $.x"),),
    ),
    Case("Any", Any, (None, 1, object()), ()),
    Case("object", object, (None, "a"), ()),
]

CASE_IDS = [case.name for case in CASES]
ACCEPTED = [
    pytest.param(case.spec, value, id=f"{case.name}-{i}")
    for case in CASES
    for i, value in enumerate(case.good)
]
REJECTED = [
    pytest.param(case.spec, value, detail, id=f"{case.name}-{i}")
    for case in CASES
    for i, (value, detail) in enumerate(case.bad)
]


@pytest.mark.parametrize(("spec", "value"), ACCEPTED)
def test_grammar_accepts(spec: Any, value: Any) -> None:
    assert_accepts(make({"x": spec}), {"x": value})


@pytest.mark.parametrize(("spec", "value", "detail"), REJECTED)
def test_grammar_rejects_with_path(spec: Any, value: Any, detail: str) -> None:
    assert rejection(make({"x": spec}), {"x": value}) == detail


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fast_path_agrees_with_explainer(case: Case) -> None:
    validator = make({"x": case.spec})
    values = [*case.good, *(value for value, _ in case.bad)]
    assert values, "each case needs at least one value"
    for value in values:
        explained = validator.node.explain({"x": value}, "$")
        assert validator.check({"x": value}) is (explained is None), (value, explained)


def source_check(validator: Validator) -> Callable[[Any], bool]:
    """The validator's lines (``Validator.source``) compiled into a function of their
    own, as a connection's generated function holds them: False where they would raise."""
    check: Callable[[Any], bool] = function_of(
        validator.source("value", "return False"), "value", "True", "test check"
    )
    return check


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_generated_lines_agree_with_the_check(case: Case) -> None:
    validator = make({"x": case.spec}, {"note": str})
    checked = source_check(validator)
    values = [*case.good, *(value for value, _ in case.bad)]
    for value in values:
        for message in ({"x": value}, {"x": value, "note": "n"}, {"note": "n"}, {"x": value, 1: 2}):
            assert checked(message) is validator.check(message), (message,)
    assert checked([("x", 1)]) is False  # not a dict at all


def test_generated_lines_of_a_validator_that_is_not_a_dict_model() -> None:
    validator = Validator(compile_spec([int]))
    checked = source_check(validator)
    assert (checked([1, 2]), checked([1, "a"]), checked({})) == (True, False, False)
    assert Validator(compile_spec(Any)).source("value", "return False").lines == ()


def test_set_of_several_types_checks_each_item() -> None:
    validator = make({"x": {str, int}})
    assert_accepts(validator, {"x": {1, "a"}})
    detail = rejection(validator, {"x": {1, 1.5}})
    assert re.fullmatch(r"expected (str \| int|int \| str), got float at \$\.x\[1\.5\]", detail)


def test_spec_example_message_names_service_connection_direction_and_path() -> None:
    validator = Validator(
        compile_fields({"orders": [{"qty": int}]}, None),
        service="pricing",
        connection="request",
        direction="args",
    )
    with pytest.raises(ValueError) as info:
        validator({"orders": [{"qty": 1}, {"qty": 2}, {"qty": "3"}]})
    assert str(info.value) == "pricing: request.args: expected int, got str at $.orders[2].qty"


def test_message_without_names_is_the_bare_detail() -> None:
    validator = Validator(compile_fields({"a": int}, None))
    with pytest.raises(ValidationError) as info:
        validator({"a": "x"})
    assert str(info.value) == "expected int, got str at $.a"


def test_validation_error_pickles_with_its_fields() -> None:
    with pytest.raises(ValidationError) as info:
        make({"a": int})({"a": "x"})
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is ValidationError
    assert str(copy) == str(info.value)
    assert (copy.detail, copy.connection) == ("expected int, got str at $.a", "conn")


# --------------------------------------------------------------------------- top level


class TestTopLevel:
    def test_required_and_optional_keys(self) -> None:
        validator = make({"a": int}, {"b": str})
        assert_accepts(validator, {"a": 1})
        assert_accepts(validator, {"a": 1, "b": "x"})

    def test_missing_required_key(self) -> None:
        validator = make({"a": int, "c": int}, {"b": str})
        assert rejection(validator, {"a": 1, "b": "x"}) == "missing required key 'c' at $"

    def test_unknown_key_lists_allowed_keys(self) -> None:
        validator = make({"a": int}, {"b": str})
        detail = rejection(validator, {"a": 1, "zzz": 1})
        assert detail == "unexpected key 'zzz' at $ (allowed: 'a', 'b')"

    def test_optional_key_value_is_checked(self) -> None:
        validator = make({"a": int}, {"b": str})
        assert rejection(validator, {"a": 1, "b": None}) == "expected str, got None at $.b"

    def test_optional_key_with_optional_type_accepts_none(self) -> None:
        validator = make({}, {"b": int | None})
        assert_accepts(validator, {"b": None})
        assert_accepts(validator, {})

    def test_non_dict_message(self) -> None:
        validator = make({"a": int}, {"b": str})
        assert rejection(validator, [("a", 1)]) == "expected dict with keys 'a', 'b', got list at $"

    def test_empty_model_accepts_only_empty_dict(self) -> None:
        validator = make({}, {})
        assert_accepts(validator, {})
        assert rejection(validator, {"a": 1}) == "unexpected key 'a' at $ (allowed: none)"
        detail = rejection(validator, None)
        assert detail.startswith("expected dict") and detail.endswith(", got None at $")

    def test_missing_side_is_an_empty_dict(self) -> None:
        assert_accepts(make(None, {"b": int}), {})
        assert_accepts(make({"a": int}, None), {"a": 1})
        assert rejection(make(None, {"b": int}), {"a": 1}).startswith("unexpected key 'a' at $")

    @pytest.mark.parametrize("value", [{"anything": object()}, None, 3, [1], "x"])
    def test_none_none_is_unchecked(self, value: Any) -> None:
        validator = make(None, None)
        assert validator.unchecked
        assert validator.check(value) is True
        assert validator(value) is value

    def test_checked_model_is_not_unchecked(self) -> None:
        assert not make({}, None).unchecked

    def test_several_problems_report_one_of_them(self) -> None:
        detail = rejection(make({"a": int}, None), {"zzz": 1})
        assert detail in (
            "missing required key 'a' at $",
            "unexpected key 'zzz' at $ (allowed: 'a')",
        )


# --------------------------------------------------------------------------- spec errors


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([int, str], r"^\$\.x: a list spec holds exactly one item spec"),
        ({str: int, "a": int}, r"^\$\.x: a dict spec mixes a type key with literal keys"),
        ({str, "a"}, r"^\$\.x: a set spec mixes types and values"),
        (3, r"^\$\.x: 3 is not a type spec$"),
        ("int", r"^\$\.x: 'int' is not a type spec$"),
        ({"a": {"b": [int, str]}}, r"^\$\.x\.a\.b: a list spec holds exactly one item spec"),
        ([[3]], r"^\$\.x\[\]\[\]: 3 is not a type spec$"),
    ],
    ids=["two-item-list", "type-and-literal-keys", "type-and-value-set", "int", "str",
         "nested-path", "list-item-path"],
)  # fmt: skip
def test_malformed_spec_raises_spec_error_with_path(spec: Any, message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        compile_fields({"x": spec}, None)
    assert isinstance(info.value, TypeError)


def test_key_both_required_and_optional_is_an_error() -> None:
    with pytest.raises(SpecError, match=r"^key 'a' is both required and optional$"):
        compile_fields({"a": int, "b": int}, {"a": str})


@pytest.mark.parametrize(
    ("required", "optional", "message"),
    [
        ([], None, r"^required model must be a dict of key: spec, got list$"),
        (None, "x", r"^optional model must be a dict of key: spec, got str$"),
        ({1: int}, None, r"^required model key 1 must be a str$"),
    ],
)
def test_top_level_must_be_str_keyed_dicts(required: Any, optional: Any, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        compile_fields(required, optional)


def test_str_enum_key_is_the_str_key_it_equals() -> None:
    # A str Enum member is a str: as a model key it names the key its value spells.
    validator = make({Side.BUY: int})
    assert validator.check({"buy": 1}) is True
    assert validator.check({"buy": "1"}) is False


def test_recursive_typeddict() -> None:
    validator = make({"t": TreeDict})
    assert_accepts(validator, {"t": {"value": 1, "children": [{"value": 2, "children": []}]}})
    bad = {"t": {"value": 1, "children": [{"value": "2", "children": []}]}}
    assert rejection(validator, bad) == "expected int, got str at $.t.children[0].value"


# --------------------------------------------------------------------------- properties


def _type_name(value: object) -> str:
    return "None" if value is None else type(value).__name__


def _step(path: str, key: object) -> str:
    """The documented path notation: ``.name`` for identifiers, ``[repr]`` otherwise."""
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


KEYS = st.text(alphabet="abcxyz_- 9", min_size=1, max_size=5)
INT64 = st.integers(-(2**63), 2**63 - 1)


def seed(spec: Any) -> Any:
    """``list[T]`` -> ``[T]`` so the helpers below handle one spelling."""
    return [typing.get_args(spec)[0]] if typing.get_origin(spec) is list else spec


def valid(spec: Any) -> st.SearchStrategy[Any]:
    """Values matching ``spec`` (a small subset of the grammar), msgpack-safe."""
    spec = seed(spec)
    leaves: dict[Any, st.SearchStrategy[Any]] = {
        str: st.text(max_size=6),
        int: INT64,
        float: st.floats(allow_nan=False),
        bool: st.booleans(),
        Decimal: st.decimals(allow_nan=False, allow_infinity=False, places=3),
    }
    if isinstance(spec, type) and spec in leaves:
        return leaves[spec]
    if isinstance(spec, list):
        return st.lists(valid(spec[0]), max_size=4)
    if isinstance(spec, tuple):
        return st.tuples(*(valid(item) for item in spec))
    if isinstance(spec, (set, frozenset)):  # a literal set: one value or a list of them
        choices = st.sampled_from(sorted(spec))
        return st.one_of(choices, st.lists(choices, max_size=3))
    if typing.get_origin(spec) is dict:
        return st.dictionaries(KEYS, valid(typing.get_args(spec)[1]), max_size=3)
    if isinstance(spec, dict):
        return st.fixed_dictionaries({k: valid(v) for k, v in spec.items()})
    raise AssertionError(f"no strategy for {spec!r}")


def wrong(spec: Any) -> st.SearchStrategy[Any]:
    """Values that never match ``spec``."""
    spec = seed(spec)
    text = st.text(max_size=3)
    if spec is str:
        return st.one_of(INT64, st.binary(max_size=3), st.none(), st.floats(allow_nan=False))
    if spec is int:
        return st.one_of(st.booleans(), st.floats(allow_nan=False), text, st.none())
    if spec is float:
        return st.one_of(INT64, st.booleans(), text, st.decimals(allow_nan=False))
    if spec is bool:
        return st.one_of(st.integers(0, 1), text, st.none())
    if spec is Decimal:
        return st.one_of(st.floats(allow_nan=False), INT64, text)
    if isinstance(spec, list):
        return st.one_of(st.tuples(INT64), text, INT64, st.none())
    if isinstance(spec, tuple):
        too_long = st.lists(INT64, min_size=len(spec) + 1, max_size=len(spec) + 2)
        return st.one_of(too_long, text, INT64, st.none())
    if isinstance(spec, (set, frozenset)):
        return st.sampled_from(["hold", "BUY", 0, None, b"buy", True, 1.5])
    return st.one_of(st.lists(INT64, max_size=2), INT64, text, st.none())  # dict-shaped


class Model(NamedTuple):
    name: str
    required: dict[str, Any]
    optional: dict[str, Any]

    def values(self) -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries(
            {k: valid(v) for k, v in self.required.items()},
            optional={k: valid(v) for k, v in self.optional.items()},
        )


MODELS = [
    Model(
        "flat",
        {"name": str, "qty": int, "price": float, "active": bool, "amount": Decimal},
        {},
    ),
    Model("list-of-dicts", {"orders": [{"sku": str, "qty": int, "side": {"buy", "sell"}}]}, {}),
    Model("dict-str-list-int", {"scores": dict[str, list[int]]}, {}),
    Model("tuple", {"pair": (int, str), "triple": (bool, Decimal, [float])}, {}),
    Model("literal-set", {"side": {"buy", "sell"}, "tif": {"day", "ioc", "gtc"}}, {}),
    Model(
        "optional-keys",
        {"id": int},
        {"note": str, "tags": [str], "limits": {"lo": Decimal, "hi-water": Decimal}},
    ),
]


class Site(NamedTuple):
    kind: str  # "drop" | "unknown" | "bad-key" | "replace"
    steps: tuple[Any, ...]  # keys/indices from the root to the container (or value)
    path: str
    spec: Any
    key: Any = None


def sites(
    value: Any, spec: Any, steps: tuple[Any, ...], path: str, required: Any
) -> Iterator[Site]:
    """Every place a single mutation can make ``value`` invalid.

    ``required`` is the set of required keys when ``spec`` is a fields dict (else None).
    """
    spec = seed(spec)
    if required is not None:  # a fields dict: top level or nested {'name': spec}
        yield Site("unknown", steps, path, spec)
        for key in value:
            if key in required:
                yield Site("drop", steps, path, spec, key)
            yield from sites(value[key], spec[key], (*steps, key), _step(path, key), None)
        return
    yield Site("replace", steps, path, spec)
    if isinstance(spec, dict):
        yield from sites(value, spec, steps, path, set(spec))
    elif typing.get_origin(spec) is dict:
        yield Site("bad-key", steps, path, spec)
        item_spec = typing.get_args(spec)[1]
        for key, item in value.items():
            yield from sites(item, item_spec, (*steps, key), _step(path, key), None)
    elif isinstance(spec, list):
        for i, item in enumerate(value):
            yield from sites(item, spec[0], (*steps, i), f"{path}[{i}]", None)
    elif isinstance(spec, tuple):
        for i, (item, item_spec) in enumerate(zip(value, spec, strict=True)):
            yield from sites(item, item_spec, (*steps, i), f"{path}[{i}]", None)


def update(value: Any, steps: tuple[Any, ...], change: Callable[[Any], Any]) -> Any:
    """A copy of ``value`` with ``change`` applied at ``steps`` (the original is untouched)."""
    if not steps:
        return change(value)
    head, rest = steps[0], steps[1:]
    if isinstance(value, dict):
        return {**value, head: update(value[head], rest, change)}
    items = list(value)
    items[head] = update(items[head], rest, change)
    return tuple(items) if isinstance(value, tuple) else items


def _without(d: dict[Any, Any], key: Any) -> dict[Any, Any]:
    return {k: v for k, v in d.items() if k != key}


def model_sites(model: Model, value: dict[str, Any]) -> list[Site]:
    spec = {**model.required, **model.optional}
    return list(sites(value, spec, (), "$", set(model.required)))


@st.composite
def mutated(draw: st.DrawFn, model: Model) -> tuple[Any, Any, Site, Any]:
    """(original, mutated, site, injected key or value)."""
    value = draw(model.values())
    site = draw(st.sampled_from(model_sites(model, value)))
    if site.kind == "drop":
        return value, update(value, site.steps, lambda d: _without(d, site.key)), site, site.key
    if site.kind == "unknown":
        key = draw(KEYS.filter(lambda k: k not in site.spec))
        return value, update(value, site.steps, lambda d: {**d, key: 0}), site, key
    if site.kind == "bad-key":
        key = draw(st.one_of(INT64, st.none(), st.binary(max_size=2)))
        return value, update(value, site.steps, lambda d: {**d, key: []}), site, key
    bad = draw(wrong(site.spec))
    return value, update(value, site.steps, lambda _: bad), site, bad


PROPERTY = settings(
    max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def test_mutation_sites_cover_every_kind() -> None:
    model = MODELS[-1]
    value = {"id": 1, "tags": ["a"], "limits": {"lo": Decimal(1), "hi-water": Decimal(2)}}
    found = {(site.kind, site.path) for site in model_sites(model, value)}
    assert ("drop", "$") in found and ("unknown", "$") in found
    assert ("drop", "$.limits") in found and ("unknown", "$.limits") in found
    assert ("replace", "$.tags[0]") in found and ("replace", "$.limits['hi-water']") in found
    scores = {"a b": [1]}
    found = {(s.kind, s.path) for s in model_sites(MODELS[2], {"scores": scores})}
    assert {("bad-key", "$.scores"), ("replace", "$.scores['a b'][0]")} <= found
    assert ("drop", "$.limits") not in {(s.kind, s.path) for s in model_sites(model, {"id": 1})}


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
@PROPERTY
@given(data=st.data())
def test_generated_valid_values_pass(model: Model, data: st.DataObject) -> None:
    validator = make(model.required, model.optional)
    assert_accepts(validator, data.draw(model.values()))


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
@PROPERTY
@given(data=st.data())
def test_single_mutation_is_rejected_with_its_path(model: Model, data: st.DataObject) -> None:
    validator = make(model.required, model.optional)
    original, value, site, injected = data.draw(mutated(model))
    assert validator.check(original) is True  # the mutation did not touch the original
    detail = rejection(validator, value)
    if site.kind == "drop":
        assert detail == f"missing required key {injected!r} at {site.path}"
    elif site.kind == "unknown":
        assert detail.startswith(f"unexpected key {injected!r} at {site.path} (allowed: ")
    elif site.kind == "bad-key":
        assert detail == f"expected key of type str, got {_type_name(injected)} at {site.path}"
    else:
        assert detail.startswith("expected ")
        assert detail.endswith(f" at {site.path}")


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
@PROPERTY
@given(data=st.data())
def test_generated_lines_agree_with_the_check_on_mutations(
    model: Model, data: st.DataObject
) -> None:
    validator = make(model.required, model.optional)
    checked = source_check(validator)
    original, value, _, _ = data.draw(mutated(model))
    assert checked(original) is True
    assert checked(value) is validator.check(value) is False


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
@PROPERTY
@given(data=st.data())
def test_generated_values_survive_the_wire(model: Model, data: st.DataObject) -> None:
    value = data.draw(model.values())
    node = compile_fields(model.required, model.optional)
    decoded = wire_round_trip(node, value)
    assert decoded == value
    assert make(model.required, model.optional).check(decoded) is True


# --------------------------------------------------------------------------- wire


ENCODER = msgspec.msgpack.Encoder()


def wire_round_trip(node: Any, value: Any) -> Any:
    raw = msgspec.msgpack.decode(ENCODER.encode(value), type=wire_type(node))
    convert = build_converter(node)
    return raw if convert is None else convert(raw)


RICH_REQUIRED = {
    "id": uuid.UUID,
    "amount": Decimal,
    "blob": bytes,
    "tags": {str},
    "pair": (int, str),
    "nested": {"inner": {"price": Decimal, "when": dt.datetime}},
    "book": {str: [{"px": Decimal, "qty": int}]},
    "day": dt.date,
    "side": {"buy", "sell"},
    "flag": bool,
    "ratio": float,
}
RICH_VALUE = {
    "id": UUID_A,
    "amount": Decimal("12.3400"),
    "blob": b"\x00\x01\xff",
    "tags": {"a", "b"},
    "pair": (7, "seven"),
    "nested": {"inner": {"price": Decimal("-0.5"), "when": AWARE}},
    "book": {"AAPL": [{"px": Decimal("1.25"), "qty": 3}], "MSFT": []},
    "day": dt.date(2024, 2, 29),
    "side": ["buy", "sell"],
    "flag": False,
    "ratio": 0.25,
}


class TestWire:
    def test_rich_model_round_trip_restores_types(self) -> None:
        node = compile_fields(RICH_REQUIRED, None)
        result = wire_round_trip(node, RICH_VALUE)
        assert result == RICH_VALUE
        assert type(result) is dict
        assert type(result["id"]) is uuid.UUID
        assert type(result["amount"]) is Decimal and str(result["amount"]) == "12.3400"
        assert type(result["blob"]) is bytes
        assert type(result["tags"]) is set
        assert type(result["pair"]) is tuple
        assert type(result["nested"]) is dict and type(result["nested"]["inner"]) is dict
        assert type(result["nested"]["inner"]["when"]) is dt.datetime
        assert type(result["book"]["AAPL"][0]) is dict
        assert type(result["day"]) is dt.date
        assert make(RICH_REQUIRED).check(result) is True

    def test_decoded_fields_need_the_converter(self) -> None:
        node = compile_fields({"a": int}, None)
        raw = msgspec.msgpack.decode(ENCODER.encode({"a": 1}), type=wire_type(node))
        assert isinstance(raw, msgspec.Struct)
        convert = build_converter(node)
        assert convert is not None
        assert convert(raw) == {"a": 1}

    def test_plain_specs_need_no_converter(self) -> None:
        assert build_converter(compile_spec(dict[str, list[int]])) is None
        assert build_converter(compile_fields(None, None)) is None
        assert build_converter(compile_spec([{"a": int}])) is not None

    def test_absent_optional_keys_stay_absent(self) -> None:
        node = compile_fields({"a": int}, {"b": int | None, "c": str})
        assert wire_round_trip(node, {"a": 1}) == {"a": 1}
        assert wire_round_trip(node, {"a": 1, "b": None}) == {"a": 1, "b": None}
        assert wire_round_trip(node, {"a": 1, "c": "x"}) == {"a": 1, "c": "x"}

    def test_odd_keys_round_trip(self) -> None:
        node = compile_fields({"": int, "class": str, "my-key": bytes, "a.b": int}, None)
        value = {"": 1, "class": "c", "my-key": b"x", "a.b": 2}
        assert wire_round_trip(node, value) == value

    def test_tuple_holding_a_nested_dict(self) -> None:
        node = compile_fields({"t": ({"a": Decimal}, int)}, None)
        result = wire_round_trip(node, {"t": ({"a": Decimal("1.5")}, 2)})
        assert result == {"t": ({"a": Decimal("1.5")}, 2)}
        assert type(result["t"][0]) is dict

    def test_optional_list_of_nested_dicts(self) -> None:
        node = compile_fields({"x": GenericAlias(list, ({"a": int},)) | None}, None)
        assert wire_round_trip(node, {"x": [{"a": 1}]}) == {"x": [{"a": 1}]}
        assert type(wire_round_trip(node, {"x": [{"a": 1}]})["x"][0]) is dict
        assert wire_round_trip(node, {"x": None}) == {"x": None}

    def test_typed_dict_dataclass_and_struct(self) -> None:
        node = compile_fields({"o": Order, "p": Point, "i": Item, "c": Chain, "t": Tree}, None)
        value = {
            "o": {"qty": 1, "note": "n"},
            "p": Point(1, 2.5),
            "i": Item("a", 2),
            "c": Chain(1, Chain(2)),
            "t": Tree(1, [Tree(2)]),
        }
        result = wire_round_trip(node, value)
        assert result == value
        assert type(result["o"]) is dict
        assert type(result["p"]) is Point and type(result["c"].next) is Chain

    def test_literal_set_single_and_collection(self) -> None:
        node = compile_fields({"s": {"buy", "sell"}}, None)
        assert wire_round_trip(node, {"s": "buy"}) == {"s": "buy"}
        assert wire_round_trip(node, {"s": ("buy", "sell")}) == {"s": ["buy", "sell"]}
        with pytest.raises(msgspec.ValidationError):
            wire_round_trip(node, {"s": "hold"})

    def test_wire_rejects_unknown_nested_key_and_missing_key(self) -> None:
        node = compile_fields({"n": {"a": int}}, None)
        with pytest.raises(msgspec.ValidationError, match="unknown field `zzz`"):
            wire_round_trip(node, {"n": {"a": 1, "zzz": 2}})
        with pytest.raises(msgspec.ValidationError, match="missing required field `a`"):
            wire_round_trip(node, {"n": {}})

    def test_wire_rejects_bool_for_int_and_datetime_for_date(self) -> None:
        with pytest.raises(msgspec.ValidationError):
            wire_round_trip(compile_fields({"n": int}, None), {"n": True})
        with pytest.raises(msgspec.ValidationError):
            wire_round_trip(compile_fields({"d": dt.date}, None), {"d": AWARE})

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            (str | Decimal, "cannot be told apart"),
            (Opaque, "type Opaque cannot be sent as msgpack"),
            (Literal[1.5], "literal 1.5 cannot be sent"),
            ({1.5, 2.5}, "literal 1.5 cannot be sent"),
            ({"a": {1: int}}, "key 1 is not a str"),
            ([Opaque], "type Opaque cannot be sent as msgpack"),
        ],
        ids=["str|Decimal", "plain-class", "Literal[1.5]", "float-literal-set",
             "nested-int-key", "list-of-plain-class"],
    )  # fmt: skip
    def test_unsupported_on_wire(self, spec: Any, message: str) -> None:
        node = compile_fields({"x": spec}, None)
        make({"x": spec})  # fine in-process
        with pytest.raises(UnsupportedOnWire, match=message) as info:
            wire_type(node)
        assert isinstance(info.value, TypeError)

    def test_unsupported_on_wire_names_the_top_level_key(self) -> None:
        with pytest.raises(UnsupportedOnWire, match=r"^key 'price': literal 1\.5 cannot be"):
            wire_type(compile_fields({"qty": int, "price": Literal[1.5]}, None))

    def test_var_tuple_of_nested_dicts_converts_to_dicts(self) -> None:
        node = compile_fields({"t": GenericAlias(tuple, ({"a": int}, ...))}, None)
        result = wire_round_trip(node, {"t": ({"a": 1}, {"a": 2})})
        assert result == {"t": ({"a": 1}, {"a": 2})}
