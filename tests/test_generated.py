"""The pieces connections build their per-message functions from (``generated.py``)."""

from __future__ import annotations

import linecache
import traceback

import pytest

from service_framework.generated import Fragment, build, indent, merge, unique_prefix


def test_merge_takes_the_same_object_twice_but_never_two_under_one_name() -> None:
    shared = object()
    names = merge({"a": shared}, {"a": shared, "b": 1})
    assert names == {"a": shared, "b": 1}
    with pytest.raises(ValueError, match="two objects under the generated name 'a'"):
        merge(names, {"a": object()})


def test_a_call_fragment_names_its_function_uniquely() -> None:
    first = Fragment.call("out", len, "value")
    second = Fragment.call("out", abs, "value")
    assert set(first.names).isdisjoint(second.names)
    names = merge({}, first.names)
    function = build(
        ["def f(value):", *indent(first.lines), "    return out"], names, "test call", "f"
    )
    assert function([1, 2, 3]) == 3
    assert unique_prefix() != unique_prefix()


def test_a_traceback_through_a_generated_function_shows_its_lines() -> None:
    def fail(value: object) -> None:
        raise RuntimeError("boom")

    function = build(
        ["def f(value):", "    fail(value)  # the line shown"], {"fail": fail}, "test tb", "f"
    )
    with pytest.raises(RuntimeError) as info:
        function(1)
    frames = traceback.extract_tb(info.value.__traceback__)
    generated = [frame for frame in frames if frame.filename.startswith("<service_framework")]
    assert generated[0].line == "fail(value)  # the line shown"
    assert linecache.getline(generated[0].filename, 2).strip().startswith("fail(value)")
