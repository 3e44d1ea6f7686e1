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
:meth:`InboundConnection.build_readers` or :meth:`OutboundConnection.send`.

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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import zmq

from ..codec import DEFAULT_CODEC, Codec
from ..errors import ValidationError
from ..generated import Fragment, build, indent, merge, unique_prefix
from ..locks import HandoffLock
from ..logs import RateLimit
from ..names import host_name_of
from ..observe import ONE_WAY_TIME_EVERY, ConnectionStats, Observer, Observers, split_stats
from ..pipeline import Delivery, Entry, R, Receiver, compile_delivery, rejected_limit
from ..transport import SocketOptions, bind_or_connect, parse_endpoints
from ..workflow import NEXT_CALL, FlowScope, next_workflow_id

if TYPE_CHECKING:
    from ..models import ConnectionModel
    from ..names import NameWatch
    from ..security import Curve
    from ..validation import Validator

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
    # Where a handled message's workflow id is current while its handler runs: the
    # serving thread's flow for the runtime, the calling context's inline.
    scope: FlowScope = field(default_factory=FlowScope)
    # Observers heard next to each connection's stats (see observe.py): called with the
    # connection, returns the observers for it.
    observers: Callable[[Connection], Sequence[Observer]] | None = None
    # Connects sockets whose addresses are host names to every address they resolve to
    # (None: names are left to libzmq, which connects to the first address only).
    names: NameWatch | None = None
    # Whether the pipeline measures handling times (inline calls, which run in their
    # caller's time, are not measured).
    timed: bool = True
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
    stats_type: ClassVar[type[ConnectionStats]] = ConnectionStats  # a type's own counters
    binds: ClassVar[bool] = False  # default for the connection's socket
    # This type's defaults for ``socket_options`` keys, where they differ from
    # ``SocketOptions``'s (the creation argument still overrides them).
    socket_defaults: ClassVar[Mapping[str, int]] = {}

    def __init__(self, model: ConnectionModel, env: ConnectionEnv) -> None:
        self.model = model
        self.env = env
        self.name = model.name
        self.stats = self.stats_type()
        extra = env.observers(self) if env.observers is not None else ()
        # What the connection reports to: its stats, and any observer plugged in.
        self.observer: Observer = Observers([self.stats, *extra]) if extra else self.stats
        # Rejection lines this connection's peers can trigger, shared by its deliveries.
        self._rejected_limit = rejected_limit()
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


