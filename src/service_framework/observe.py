"""What a connection reports about its messages and peers: the observer seam.

The message pipeline (``pipeline.py``) and the connection types are the only callers.
An observer hears, for one connection:

* ``on_received()`` - an item taken off the wire (a frame, a tick), or an outbound call made;
* ``on_handled(ns)`` / ``on_failed(ns)`` - a handler (or, outbound, the peer) completed or
  raised, with the handling time in nanoseconds, or ``None`` when this one was not
  timed (see :data:`ONE_WAY_TIME_EVERY`);
* ``on_rejected()`` - input that did not decode or validate, answered with an error or
  dropped;
* ``on_timed_out()`` / ``on_retried()`` - an outbound attempt that got no answer in time, and
  one repeated on a fresh socket;
* ``on_peer(event)`` - a peer event of the socket monitor (:data:`PEER_EVENTS`);
* ``count(key, n)`` - a counter of the connection type's own (a subscriber's ``missed``,
  a timer's ``skipped``, a publisher's ``subscriptions``).

:class:`ConnectionStats` is the default implementation: plain counters and the handling
time (total and worst), readable while the service runs (``Service.stats()``,
``InlineServices.stats()``) and logged at exit. Another observer (metrics, tracing) is
added next to it with :class:`Observers`, never instead of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "ONE_WAY_TIME_EVERY",
    "PEER_EVENTS",
    "ConnectionStats",
    "Observer",
    "Observers",
    "split_stats",
]

#: A one-way connection (subscriber, puller, timer) times one message in this many: its
#: messages can come a million a second, and two clock reads cost more than some
#: handlers. A connection that replies times every message.
ONE_WAY_TIME_EVERY = 16

#: ``on_peer(event)`` names, each the :class:`ConnectionStats` field it counts.
PEER_EVENTS = (
    "peers_connected",  # a connection established
    "peers_disconnected",  # a connection lost, e.g. a heartbeat timed out
    "reconnects",  # an endpoint re-established after libzmq gave up on it
    "handshake_failures",  # a CURVE/ZMTP handshake refused (by us, or by the server)
    "accept_failures",  # an incoming connection the listener failed to accept
)


class Observer(Protocol):
    """What is reported about one connection (see the module docstring)."""

    def on_received(self) -> None: ...

    def on_handled(self, ns: int | None) -> None: ...

    def on_failed(self, ns: int | None) -> None: ...

    def on_rejected(self) -> None: ...

    def on_timed_out(self) -> None: ...

    def on_retried(self) -> None: ...

    def on_peer(self, event: str) -> None: ...

    def count(self, key: str, n: int = 1) -> None: ...


class Observers:
    """Several observers heard as one, in order (the connection's stats first)."""

    __slots__ = ("members",)

    def __init__(self, members: Sequence[Observer]) -> None:
        self.members = tuple(members)

    def on_received(self) -> None:
        for member in self.members:
            member.on_received()

    def on_handled(self, ns: int | None) -> None:
        for member in self.members:
            member.on_handled(ns)

    def on_failed(self, ns: int | None) -> None:
        for member in self.members:
            member.on_failed(ns)

    def on_rejected(self) -> None:
        for member in self.members:
            member.on_rejected()

    def on_timed_out(self) -> None:
        for member in self.members:
            member.on_timed_out()

    def on_retried(self) -> None:
        for member in self.members:
            member.on_retried()

    def on_peer(self, event: str) -> None:
        for member in self.members:
            member.on_peer(event)

    def count(self, key: str, n: int = 1) -> None:
        for member in self.members:
            member.count(key, n)


@dataclass(slots=True)  # slots: the counters are written for every message
class ConnectionStats:
    """Per-connection counters, the default observer: readable while the service runs
    and logged at exit. The counting methods are the :class:`Observer` protocol."""

    received: int = 0  # frames taken off the socket (or calls made, outbound)
    handled: int = 0  # handler (or peer) completed successfully
    failed: int = 0  # the handler raised / the call failed
    rejected: int = 0  # undecodable or invalid input, answered with an error or dropped
    timeouts: int = 0  # outbound attempts that got no reply in time
    retries: int = 0  # outbound attempts repeated on a fresh socket
    peers_connected: int = 0  # connections established (socket monitor)
    peers_disconnected: int = 0  # connections lost, e.g. a heartbeat timed out
    reconnects: int = 0  # endpoints re-established after libzmq gave up on them
    handshake_failures: int = 0  # CURVE/ZMTP handshakes refused (by us, or by the server)
    accept_failures: int = 0  # incoming connections the listener failed to accept
    # Subscribers: messages known lost, from gaps in the publishers' sequence numbers,
    # and how many gaps there were (a gap is one run of missed messages).
    missed: int = 0
    gaps: int = 0
    subscriptions: int = 0  # publishers: subscriptions received (one per subscriber join)
    # Handling time of the messages handled or failed that were timed (inbound: the
    # handler and the return check; outbound: the whole call): how many, their sum and
    # the longest, in nanoseconds.
    timed: int = 0
    handling_ns: int = 0
    handling_max_ns: int = 0

    # The Observer protocol.
    def on_received(self) -> None:
        self.received += 1

    def on_handled(self, ns: int | None) -> None:
        self.handled += 1
        if ns is not None:  # what _time does, inline: a requester calls this per call
            self.timed += 1
            self.handling_ns += ns
            if ns > self.handling_max_ns:
                self.handling_max_ns = ns

    def _time(self, ns: int) -> None:
        self.timed += 1
        self.handling_ns += ns
        if ns > self.handling_max_ns:
            self.handling_max_ns = ns

    @staticmethod
    def source(name: str) -> dict[str, list[str]]:
        """What :meth:`on_received`, :meth:`on_handled` and the timing of a handled
        message do, as Python lines over the stats named ``name`` (the handling time in
        ``elapsed``), for code compiled per connection (``pipeline.compile_delivery``):
        the same counting, without a call per message. The received count is also
        left in the local ``received`` (for sampling, without reading it back)."""
        return {
            "received": [f"received = {name}.received = {name}.received + 1"],
            "handled": [f"{name}.handled += 1"],
            "timing": [
                f"{name}.timed += 1",
                f"{name}.handling_ns += elapsed",
                f"if elapsed > {name}.handling_max_ns:",
                f"    {name}.handling_max_ns = elapsed",
            ],
        }

    def on_failed(self, ns: int | None) -> None:
        self.failed += 1
        if ns is not None:
            self._time(ns)

    def on_rejected(self) -> None:
        self.rejected += 1

    def on_timed_out(self) -> None:
        self.timeouts += 1

    def on_retried(self) -> None:
        self.retries += 1

    def on_peer(self, event: str) -> None:
        self.count(event)

    def count(self, key: str, n: int = 1) -> None:
        setattr(self, key, getattr(self, key) + n)

    def mean_handling_ms(self) -> float:
        """The mean handling time of the messages timed, in milliseconds."""
        return self.handling_ns / self.timed / 1e6 if self.timed else 0.0


def split_stats(observer: Observer) -> tuple[ConnectionStats | None, Observer | None]:
    """``observer`` as its stats and the rest: per-message code updates the stats in
    place (see :meth:`ConnectionStats.source`) and calls only the other observers."""
    if isinstance(observer, ConnectionStats):
        return observer, None
    if isinstance(observer, Observers) and isinstance(observer.members[0], ConnectionStats):
        rest = observer.members[1:]
        return observer.members[0], (Observers(rest) if rest else None)
    return None, observer
