"""The one small interface every connection type implements.

A connection type is a class that states, as class attributes, what it needs:

* ``type_name`` (and ``type_aliases``) - the ``connection_type`` string in a model;
* ``side`` - ``"in"`` (the loop feeds it messages) or ``"out"`` (``to_send`` uses it);
* ``address_keys`` - the keys its addresses entry must have (empty: no sockets);
* ``required_creation_arguments`` / ``optional_creation_arguments`` - name -> type spec,
  plus ``creation_argument_aliases`` (old name -> name) and
  ``ignored_creation_arguments`` (accepted for 0.0.20 files, no effect);
* ``has_reply`` - whether return models apply.

and implements :meth:`Connection.open` / :meth:`Connection.close`, then either
:meth:`InboundConnection.readers` or :meth:`OutboundConnection.send`.

The loop contract: a :class:`Reader` offers something to poll (a zmq socket or a file
descriptor) and/or a time it is due, and drains a bounded batch itself when it is ready
(its own receiving and framing: one frame, several, or none at all, as for a timer). A
reader may also offer a blocking loop of its own, which the runtime uses when it is the
only reader and nothing else needs the loop (one ``recv`` per message, no poll). The loop
never asks which type a connection is, so a new type (PUSH/PULL, a timer, an HTTP
target, a broker) is a new module registered in ``connections/__init__.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import zmq

from ..codec import DEFAULT_CODEC, Codec
from ..errors import DecodeError, ValidationError
from ..logs import ERROR_TEXT_MAX, clip
from ..names import host_name_of
from ..transport import SocketOptions, bind_or_connect, parse_endpoints
from ..workflow import IDLE, Flow, current_flow, flow_of

if TYPE_CHECKING:
    from ..models import ConnectionModel
    from ..names import NameWatch
    from ..security import Curve

__all__ = [
    "Connection",
    "ConnectionEnv",
    "ConnectionStats",
    "InboundConnection",
    "OutboundConnection",
    "RateLimit",
    "Reader",
    "RunState",
    "ServeAlone",
    "socket_reader",
]

ToSend = Callable[[str, Any], Any]


class RunState:
    """Shared, mutable run flags; ``stopping`` is read between messages."""

    __slots__ = ("stopping",)

    def __init__(self) -> None:
        self.stopping = False

    def stopped(self) -> bool:
        return self.stopping


@dataclass
class ConnectionStats:
    """Per-connection counters, readable while the service runs and logged at exit."""

    received: int = 0  # frames taken off the socket (or calls made, outbound)
    handled: int = 0  # handler (or peer) completed successfully
    failed: int = 0  # the handler raised / the call failed
    rejected: int = 0  # undecodable or invalid input, answered with an error or dropped
    timeouts: int = 0  # outbound attempts that got no reply in time
    retries: int = 0  # outbound attempts repeated on a fresh socket
    peers_connected: int = 0  # connections established (socket monitor)
    peers_disconnected: int = 0  # connections lost, e.g. a heartbeat timed out
    reconnects: int = 0  # endpoints re-established after libzmq gave up on them
    handshake_failures: int = 0  # CURVE/ZMTP handshakes refused (by us, or by the server)
    accept_failures: int = 0  # incoming connections the listener failed to accept
    # Subscribers: messages known lost, from gaps in the publishers' sequence numbers,
    # and how many gaps there were (a gap is one run of missed messages).
    missed: int = 0
    gaps: int = 0
    subscriptions: int = 0  # publishers: subscriptions received (one per subscriber join)


class RateLimit:
    """At most ``burst`` events at once, then ``per_s`` a second; counts the rest.

    For log lines a peer can trigger: :meth:`allow` says whether to write this one, and
    :attr:`held` how many were held back since the last one written.
    """

    __slots__ = ("burst", "held", "per_s", "stamp", "tokens")

    def __init__(self, burst: int, per_s: float) -> None:
        self.burst = burst
        self.per_s = per_s
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.held = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_s)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.held += 1
        return False

    def take_held(self) -> int:
        held, self.held = self.held, 0
        return held


@dataclass
class ConnectionEnv:
    """What the runtime gives every connection."""

    service: str
    config: Mapping[str, Any]
    context: zmq.Context[Any] | None
    to_send: ToSend
    curve: Curve | None = None
    # Called with each new socket before it binds or connects, so no connection event
    # is missed (the runtime logs and counts peers coming and going).
    monitor: Callable[[zmq.Socket[Any], Connection], None] | None = None
    debug: bool = False
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("service_framework"))
    # The flow of the message being handled in the serving thread. The runtime makes it
    # that thread's current flow once; each message then only sets its id (see invoke).
    flow: Flow = field(default_factory=Flow)
    # Connects sockets whose addresses are host names to every address they resolve to
    # (None: names are left to libzmq, which connects to the first address only).
    names: NameWatch | None = None
    # Builds each connection's codec (frames <-> messages); see codec.py.
    codec: Codec = DEFAULT_CODEC


class Connection:
    """Base of every connection type (see the module docstring)."""

    type_name: ClassVar[str]
    type_aliases: ClassVar[tuple[str, ...]] = ()
    side: ClassVar[str]
    address_keys: ClassVar[tuple[str, ...]] = ()
    required_creation_arguments: ClassVar[dict[str, object]] = {}
    optional_creation_arguments: ClassVar[dict[str, object]] = {}
    creation_argument_aliases: ClassVar[dict[str, str]] = {}
    ignored_creation_arguments: ClassVar[frozenset[str]] = frozenset()
    has_reply: ClassVar[bool] = False
    binds: ClassVar[bool] = False  # default for the connection's socket
    # This type's defaults for ``socket_options`` keys, where they differ from
    # ``SocketOptions``'s (the creation argument still overrides them).
    socket_defaults: ClassVar[Mapping[str, int]] = {}
    # Bad input is logged, but a peer sending garbage as fast as it can must not write
    # the log as fast as it can: a burst, then a few lines a second, each saying how
    # many were not logged. The counts in `stats` stay exact.
    _REJECTED_BURST: ClassVar[int] = 20
    _REJECTED_PER_S: ClassVar[float] = 5.0

    def __init__(self, model: ConnectionModel, env: ConnectionEnv) -> None:
        self.model = model
        self.env = env
        self.name = model.name
        self.stats = ConnectionStats()
        self._rejected_limit = RateLimit(self._REJECTED_BURST, self._REJECTED_PER_S)
        self.socket_options = SocketOptions.from_mapping(
            {**self.socket_defaults, **(model.creation_arguments.get("socket_options") or {})}
        )
        self.endpoints: list[str] = []

    @classmethod
    def prepare(
        cls, creation_arguments: dict[str, Any], namespace: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Check and normalise creation arguments at model-parse time (start-up).

        Raise ``ValueError`` with a message naming the argument; the caller adds the
        service and connection. ``namespace`` is the service module's globals.
        """
        if "socket_options" in creation_arguments:
            SocketOptions.from_mapping(creation_arguments["socket_options"])
        return creation_arguments

    def binding(self) -> bool:
        """Whether this connection binds (True) or connects (False)."""
        return self.binds

    def too_large(self, size: int, what: str, direction: str = "args") -> ValidationError:
        """The error for an encoded ``what`` (message, request, reply) over this
        connection's ``max_message_bytes``: raised before sending, because a peer with the
        same limit would drop the whole connection on it (libzmq closes it)."""
        return ValidationError(
            f"the encoded {what} is {size:,} bytes, over this connection's "
            f"max_message_bytes of {self.socket_options.max_message_bytes:,}",
            service=self.env.service,
            connection=self.name,
            direction=direction,
        )

    def where(self, key: str | None = None) -> str:
        suffix = f", address key '{key}'" if key else ""
        return f"{self.env.service}: connection '{self.name}'{suffix}"

    def open(self, addresses: Mapping[str, Any]) -> None:
        """Create sockets and bind/connect them. ``addresses`` is this connection's
        entry of the addresses file (validated to hold ``address_keys``)."""

    def close(self) -> None:
        """Close sockets (bounded linger). Safe to call twice."""

    def _socket(
        self,
        kind: int,
        addresses: Mapping[str, Any],
        key: str,
        *,
        monitored: bool = True,
        options: Mapping[int, int] | None = None,
        before_connect: Callable[[zmq.Socket[Any]], None] | None = None,
    ) -> zmq.Socket[Any]:
        """A new socket of ``kind`` with the safe defaults, then the type's own
        ``options`` (zmq option -> value), security, monitoring (unless ``monitored`` is
        false), ``before_connect(sock)`` (e.g. a monitor of the type's own), bound or
        connected.

        Every option is set here, before the socket binds or connects: libzmq reads
        several of them (``IMMEDIATE``, the HWMs, ``MAXMSGSIZE``, heartbeats) only when a
        connection's pipe is made, and ``connect`` makes it at once, so an option set
        afterwards never reaches the pipes that already exist.
        """
        bind = self.binding()
        endpoints = parse_endpoints(addresses[key], bind=bind, where=self.where(key))
        assert self.env.context is not None, "sockets need the runtime's zmq context"
        sock: zmq.Socket[Any] = self.env.context.socket(kind)
        try:
            self.socket_options.apply(sock)
            for option, value in (options or {}).items():
                sock.setsockopt(option, value)
            if self.env.curve is not None:
                if bind:
                    self.env.curve.make_server(sock, where=self.where())
                else:
                    self.env.curve.make_client(sock, addresses, where=self.where())
            if monitored and self.env.monitor is not None:
                self.env.monitor(sock, self)
            if before_connect is not None:
                before_connect(sock)
            names = self.env.names
            if not bind and names is not None and any(map(host_name_of, endpoints)):
                # Every address a host name resolves to, followed as it changes; applied
                # under an outbound connection's lock, or by the loop for an inbound one.
                self.endpoints = names.connect(
                    self,
                    key,
                    sock,
                    endpoints,
                    where=self.where(key),
                    interval_s=self.socket_options.resolve_interval_ms / 1000,
                    lock=getattr(self, "lock", None),
                )
            else:
                self.endpoints = bind_or_connect(sock, endpoints, bind=bind, where=self.where(key))
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

    def __repr__(self) -> str:
        where = ", ".join(self.endpoints) or "not open"
        return f"<{type(self).__name__} {self.env.service}.{self.name} ({where})>"