def socket_reader(
    sock: zmq.Socket[Any], handle: Callable[[Any], object], *, batch: int, frames: bool = False
) -> Reader:
    """The reader of one zmq socket whose messages are single frames: ``handle(frame)``
    (which never raises) for each. Its blocking loop is a bare ``recv`` loop, so a
    service with this one reader pays no poll and no extra call per message.

    ``frames``: ``handle`` gets each ``zmq.Frame`` (received without a copy) rather than
    ``bytes``, for a type that must know whether more frames follow: ``frame.more`` is
    read off the message, where asking the socket (``RCVMORE``) costs about a
    microsecond more. A frame is a buffer: the codecs decode it as they decode bytes."""
    # recv(flags, copy), positionally: a partial with copy=False as a keyword builds a
    # dict of keywords per call.
    recv, copy = sock.recv, not frames
    noblock = zmq.NOBLOCK

    def drain(max_items: int) -> int:
        taken = 0
        while taken < max_items:
            try:
                frame = recv(noblock, copy)
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
                frame = recv(0, copy)
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
        self._readers: tuple[Reader, ...] | None = None

    def readers(self) -> Sequence[Reader]:
        """What the loop polls and drains for this connection (see :class:`Reader`):
        built once, when the loop starts, and drained again by :meth:`finish`."""
        if self._readers is None:
            self._readers = tuple(self.build_readers())
        return self._readers

    def build_readers(self) -> Sequence[Reader]:
        """The type's readers, over its open sockets (called once, by :meth:`readers`)."""
        raise NotImplementedError

    def finish(self, deadline: float) -> None:
        """At shutdown, after the loop stopped taking new work: handle what has already
        arrived, until it is handled or ``time.monotonic()`` passes ``deadline``. Runs in
        the loop's thread."""
        for reader in self.readers():
            while time.monotonic() < deadline and reader.drain(reader.batch):
                pass

    def receiver(self) -> Receiver:
        """This connection as the receiving end of the message pipeline."""
        env = self.env
        return Receiver(
            service=env.service,
            connection=self.name,
            handler=self.handler,
            to_send=env.to_send,
            config=env.config,
            observer=self.observer,
            log=env.log,
            returns=self.model.returns if self.has_reply else None,
            rejected_limit=self._rejected_limit,
            debug=env.debug,
            # Inline calls are not timed; a one-way type's messages, one in some.
            time_every=(1 if self.has_reply else ONE_WAY_TIME_EVERY) if env.timed else 0,
        )

    def delivery(
        self,
        answer: Callable[[Any, str | None], R] | None,
        refuse: Callable[[BaseException, str, str], R],
        *,
        check: Callable[[Any], Any] | None = None,
        entry: Entry | None = None,
    ) -> Delivery[R]:
        """The compiled pipeline for this connection's messages (see ``pipeline.py``):
        over sockets the codec has checked the args; inline, ``check`` does. ``entry``:
        the reader's own decoding lines, compiled in front (see ``pipeline.Entry``)."""
        return compile_delivery(
            self.receiver(),
            answer=answer,
            refuse=refuse,
            scope=self.env.scope,
            check=check,
            entry=entry,
        )

    def one_way_delivery(self, entry: Entry | None = None) -> Delivery[None]:
        """The pipeline of a connection that never answers (a subscriber, a puller, a
        timer): what the handler returns is ignored, a refused message only logged."""
        return self.delivery(None, _no_refusal, entry=entry)

    @staticmethod
    def drain_multipart(sock: zmq.Socket[Any]) -> int:
        """Discard the remaining frames of a multipart message; returns how many."""
        extra = 0
        while sock.getsockopt(zmq.RCVMORE):
            sock.recv()
            extra += 1
        return extra


def _no_refusal(error: BaseException, text: str, workflow_id: str) -> None:
    return None


#: What inline ``to_send`` calls for one relation: the args -> the reply (or None).
Route = Callable[[Any], Any]
#: The wire's conversion for a validator: ``receiving(validator)(value)`` is ``value``
#: when the check passes, else what a receiver would decode from it (or its error).
Receiving = Callable[["Validator"], Callable[[Any], Any]]


@dataclass(frozen=True)
class InlineTarget:
    """One inbound connection an inline relation delivers to, with the check it runs on
    what it receives there (None: the sender's check is the very same)."""

    connection: InboundConnection
    check: Callable[[Any], Any] | None

    def delivery(
        self,
        answer: Callable[[Any, str | None], R] | None,
        refuse: Callable[[BaseException, str, str], R],
    ) -> Delivery[R]:
        return self.connection.delivery(answer, refuse, check=self.check)


