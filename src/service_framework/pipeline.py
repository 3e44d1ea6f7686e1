"""What happens to one received message, written once.

Every inbound connection type (over sockets), every inline relation and every external
target delivers through :func:`compile_delivery`::

    check -> flow scope -> handler -> return rules -> return check -> answer
                                  \\-> typed error (logged, counted) -> refuse

* **check**: over sockets the codec decodes and validates in one pass before delivery
  (a message that fails goes to :meth:`Delivery.reject`); inline, the receiver's own
  check runs here, converting what the wire would convert.
* **flow scope**: the message's workflow id is the current flow while the handler runs
  (``workflow.FlowScope``); a failure's log line carries it.
* **return rules**: a connection that replies accepts ``None`` only when its return model
  has no required keys, then checks the return against that model; a one-way
  connection ignores what the handler returns.
* **typed errors**: a message that fails its check is *rejected* (counted, logged at a
  limited rate, the peer's text cut short); a handler that raises, or returns what its
  model refuses, has *failed* (counted, logged with its traceback under the message's
  workflow id). Either way ``refuse(error, text, workflow_id)`` says what the sender
  gets: an error reply, a ``RemoteError``, nothing, or the error itself.

The connection keeps only its socket and framing: how a frame is decoded (and refused),
and what is sent back. A reader over sockets hands those lines to the pipeline as an
:class:`Entry`, compiled in front of the delivery, so its whole work for one message is
one call; inline relations and external targets call the delivery directly. Everything
is bound once, at start-up: a message runs one generated function before its handler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextvars import Token
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from .errors import DecodeError, ValidationError
from .generated import Fragment, build, indent, merge
from .logs import ERROR_TEXT_MAX, RateLimit, clip
from .observe import ConnectionStats, Observer, split_stats
from .validation import Validator
from .workflow import Flow, FlowScope, current_flow, flow_of

__all__ = ["Delivery", "Entry", "Receiver", "compile_delivery"]

R = TypeVar("R")

Handler = Callable[[Any, Any, Mapping[str, Any]], Any]
#: ``refuse(error, text, workflow_id)``: what the sender gets for a refused message.
Refuse = Callable[[BaseException, str, str], R]


@dataclass(frozen=True)
class Receiver:
    """The receiving end a delivery runs: whose handler, under which names, counted by
    which observer. One per inbound connection (shared by its deliveries)."""

    service: str
    connection: str
    handler: Handler
    to_send: Any
    config: Mapping[str, Any]
    observer: Observer
    log: logging.Logger
    # The return model of a connection that replies; None: one-way, the return ignored.
    returns: Validator | None = None
    # Whether failures and rejections are logged here (an external target's caller gets
    # the error itself and decides).
    logs: bool = True
    # Rejection lines a peer can trigger: rate-limited, shared by all its deliveries.
    rejected_limit: RateLimit = field(default_factory=lambda: rejected_limit())
    debug: bool = False
    # Which messages' handling is timed (two clock reads each): 1 every message, N
    # (a power of two) one in N, 0 none (inline calls, which run in their caller's time).
    time_every: int = 1


class Delivery(NamedTuple, Generic[R]):
    """One compiled delivery: ``deliver(args, workflow_id)`` for a message whose args
    passed (or, inline, are about to pass) the check, ``reject(error, workflow_id)`` for
    one that did not decode or validate. Neither raises unless ``answer``/``refuse``
    does. With an :class:`Entry`, ``deliver`` takes the frame instead."""

    deliver: Callable[..., R]
    reject: Callable[[Exception, str], R]


@dataclass(frozen=True)
class Entry:
    """How a reader over sockets turns a frame into the message it delivers, compiled
    into the delivery's function in front of it, so that a reader's whole work for one
    frame - decode, deliver, send - is one call (each call is a function, its code and
    cells to fetch, and after a blocking receive they are fetched cache-cold).

    The function takes the ``frame``. ``decode``: the codec's lines that set
    ``message`` (with its ``workflow_id``) and ``args`` (its args, plain) from it or raise
    ``DecodeError``/``ValidationError`` (a ``generated.Fragment``); a frame that does not
    decode is rejected under ``workflow_id_of(frame)``. ``guard``: lines
    run before the decode, which may return early (a multi-frame message refused);
    ``after``: lines run on the decoded ``message`` before its delivery (a subscriber's
    sequence check). Both may use ``names``, ``reject`` (the delivery's) and ``send``.
    ``send``: what every result of the delivery (the answer, or a refusal) is passed
    to; ``None``: the function returns it. ``answer``: lines that set ``reply`` from the
    checked ``result`` and ``workflow_id``, in place of the ``answer`` callable (which
    may then be None); they may raise, as it may."""

    decode: Fragment
    workflow_id_of: Callable[[Any], str]
    guard: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    names: Mapping[str, Any] = field(default_factory=dict)
    send: Callable[[Any], Any] | None = None
    answer: tuple[str, ...] = ()


def compile_delivery(
    receiver: Receiver,
    *,
    answer: Callable[[Any, str | None], R] | None,
    refuse: Refuse[R],
    scope: FlowScope | None,
    check: Callable[[Any], Any] | None = None,
    entry: Entry | None = None,
) -> Delivery[R]:
    """Compile one delivery (see the module docstring) into a single function.

    ``answer(result, workflow_id)`` turns the checked result (``None`` for a one-way
    connection, or an allowed ``None`` reply) into what the sender gets; it may raise
    (a reply too large to send), which counts as a failure; ``None``: the result itself.
    ``check(args)`` returns the args as the handler gets them or raises
    ``ValidationError``/``DecodeError``; None when the codec has checked them. ``scope``
    None: the handler runs in the caller's flow (an external target, a plain call).

    The function is generated from the stages this connection needs, with the flow
    scope's lines (``FlowScope.source``) around the handler and the stats' counting
    inline (``ConnectionStats.source``; other observers are called): a message costs one
    call before its handler, as a hand-written loop would. ``entry``: the connection's
    decoding lines in front (see :class:`Entry`).
    """
    observer, returns = receiver.observer, receiver.returns
    stats, others = split_stats(observer)
    every = receiver.time_every if stats is not None else min(receiver.time_every, 1)
    if every & (every - 1):
        raise ValueError(f"time_every must be 0, 1 or a power of two, got {every}")
    log_failure = _failure_logger(receiver)
    log_rejection = _rejection_logger(receiver)
    failed_count, rejected_count = observer.on_failed, observer.on_rejected
    received_count = observer.on_received

    def refused(error: Exception, workflow_id: str) -> R:
        rejected_count()
        log_rejection(error, workflow_id)
        return refuse(error, str(error), workflow_id)

    def reject(error: Exception, workflow_id: str) -> R:
        received_count()
        return refused(error, workflow_id)

    def fail(error: Exception, workflow_id: str, elapsed: int | None) -> R:
        failed_count(elapsed)
        log_failure(error, workflow_id)
        # clip, not str(): an exception whose __str__ fails still gets an answer.
        return refuse(error, clip(error, ERROR_TEXT_MAX), workflow_id)

    names: dict[str, Any] = {
        "handler": receiver.handler,
        "to_send": receiver.to_send,
        "config": receiver.config,
        "check": check,
        "answer": answer,
        "refused": refused,  # counted as received already
        "fail": fail,
        "now": time.perf_counter_ns,
        "log": receiver.log,
        "CHECK_FAILED": (DecodeError, ValidationError),
    }
    counting: dict[str, list[str]] = {"received": [], "handled": [], "timing": []}
    if stats is not None:
        names["stats"] = stats
        counting = ConnectionStats.source("stats")
    # The clock lines: when a message is timed, ``started`` holds its start (0: not
    # timed), and after the handler ``elapsed`` its handling time (None: not timed).
    if every == 1:
        start, took = ["started = now()"], "now() - started"
        after = ["elapsed = now() - started", *counting["timing"]]
    elif every:
        names["MASK"] = every - 1
        start, took = (
            ["started = 0 if received & MASK else now()"],
            ("now() - started if started else None"),
        )
        after = ["if started:", *indent(["elapsed = now() - started", *counting["timing"]])]
        if others is not None:
            after += ["else:", "    elapsed = None"]
    else:
        start, took, after = [], "None", ["elapsed = None"] if others is not None else []
    if others is not None:
        names["others"] = others
        counting["received"].append("others.on_received()")
        counting["handled"].append("others.on_handled(elapsed)")
    enter: list[str] = []
    leave: list[str] = []
    if scope is not None:
        enter, leave, scope_names = scope.source()
        names.update(scope_names)
    workflow = "flow.id" if scope is not None else "''"
    out = "send" if entry is not None and entry.send is not None else ""
    body = [*counting["received"]]
    if check is not None:
        body += [
            "try:",
            "    args = check(args)",
            "except CHECK_FAILED as error:",
            f"    return {out}(refused(error, {workflow}))",
        ]
    if receiver.debug:
        names["where"] = (receiver.service, receiver.connection)
        body.append(f"log.debug('%s: handling \\'%s\\' [%s]', *where, {workflow})")
    # One-way with nothing to answer: what the handler returns is ignored, unnamed.
    ignored = returns is None and answer is None and not (entry is not None and entry.answer)
    call = "handler(args, to_send, config)"
    body += [*start, "try:", f"    {call}" if ignored else f"    result = {call}"]
    if returns is not None:
        names["return_error"] = returns.error
        none_rule = "pass" if returns.check({}) else "raise return_error(None)"
        check_return = returns.source("result", "raise return_error(result)")
        merge(names, check_return.names)
        body += [
            "    if result is None:",
            f"        {none_rule}",  # None is a reply only where nothing is required
            *(["    else:", *indent(check_return.lines, 8)] if check_return.lines else []),
        ]
    elif not ignored:
        body.append("    result = None")  # one-way: what the handler returns is ignored
    if entry is not None and entry.answer:
        body += indent(list(entry.answer))
    elif not ignored:
        body.append(
            "    reply = result" if answer is None else "    reply = answer(result, workflow_id)"
        )
    body += [
        "except Exception as error:",
        f"    return {out}(fail(error, {workflow}, {took}))",
    ]
    body += [*after, *counting["handled"], f"return {out}({'None' if ignored else 'reply'})"]
    if entry is None:
        lines = ["def deliver(args, workflow_id):"]
    else:
        own = {"reject": reject, "send": entry.send, "workflow_id_of": entry.workflow_id_of}
        taken = sorted(set(entry.names) & {*names, *own})
        if taken:
            raise ValueError(f"an entry's names must not replace the pipeline's: {taken}")
        merge(names, entry.names, own, entry.decode.names)
        decode = [
            "try:",
            *indent(entry.decode.lines),
            "except CHECK_FAILED as error:",
            f"    return {out}(reject(error, workflow_id_of(frame)))",
        ]
        lines = [
            "def deliver(frame):",
            *indent([*entry.guard, *decode, *entry.after]),
            "    workflow_id = message.workflow_id",
        ]
    lines += indent(enter)
    if scope is not None:
        lines += ["    try:", *indent(body, 8), "    finally:", *indent(leave, 8)]
    else:
        lines += indent(body)
    what = f"deliver {receiver.service}.{receiver.connection}"
    deliver: Callable[..., R] = build(lines, names, what, "deliver")
    return Delivery(deliver, reject)


def rejected_limit() -> RateLimit:
    """The limit on one connection's rejection lines: a peer sending garbage as fast as
    it can must not write the log as fast as it can - a burst, then a few lines a
    second, each saying how many were not logged. The counts stay exact."""
    return RateLimit(20, 5.0)


def _failure_logger(receiver: Receiver) -> Callable[[BaseException, str], None]:
    """Log a handler that raised, under its message's workflow id, with the traceback
    (the error's text, which may quote the peer's input, cut short and escaped)."""
    if not receiver.logs:
        return _silent
    log, service, name = receiver.log, receiver.service, receiver.connection

    def log_failure(error: BaseException, workflow_id: str) -> None:
        token = _enter_flow(workflow_id)
        try:
            log.error(
                "%s: handler of connection '%s' raised %s: %s",
                service,
                name,
                type(error).__name__,
                clip(error, ERROR_TEXT_MAX),
                exc_info=error,
            )
        finally:
            if token is not None:
                current_flow.reset(token)

    return log_failure


def _rejection_logger(receiver: Receiver) -> Callable[[Exception, str], None]:
    """Log a message that did not decode or validate: rate-limited (a peer sending
    garbage as fast as it can must not write the log as fast), the peer's text cut
    short and escaped. The counts stay exact."""
    if not receiver.logs:
        return _silent
    log, service, name = receiver.log, receiver.service, receiver.connection
    limit = receiver.rejected_limit

    def log_rejection(error: Exception, workflow_id: str) -> None:
        if not limit.allow():
            return
        held = limit.take_held()
        token = _enter_flow(workflow_id)
        try:
            log.warning(
                "%s: connection '%s' rejected a message [%s]: %s%s",
                service,
                name,
                clip(workflow_id) if workflow_id else "-",
                clip(error, ERROR_TEXT_MAX),
                f" ({held:,} more rejected since the last such line)" if held else "",
            )
        finally:
            if token is not None:
                current_flow.reset(token)

    return log_rejection


def _enter_flow(workflow_id: str) -> Token[Flow | None] | None:
    """Make ``workflow_id`` the current flow's for a log line about its message: within
    the message's flow scope it already is; outside (a message refused before it was
    delivered), set it, and return the token to reset."""
    flow = current_flow.get()
    if flow is not None and flow._id == workflow_id:
        return None
    return current_flow.set(flow_of(workflow_id))


def _silent(error: BaseException, workflow_id: str) -> None:
    pass
