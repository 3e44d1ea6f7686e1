"""Peer events: which connections gain and lose peers, logged, counted, and repaired.

Each socket gets a ZeroMQ socket monitor before it binds or connects. The monitors are
read by one background thread of their own, so the service loop's poll set - and its
per-message cost - stays just the inbound sockets.

The thread also repairs what libzmq leaves broken, but never touches a socket itself
while another thread may use it (zmq sockets are not thread-safe). It decides what to do
and when; the socket's owner does it: the service loop for inbound connections (woken
through the runtime's wake pipe; the single-socket loop looks between receive timeouts,
never per message), and for outbound connections this thread itself while holding the
connection's lock (the lock every ``send`` holds, so no other thread uses the socket
meanwhile). The repairs:

* **A connecting socket whose peer dropped it for good is re-connected.** When a peer
  breaks the protocol - e.g. sends a frame over ``max_message_bytes``, or refuses the
  CURVE handshake - libzmq ends that session and a *connecting* socket never tries again
  (``session_base_t::engine_error``: a protocol error terminates the session instead of
  reconnecting), so a subscriber would hear nothing more, even from a restarted
  publisher. Any other drop is followed at once by ``EVENT_CONNECT_RETRIED``; a drop
  with none within :data:`RETRY_GRACE_S` is re-established (disconnect + connect),
  backing off up to the socket's ``reconnect_ivl_max_ms`` while the peer keeps
  refusing. (``reconnect_ivl_ms: 0`` turns reconnects off, libzmq's and these.)
* **Out of file descriptors, a listener pauses.** When ``accept`` fails with EMFILE or
  ENFILE, libzmq 4.3.5 leaves the listener readable and retries at once, forever: its
  I/O thread spins at 100% CPU (``tcp_listener_t::in_event``, "TODO: Handle specific
  errors like ENFILE/EMFILE"). The endpoint is unbound, which stops the spin and closes
  the connections accepted through it (freeing their descriptors), and bound again
  after a back-off (:data:`PAUSE_FIRST_S` doubling to :data:`PAUSE_MAX_S`).
* **Revoked CURVE keys are cut off** (see ``security.CurveGate``): every binding socket
  is unbound and bound again, so every client handshakes anew against the current keys.

Refused handshakes and failed accepts are counted per connection
(``ConnectionStats.handshake_failures`` / ``accept_failures``) and logged at most
:data:`LOG_BURST` times per :data:`LOG_WINDOW_S` per connection and kind, with the
number left out.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import heapq
import itertools
import logging
import os
import resource
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import zmq

from .connections.base import Connection, OutboundConnection

__all__ = ["LogLimiter", "PeerWatch", "RequesterWatch", "raise_fd_limit"]

LOG = logging.getLogger("service_framework.peers")

EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_CONNECT_DELAYED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_ACCEPT_FAILED
)
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)

RETRY_GRACE_S = 0.5  # libzmq announces its own reconnect within a millisecond of a drop
PAUSE_FIRST_S = 0.5  # first pause of a listener out of file descriptors...
PAUSE_MAX_S = 10.0  # ...doubling up to this
PAUSE_RESET_S = 60.0  # a listener fine for this long starts again from the first pause
LOG_BURST = 5  # log lines per connection and kind...
LOG_WINDOW_S = 10.0  # ...per this many seconds; the rest are counted, then summarised
_OWNER_BUSY_S = 0.05  # an outbound connection busy with a send: try again this soon
_OUT_OF_FDS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def raise_fd_limit() -> None:
    """Raise this process's soft limit on open files to its hard limit.

    Every peer costs a descriptor; the soft limit is often 1024 while the hard limit is
    far higher, and only the process itself can use the difference. (pyzmq polls with
    ``zmq_poll``, which has no ``select()`` ceiling.)"""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft < hard:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            if target > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):  # pragma: no cover - a sandbox may forbid it
        pass


class LogLimiter:
    """At most ``burst`` log lines per key per ``window`` seconds; a line after a quiet
    spell says how many were left out."""

    def __init__(self, burst: int = LOG_BURST, window: float = LOG_WINDOW_S) -> None:
        self.burst, self.window = burst, window
        self._state: dict[object, list[float]] = {}  # key -> [window start, lines, dropped]
        self._lock = threading.Lock()

    def allow(self, key: object) -> int | None:
        """``None``: stay quiet; else log, mentioning the returned number left out."""
        now = time.monotonic()
        with self._lock:
            state = self._state.setdefault(key, [now, 0.0, 0.0])
            if now - state[0] >= self.window:
                state[0], state[1] = now, 0.0
            if state[1] >= self.burst:
                state[2] += 1
                return None
            state[1] += 1
            dropped, state[2] = int(state[2]), 0.0
            return dropped


def _suppressed(count: int) -> str:
    return f" ({count} similar lines left out)" if count else ""


def _recv_event(monitor: zmq.Socket[Any]) -> dict[str, Any]:
    """The next event on a monitor socket, without blocking (``zmq.Again`` if none), as
    ``{"event", "value", "endpoint"}``: what ``zmq.utils.monitor.recv_monitor_message``
    returns. That module is not imported: it imports ``zmq.asyncio`` and so asyncio,
    tens of milliseconds at every service's start. The layout is libzmq's: a frame of a
    16-bit event id and a 32-bit value, then one holding the endpoint."""
    frames = monitor.recv_multipart(zmq.NOBLOCK)
    if len(frames) != 2 or len(frames[0]) != _EVENT_FRAME.size:
        raise RuntimeError(f"invalid monitor event message: {frames!r}")
    kind, value = _EVENT_FRAME.unpack(frames[0])
    return {"event": kind, "value": value, "endpoint": frames[1]}


_EVENT_FRAME = struct.Struct("=Hi")  # native order, no padding: uint16 id, int32 value


def _endpoint(event: Mapping[str, Any]) -> str:
    endpoint = event.get("endpoint", b"")
    return endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)


def _handshake_reason(kind: int, value: int) -> str:
    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"HANDSHAKE_FAILED_AUTH: the server's authenticator denied our key (ZAP {value})"
    if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return "HANDSHAKE_FAILED_PROTOCOL: the security mechanisms do not match (CURVE vs NULL?)"
    return (
        "HANDSHAKE_FAILED_NO_DETAIL: the server hung up during the handshake "
        f"({os.strerror(value) if value > 0 else 'no detail'}; wrong server_public_key?)"
    )


@dataclass
class _Watched:
    """One monitored socket and what the thread knows about its endpoints."""

    socket: zmq.Socket[Any]
    connection: Connection
    binds: bool
    lost: dict[str, float] = field(default_factory=dict)  # endpoint -> re-establish at
    attempts: dict[str, int] = field(default_factory=dict)  # re-establishments in a row
    pause_s: dict[str, float] = field(default_factory=dict)  # endpoint -> next pause
    paused: set[str] = field(default_factory=set)  # unbound, waiting to bind again
    last_pause: dict[str, float] = field(default_factory=dict)


class PeerWatch:
    """Monitors for one service's sockets, read in a thread of their own."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._monitors: dict[zmq.Socket[Any], _Watched] = {}
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._closing = False
        self._lock = threading.Lock()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        # Work for the service loop (inbound sockets), run by :meth:`run_repairs`.
        self._loop_work: list[Callable[[], None]] = []
        self.repairs_pending = False  # read by the loop between receive timeouts
        # How often the watch's thread woke up: about once a second when nothing happens.
        self.wakeups = 0
        self._wake_loop: Callable[[], None] = lambda: None
        self._tick: Callable[[], None] | None = None
        self._limiter = LogLimiter()

    def add(self, sock: zmq.Socket[Any], connection: Connection) -> None:
        """Monitor ``sock`` (call before it binds or connects, and before :meth:`start`)."""
        try:
            monitor = sock.get_monitor_socket(EVENTS)
        except zmq.ZMQError:  # pragma: no cover - monitoring is best effort
            LOG.warning("%s: cannot monitor connection '%s'", self.service, connection.name)
            return
        self._monitors[monitor] = _Watched(sock, connection, connection.binding())

    def watched(self) -> frozenset[Connection]:
        """The connections whose peers this watch counts."""
        return frozenset(watched.connection for watched in self._monitors.values())

    def start(
        self,
        wake_loop: Callable[[], None] | None = None,
        tick: Callable[[], None] | None = None,
    ) -> None:
        """Start reading. ``wake_loop`` wakes the service loop when it has repairs to
        run; ``tick`` runs in this thread about once a second (e.g. re-reading keys)."""
        if wake_loop is not None:
            self._wake_loop = wake_loop
        self._tick = tick
        if (self._monitors or tick is not None) and self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"{self.service}-peers", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        """Stop the thread and close the monitors (before their sockets close)."""
        if self._thread is not None:
            self._closing = True
            self._poke()
            self._thread.join(5)
            self._thread = None
        for monitor in self._monitors:
            monitor.close(linger=0)
        self._monitors.clear()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # ------------------------------------------------------------------ the loop's side
    def run_repairs(self) -> None:
        """Run the repairs queued for inbound sockets; call from the service loop."""
        with self._lock:
            work, self._loop_work = self._loop_work, []
            self.repairs_pending = False
        for job in work:
            job()

    def rebind_servers(self, why: str) -> None:
        """Unbind and bind again every binding socket (thread-safe)."""
        for watched in list(self._monitors.values()):
            if watched.binds:
                for endpoint in list(watched.connection.endpoints):
                    self._owner_runs(
                        watched, functools.partial(self._rebind, watched, endpoint, why)
                    )

    # ------------------------------------------------------------------ this thread
    def _poke(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"x")

    def _at(self, when: float, job: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._timers, (when, next(self._order), job))
        self._poke()

    def _owner_runs(self, watched: _Watched, job: Callable[[], None]) -> None:
        """Have whoever owns ``watched.socket`` run ``job`` (see the module docstring)."""
        connection = watched.connection
        if isinstance(connection, OutboundConnection):
            if connection.lock.acquire(blocking=False):
                try:
                    job()
                finally:
                    connection.lock.release()
            else:  # a send is under way: come back in a moment
                self._at(time.monotonic() + _OWNER_BUSY_S, lambda: self._owner_runs(watched, job))
            return
        with self._lock:
            self._loop_work.append(job)
            self.repairs_pending = True
        self._wake_loop()

    def _run(self) -> None:
        poller = zmq.Poller()
        for monitor in self._monitors:
            poller.register(monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_tick = time.monotonic() + 1.0
        while not self._closing:
            self.wakeups += 1
            now = time.monotonic()
            with self._lock:
                due_at = self._timers[0][0] if self._timers else next_tick
            timeout = max(0.0, min(due_at, next_tick) - now)
            ready: list[tuple[Any, int]] = poller.poll(int(timeout * 1000) + 1)
            for sock, _ in ready:
                if sock == self._wake_r:
                    with contextlib.suppress(BlockingIOError, OSError):
                        os.read(self._wake_r, 4096)
                    continue
                self._read(sock, self._monitors[sock])
            self._check_lost()
            self._run_timers()
            if time.monotonic() >= next_tick:
                # Always moved on, tick or not: a next_tick left in the past would make
                # every poll above return at once (a spin).
                next_tick = time.monotonic() + 1.0
                if self._tick is not None:
                    try:
                        self._tick()
                    except Exception:  # pragma: no cover - the watch must go on
                        LOG.exception("%s: periodic check failed", self.service)

    def _run_timers(self) -> None:
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > now:
                    return
                _, _, job = heapq.heappop(self._timers)
            job()

    def _check_lost(self) -> None:
        now = time.monotonic()
        for watched in self._monitors.values():
            for endpoint, when in list(watched.lost.items()):
                if when <= now:
                    del watched.lost[endpoint]
                    watched.attempts[endpoint] = watched.attempts.get(endpoint, 0) + 1
                    self._owner_runs(watched, functools.partial(self._reconnect, watched, endpoint))

    def _read(self, monitor: zmq.Socket[Any], watched: _Watched) -> None:
        connection = watched.connection
        peer_event = connection.observer.on_peer
        while True:
            try:
                event = _recv_event(monitor)
            except zmq.Again:
                return
            kind = int(event["event"])
            peer = _endpoint(event)
            if kind in (zmq.EVENT_CONNECTED, zmq.EVENT_ACCEPTED):
                peer_event("peers_connected")
                LOG.info(
                    "%s: connection '%s' peer connected (%s)", self.service, connection.name, peer
                )
            elif kind == zmq.EVENT_DISCONNECTED:
                peer_event("peers_disconnected")
                # Clients of a binding socket come and go; a connecting socket losing
                # its server is worth a warning.
                level = logging.INFO if watched.binds else logging.WARNING
                LOG.log(
                    level,
                    "%s: connection '%s' peer disconnected (%s)",
                    self.service,
                    connection.name,
                    peer,
                )
                if not watched.binds and connection.socket_options.reconnect_ivl_ms > 0:
                    watched.lost[peer] = time.monotonic() + self._retry_delay(watched, peer)
            elif kind in (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_CONNECT_DELAYED):
                # libzmq is reconnecting by itself. Its events name the endpoint as it
                # resolved it; with one endpoint, any of them is about that one.
                if peer in watched.lost:
                    del watched.lost[peer]
                elif len(connection.endpoints) <= 1:
                    watched.lost.clear()
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                watched.attempts.pop(peer, None)
            elif kind & HANDSHAKE_FAILED:
                peer_event("handshake_failures")
                self._log_handshake_failure(watched, kind, int(event["value"]), peer)
            elif kind == zmq.EVENT_ACCEPT_FAILED:
                peer_event("accept_failures")
                self._accept_failed(watched, int(event["value"]), peer)

    def _retry_delay(self, watched: _Watched, endpoint: str) -> float:
        attempts = watched.attempts.get(endpoint, 0)
        ceiling = max(RETRY_GRACE_S, watched.connection.socket_options.reconnect_ivl_max_ms / 1e3)
        return float(min(RETRY_GRACE_S * 2**attempts, ceiling))

    def _log_handshake_failure(self, watched: _Watched, kind: int, value: int, peer: str) -> None:
        connection = watched.connection
        left_out = self._limiter.allow((connection.name, "handshake"))
        if left_out is None:
            return
        if watched.binds:
            LOG.warning(
                "%s: connection '%s' rejected a peer's handshake (%s, %s)%s",
                self.service,
                connection.name,
                peer,
                zmq.Event(kind).name,
                _suppressed(left_out),
            )
        else:
            LOG.warning(
                "%s: connection '%s': the server at %s refused the handshake (%s)%s",
                self.service,
                connection.name,
                peer,
                _handshake_reason(kind, value),
                _suppressed(left_out),
            )

    def _accept_failed(self, watched: _Watched, code: int, endpoint: str) -> None:
        connection = watched.connection
        out_of_fds = code in _OUT_OF_FDS
        left_out = self._limiter.allow((connection.name, "accept"))
        if left_out is not None:
            LOG.error(
                "%s: connection '%s' failed to accept a connection on %s: %s%s%s",
                self.service,
                connection.name,
                endpoint,
                os.strerror(code) if code > 0 else "unknown error",
                "; pausing accepts (out of file descriptors?)" if out_of_fds else "",
                _suppressed(left_out),
            )
        if not out_of_fds or endpoint in watched.paused:
            return
        now = time.monotonic()
        if now - watched.last_pause.get(endpoint, -PAUSE_RESET_S) >= PAUSE_RESET_S:
            watched.pause_s[endpoint] = PAUSE_FIRST_S
        pause = watched.pause_s.get(endpoint, PAUSE_FIRST_S)
        watched.pause_s[endpoint] = min(pause * 2, PAUSE_MAX_S)
        watched.last_pause[endpoint] = now
        watched.paused.add(endpoint)
        self._owner_runs(watched, lambda: self._unbind(watched, endpoint, pause))

    # ------------------------------------------------------------------ run by the owner
    def _reconnect(self, watched: _Watched, endpoint: str) -> None:
        if self._closing or watched.socket.closed:
            return
        connection = watched.connection
        target = endpoint if endpoint in connection.endpoints else None
        if target is None and len(connection.endpoints) == 1:
            target = connection.endpoints[0]
        if target is None:  # pragma: no cover - an endpoint the connection never named
            return
        try:
            try:
                watched.socket.disconnect(target)
            except zmq.ZMQError as exc:  # ENOENT: libzmq already forgot the endpoint
                if exc.errno != errno.ENOENT:
                    raise
            watched.socket.connect(target)
        except zmq.ZMQError as exc:
            LOG.error(
                "%s: connection '%s' cannot reconnect to %s: %s",
                self.service,
                connection.name,
                target,
                exc,
            )
            return
        connection.observer.on_peer("reconnects")
        left_out = self._limiter.allow((connection.name, "reconnect"))
        if left_out is None:
            return
        LOG.warning(
            "%s: connection '%s' peer %s dropped the connection and libzmq would not "
            "reconnect (a message over max_message_bytes=%d, or a refused handshake); "
            "reconnected%s",
            self.service,
            connection.name,
            target,
            connection.socket_options.max_message_bytes,
            _suppressed(left_out),
        )

    def _unbind(self, watched: _Watched, endpoint: str, pause: float) -> None:
        if self._closing or watched.socket.closed:
            return
        with contextlib.suppress(zmq.ZMQError):  # already gone: binding again restores it
            watched.socket.unbind(endpoint)
        LOG.error(
            "%s: connection '%s' stopped accepting on %s for %gs (out of file descriptors)",
            self.service,
            watched.connection.name,
            endpoint,
            pause,
        )
        self._at(
            time.monotonic() + pause,
            lambda: self._owner_runs(watched, lambda: self._bind(watched, endpoint, pause)),
        )

    def _bind(self, watched: _Watched, endpoint: str, pause: float) -> None:
        if self._closing or watched.socket.closed:
            return
        try:
            watched.socket.bind(endpoint)
        except zmq.ZMQError as exc:  # still out of descriptors, or the port not yet free
            retry = min(pause * 2, PAUSE_MAX_S)
            LOG.error(
                "%s: connection '%s' cannot bind %s again (%s); retrying in %gs",
                self.service,
                watched.connection.name,
                endpoint,
                exc,
                retry,
            )
            self._at(
                time.monotonic() + retry,
                lambda: self._owner_runs(watched, lambda: self._bind(watched, endpoint, retry)),
            )
            return
        watched.paused.discard(endpoint)
        LOG.warning(
            "%s: connection '%s' accepting on %s again",
            self.service,
            watched.connection.name,
            endpoint,
        )

    def _rebind(self, watched: _Watched, endpoint: str, why: str) -> None:
        if self._closing or watched.socket.closed or endpoint in watched.paused:
            return
        with contextlib.suppress(zmq.ZMQError):
            watched.socket.unbind(endpoint)
        LOG.warning(
            "%s: connection '%s' dropped every client on %s (%s); they reconnect and "
            "handshake again",
            self.service,
            watched.connection.name,
            endpoint,
            why,
        )
        watched.paused.add(endpoint)
        # The listener closes in libzmq's I/O thread: binding at once may find the port
        # still taken, and _bind then retries.
        self._bind(watched, endpoint, _OWNER_BUSY_S)


class RequesterWatch:
    """Handshake refusals seen by one requester socket (which is replaced on every
    retry, so it is monitored by its owner, not by :class:`PeerWatch`)."""

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self.monitor: zmq.Socket[Any] = sock.get_monitor_socket(HANDSHAKE_FAILED)
        self.refused: dict[str, str] = {}  # endpoint -> reason

    def read(self, connection: Connection) -> dict[str, str]:
        """Take the pending events; returns every endpoint that refused so far."""
        while True:
            try:
                event = _recv_event(self.monitor)
            except zmq.Again:
                return self.refused
            kind, peer = int(event["event"]), _endpoint(event)
            connection.observer.on_peer("handshake_failures")
            self.refused[peer] = _handshake_reason(kind, int(event["value"]))

    def close(self, sock: zmq.Socket[Any]) -> None:
        if not sock.closed:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
        self.monitor.close(linger=0)
