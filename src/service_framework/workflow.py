"""Workflow ids: one id per chain of messages, carried in every envelope.

A message sent from ``main`` or ``init_function`` starts a workflow and gets a new id.
While a handler runs, the incoming id is the *current flow*; each ``to_send`` it makes
passes the id on with a call counter (``<id>_1``, ``<id>_2``, ...), so one request can
be followed across services by grepping logs for its id.

An id is at most :data:`WORKFLOW_ID_MAX_CHARS` characters: a receiver refuses a message
whose id is longer (a peer must not make every log line it touches megabytes long). An
id that would grow past the cap after many hops is folded instead: its first
:data:`_FOLD_KEEP` characters (the root id, still greppable) plus ``~`` and a hash of
the whole id.

The current flow lives in a :class:`contextvars.ContextVar`: each thread (the service
loop, ``main``) sees its own, and the logging filter reads it without any handler
reconfiguration per message.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Final

__all__ = [
    "IDLE",
    "NEXT_CALL",
    "WORKFLOW_ID_MAX_CHARS",
    "Flow",
    "FlowScope",
    "current_flow",
    "current_workflow_id",
    "flow_of",
    "new_workflow_id",
    "next_workflow_id",
    "outgoing_flow",
]


class Flow:
    """One message's place in a workflow: its id and how many sends it has made.

    Built (or reused) for every message, so it is kept as cheap as Python allows: no
    ``__init__``, defaults on the class, and a new workflow's id (and number) made only
    when something reads it - an envelope, a log line. An inline call that nobody logs
    never formats one.
    """

    _id: str | None = None  # None: a new workflow whose id is not made yet
    calls: int = 0

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = new_workflow_id()
        return self._id

    def next_call_id(self) -> str:
        """The id of the next message this one sends: ``<id>_1``, ``<id>_2``, ...
        (folded if it would be longer than :data:`WORKFLOW_ID_MAX_CHARS`)."""
        self.calls += 1
        call_id = f"{self.id}_{self.calls}"
        if len(call_id) > WORKFLOW_ID_MAX_CHARS:
            return fold_workflow_id(call_id)
        return call_id

    def child(self) -> Flow:
        """The flow of the next message this one sends.

        Its id is made now: a flow may be reused for the next message once this one is
        handled, so a child must not read it later."""
        return flow_of(self.next_call_id())

    def __repr__(self) -> str:
        return f"Flow({self.id!r}, calls={self.calls})"


IDLE = "-"  # the id of a flow when no message is being handled
#: For FlowScope: "the next call of the current flow", worked out by the scope.
NEXT_CALL: Final = "<next call>"

WORKFLOW_ID_MAX_CHARS: Final = 256  # the longest id a receiver accepts
_FOLD_KEEP: Final = 160  # characters of an over-long id kept when it is folded


def fold_workflow_id(workflow_id: str) -> str:
    """``workflow_id`` cut to its first characters plus ``~`` and a hash of all of it:
    within the cap, the same for the same id, still starting with the root id."""
    digest = hashlib.blake2b(workflow_id.encode("utf-8", "surrogatepass"), digest_size=8)
    return f"{workflow_id[:_FOLD_KEEP]}~{digest.hexdigest()}"


def flow_of(workflow_id: str) -> Flow:
    """The flow of a received message that carries ``workflow_id``."""
    flow = Flow()
    flow._id = workflow_id
    return flow


current_flow: ContextVar[Flow | None] = ContextVar("service_framework_flow", default=None)


_ID_BLOCK = 100  # ids per stem, which two digits complete (see _fresh_ids)
_FIRST_ENDS = tuple(map(str, range(1, _ID_BLOCK)))  # "1" .. "99": ids 1 .. 99
_ENDS = tuple(f"{n:02d}" for n in range(_ID_BLOCK))  # "00" .. "99": after a stem


def _fresh_ids() -> Callable[[], str]:
    """New ids: a random per-process prefix and a counter, unique across processes and
    hosts (``<12 hex digits>-<n>``, n = 1, 2, ...).

    No number is formatted per id. Ids 1 to 99 are the prefix plus one of "1" .. "99";
    after them each hundred is a stem (the prefix and ``n // 100``, formatted once)
    plus one of "00" .. "99": one concatenation per id, half the cost of ``str(n)``
    and then the prefix. They are made a hundred at a time, each hundred a list built
    in C (no bytecode runs, so under the GIL no other thread takes ids meanwhile), and
    handed out one by one: the per-message path that reads :data:`next_id` off this
    module calls no Python function for one and takes the next item of a list, so no
    formatting code is fetched cache-cold per message when many processes share few
    cores (``benchmarks/coldlines.py`` counts the lines)."""
    prefix = secrets.token_hex(6) + "-"
    first = list(map(prefix.__add__, _FIRST_ENDS))
    stems = map(prefix.__add__, map(str, itertools.count(1)))
    adds = map(getattr, stems, itertools.repeat("__add__"))
    hundreds = map(list, map(map, adds, itertools.repeat(_ENDS)))
    return itertools.chain(first, itertools.chain.from_iterable(hundreds)).__next__


#: The next new workflow's id (:func:`new_workflow_id`). Replaced in a forked child:
#: read it off the module when it is called, never bind it.
next_id = _fresh_ids()


def _reseed() -> None:
    global next_id
    next_id = _fresh_ids()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def new_workflow_id() -> str:
    """A fresh id for a message that starts a workflow."""
    return next_id()


def outgoing_flow() -> Flow:
    """The flow of a message about to be sent from the current context: a new workflow
    outside any handler, the next call of the current one inside a handler."""
    flow = current_flow.get()
    return Flow() if flow is None or flow._id is IDLE else flow.child()


def next_workflow_id() -> str:
    """The id of a message about to be sent from the current context: the next call id
    of the message being handled, or outside any handler a new workflow's."""
    flow = current_flow.get()
    if flow is not None and flow._id is not IDLE:
        return flow.next_call_id()
    return new_workflow_id()


def install_flow() -> Flow:
    """Make an idle flow this context's current one, for code that then turns it into
    each handled message's flow in place (cheaper than setting a new one per message).
    A flow whose id is :data:`IDLE` stands for "no message being handled"."""
    flow = flow_of(IDLE)
    current_flow.set(flow)
    return flow


class FlowScope:
    """Where a handled message's workflow id is the current flow while its handler runs.

    The one place that says how a message's id is set and what was there before put
    back; the message pipeline compiles these lines around every handler it calls
    (``pipeline.compile_delivery``), and nothing else writes a flow's id. It keeps the
    cheap reuse: no flow object is made per message, an existing one's id is set and
    restored.

    ``FlowScope(flow)`` scopes into that fixed flow - the serving thread's, made its
    current flow once by the runtime (:func:`install_flow`). ``FlowScope()`` scopes into
    the calling context's current flow, installing one if it has none: inline calls,
    which nest on whatever thread calls them. When handlers run as concurrent tasks,
    this is what becomes per-task.

    An id of ``None`` starts a new workflow whose id is made only if something reads it;
    in a context's scope, :data:`NEXT_CALL` stands for the id of the next message the
    current one sends (an inline call, delivered in the caller's own flow).
    """

    __slots__ = ("_flow",)

    def __init__(self, flow: Flow | None = None) -> None:
        self._flow = flow

    def source(self) -> tuple[list[str], list[str], dict[str, Any]]:
        """Python lines that enter the scope (the message's id in ``workflow_id``; after
        them ``flow`` is the current flow) and that leave it, for code compiled around a
        handler, and the names those lines use."""
        names: dict[str, Any] = {"_IDLE": IDLE, "_NEXT_CALL": NEXT_CALL}
        if self._flow is not None:
            # The serving thread's: its messages come off the wire, each with its id.
            names["_FLOW"] = self._flow
            enter = ["flow = _FLOW"]
        else:
            names["_get_flow"], names["_install_flow"] = current_flow.get, install_flow
            enter = [
                "flow = _get_flow() or _install_flow()",
                "if workflow_id is _NEXT_CALL:",
                # The next call of the message this flow is handling (counted before
                # the flow is saved), or outside any handler a new workflow, made if
                # something reads it.
                "    workflow_id = flow.next_call_id() if flow._id is not _IDLE else None",
            ]
        enter += [
            "saved_id, saved_calls = flow._id, flow.calls",
            "flow._id = workflow_id",
            "flow.calls = 0",
        ]
        leave = ["flow._id = saved_id", "flow.calls = saved_calls"]
        return enter, leave, names


def current_workflow_id() -> str | None:
    """The id of the message being handled in this context, if any."""
    flow = current_flow.get()
    return None if flow is None or flow._id is IDLE else flow.id