#: The blocking receive a reader may opt into: ``serve(state, idle)`` receives and
#: handles messages until ``state.stopping``, calling ``idle()`` whenever it has waited
#: about :data:`BLOCKING_RECV_MS` for nothing (the runtime counts idle wake-ups there and
#: does the work other threads queued for the loop's sockets).
ServeAlone = Callable[[RunState, Callable[[], None]], None]

BLOCKING_RECV_MS = 100  # a reader's blocking loop notices a stop request within this


def check_timeout(creation_arguments: Mapping[str, Any], default: float) -> None:
    """``timeout_s`` (when given) must be > 0; raises ``ValueError`` saying so (the caller
    adds the service and connection)."""
    timeout = creation_arguments.get("timeout_s", default)
    if not timeout > 0:
        raise ValueError(f"creation argument 'timeout_s' must be > 0, got {timeout!r}")


@dataclass(frozen=True)
class Reader:
    """What the loop polls for one inbound source, and how the source drains itself.

    ``drain(max_items)`` takes and handles up to ``max_items`` items (frames, multipart
    messages, ticks) without blocking, returns how many it took (0: nothing was there),
    and never raises for bad input or a failing handler. The loop calls it when
    ``pollable`` is readable, and whenever ``due()`` (a ``time.monotonic()`` time) has
    passed; a reader needs at least one of the two.
    """

    drain: Callable[[int], int]
    pollable: zmq.Socket[Any] | int | None = None  # a zmq socket or a file descriptor
    batch: int = 64  # items per turn before the loop looks at the other readers
    # Optional: the loop blocks on this reader alone (see ServeAlone); None: it polls.
    serve_alone: ServeAlone | None = None
    # Optional: when this reader wants ``drain`` called whether or not anything is
    # readable (a timer); read once per loop turn.
    due: Callable[[], float] | None = None

    def __post_init__(self) -> None:
        if self.pollable is None and self.due is None:
            raise ValueError("a Reader needs something to poll or a due time")


