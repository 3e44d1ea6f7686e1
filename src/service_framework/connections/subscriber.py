"""``subscriber``: receives published messages. A SUB socket that connects (or binds,
with ``is_binder: True``, so many publishers can connect to one subscriber).

Only messages on ``topic`` arrive (empty or absent: every topic). A message that does not
decode or validate is dropped with a log line and counted; it never reaches the handler
and never stops the messages behind it.

Loss is visible: every publisher numbers its messages, and a subscriber that finds a gap
in a publisher's numbers counts the messages it missed (``stats.missed`` and
``stats.gaps``) and logs them, at most one line per publisher every few seconds
("missed 2,163 messages from publisher 3f9a1c2b"). The first message heard from a
publisher only sets where its count starts: what it sent before this subscriber joined
is not counted as missed.

A connecting subscriber retries a publisher that is down every 0.2 s at most (libzmq
backs off to 5 s by default, longer than a restarted publisher waits for it), unless
``socket_options`` says otherwise.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq

from ..logs import RateLimit, clip
from ..pipeline import Entry
from .base import ConnectionEnv, InboundConnection, Reader, socket_reader

__all__ = ["Subscriber"]

SUBSCRIBER_RECONNECT_IVL_MAX_MS = 200
_GAP_LOG_INTERVAL_S = 5.0  # at most one gap line per publisher this often
_GAP_LINES_AT_ONCE = 5  # publishers named per gap report; the rest are summed up
_PUBLISHERS_TRACKED = 1024  # the oldest publisher heard is forgotten beyond this


class _Gaps:
    """Each publisher's next expected sequence number, and the gaps found in them.

    Off the per-message path: the subscriber's loop only compares a message's number
    with the one it expects from the publisher it heard last, and calls :meth:`switch`
    when that is not the case (another publisher, or a gap)."""

    def __init__(self, connection: Subscriber) -> None:
        self.connection = connection
        self.expected: dict[str, int] = {}
        self.pending: dict[str, int] = {}  # missed, not logged yet
        self.log_after = 0.0
        self.first_heard_limit = RateLimit(5, 1 / _GAP_LOG_INTERVAL_S)

    def switch(self, publisher: str, seq: int, last: str, last_expected: int) -> None:
        """``publisher`` sent message ``seq``; ``last`` was heard last, and its next
        message would have been ``last_expected``."""
        expected = self.expected
        if last:
            expected[last] = last_expected
        want = expected.pop(publisher, None)  # re-inserted last: most recently heard
        if want is None:
            if len(expected) >= _PUBLISHERS_TRACKED:
                del expected[next(iter(expected))]
            if seq:
                self._first_heard(publisher, seq)
        elif seq > want:
            self.missed(publisher, seq - want)
        # seq < want: the same name counting again (a duplicate path, or a forged name);
        # start the count there.
        expected[publisher] = seq + 1

    def missed(self, publisher: str, count: int) -> None:
        observer = self.connection.observer
        observer.count("missed", count)
        observer.count("gaps")
        self.pending[publisher] = self.pending.get(publisher, 0) + count
        if time.monotonic() >= self.log_after:
            self.report()

    def report(self) -> None:
        """Log the gaps found since the last report (also at shutdown)."""
        if not self.pending:
            return
        connection = self.connection
        log, service, name = connection.env.log, connection.env.service, connection.name
        pending = sorted(self.pending.items(), key=lambda item: -item[1])
        self.pending = {}
        self.log_after = time.monotonic() + _GAP_LOG_INTERVAL_S
        for publisher, count in pending[:_GAP_LINES_AT_ONCE]:
            log.warning(
                "%s: connection '%s' missed %s messages from publisher %s (%s missed in all)",
                service,
                name,
                f"{count:,}",
                clip(publisher),
                f"{connection.stats.missed:,}",
            )
        rest = pending[_GAP_LINES_AT_ONCE:]
        if rest:
            log.warning(
                "%s: connection '%s' missed %s messages from %d other publishers",
                service,
                name,
                f"{sum(count for _, count in rest):,}",
                len(rest),
            )

    def _first_heard(self, publisher: str, seq: int) -> None:
        connection = self.connection
        if self.first_heard_limit.allow():
            connection.env.log.info(
                "%s: connection '%s' first heard publisher %s at its message %s (what it sent "
                "before this subscriber joined is not counted)",
                connection.env.service,
                connection.name,
                clip(publisher),
                f"{seq:,}",
            )


class Subscriber(InboundConnection):
    type_name = "subscriber"
    address_keys = ("subscriber",)
    required_creation_arguments = {"connection_function": Callable}
    optional_creation_arguments = {"topic": str, "is_binder": bool, "socket_options": dict}
    # 0.0.20 validated `connection_function` but read `on_new_message`; accept either.
    creation_argument_aliases = {"on_new_message": "connection_function"}

    def __init__(self, model: Any, env: ConnectionEnv) -> None:
        super().__init__(model, env)
        given = model.creation_arguments.get("socket_options") or {}
        if "reconnect_ivl_max_ms" not in given:
            # Pub/sub has no retry of its own: the sooner a subscriber is back, the less
            # it misses. A refused connect to a publisher that is down costs little.
            self.socket_options = dataclasses.replace(
                self.socket_options,
                reconnect_ivl_max_ms=max(
                    SUBSCRIBER_RECONNECT_IVL_MAX_MS, self.socket_options.reconnect_ivl_ms
                ),
            )
        self.topic: str = model.creation_arguments.get("topic") or ""
        self.codec = self.env.codec.one_way(
            model.args, self.topic, max_bytes=self.socket_options.max_message_bytes
        )
        self.socket: zmq.Socket[Any] | None = None
        # Only this topic's frames (with and without sequence numbers), or every frame.
        self._subscriptions: tuple[bytes, ...] = self.codec.prefixes if self.topic else (b"",)
        self.gaps = _Gaps(self)

    def binding(self) -> bool:
        return bool(self.model.creation_arguments.get("is_binder", False))

    def open(self, addresses: Mapping[str, Any]) -> None:
        sock = self._socket(zmq.SUB, addresses, "subscriber")
        for prefix in self._subscriptions:
            sock.setsockopt(zmq.SUBSCRIBE, prefix)
        self.socket = sock

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)  # nothing to flush on a SUB socket
            self.socket = None

    def build_readers(self) -> Sequence[Reader]:
        sock = self.socket
        assert sock is not None
        # The reader's whole work for one frame, compiled with the pipeline into one
        # function (see pipeline.Entry). Frames are taken one by one (asking each for
        # RCVMORE would cost more than the rest of the bare receive): the extra frames
        # of a multi-frame message are rejected in turn, as frames that do not decode.
        # ``last`` and ``expected``: the publisher heard last and the number its next
        # message should carry (the function's own globals).
        entry = Entry(
            self.codec.decode_source("frame", "message", "args"),
            self.codec.workflow_id_of,
            after=(
                "global last, expected",
                "seq = message.seq",
                "if seq == expected and message.publisher == last:",
                "    expected = seq + 1",
                "elif seq >= 0:  # -1: a frame without a number",
                "    switch(message.publisher, seq, last, expected)",
                "    last, expected = message.publisher, seq + 1",
            ),
            names={"switch": self.gaps.switch, "last": "", "expected": 0},
        )
        handle = self.one_way_delivery(entry).deliver
        return (socket_reader(sock, handle, batch=256),)

    def finish(self, deadline: float) -> None:
        # Messages already queued here were delivered; handle them rather than drop them.
        if self.socket is not None:
            for prefix in self._subscriptions:
                self.socket.setsockopt(zmq.UNSUBSCRIBE, prefix)
            super().finish(deadline)
        self.gaps.report()
