"""``publisher``: broadcasts to subscribers. An XPUB socket that binds (or connects, with
``is_x_pub: True``, to an XSUB proxy or to a subscriber that binds).

Delivery is at-most-once: the socket never blocks; a subscriber that is not connected
yet, or is ``sndhwm`` messages behind, misses messages. Every message carries this
publisher's name and a sequence number (see ``codec.py``), so a subscriber counts and
logs what it missed.

Start-up: XPUB (rather than PUB) lets the publisher see subscriptions arrive. With
``wait_for_subscribers: N`` it waits until N subscriptions have arrived (at most
``wait_for_subscribers_timeout_s``, default 10, then goes on with a warning); otherwise
it waits ``wait_after_creation_s`` (default 0.5: longer than a subscriber's reconnect
interval, at most 0.2 s, so subscribers that are already running have joined). A proxy
passes on one subscription per topic, so behind one wait for 1.

A message whose frame would be over ``max_message_bytes`` is refused before anything is
sent: ``to_send`` raises ``ValidationError``. (A subscriber would drop the connection on
receiving it, and libzmq would not reconnect it.)

An XPUB socket queues what its peers send (subscriptions, and anything else a peer
writes) until it is read: a background thread drains it a few times a second, so that
queue stays small whether or not the service publishes.
"""

from __future__ import annotations

import secrets
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import zmq

from ..generated import indent, merge
from ..locks import HandoffLock
from ..transport import sender_of
from .base import ConnectionEnv, InlineTarget, OutboundConnection, Receiving, Route
from .subscriber import Subscriber

if TYPE_CHECKING:
    from ..models import ConnectionModel

__all__ = ["Publisher"]

DEFAULT_WAIT_AFTER_CREATION_S = 0.5
DEFAULT_WAIT_FOR_SUBSCRIBERS_TIMEOUT_S = 10.0
_DRAIN_INTERVAL_S = 0.1  # how often the socket's incoming queue is emptied
_WAIT_POLL_MS = 50  # the start-up wait re-checks its deadline at least this often


