"""``puller``: takes work from pushers. A PULL socket that binds.

The receiving end of a work queue: every pusher connected to it hands each message to
one of the pullers it is connected to, round-robin (see ``pusher.py``). The handler runs
once per message, like a subscriber's; what it returns is ignored (nothing is replied).
A message that does not decode or validate, or that has more than one frame, is dropped
with a log line and counted as rejected; it never reaches the handler and never stops
the messages behind it.

Frames are the publish frame with an empty topic (``codec.PublishCodec``): a pushed
message is one-way, like a published one, and that frame is the cheaper to decode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq

from ..errors import DecodeError
from ..pipeline import Entry
from .base import ConnectionEnv, InboundConnection, Reader, socket_reader

__all__ = ["Puller"]


class Puller(InboundConnection):
    type_name = "puller"
    address_keys = ("puller",)
    binds = True
    required_creation_arguments = {"connection_function": Callable}
    optional_creation_arguments = {"socket_options": dict}

    def __init__(self, model: Any, env: ConnectionEnv) -> None:
        super().__init__(model, env)
        self.codec = self.env.codec.one_way(
            model.args, "", max_bytes=self.socket_options.max_message_bytes
        )
        self.socket: zmq.Socket[Any] | None = None

    def open(self, addresses: Mapping[str, Any]) -> None:
        self.socket = self._socket(zmq.PULL, addresses, "puller")

    def close(self) -> None:
        if self.socket is not None:
            # Nothing to flush on a PULL socket; what is still queued here is lost (the
            # loop's finish() has handled what had arrived by then).
            self.socket.close(linger=0)
            self.socket = None

    def build_readers(self) -> Sequence[Reader]:
        sock = self.socket
        assert sock is not None
        workflow_id_of = self.codec.workflow_id_of

        def refuse_multipart(frame: zmq.Frame) -> None:
            extra = self.drain_multipart(sock)
            error = DecodeError(f"a message must be a single frame (got {extra + 1})")
            reject(error, workflow_id_of(frame))

        # The reader's whole work for one message, compiled with the pipeline into one
        # function (see pipeline.Entry). Unlike a subscriber's, a multi-frame message
        # never runs the handler: a pusher hands each message to one puller only, so
        # what it meant must not be half-done. Whether more frames follow is read off
        # the frame (see socket_reader).
        entry = Entry(
            self.codec.decode_source("frame", "message", "args"),
            workflow_id_of,
            guard=("if frame.more:", "    return refuse_multipart(frame)"),
            names={"refuse_multipart": refuse_multipart},
        )
        handle, reject = self.one_way_delivery(entry)
        return (socket_reader(sock, handle, batch=256, frames=True),)
