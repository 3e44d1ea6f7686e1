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

from ..errors import DecodeError
from ..pipeline import Delivery, Entry
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
        self.socket: zmq.Socket[Any] | None = None

    def open(self, addresses: Mapping[str, Any]) -> None:
        self.socket = self._socket(zmq.REP, addresses, "replyer")

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=self.socket_options.linger_ms)
            self.socket = None

    def build_readers(self) -> Sequence[Reader]:
        sock = self.socket
        assert sock is not None
        workflow_id_of = self.codec.workflow_id_of

        def refuse_multipart(frame: zmq.Frame) -> bytes:
            # REP replies only once the whole request is read; the handler never sees it
            # (see the module docstring).
            self.drain_multipart(sock)
            return reject(DecodeError("a request must be a single frame"), workflow_id_of(frame))

        # The reader's whole work for one request, compiled with the pipeline into one
        # function: whether more frames follow is read off the frame (see socket_reader),
        # and has to come before the handler runs, so it cannot wait for the reply's
        # EFSM; then decode, deliver, encode the reply (over sockets every message
        # carries its id: None is for inline calls only) and send it, or the error reply.
        max_bytes = self.socket_options.max_message_bytes
        encode = self.codec.encode_reply_source(
            "({} if result is None else result)", "workflow_id", "reply"
        )
        entry = Entry(
            self.codec.decode_request_source("frame", "message", "args"),
            workflow_id_of,
            guard=("if frame.more:", "    return send(refuse_multipart(frame))"),
            names={
                "refuse_multipart": refuse_multipart,
                "too_large": self._reply_too_large,
                **encode.names,
            },
            send=sender_of(sock),
            answer=(
                *encode.lines,
                f"if len(reply) > {max_bytes}:",
                "    raise too_large(len(reply))",
            ),
        )
        handle, reject = self.wire_delivery(entry)
        # One request per poll turn: a REP socket holds the next request only after the
        # reply, and probing for it (a raised zmq.Again) costs more than polling again.
        return (socket_reader(sock, handle, batch=1, frames=True),)

    def wire_delivery(self, entry: Entry) -> Delivery[bytes]:
        """The pipeline with the reply frames as its answers: the encoded reply (the
        ``entry``'s answer lines), or an error reply for a request refused."""
        encode_error = self.codec.encode_error

        def refuse(error: BaseException, text: str, workflow_id: str) -> bytes:
            return encode_error(type(error).__name__, text, workflow_id)

        return self.delivery(None, refuse, entry=entry)

    def _reply_too_large(self, size: int) -> Exception:
        # The requester's socket (same limit) would drop the connection on this reply:
        # its caller would see a timeout, and a retry run the handler again.
        return self.too_large(size, "reply", "return_args")

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
        observer, codec = self.observer, self.codec
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
            observer.on_received()
            observer.on_rejected()
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