class Publisher(OutboundConnection):
    type_name = "publisher"
    address_keys = ("publisher",)
    binds = True
    optional_creation_arguments = {
        "topic": str,
        "is_x_pub": bool,
        "wait_after_creation_s": int | float,
        "wait_for_subscribers": int,
        "wait_for_subscribers_timeout_s": int | float,
        "socket_options": dict,
    }

    def __init__(self, model: Any, env: ConnectionEnv) -> None:
        super().__init__(model, env)
        args = model.creation_arguments
        self.topic: str = args.get("topic") or ""
        self.wait_after_creation_s = float(
            args.get("wait_after_creation_s", DEFAULT_WAIT_AFTER_CREATION_S)
        )
        self.wait_for_subscribers: int = args.get("wait_for_subscribers", 0)
        self.wait_for_subscribers_timeout_s = float(
            args.get("wait_for_subscribers_timeout_s", DEFAULT_WAIT_FOR_SUBSCRIBERS_TIMEOUT_S)
        )
        # What subscribers report gaps under: a random tag, new at every start, so a
        # restarted publisher (counting from 0 again) is a new sequence. It travels in
        # every frame, so it is short (a readable name cost a third more bytes per small
        # message); open() logs which service and connection it stands for.
        self.publisher_name = secrets.token_hex(4)
        self.codec = self.env.codec.one_way(
            model.args,
            self.topic,
            max_bytes=self.socket_options.max_message_bytes,
            publisher=self.publisher_name,
        )
        # A subscription is for this publisher's messages if they start with it.
        self._frame_prefix = self.codec.prefix
        self.socket: zmq.Socket[Any] | None = None
        self._send: Callable[[bytes], Any] = self._closed
        self._publish = self._publisher()
        self._stop_draining = threading.Event()
        self._drainer: threading.Thread | None = None

    @classmethod
    def prepare(
        cls, creation_arguments: dict[str, Any], namespace: Mapping[str, Any]
    ) -> dict[str, Any]:
        for key in ("wait_after_creation_s", "wait_for_subscribers"):
            value = creation_arguments.get(key, 0)
            if value < 0:
                raise ValueError(f"creation argument '{key}' must be >= 0, got {value}")
        timeout = creation_arguments.get("wait_for_subscribers_timeout_s", 1)
        if timeout <= 0:
            raise ValueError(
                f"creation argument 'wait_for_subscribers_timeout_s' must be > 0, got {timeout}"
            )
        return super().prepare(creation_arguments, namespace)

    def binding(self) -> bool:
        return not self.model.creation_arguments.get("is_x_pub", False)

    def open(self, addresses: Mapping[str, Any]) -> None:
        sock = self._socket(zmq.XPUB, addresses, "publisher")
        # Every subscription, not only the first for each topic, so that subscribers can
        # be counted. Set before this thread first lets the socket read its peers.
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.socket = sock
        self._send = sender_of(sock)
        self.env.log.info(
            "%s: connection '%s' publishes as publisher %s",
            self.env.service,
            self.name,
            self.publisher_name,
        )
        self._wait_at_start(sock)
        self._drainer = threading.Thread(
            target=self._drain_forever, name=f"{self.env.service}-{self.name}-xpub", daemon=True
        )
        self._drainer.start()

    def _wait_at_start(self, sock: zmq.Socket[Any]) -> None:
        """The slow-joiner guard: until ``wait_for_subscribers`` subscriptions arrived (or
        its timeout), else for ``wait_after_creation_s``; 0 where subscribers synchronise."""
        wanted = self.wait_for_subscribers
        started = time.monotonic()
        deadline = started + (
            self.wait_for_subscribers_timeout_s if wanted else self.wait_after_creation_s
        )
        while not (wanted and self.stats.subscriptions >= wanted):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if sock.poll(min(_WAIT_POLL_MS, int(remaining * 1000) + 1), zmq.POLLIN):
                self._drain(sock)
        if not wanted:
            return
        got, waited = self.stats.subscriptions, time.monotonic() - started
        if got >= wanted:
            self.env.log.info(
                "%s: connection '%s' has %d of %d subscriptions after %.2fs",
                self.env.service,
                self.name,
                got,
                wanted,
                waited,
            )
        else:
            self.env.log.warning(
                "%s: connection '%s' going on with %d of %d subscriptions after %.2fs "
                "(wait_for_subscribers_timeout_s); the missing subscribers miss what is "
                "published until they join",
                self.env.service,
                self.name,
                got,
                wanted,
                waited,
            )

    def _drain(self, sock: zmq.Socket[Any]) -> None:
        """Read everything the socket's peers sent; count the subscriptions that match
        this publisher's frames (a subscriber sends one each time it connects)."""
        prefix, count = self._frame_prefix, self.observer.count
        while True:
            try:
                event = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[:1] == b"\x01" and prefix.startswith(event[1:]):
                count("subscriptions")

    def _drain_forever(self) -> None:
        # Signals belong to the main thread (see runtime.signals_blocked).
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        while not self._stop_draining.wait(_DRAIN_INTERVAL_S):
            with self.lock:  # the socket is used by one thread at a time
                if self.socket is None:
                    return
                try:
                    self._drain(self.socket)
                except zmq.ZMQError:  # the context is terminating
                    return

    def close(self) -> None:
        self._stop_draining.set()
        if self._drainer is not None:
            self._drainer.join(5)
            self._drainer = None
        with self.lock:
            if self.socket is not None:
                self.socket.close(linger=self.socket_options.linger_ms)
                self.socket = None
                self._send = self._closed

    def _closed(self, frame: bytes) -> None:
        raise RuntimeError(f"{self.env.service}: connection '{self.name}' is closed")

    def send(self, args: Any, workflow_id: str) -> None:
        self._publish(args, workflow_id)

    def sender(self) -> Callable[[Any, str], None]:
        return self._publish

    def _publisher(self) -> Callable[[Any, str], None]:
        """The per-message function, generated once (see ``generated.py``): check,
        number, encode and send, and count, calling no other Python function."""
        framing = self.frame_source(
            self.codec.encode_source("args", "workflow_id", "seq", "frame"), "message"
        )
        # "seq": this publisher's next sequence number.
        names = merge(self.send_names(), {"seq": 0}, framing.names)
        lock = HandoffLock.source("lock", ["lock_acquire()"])
        lines = [
            "def publish(args, workflow_id):",
            "    global seq",
            # The number is given and the frame sent under the lock, so frames leave in
            # the order of their numbers.
            *indent(lock["acquire"]),
            "    try:",
            *indent(framing.lines, 8),
            *indent(self.debug_source("publishing"), 8),
            "        conn._send(frame)",  # XPUB never blocks: beyond sndhwm, drops
            "        seq += 1",
            "    finally:",
            *indent(lock["release"], 8),
            *indent(self.handled_source(names)),
        ]
        publish: Callable[[Any, str], None] = self.build_send("publish", lines, names)
        return publish

    peer = Subscriber

    @classmethod
    def relation_problem(cls, out_model: ConnectionModel, in_model: ConnectionModel) -> str | None:
        published = out_model.creation_arguments.get("topic") or ""
        wanted = in_model.creation_arguments.get("topic") or ""
        if wanted and wanted != published:
            return (
                f"{in_model.service}.{in_model.name} subscribes to topic {wanted!r} but "
                f"{out_model.service}.{out_model.name} publishes on {published!r}: it would "
                "never receive a message"
            )
        return None

    def inline_route(self, targets: Sequence[InlineTarget], receiving: Receiving) -> Route:
        """Inline, a published message is delivered to every related subscriber."""
        return self.inline_one_way(targets)
