"""``publisher``: broadcasts to subscribers. A PUB socket that binds (or connects, with
``is_x_pub: True``, to an XSUB proxy or to a subscriber that binds).

Delivery is at-most-once: a PUB socket never blocks; a subscriber that is not connected
yet, or is ``sndhwm`` messages behind, misses messages. ``wait_after_creation_s``
(default 0.15) pauses once after start-up so subscribers that are already running have
time to (re)connect before the first message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq

from ..codec import PublishCodec
from ..transport import sender_of
from .base import ConnectionEnv, OutboundConnection

__all__ = ["Publisher"]


class Publisher(OutboundConnection):
    type_name = "publisher"
    address_keys = ("publisher",)
    binds = True
    optional_creation_arguments = {
        "topic": str,
        "is_x_pub": bool,
        "wait_after_creation_s": int | float,
        "socket_options": dict,
    }

    def __init__(self, model: Any, env: ConnectionEnv) -> None:
        super().__init__(model, env)
        args = model.creation_arguments
        self.topic: str = args.get("topic") or ""
        self.wait_after_creation_s = float(args.get("wait_after_creation_s", 0.15))
        self.codec = PublishCodec(
            model.args, self.topic, max_bytes=self.socket_options.max_message_bytes
        )
        self.socket: zmq.Socket[Any] | None = None
        self._send: Callable[[bytes], Any] = self._closed
        self._publish = self._publisher()

    @classmethod
    def prepare(
        cls, creation_arguments: dict[str, Any], namespace: Mapping[str, Any]
    ) -> dict[str, Any]:
        wait = creation_arguments.get("wait_after_creation_s", 0)
        if wait < 0:
            raise ValueError(f"creation argument 'wait_after_creation_s' must be >= 0, got {wait}")
        return super().prepare(creation_arguments, namespace)

    def binding(self) -> bool:
        return not self.model.creation_arguments.get("is_x_pub", False)

    def open(self, addresses: Mapping[str, Any]) -> None:
        self.socket = self._socket(zmq.PUB, addresses, "publisher")
        self._send = sender_of(self.socket)
        if self.wait_after_creation_s:
            # The seed's slow-joiner guard; set it to 0 where subscribers synchronise.
            time.sleep(self.wait_after_creation_s)

    def close(self) -> None:
        with self.lock:
            if self.socket is not None:
                self.socket.close(linger=self.socket_options.linger_ms)
                self.socket = None
                self._send = self._closed

    def _closed(self, frame: bytes) -> None:
        raise RuntimeError(f"{self.env.service}: connection '{self.name}' is closed")

    def sockets(self) -> Sequence[zmq.Socket[Any]]:
        return () if self.socket is None else (self.socket,)

    def send(self, args: Any, workflow_id: str) -> None:
        self._publish(args, workflow_id)

    def sender(self) -> Callable[[Any, str], None]:
        return self._publish

    def _publisher(self) -> Callable[[Any, str], None]:
        # A closure over what it needs rather than a method: this runs per message.
        check, args_error, encode = self.model.args.check, self.model.args.error, self.codec.encode
        acquire, release = self.lock.acquire, self.lock.release
        stats, unencodable = self.stats, self.unencodable
        debug, log, service, name = self.env.debug, self.env.log, self.env.service, self.name

        def publish(args: Any, workflow_id: str) -> None:
            if not check(args):
                raise args_error(args)
            try:
                frame = encode(args, workflow_id)
            except (TypeError, ValueError, OverflowError) as exc:
                raise unencodable(exc) from None
            if debug:
                log.debug("%s: publishing on '%s' [%s]", service, name, workflow_id)
            # acquire/release rather than `with`: half the cost.
            acquire()
            try:
                self._send(frame)  # PUB never blocks: beyond sndhwm, messages are dropped
            finally:
                release()
            stats.handled += 1

        return publish
