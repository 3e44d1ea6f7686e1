"""``replyer``: answers requests. A REP socket that binds.

Per message: decode and validate the args (one msgspec pass), call the handler, validate
its return, reply. Every request gets exactly one reply - the handler's, or an error
reply when the message was undecodable, invalid, or the handler raised - so the REP
state machine can never wedge and the requester never waits on a message we dropped.

A request of more than one frame is refused before the handler runs (a retrying caller
must never repeat a side effect for a message that is then answered with an error), and
a reply over ``max_message_bytes`` is replaced by an error reply naming its size: the
requester's socket would otherwise drop the connection and its caller wait out the
timeout. At shutdown, requests still queued when ``stop_timeout_s`` runs out are
answered with a ``ServiceStopping`` error rather than left to time out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import zmq

from ..errors import DecodeError, ValidationError
from ..logs import ERROR_TEXT_MAX, clip
from ..transport import sender_of
from .base import ConnectionEnv, InboundConnection, Reader, socket_reader

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
    # A REP socket handles one request at a time and a REQ peer sends one at a time, so
    # a deep per-peer queue only adds memory a peer can make us hold: at most
    # (rcvhwm + 1) x max_message_bytes per connected peer. A peer beyond it is slowed
    # by TCP back-pressure, never dropped.
    socket_defaults: ClassVar[Mapping[str, int]] = {"rcvhwm": 8}
    # At shutdown: how long refusing the requests still queued may take at most (each
    # refusal is one small send; requests keep arriving while callers retry), and how
    # long without a request ends it early (see _refuse_queued).
    REFUSE_S: ClassVar[float] = 1.0
    QUIET_S: ClassVar[float] = 0.1

    def __init__(self, model: Any, env: ConnectionEnv) -> None:
        super().__init__(model, env)
        assert model.returns is not None
        self.codec = self.env.codec.request_reply(
            model.args, model.returns, max_bytes=self.socket_options.max_message_bytes
        )
        self._check_return = model.returns.check
        self._return_error = model.returns.error
        # A handler may return None when its return model has no required keys.
        self._none_ok = model.returns.check({})
        self._max_bytes = self.socket_options.max_message_bytes
        self.socket: zmq.Socket[Any] | None = None

    def open(self, addresses: Mapping[str, Any]) -> None:
        self.socket = self._socket(zmq.REP, addresses, "replyer")

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=self.socket_options.linger_ms)
            self.socket = None

    def readers(self) -> Sequence[Reader]:
        sock = self.socket
        assert sock is not None
        stats, respond, send = self.stats, self.respond, sender_of(sock)
        # pyzmq's compiled getsockopt, bound once: about a microsecond per request, the
        # cheapest way a REP socket tells that more frames follow (a zero-copy Frame's
        # ``more`` costs more, and a probing recv raises). The check has to come before
        # the handler runs, so it cannot wait for the reply's EFSM.
        more, rcvmore = sock.get, zmq.RCVMORE

        def handle(frame: bytes) -> None:
            stats.received += 1
            if more(rcvmore):
                send(self._refuse_multipart(sock, frame))
                return
            send(respond(frame))

        # One request per poll turn: a REP socket holds the next request only after the
        # reply, and probing for it (a raised zmq.Again) costs more than polling again.
        return (socket_reader(sock, handle, batch=1),)

    def _refuse_multipart(self, sock: zmq.Socket[Any], frame: bytes) -> bytes:
        """Read the rest of a multi-frame request (REP replies only once it is all read)
        and return the error reply; the handler never sees it."""
        self.drain_multipart(sock)
        workflow_id = self.codec.workflow_id_of(frame)
        error = DecodeError("a request must be a single frame")
        self.log_rejected(error, workflow_id)
        return self.codec.encode_error("DecodeError", str(error), workflow_id)

    def finish(self, deadline: float) -> None:
        super().finish(deadline)
        self._refuse_queued(answered=self.stats.received > 0)

    def _refuse_queued(self, *, answered: bool) -> None:
        """Answer every request still queued with a ``ServiceStopping`` error, so its
        caller fails at once instead of waiting out its timeout.

        A replyer that has answered anything keeps its socket open until no request has
        come for ``QUIET_S`` (at most ``REFUSE_S`` in all): a requester drops a reply it
        has not read yet when the connection closes (with ``IMMEDIATE`` libzmq discards
        a closed pipe's unread messages), and requests already on their way are refused
        rather than lost.
        """
        sock = self.socket
        if sock is None:
            return
        message = f"{self.env.service}: stopping; the request was not handled"
        stats, codec = self.stats, self.codec
        refused = 0
        until = time.monotonic() + self.REFUSE_S
        while (left := until - time.monotonic()) > 0:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                if not (answered or refused):
                    break
                if not sock.poll(int(min(self.QUIET_S, left) * 1000) + 1, zmq.POLLIN):
                    break
                continue
            stats.received += 1
            stats.rejected += 1
            refused += 1
            self.drain_multipart(sock)
            workflow_id = codec.workflow_id_of(frame)
            sock.send(codec.encode_error("ServiceStopping", message, workflow_id))
        if refused:
            self.env.log.warning(
                "%s: connection '%s' answered %d queued request(s) with ServiceStopping "
                "(stop_timeout_s ran out)",
                self.env.service,
                self.name,
                refused,
            )

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
            if len(reply) > self._max_bytes:
                # The requester's socket (same limit) would drop the connection on this
                # reply: its caller would see a timeout, and a retry run the handler again.
                raise self.too_large(len(reply), "reply", "return_args")
        except Exception as error:
            self.log_failed(error, workflow_id)
            # clip, not str(): a handler's exception whose __str__ fails still gets a reply.
            text = clip(error, ERROR_TEXT_MAX)
            return codec.encode_error(type(error).__name__, text, workflow_id)
        self.stats.handled += 1
        return reply
