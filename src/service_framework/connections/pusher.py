"""``pusher``: hands work to pullers. A PUSH socket that connects.

Each message goes to exactly one of the pullers the socket is connected to (a list of
addresses, or a host name that resolves to several), round-robin; ``to_send`` returns
``None`` once libzmq has queued it for one of them. ``IMMEDIATE`` is set, so work is only
queued for pullers whose connection is up - never for one that is down.

A PUSH socket waits while no puller is connected, or all of them are ``sndhwm`` messages
behind: ``to_send`` waits at most ``timeout_s`` (default 10) for one to take the message,
then raises :class:`~service_framework.errors.RequestTimeout`, and nothing was sent. A
message whose frame is over ``max_message_bytes`` is refused before anything is sent
(``ValidationError``): the puller would drop the connection on receiving it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq

from ..errors import RequestTimeout
from ..generated import indent, merge
from ..locks import HandoffLock
from ..transport import sender_of
from .base import (
    ConnectionEnv,
    InlineTarget,
    OutboundConnection,
    Receiving,
    Route,
    check_timeout,
)
from .puller import Puller

__all__ = ["Pusher"]


class Pusher(OutboundConnection):
    type_name = "pusher"
    address_keys = ("pusher",)
    optional_creation_arguments = {"timeout_s": int | float, "socket_options": dict}

    DEFAULT_TIMEOUT_S = 10.0

    def __init__(self, model: Any, env: ConnectionEnv) -> None:
        super().__init__(model, env)
        self.timeout_s = float(model.creation_arguments.get("timeout_s", self.DEFAULT_TIMEOUT_S))
        self.codec = self.env.codec.one_way(
            model.args, "", max_bytes=self.socket_options.max_message_bytes
        )
        self.socket: zmq.Socket[Any] | None = None
        self._send: Callable[[Any], Any] = self._closed
        self._push = self._pusher()

    @classmethod
    def prepare(
        cls, creation_arguments: dict[str, Any], namespace: Mapping[str, Any]
    ) -> dict[str, Any]:
        check_timeout(creation_arguments, cls.DEFAULT_TIMEOUT_S)
        return super().prepare(creation_arguments, namespace)

    def open(self, addresses: Mapping[str, Any]) -> None:
        # Both options before connecting (see Connection._socket): IMMEDIATE decides
        # whether a pipe exists before the handshake, so it must be there when connect
        # makes the pipe.
        self.socket = self._socket(
            zmq.PUSH,
            addresses,
            "pusher",
            options={zmq.IMMEDIATE: 1, zmq.SNDTIMEO: max(1, int(self.timeout_s * 1000))},
        )
        self._send = sender_of(self.socket)

    def close(self) -> None:
        with self.lock:
            if self.socket is not None:
                # The linger lets work already queued for a puller reach it.
                self.socket.close(linger=self.socket_options.linger_ms)
                self.socket = None
                self._send = self._closed

    def _closed(self, frame: Any) -> None:
        raise RuntimeError(f"{self.env.service}: connection '{self.name}' is closed")

    def send(self, args: Any, workflow_id: str) -> None:
        self._push(args, workflow_id)

    def sender(self) -> Callable[[Any, str], None]:
        return self._push

    def timed_out(self, workflow_id: str, busy: bool) -> RequestTimeout:
        """The error for a message no puller took within ``timeout_s``."""
        self.observer.on_timed_out()
        if busy:
            why = "stayed busy (another thread is waiting on it)"
        else:
            where = ", ".join(self.endpoints) or "no address"
            why = f"found no puller ready to take the message ({where})"
        return RequestTimeout(
            f"{self.env.service}: connection '{self.name}' {why} for {self.timeout_s:g}s; "
            "nothing was sent",
            workflow_id=workflow_id,
        )

    def _pusher(self) -> Callable[[Any, str], None]:
        """The per-message function, generated once (see ``generated.py``): check,
        encode, send within the timeout, and count, calling no other Python function."""
        framing = self.frame_source(
            self.codec.encode_source("args", "workflow_id", "0", "frame"), "message"
        )
        names = merge(
            self.send_names(), {"timed_out": self.timed_out, "Again": zmq.Again}, framing.names
        )
        # Waiting for another thread's send counts against the timeout too.
        lock = HandoffLock.source(
            "lock",
            [
                f"if not lock_acquire(timeout={self.timeout_s!r}):",
                "    raise timed_out(workflow_id, busy=True)",
            ],
        )
        lines = [
            "def push(args, workflow_id):",
            *indent(framing.lines),  # checked, encoded, within the size limit
            *indent(self.debug_source("pushing")),
            *indent(lock["acquire"]),
            "    try:",
            "        conn._send(frame)",  # SNDTIMEO: zmq.Again when no puller took it
            "    except Again:",
            "        raise timed_out(workflow_id, busy=False) from None",
            "    finally:",
            *indent(lock["release"], 8),
            *indent(self.handled_source(names)),
        ]
        push: Callable[[Any, str], None] = self.build_send("push", lines, names)
        return push

    peer = Puller

    def inline_route(self, targets: Sequence[InlineTarget], receiving: Receiving) -> Route:
        """Inline, each pushed message goes to one related puller, taking them in turn
        (the wire round-robins over the connected pullers)."""
        routes = itertools.cycle([self.inline_one_way([target]) for target in targets])
        take = routes.__next__

        def route(args: Any) -> None:
            take()(args)

        return route
