"""``requester``: sends a request and waits for the reply. A REQ socket that connects.

The Lazy Pirate pattern: each attempt waits at most ``timeout_s`` for the reply; on a
timeout the socket is closed (linger 0) and a fresh one is connected, and the request is
sent again, up to ``retries`` more times. Then ``to_send`` raises
:class:`~service_framework.errors.RequestTimeout`. A fresh socket has a new identity, so
a late reply to an abandoned attempt can never be read as the answer to a later request,
and the connection is usable again right after any failure.

A retried request may run twice on the replyer (at-least-once): make handlers that are
retried idempotent, or keep ``retries`` at 0 (the default).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import zmq

from ..errors import DecodeError, HandshakeRefused, RemoteError, RequestTimeout, ValidationError
from ..generated import indent, merge
from ..locks import HandoffLock
from ..observe import ConnectionStats
from ..transport import send_bytes
from ..workflow import NEXT_CALL, next_workflow_id
from .base import (
    ConnectionEnv,
    InlineTarget,
    OutboundConnection,
    Receiving,
    Route,
    check_timeout,
)
from .replyer import Replyer

if TYPE_CHECKING:
    from ..monitoring import RequesterWatch

__all__ = ["Requester"]


_SLICE_MS = 100  # the longest a reply is awaited in one blocking receive


class Requester(OutboundConnection):
    type_name = "requester"
    address_keys = ("requester",)
    has_reply = True
    optional_creation_arguments = {
        "timeout_s": int | float,
        "retries": int,
        "socket_options": dict,
    }

    DEFAULT_TIMEOUT_S = 10.0

    def __init__(self, model: Any, env: ConnectionEnv) -> None:
        super().__init__(model, env)
        assert model.returns is not None
        args = model.creation_arguments
        self.timeout_s = float(args.get("timeout_s", self.DEFAULT_TIMEOUT_S))
        self.retries = int(args.get("retries", 0))
        self._timeout_ms = max(1, int(self.timeout_s * 1000))
        # Replies are awaited in slices of this (the socket's RCVTIMEO) up to the attempt's
        # deadline: a signal that lands just before a blocking receive starts does not
        # interrupt it, so its handler would wait for the receive to end. A reply that
        # comes within the first slice costs nothing extra.
        self._slice_ms = min(self._timeout_ms, _SLICE_MS)
        self._slice_s = self._slice_ms / 1000
        self.codec = self.env.codec.request_reply(
            model.args, model.returns, max_bytes=self.socket_options.max_message_bytes
        )
        self._addresses: Mapping[str, Any] = {}
        self.socket: zmq.Socket[Any] | None = None
        self._watch: RequesterWatch | None = None  # the socket's handshake refusals
        self._refused_socket = False  # the last socket was refused: the next call opens one
        self._request = self._requester()

    @classmethod
    def prepare(
        cls, creation_arguments: dict[str, Any], namespace: Mapping[str, Any]
    ) -> dict[str, Any]:
        check_timeout(creation_arguments, cls.DEFAULT_TIMEOUT_S)
        retries = creation_arguments.get("retries", 0)
        if retries < 0:
            raise ValueError(f"creation argument 'retries' must be >= 0, got {retries!r}")
        return super().prepare(creation_arguments, namespace)

    def open(self, addresses: Mapping[str, Any]) -> None:
        self._addresses = addresses
        self.socket = self._fresh_socket()

    def _fresh_socket(self) -> zmq.Socket[Any]:
        # Not monitored: each retry replaces the socket, and a timeout already says the
        # peer is gone. IMMEDIATE must be set before connecting (see Connection._socket):
        # then a replyer that is down, or stopped mid-handshake, gets no pipe, and
        # requests go only to replyers that completed a handshake. The handshake watch is
        # attached before connecting too, so no refusal is missed.
        watches: list[RequesterWatch] = []
        try:
            sock = self._socket(
                zmq.REQ,
                self._addresses,
                "requester",
                monitored=False,
                options={
                    zmq.IMMEDIATE: 1,
                    zmq.SNDTIMEO: self._timeout_ms,
                    zmq.RCVTIMEO: self._slice_ms,
                },
                before_connect=lambda sock: watches.append(self._watch_handshakes(sock)),
            )
        except BaseException:
            for watch in watches:  # the socket is closed; its monitor goes too
                watch.monitor.close(linger=0)
            raise
        self._watch = watches[0]
        return sock

    @staticmethod
    def _watch_handshakes(sock: zmq.Socket[Any]) -> RequesterWatch:
        # Read only while no connection is up or after a timeout: not per message.
        # (Imported here: monitoring imports the connections package.)
        from ..monitoring import RequesterWatch

        return RequesterWatch(sock)

    def _unwatch(self, sock: zmq.Socket[Any]) -> None:
        if self._watch is not None:
            self._watch.close(sock)
            self._watch = None

    def _refused(self, every: bool) -> HandshakeRefused | None:
        """The error for a refused handshake: once one endpoint refused (``every``
        false), or once all of them did."""
        if self._watch is None:
            return None
        refused = self._watch.read(self)
        if not refused or (every and len(refused) < len(self.endpoints)):
            return None
        reasons = "; ".join(f"{peer}: {why}" for peer, why in sorted(refused.items()))
        return HandshakeRefused(
            f"{self.env.service}: connection '{self.name}': the server refused the "
            f"handshake ({reasons})"
        )

    def close(self) -> None:
        with self.lock:
            self._refused_socket = False
            if self.socket is not None:
                self._unwatch(self.socket)
                self.socket.close(linger=0)  # a pending request has no one to answer it
                self.socket = None

    def send(self, args: Any, workflow_id: str) -> Any:
        return self._request(args, workflow_id)

    def sender(self) -> Callable[[Any, str], Any]:
        return self._request

    def _requester(self) -> Callable[[Any, str], Any]:
        """The per-request function, generated once (see ``generated.py``): check,
        encode, send, receive, decode, count, with everything it needs bound.

        Its straight line is the usual case - the lock free, a connection up, the reply
        within the first slice of the timeout - and calls no other Python function;
        anything else (a busy lock, no connection yet, a late reply, a timeout and its
        retries, a refused handshake, a closed or stuck socket) goes to
        :meth:`_exchange`, which carries on from where the straight line stopped.
        """
        framing = self.frame_source(
            self.codec.encode_request_source("args", "workflow_id", "frame"), "request"
        )
        decode = self.codec.decode_reply_source("reply", "decoded", "result")
        counting = ConnectionStats.source("stats")
        # Another thread holds it: wait_for_lock returns holding it, or raises.
        lock = HandoffLock.source("lock", ["wait_for_lock(workflow_id)"])
        names = merge(
            self.send_names(),
            {
                "wait_for_lock": self._wait_for_lock,
                "exchange": self._exchange,
                "remote_error": self._remote,
                "failed": self.observer.on_failed,
                "now": time.perf_counter_ns,
                "send": send_bytes,
                "NOBLOCK": zmq.NOBLOCK,
                "Again": zmq.Again,
                "ZMQError": zmq.ZMQError,
                "REJECTED": (DecodeError, ValidationError),
            },
            framing.names,
            decode.names,
        )
        others = names["others"] is not None
        received = [*counting["received"], *(["others.on_received()"] if others else [])]
        handled = [*counting["handled"], *counting["timing"]]
        handled += ["others.on_handled(elapsed)"] if others else []
        lines = [
            "def request(args, workflow_id):",
            *indent(framing.lines),
            *indent(self.debug_source("sending")),
            "    started = now()",
            *indent(lock["acquire"]),
            "    try:",
            "        sock = conn.socket",
            "        if sock is None:",
            "            reply = exchange(frame, workflow_id)",
            "        else:",
            "            try:",
            "                send(sock, frame, NOBLOCK)",
            "            except ZMQError:",  # no connection up yet, or a stuck socket
            "                reply = exchange(frame, workflow_id)",
            "            else:",
            *indent(received, 16),
            "                try:",
            "                    reply = sock.recv()",  # RCVTIMEO: the first slice
            "                except Again:",
            "                    reply = exchange(frame, workflow_id, sock)",
            "    finally:",
            *indent(lock["release"], 8),
            "    try:",
            *indent(decode.lines, 8),
            "    except REJECTED:",
            "        failed(now() - started)",
            "        raise",
            "    if decoded.error is not None:",
            "        failed(now() - started)",
            "        raise remote_error(decoded.error, workflow_id)",
            "    elapsed = now() - started",
            *indent(handled),
            "    return result",
        ]
        request: Callable[[Any, str], Any] = self.build_send("request", lines, names)
        return request

    def _wait_for_lock(self, workflow_id: str) -> None:
        """Take the lock another thread holds; waiting counts against the caller's time
        budget (every attempt's timeout), then ``RequestTimeout``."""
        budget = self.timeout_s * (self.retries + 1)
        if not self.lock.acquire(timeout=budget):
            raise RequestTimeout(
                f"{self.env.service}: connection '{self.name}' stayed busy for "
                f"{budget:g}s (another thread is waiting on it)",
                workflow_id=workflow_id,
            )

    def _remote(self, error: Any, workflow_id: str) -> RemoteError:
        return RemoteError(
            error.type,
            error.message,
            connection=f"{self.env.service}: connection '{self.name}'",
            workflow_id=workflow_id,
        )

    def _exchange(
        self, frame: bytes, workflow_id: str, waiting: zmq.Socket[Any] | None = None
    ) -> bytes:
        """The reply to ``frame`` the long way, under the lock: every attempt, Lazy
        Pirate retries, refused handshakes. ``waiting``: the socket the request was
        already sent on (and counted), whose first slice passed without a reply; the
        first attempt goes on waiting there."""
        try:
            return self._attempts(frame, self.retries + 1, waiting)
        except RequestTimeout as exc:
            exc.workflow_id = workflow_id  # to match the replyer's log lines
            raise

    def _attempts(
        self, frame: bytes, attempts: int, waiting: zmq.Socket[Any] | None = None
    ) -> bytes:
        observer = self.observer
        for attempt in range(attempts):
            sock = waiting
            if sock is None:
                sock = self.socket
                if sock is None:
                    if not self._refused_socket:
                        raise RuntimeError(
                            f"{self.env.service}: connection '{self.name}' is closed"
                        )
                    # Handshake afresh, now: the server's keys may have changed since.
                    self._refused_socket = False
                    sock = self.socket = self._fresh_socket()
                observer.on_received()
                if attempt:
                    observer.on_retried()
            try:
                if waiting is not None:
                    waiting = None
                    rest = time.monotonic() - self._slice_s + self.timeout_s
                    return self._reply_within(sock, rest)
                try:
                    send_bytes(sock, frame, zmq.NOBLOCK)  # a connection is up
                except zmq.Again:
                    left_s = self._send_waiting(sock, frame)
                    return self._reply_within(sock, time.monotonic() + left_s)
                try:
                    return sock.recv()  # the reply within the first slice
                except zmq.Again:
                    rest = time.monotonic() - self._slice_s + self.timeout_s
                    return self._reply_within(sock, rest)
            except HandshakeRefused:
                observer.on_failed(None)
                self._drop_refused(sock)
                raise
            except zmq.Again:
                refused = self._refused(every=False)
                if refused is not None:  # a retry would be refused the same way
                    observer.on_failed(None)
                    self._drop_refused(sock)
                    raise refused from None
                observer.on_timed_out()
                self.env.log.warning(
                    "%s: connection '%s' got no reply within %gs (attempt %d of %d)",
                    self.env.service,
                    self.name,
                    self.timeout_s,
                    attempt + 1,
                    attempts,
                )
                # Lazy Pirate: abandon the socket (and any late reply) and start afresh.
                self._replace_socket(sock)
            except zmq.ZMQError as exc:  # after zmq.Again, its subclass
                if exc.errno != zmq.EFSM:
                    raise
                # The peer sent a multi-frame reply last time (we read only its first
                # frame), so REQ refuses to send: start over on a fresh socket.
                self._replace_socket(sock)
                return self._attempts(frame, attempts - attempt)
        raise RequestTimeout(
            f"{self.env.service}: connection '{self.name}' got no reply after {attempts} "
            f"attempt(s) of {self.timeout_s:g}s each ({', '.join(self.endpoints)})"
        )

    def _drop_refused(self, sock: zmq.Socket[Any]) -> None:
        self._unwatch(sock)
        sock.close(linger=0)
        self.socket = None
        self._refused_socket = True

    def _replace_socket(self, sock: zmq.Socket[Any]) -> None:
        self._unwatch(sock)
        sock.close(linger=0)
        self.socket = None  # closed, should a fresh one fail to open
        self.socket = self._fresh_socket()

    @staticmethod
    def _reply_within(sock: zmq.Socket[Any], deadline: float) -> bytes:
        """The reply, read a slice (``RCVTIMEO``) at a time until ``time.monotonic()``
        passes ``deadline`` (then ``zmq.Again``). Between slices Python runs the handler
        of any signal that arrived meanwhile."""
        while True:
            try:
                return sock.recv()
            except zmq.Again:
                if time.monotonic() >= deadline:
                    raise

    def _send_waiting(self, sock: zmq.Socket[Any], frame: bytes) -> float:
        """Send once a connection is up (``IMMEDIATE``), within the attempt's budget;
        returns what is left of that budget (seconds) for the reply."""
        started = time.monotonic()
        deadline = started + self.timeout_s
        if self._watch is not None:
            # Wait for a connection, or for every server to refuse the handshake.
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLOUT)
            poller.register(self._watch.monitor, zmq.POLLIN)
            while not cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLOUT:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise zmq.Again()
                poller.poll(max(1, min(self._slice_ms, int(left * 1000))))  # slices: signals
                refused = self._refused(every=True)
                if refused is not None:
                    raise refused
        sock.send(frame)  # SNDTIMEO: raises zmq.Again when no peer appears in time
        return max(0.0, self.timeout_s - (time.monotonic() - started))

    def inline_route(self, targets: Sequence[InlineTarget], receiving: Receiving) -> Route:
        """Inline, a request runs its replyer's delivery in the calling thread and gets
        what the wire would give: the checked reply, or a ``RemoteError`` naming this
        connection and the request's workflow id. Several related replyers are each
        delivered to, under one workflow id; exactly one may reply."""
        args_model, returns = self.model.args, self.model.returns
        assert returns is not None
        check_args, args_error = args_model.check, args_model.error
        where, service, name = self.where(), self.env.service, self.name

        def refuse(error: BaseException, text: str, workflow_id: str) -> Any:
            raise RemoteError(
                type(error).__name__, text, connection=where, workflow_id=workflow_id
            ) from error

        delivers = [target.delivery(None, refuse).deliver for target in targets]
        # The reply is checked against this connection's model as the wire would (the
        # replyer's own check ran in its delivery) - unless the one replyer's return
        # model is the very same function, when once is enough.
        single = delivers[0] if len(delivers) == 1 else None
        same_check = (
            single is not None
            and targets[0].connection.model.returns is not None
            and (targets[0].connection.model.returns.check is returns.check)
        )
        check_reply = None if same_check else receiving(returns)

        def several(args: Any, workflow_id: str | None) -> Any:
            replies = [deliver(args, workflow_id) for deliver in delivers]
            given = [reply for reply in replies if reply is not None]
            if len(given) > 1:
                raise RuntimeError(
                    f"{service}.{name} is related to {len(given)} handlers that each "
                    "returned a reply; a request gets exactly one reply"
                )
            return given[0] if given else None

        call = single if single is not None else several
        one = single is not None

        def route(args: Any) -> Any:
            if not check_args(args):
                raise args_error(args)
            # One replyer: its flow scope works out the id (see FlowScope); several
            # share one, made here.
            result = call(args, NEXT_CALL if one else next_workflow_id())
            if result is None:
                result = {}
            return result if check_reply is None else check_reply(result)

        return route

    peer = Replyer
