"""Peer events: which connections gain and lose peers, logged and counted.

Each socket gets a ZeroMQ socket monitor before it binds or connects. The monitors are
read by one background thread of their own, so the service loop's poll set - and its
per-message cost - stays just the inbound sockets.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import recv_monitor_message

if TYPE_CHECKING:
    from .connections.base import Connection

__all__ = ["PeerWatch"]

LOG = logging.getLogger("service_framework.peers")

EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class PeerWatch:
    """Monitors for one service's sockets, read in a thread of their own."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._monitors: dict[zmq.Socket[Any], Connection] = {}
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()

    def add(self, sock: zmq.Socket[Any], connection: Connection) -> None:
        """Monitor ``sock`` (call before it binds or connects, and before :meth:`start`)."""
        try:
            monitor = sock.get_monitor_socket(EVENTS)
        except zmq.ZMQError:  # pragma: no cover - monitoring is best effort
            LOG.warning("%s: cannot monitor connection '%s'", self.service, connection.name)
            return
        self._monitors[monitor] = connection

    def watched(self) -> frozenset[Connection]:
        """The connections whose peers this watch counts."""
        return frozenset(self._monitors.values())

    def start(self) -> None:
        if self._monitors and self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"{self.service}-peers", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        """Stop the thread and close the monitors (before their sockets close)."""
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join(5)
            self._thread = None
        for monitor in self._monitors:
            monitor.close(linger=0)
        self._monitors.clear()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _run(self) -> None:
        poller = zmq.Poller()
        for monitor in self._monitors:
            poller.register(monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while True:
            ready: list[tuple[Any, int]] = poller.poll(1000)
            for sock, _ in ready:
                if sock == self._wake_r:
                    return
                self._read(sock, self._monitors[sock])

    def _read(self, monitor: zmq.Socket[Any], connection: Connection) -> None:
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = int(event["event"])
            endpoint = event.get("endpoint", b"")
            peer = endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)
            stats = connection.stats
            if kind in (zmq.EVENT_CONNECTED, zmq.EVENT_ACCEPTED):
                stats.peers_connected += 1
                LOG.info(
                    "%s: connection '%s' peer connected (%s)", self.service, connection.name, peer
                )
            elif kind == zmq.EVENT_DISCONNECTED:
                stats.peers_disconnected += 1
                # Clients of a binding socket come and go; a connecting socket losing
                # its server is worth a warning.
                level = logging.INFO if connection.binding() else logging.WARNING
                LOG.log(
                    level,
                    "%s: connection '%s' peer disconnected (%s)",
                    self.service,
                    connection.name,
                    peer,
                )
            else:
                LOG.warning(
                    "%s: connection '%s' rejected a peer's handshake (%s, %s)",
                    self.service,
                    connection.name,
                    peer,
                    zmq.Event(kind).name,
                )