def socket_reader(sock: zmq.Socket[Any], handle: Callable[[bytes], None], *, batch: int) -> Reader:
    """The reader of one zmq socket whose messages are single frames: ``handle(frame)``
    (which never raises) for each. Its blocking loop is a bare ``recv`` loop, so a
    service with this one reader pays no poll and no extra call per message."""
    recv = sock.recv
    noblock = zmq.NOBLOCK

    def drain(max_items: int) -> int:
        taken = 0
        while taken < max_items:
            try:
                frame = recv(noblock)
            except zmq.Again:
                break
            taken += 1
            handle(frame)
        # A stop asked for during the batch is seen by the loop right after it; what is
        # still queued then is finish()'s to handle.
        return taken

    def serve_alone(run: RunState, idle: Callable[[], None]) -> None:
        # The receive timeout bounds how long a stop request waits.
        sock.setsockopt(zmq.RCVTIMEO, BLOCKING_RECV_MS)
        while not run.stopping:
            try:
                frame = recv()
            except zmq.Again:
                idle()
                continue
            handle(frame)

    return Reader(drain, sock, batch=batch, serve_alone=serve_alone)


class InboundConnection(Connection):
    """A connection the service loop feeds: it owns a handler and one or more sockets."""

    side = "in"

    def __init__(self, model: ConnectionModel, env: ConnectionEnv) -> None:
        super().__init__(model, env)
        self.handler: Callable[[Any, ToSend, Mapping[str, Any]], Any] = model.creation_arguments[
            "connection_function"
        ]

    def readers(self) -> Sequence[Reader]:
        """What the loop polls and drains for this connection (built once, when the loop
        starts; see :class:`Reader`)."""
        raise NotImplementedError

    def finish(self, deadline: float) -> None:
        """At shutdown, after the loop stopped taking new work: handle what has already
        arrived, until it is handled or ``time.monotonic()`` passes ``deadline``. Runs in
        the loop's thread."""
        for reader in self.readers():
            while time.monotonic() < deadline and reader.drain(reader.batch):
                pass

    def invoke(self, args: Any, workflow_id: str) -> Any:
        """Run the handler with the message's workflow id as the current flow.

        The serving thread's flow object is reused rather than a new one set per message
        (a measurable share of the per-message cost): a handler sees its message's id
        while it runs, which is what ``to_send`` and the log lines it writes need.
        """
        flow = self.env.flow
        flow._id = workflow_id
        flow.calls = 0
        try:
            return self.handler(args, self.env.to_send, self.env.config)
        finally:
            flow._id = IDLE

    def log_rejected(self, error: Exception, workflow_id: str) -> None:
        """Count a message that did not decode or validate, and log it (rate-limited,
        the peer's text cut short and escaped)."""
        self.stats.rejected += 1
        limit = self._rejected_limit
        if not limit.allow():
            return
        held = limit.take_held()
        self.env.log.warning(
            "%s: connection '%s' rejected a message [%s]: %s%s",
            self.env.service,
            self.name,
            clip(workflow_id) if workflow_id else "-",
            clip(error, ERROR_TEXT_MAX),
            f" ({held:,} more rejected since the last such line)" if held else "",
        )

    def log_failed(self, error: BaseException, workflow_id: str) -> None:
        """Count and log a handler that raised, under the message's workflow id (the
        error's text, which may quote the peer's input, cut short and escaped)."""
        self.stats.failed += 1
        token = current_flow.set(flow_of(workflow_id))
        try:
            self.env.log.error(
                "%s: handler of connection '%s' raised %s: %s",
                self.env.service,
                self.name,
                type(error).__name__,
                clip(error, ERROR_TEXT_MAX),
                exc_info=error,
            )
        finally:
            current_flow.reset(token)

    def one_way_handler(
        self,
        decode: Callable[[bytes], Any],
        workflow_id_of: Callable[[bytes], str],
    ) -> Callable[[bytes], None]:
        """The per-frame handler of a connection that never replies (a subscriber, a
        puller): decode and validate, run the handler under the message's workflow id,
        count; a frame that does not decode or validate is logged and counted as
        rejected, a handler that raises as failed. Never raises for either.

        ``decode(frame)`` returns an envelope with ``args`` and ``workflow_id`` or raises
        ``DecodeError``/``ValidationError``. A closure over what it needs rather than a
        method: this runs per message.
        """
        stats, env, handler = self.stats, self.env, self.handler
        flow, to_send, config = env.flow, env.to_send, env.config
        debug, log, service, name = env.debug, env.log, env.service, self.name
        rejected, failed = self.log_rejected, self.log_failed

        def handle(frame: bytes) -> None:
            stats.received += 1
            try:
                message = decode(frame)
            except (DecodeError, ValidationError) as error:
                rejected(error, workflow_id_of(frame))
                return
            if debug:
                log.debug("%s: handling '%s' [%s]", service, name, message.workflow_id)
            # What invoke() does, inline: this runs for every message.
            flow._id = message.workflow_id
            flow.calls = 0
            try:
                handler(message.args, to_send, config)
            except Exception as error:
                failed(error, message.workflow_id)
            else:
                stats.handled += 1
            finally:
                flow._id = IDLE

        return handle

    @staticmethod
    def drain_multipart(sock: zmq.Socket[Any]) -> int:
        """Discard the remaining frames of a multipart message; returns how many."""
        extra = 0
        while sock.getsockopt(zmq.RCVMORE):
            sock.recv()
            extra += 1
        return extra


class OutboundConnection(Connection):
    """A connection ``to_send`` uses. ``send`` validates, delivers, and returns the
    validated reply (or ``None`` for types without one). It must be thread-safe."""

    side = "out"

    def __init__(self, model: ConnectionModel, env: ConnectionEnv) -> None:
        super().__init__(model, env)
        self.lock = threading.Lock()

    def send(self, args: Any, workflow_id: str) -> Any:
        raise NotImplementedError

    def sender(self) -> Callable[[Any, str], Any]:
        """What ``to_send`` calls for this connection: ``send``, unless the type has a
        cheaper callable that behaves the same."""
        return self.send

    def unencodable(self, error: Exception) -> ValidationError:
        """The error for args that validated but have no msgpack form (e.g. an object
        inside a value declared as a bare ``dict``)."""
        return ValidationError(
            f"cannot be encoded as msgpack: {error}",
            service=self.env.service,
            connection=self.name,
            direction="args",
        )
