"""Python compiled at start-up into a connection's per-message functions.

A message's whole path on one side - check, encode, send, receive, decode, count - is
one generated function per connection, built once from lines that each part of the
framework supplies for its own step: the validator its check
(:meth:`~service_framework.validation.Validator.source`), the codec its encoding and
decoding (``encode_*_source``/``decode_*_source`` on the codec protocols), the stats
their counting (``ConnectionStats.source``), the flow scope its entry and exit
(``FlowScope.source``). Each call a message makes is a frame to set up and a function
object, its code and its cells to fetch - with many busy processes on few cores,
fetched cache-cold after every blocking receive - so the lines run in one function
rather than five (``tests/test_message_path.py`` counts them; ``benchmarks/coldpath.py``
times the path cache-cold).

A :class:`Fragment` is some lines and the names they use. Names that are not the host
function's own locals are prefixed by whoever writes them, so fragments of different
parts can share one function: :func:`merge` refuses two different objects under one
name.
"""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

__all__ = ["Fragment", "build", "function_of", "indent", "merge", "unique_prefix"]


class Fragment(NamedTuple):
    """Lines of Python (unindented: the host indents them) and the names they use."""

    lines: tuple[str, ...]
    names: Mapping[str, Any]

    @classmethod
    def call(cls, into: str, function: Callable[..., Any], *args: str) -> Fragment:
        """The fragment of a plain call, ``into = function(*args)``: what a part that
        has no lines of its own supplies."""
        name = f"{unique_prefix()}call"
        return cls((f"{into} = {name}({', '.join(args)})",), {name: function})


_PREFIXES = itertools.count(1)
_BUILT = itertools.count(1)


def unique_prefix() -> str:
    """A prefix no other fragment's names start with (``_g<n>_``)."""
    return f"_g{next(_PREFIXES)}_"


def indent(lines: Iterable[str], by: int = 4) -> list[str]:
    return [" " * by + line for line in lines]


def merge(names: dict[str, Any], *more: Mapping[str, Any]) -> dict[str, Any]:
    """``names`` updated with ``more``; one name may not stand for two objects."""
    for extra in more:
        for key, value in extra.items():
            if key in names and names[key] is not value:
                raise ValueError(f"two objects under the generated name {key!r}")
            names[key] = value
    return names


def build(lines: Iterable[str], names: dict[str, Any], what: str, function: str) -> Any:
    """Compile the generated source and return its ``function``; the source goes to
    linecache, so a traceback through it shows the lines. ``names`` becomes its
    globals."""
    source = "\n".join(lines) + "\n"
    # Numbered: two runs of a service in one process (tests, inline) must not share
    # an entry, as their sources may differ.
    filename = f"<service_framework {what} #{next(_BUILT)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), names)
    return names[function]


def function_of(fragment: Fragment, params: str, result: str, what: str) -> Any:
    """``fragment`` as a function of its own: ``def f(<params>)``, its lines, then
    ``return <result>`` - the callable form of lines that also run inside other
    functions, so both forms are one definition."""
    lines = [f"def f({params}):", *indent(fragment.lines), f"    return {result}"]
    return build(lines, merge({}, fragment.names), what, "f")
