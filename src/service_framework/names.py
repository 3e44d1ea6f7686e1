"""Connecting to host names: every address a name resolves to, followed as it changes.

libzmq resolves a ``tcp://name:port`` endpoint itself and connects to the first address
only (zeromq/libzmq#2297), so a Kubernetes headless Service - one name, one address per
pod - would reach a single pod, and a name that does not resolve looks exactly like a
slow peer. A connecting socket whose address holds a host name is therefore connected
here, to every address the name resolves to, and the name is resolved again every
``resolve_interval_ms`` (a socket option, default 5 s): new addresses are connected,
vanished ones disconnected. A name that does not resolve is a warning at start-up and at
each failed attempt (start-up goes on, so a service may start before its peers' DNS
records exist); the addresses it last resolved to stay connected meanwhile.

ZeroMQ sockets are not thread-safe, so changes are applied by whoever owns the socket:
an outbound connection's socket under the connection's lock (the one its sends hold), an
inbound one by the service loop, which :class:`NameWatch` wakes.

IP-literal addresses never get here: no resolver, no thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import zmq

from .transport import Endpoint

if TYPE_CHECKING:
    from .connections.base import Connection

__all__ = ["NameWatch", "host_name_of"]

LOG = logging.getLogger("service_framework.names")


def host_name_of(endpoint: Endpoint) -> tuple[str, str] | None:
    """``(host, port)`` when ``endpoint`` connects over TCP to a host *name*; ``None`` for
    IP literals and other transports."""
    url = endpoint.url
    if not url.startswith("tcp://"):
        return None
    host, _, port = url[len("tcp://") :].rpartition(":")
    if host.startswith("["):
        return None  # bracketed: an IPv6 literal
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return (host, port)
    return None


def _resolve(host: str, port: str) -> list[str]:
    """Every TCP endpoint ``host`` resolves to, sorted; raises ``OSError`` (or
    ``UnicodeError`` for a name that cannot be encoded).

    IPv4 addresses when there are any, else IPv6 ones: a dual-stack name lists each peer
    once per family, and a subscriber connected to both would hear every message twice.
    """
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    v4 = {f"tcp://{a[0]}:{port}" for family, _, _, _, a in found if family == socket.AF_INET}
    if v4:
        return sorted(v4)
    v6 = {
        f"tcp://[{str(a[0]).partition('%')[0]}]:{port}"
        for family, _, _, _, a in found
        if family == socket.AF_INET6
    }
    if not v6:
        raise OSError(f"no IPv4 or IPv6 address for {host!r}")
    return sorted(v6)


class _Target:
    """One connecting socket whose address list holds names (a connection's socket, or
    its replacement after a requester's retry)."""

    def __init__(
        self,
        connection: Connection,
        where: str,
        endpoints: Sequence[Endpoint],
        interval_s: float,
        lock: Any,
    ) -> None:
        self.connection = connection
        self.where = where
        self.literals = [e.url for e in endpoints if host_name_of(e) is None]
        self.names = [n for n in (host_name_of(e) for e in endpoints) if n is not None]
        self.interval_s = interval_s
        self.lock = lock  # None: applied by the service loop
        self.resolved: dict[tuple[str, str], list[str]] = {}
        self.failing: set[tuple[str, str]] = set()
        self.socket: zmq.Socket[Any] | None = None
        self.connected: list[str] = []
        self.pending = False
        self.next_at = 0.0

    def desired(self) -> list[str]:
        urls = list(self.literals)
        for name in self.names:
            urls += [u for u in self.resolved.get(name, ()) if u not in urls]
        return urls

    def resolve(self) -> bool:
        """Resolve every name again; returns whether the wanted endpoints changed."""
        before = self.desired()
        for name in self.names:
            host, port = name
            try:
                urls = _resolve(host, port)
            except (OSError, UnicodeError) as exc:  # UnicodeError: a malformed name
                kept = self.resolved.get(name)
                LOG.warning(
                    "%s: host name %r does not resolve (%s); %s, trying again every %gs",
                    self.where,
                    host,
                    exc,
                    f"keeping {', '.join(kept)}" if kept else "not connected to it",
                    self.interval_s,
                )
                self.failing.add(name)
                continue
            if name in self.failing:
                self.failing.discard(name)
                LOG.info("%s: host name %r now resolves", self.where, host)
            self.resolved[name] = urls
        return self.desired() != before

    def apply(self) -> None:
        """Connect and disconnect ``socket`` to match :meth:`desired` (in the owner's
        thread, or under the owner's lock)."""
        self.pending = False
        sock = self.socket
        if sock is None or sock.closed:
            return
        wanted = self.desired()
        added = [u for u in wanted if u not in self.connected]
        removed = [u for u in self.connected if u not in wanted]
        for url in added:
            if url.startswith("tcp://["):
                sock.setsockopt(zmq.IPV6, 1)
            try:
                sock.connect(url)
            except zmq.ZMQError as exc:
                LOG.warning("%s: cannot connect %s: %s", self.where, url, exc)
                wanted.remove(url)
        for url in removed:
            with contextlib.suppress(zmq.ZMQError):  # already gone
                sock.disconnect(url)
        self.connected = wanted
        self.connection.endpoints = list(wanted)
        if self.names and (added or removed):
            LOG.info(
                "%s: peers now %s (connected %s; disconnected %s)",
                self.where,
                ", ".join(wanted) or "none",
                ", ".join(added) or "none",
                ", ".join(removed) or "none",
            )


class NameWatch:
    """The resolver of one service: connects sockets to every address of their names and
    re-resolves them in a thread of its own (started only when some address is a name).

    ``wake`` wakes the service loop, which then calls :meth:`apply_pending` for inbound
    sockets.
    """

    def __init__(self, service: str, wake: Callable[[], None]) -> None:
        self.service = service
        self._wake = wake
        self._targets: dict[tuple[int, str], _Target] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def in_loop(self) -> bool:
        """Whether the service loop must apply changes (an inbound socket uses a name)."""
        return any(t.lock is None for t in self._targets.values())

    def connect(
        self,
        connection: Connection,
        key: str,
        sock: zmq.Socket[Any],
        endpoints: Sequence[Endpoint],
        *,
        where: str,
        interval_s: float,
        lock: Any,
    ) -> list[str]:
        """Connect ``sock`` to every address of ``endpoints`` (names resolved now, or, for
        a socket replacing an earlier one of the same connection, as last resolved).
        Called in the socket's owning thread; returns the endpoints connected."""
        target_key = (id(connection), key)
        target = self._targets.get(target_key)
        if target is None:
            target = _Target(connection, where, endpoints, interval_s, lock)
            target.resolve()
            target.next_at = time.monotonic() + interval_s
            self._targets[target_key] = target
        target.socket, target.connected = sock, []
        target.apply()
        return list(target.connected)

    def start(self) -> None:
        if self._targets and self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"{self.service}-names", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for target in list(self._targets.values()):
                if target.next_at > now:
                    continue
                target.next_at = now + target.interval_s
                try:
                    changed = target.resolve()
                except Exception:  # pragma: no cover - the resolver must go on
                    LOG.exception("%s: resolving failed", target.where)
                    continue
                if changed:
                    self._hand_over(target)
            soonest = min((t.next_at for t in self._targets.values()), default=now + 1.0)
            self._stop.wait(max(0.01, soonest - time.monotonic()))

    def _hand_over(self, target: _Target) -> None:
        if target.lock is None:
            target.pending = True
            self._wake()
            return
        with target.lock:  # the owner's sends hold it: the socket is ours meanwhile
            if not self._stop.is_set():
                target.apply()

    def apply_pending(self) -> None:
        """Apply changes waiting for the service loop (call from the loop's thread)."""
        for target in self._targets.values():
            if target.pending:
                target.apply()

    def close(self) -> None:
        """Stop re-resolving (before the sockets close)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5.0)
