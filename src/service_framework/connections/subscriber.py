"""``subscriber``: receives published messages. A SUB socket that connects (or binds,
with ``is_binder: True``, so many publishers can connect to one subscriber).

Only messages on ``topic`` arrive (empty or absent: every topic). A message that does not
decode or validate is dropped with a log line and counted; it never reaches the handler
and never stops the messages behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq

from ..codec import PublishCodec
from ..errors import DecodeError, ValidationError
from ..workflow import IDLE
from .base import ConnectionEnv, InboundConnection, Reader, socket_reader

__all__ = ["Subscriber"]


class Subscriber(InboundConnection):
    type_name = "subscriber"
    address_keys = ("subscriber",)
    required_creation_arguments = {"connection_function": Callable}
    optional_creation_arguments = {"topic": str, "is_binder": bool, "socket_options": dict}
    # 0.0.20 validated `connection_function` but read `on_new_message`; accept either.
    creation_argument_aliases = {"on_new_message": "connection_function"}

    def __init__(self, model: Any, env: ConnectionEnv) -> None:
        super().__init__(model, env)
        self.topic: str = model.creation_arguments.get("topic") or ""
        self.codec = PublishCodec(
            model.args, self.topic, max_bytes=self.socket_options.max_message_bytes
        )
        self.socket: zmq.Socket[Any] | None = None
        # Only this topic's frames, or (no topic) every frame.
        self._subscription = self.codec.prefix if self.topic else b""

    def binding(self) -> bool:
        return bool(self.model.creation_arguments.get("is_binder", False))

    def open(self, addresses: Mapping[str, Any]) -> None:
        sock = self._socket(zmq.SUB, addresses, "subscriber")
        sock.setsockopt(zmq.SUBSCRIBE, self._subscription)
        self.socket = sock

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)  # nothing to flush on a SUB socket
            self.socket = None

    def sockets(self) -> Sequence[zmq.Socket[Any]]:
        return () if self.socket is None else (self.socket,)

    def readers(self) -> Sequence[Reader]:
        sock = self.socket
        assert sock is not None
        stats, decode, codec = self.stats, self.codec.decode, self.codec
        env, handler = self.env, self.handler
        flow, to_send, config = env.flow, env.to_send, env.config
        debug, log, service, name = env.debug, env.log, env.service, self.name

        def handle(frame: bytes) -> None:
            # Frames are taken one by one (asking each for RCVMORE would cost more than
            # the rest of the bare receive): the extra frames of a multi-frame message
            # are rejected in turn, as frames that do not decode.
            stats.received += 1
            try:
                message = decode(frame)
            except (DecodeError, ValidationError) as error:
                self.log_rejected(error, codec.workflow_id_of(frame))
                return
            if debug:
                log.debug("%s: handling '%s' [%s]", service, name, message.workflow_id)
            # What invoke() does, inline: this runs for every published message.
            flow._id = message.workflow_id
            flow.calls = 0
            try:
                handler(message.args, to_send, config)
            except Exception as error:
                self.log_failed(error, message.workflow_id)
            else:
                stats.handled += 1
            finally:
                flow._id = IDLE

        return (socket_reader(sock, handle, batch=256),)

    def finish(self, deadline: float) -> None:
        # Messages already queued here were delivered; handle them rather than drop them.
        if self.socket is not None:
            self.socket.setsockopt(zmq.UNSUBSCRIBE, self._subscription)
            super().finish(deadline)
