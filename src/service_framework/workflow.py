"""Workflow ids: one id per chain of messages, carried in every envelope.

A message sent from ``main`` or ``init_function`` starts a workflow and gets a new id.
While a handler runs, the incoming id is the *current flow*; each ``to_send`` it makes
passes the id on with a call counter (``<id>_1``, ``<id>_2``, ...), so one request can
be followed across services by grepping logs for its id.

The current flow lives in a :class:`contextvars.ContextVar`: each thread (the service
loop, ``main``) sees its own, and the logging filter reads it without any handler
reconfiguration per message.
"""

from __future__ import annotations

import itertools
import os
import secrets
from contextvars import ContextVar

__all__ = [
    "Flow",
    "current_flow",
    "current_workflow_id",
    "new_workflow_id",
    "outgoing_flow",
    "outgoing_id",
]


class Flow:
    """One message's place in a workflow: its id and how many sends it has made.

    The id string is built only when something reads it (an envelope, a log line), so
    a call that nobody logs - inline, for instance - never formats one.
    """

    __slots__ = ("_id", "_n", "_parent", "calls")

    def __init__(
        self, workflow_id: str | None = None, parent: Flow | None = None, n: int = 0
    ) -> None:
        self._id = workflow_id
        self._parent = parent
        self._n = n
        self.calls = 0

    @property
    def id(self) -> str:
        if self._id is None:
            parent = self._parent
            self._id = f"{_prefix}-{self._n}" if parent is None else f"{parent.id}_{self._n}"
        return self._id

    def child(self) -> Flow:
        """The flow of the next message this one sends (``<id>_1``, ``<id>_2``, ...)."""
        self.calls += 1
        return Flow(None, self, self.calls)

    def __repr__(self) -> str:
        return f"Flow({self.id!r}, calls={self.calls})"


current_flow: ContextVar[Flow | None] = ContextVar("service_framework_flow", default=None)

# A random per-process prefix and a counter: unique across processes and hosts, and
# about ten times cheaper than uuid4() on the per-message path.
_prefix = secrets.token_hex(6)
_counter = itertools.count(1)


def _reseed() -> None:
    global _prefix, _counter
    _prefix = secrets.token_hex(6)
    _counter = itertools.count(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def new_workflow_id() -> str:
    """A fresh id for a message that starts a workflow."""
    return f"{_prefix}-{next(_counter)}"


def outgoing_flow() -> Flow:
    """The flow of a message about to be sent from the current context: a new workflow
    outside any handler, the next call of the current one inside a handler."""
    flow = current_flow.get()
    return Flow(None, None, next(_counter)) if flow is None else flow.child()


def next_workflow_number() -> int:
    """The number of the next new workflow in this process."""
    return next(_counter)


def outgoing_id() -> str:
    """The id for a message about to be sent from the current context."""
    return outgoing_flow().id


def current_workflow_id() -> str | None:
    """The id of the message being handled in this context, if any."""
    flow = current_flow.get()
    return None if flow is None else flow.id