class OutboundConnection(Connection):
    """A connection ``to_send`` uses. ``send`` validates, delivers, and returns the
    validated reply (or ``None`` for types without one). It must be thread-safe.

    A type that links to an inbound type names it as ``peer`` (requester -> replyer):
    topology links and inline relations take exactly that pairing, and
    :meth:`inline_route` says what ``to_send`` does inline for a relation to one or more
    of them. :meth:`relation_problem` refuses pairs that could never carry a message.
    """

    side = "out"
    peer: ClassVar[type[InboundConnection] | None] = None

    @classmethod
    def relation_problem(cls, out_model: ConnectionModel, in_model: ConnectionModel) -> str | None:
        """Why a link from ``out_model`` to ``in_model`` (of the peer type) could never
        carry a message, or None."""
        return None

    def inline_route(self, targets: Sequence[InlineTarget], receiving: Receiving) -> Route:
        """What inline ``to_send`` does on this connection for a relation to ``targets``
        (``receiving``: the wire's conversion, for what comes back)."""
        raise NotImplementedError(f"{type(self).__name__} takes no inline relations")

    def inline_one_way(self, targets: Sequence[InlineTarget]) -> Route:
        """Inline, a one-way message to every target: the sender's check, then each
        target's delivery under the same workflow id, each counting its own sends from
        ``_1``; a target's failure stays with it (it is logged), as over the wire."""
        check_args, args_error = self.model.args.check, self.model.args.error
        delivers = [target.delivery(None, _no_refusal).deliver for target in targets]
        one = len(delivers) == 1

        def route(args: Any) -> None:
            if not check_args(args):
                raise args_error(args)
            # One target: its flow scope works out the id (see FlowScope); several
            # share one, made here.
            workflow_id = NEXT_CALL if one else next_workflow_id()
            for deliver in delivers:
                deliver(args, workflow_id)

        return route

    def __init__(self, model: ConnectionModel, env: ConnectionEnv) -> None:
        super().__init__(model, env)
        self.lock = HandoffLock()

    def send(self, args: Any, workflow_id: str) -> Any:
        raise NotImplementedError

    def sender(self) -> Callable[[Any, str], Any]:
        """What ``to_send`` calls for this connection: ``send``, unless the type has a
        cheaper callable that behaves the same."""
        return self.send

    def send_names(self) -> dict[str, Any]:
        """The names every generated send function (see ``generated.py``) may use: the
        lock's pieces (:meth:`HandoffLock.names` under ``lock``, for the lines of
        :meth:`HandoffLock.source`), the connection as ``conn``, its own ``stats`` and the
        ``others`` observers (None when there are none; see ``observe.split_stats``), and
        ``log`` and ``where`` for :meth:`debug_source`."""
        stats, others = split_stats(self.observer)
        assert stats is not None  # a connection's own stats are always its first observer
        return {
            **self.lock.names("lock"),
            "conn": self,
            "stats": stats,
            "others": others,
            "log": self.env.log,
            "where": (self.env.service, self.name),
        }

    def debug_source(self, verb: str) -> list[str]:
        """The DEBUG line of a generated send (``<verb> on '<connection>' [<id>]``), or
        none when the service does not log at DEBUG."""
        if not self.env.debug:
            return []
        return [f"log.debug('%s: {verb} on \\'%s\\' [%s]', *where, workflow_id)"]

    def handled_source(self, names: Mapping[str, Any]) -> list[str]:
        """The counting of a one-way message sent, over :meth:`send_names`."""
        others = [] if names["others"] is None else ["others.on_handled(None)"]
        return [*ConnectionStats.source("stats")["handled"], *others]

    def build_send(self, function: str, lines: Sequence[str], names: dict[str, Any]) -> Any:
        """Compile a generated send function named ``function``."""
        return build(lines, names, f"{function} {self.env.service}.{self.name}", function)

    def frame_source(self, encode: Fragment, what: str) -> Fragment:
        """Lines of a generated send function (see ``generated.py``) that set ``frame``
        from the locals ``args`` and ``workflow_id``: the args checked against this
        connection's model, encoded (``encode``: the codec's lines), and refused before
        sending when the frame is over ``max_message_bytes`` (the peer's socket would
        drop the connection without a word, and the caller wait out its timeout).
        ``what`` names the frame in that error (``"request"``, ``"message"``)."""
        p = unique_prefix()
        check = self.model.args.source("args", f"raise {p}args_error(args)")
        lines = (
            *check.lines,
            "try:",
            *indent(encode.lines),
            f"except {p}UNENCODABLE as {p}error:",
            f"    raise {p}unencodable({p}error) from None",
            f"if len(frame) > {self.socket_options.max_message_bytes}:",
            f"    raise {p}too_large(len(frame), {what!r})",
        )
        names = merge(
            {
                f"{p}args_error": self.model.args.error,
                f"{p}unencodable": self.unencodable,
                f"{p}too_large": self.too_large,
                f"{p}UNENCODABLE": (TypeError, ValueError, OverflowError),
            },
            check.names,
            encode.names,
        )
        return Fragment(lines, names)

    def unencodable(self, error: Exception) -> ValidationError:
        """The error for args that validated but have no msgpack form (e.g. an object
        inside a value declared as a bare ``dict``)."""
        return ValidationError(
            f"cannot be encoded as msgpack: {error}",
            service=self.env.service,
            connection=self.name,
            direction="args",
        )
