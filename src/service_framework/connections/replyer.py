"""``replyer``: answers requests. A REP socket that binds.

Per message: decode and validate the args (one msgspec pass), call the handler, validate
its return, reply. Every request gets exactly one reply - the handler's, or an error
reply when the message was undecodable, invalid, or the handler raised - so the REP
state machine can never wedge and the requester never waits on a message we dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq

from ..codec import MessageCodec
from ..errors import DecodeError, ValidationError
from ..transport import sender_of
from .base import ConnectionEnv, InboundConnection, Reader

__all__ = ["Replyer"]


class Replyer(InboundConnection):
    type_name = "replyer"
    address_keys = ("replyer",)
    binds = True
    has_reply = True
    required_creation_arguments = {"connection_function": Callable}
    optional_creation_arguments = {"socket_options": dict}
    creation_argument_aliases = {"on_new_request": "connection_function"}
    ignored_creation_arguments = frozenset({"topic", "is_x_pub"})

    def __init__(self, model: Any, env: ConnectionEnv) -> None:
        super().__init__(model, env)
        assert model.returns is not None
        self.codec = MessageCodec(
            model.args, model.returns, max_bytes=self.socket_options.max_message_bytes
        )
        self._check_return = model.returns.check
        self._return_error = model.returns.error
        # A handler may return None when its return model has no required keys.
        self._none_ok = model.returns.check({})
        self.socket: zmq.Socket[Any] | None = None

    def open(self, addresses: Mapping[str, Any]) -> None:
        self.socket = self._socket(zmq.REP, addresses, "replyer")

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=self.socket_options.linger_ms)
            self.socket = None

    def sockets(self) -> Sequence[zmq.Socket[Any]]:
        return () if self.socket is None else (self.socket,)

    def readers(self) -> Sequence[Reader]:
        sock = self.socket
        assert sock is not None
        stats, respond, send = self.stats, self.respond, sender_of(sock)

        def handle(frame: bytes) -> None:
            stats.received += 1
            rejected = stats.rejected
            reply = respond(frame)
            try:
                send(reply)
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EFSM:
                    raise
                # A multi-frame request: REP refuses to reply while frames are unread.
                # (Checking RCVMORE on every request would cost a microsecond each; the
                # first frame was handled like any request.) Read the rest and answer
                # with an error instead.
                self.drain_multipart(sock)
                error = DecodeError("a request must be a single frame")
                if stats.rejected == rejected:  # count the message once
                    self.log_rejected(error, "")
                send(self.codec.encode_error("DecodeError", str(error), ""))

        # One request per poll turn: a REP socket holds the next request only after the
        # reply, and probing for it (a raised zmq.Again) costs more than polling again.
        return (Reader(sock, handle, batch=1),)

    def respond(self, frame: bytes) -> bytes:
        """The reply frame for one request frame. Never raises."""
        codec = self.codec
        try:
            request = codec.decode_request(frame)
        except (DecodeError, ValidationError) as error:
            workflow_id = codec.workflow_id_of(frame)
            self.log_rejected(error, workflow_id)
            return codec.encode_error(type(error).__name__, str(error), workflow_id)
        workflow_id = request.workflow_id
        if self.env.debug:
            self.env.log.debug("%s: handling '%s' [%s]", self.env.service, self.name, workflow_id)
        try:
            result = self.invoke(request.args, workflow_id)
            if result is None and self._none_ok:
                result = {}
            if not self._check_return(result):
                raise self._return_error(result)
            reply = codec.encode_reply(result, workflow_id)
        except Exception as error:
            self.log_failed(error, workflow_id)
            return codec.encode_error(type(error).__name__, str(error), workflow_id)
        self.stats.handled += 1
        return reply
