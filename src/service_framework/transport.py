"""Sockets: safe defaults, endpoints, creation.

Every socket the framework opens gets explicit, bounded settings (libzmq's defaults are
"wait forever" in several places). The defaults and the reason for each:

==========================  ========  =====================================================
option                      default   why
==========================  ========  =====================================================
``linger_ms``               1000      closing never blocks longer than this (-1 could hang
                                      ``ctx.term()`` forever)
``sndhwm`` / ``rcvhwm``     1000      bounded memory per peer; PUB drops beyond it, never
                                      blocks
``max_message_bytes``       16 MiB    a peer sending more is disconnected before the
                                      message is buffered (libzmq default: unlimited)
``heartbeat_ivl_ms``        2000      ZMTP PINGs, so a silent dead peer is noticed...
``heartbeat_timeout_ms``    6000      ...and dropped after ~3 missed beats
``heartbeat_ttl_ms``        6000      the remote side drops us too if we go silent
``handshake_ivl_ms``        5000      half-open connections are closed (default 30 s)
``reconnect_ivl_ms``        100       first reconnect attempt after a drop...
``reconnect_ivl_max_ms``    5000      ...backing off exponentially up to this
``resolve_interval_ms``     5000      a connecting address's host name is resolved again
                                      this often (see ``names.py``)
==========================  ========  =====================================================

Connection types may have their own defaults (a replyer's ``rcvhwm`` is 8) and their
own options: requesters additionally set ``IMMEDIATE`` (never queue a request onto a
connection that has not completed) and per-attempt send/receive timeouts (see
``requester.py``). All of them are set before the socket binds or connects
(``Connection._socket``): libzmq applies them to a connection's pipe when it is made.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

import zmq
import zmq.backend

from .errors import AddressError

__all__ = ["Endpoint", "SocketOptions", "parse_endpoint", "send_bytes", "sender_of"]

# pyzmq's Socket.send is a Python wrapper (routing ids, groups, Frame objects) around the
# compiled send. For plain bytes the compiled one does the same work about half a
# microsecond sooner, which matters on the per-message path.
send_bytes: Callable[..., Any] = zmq.backend.Socket.send  # (sock, data, flags=0)


def sender_of(sock: zmq.Socket[Any]) -> Callable[..., Any]:
    """``sock.send`` for bytes, without pyzmq's Python-level wrapper."""
    return send_bytes.__get__(sock)  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True)
class SocketOptions:
    """Per-socket limits; override any of them per connection with the
    ``socket_options`` creation argument (a dict with these keys)."""

    linger_ms: int = 1000
    sndhwm: int = 1000
    rcvhwm: int = 1000
    max_message_bytes: int = 16 * 1024 * 1024
    heartbeat_ivl_ms: int = 2000
    heartbeat_timeout_ms: int = 6000
    heartbeat_ttl_ms: int = 6000
    handshake_ivl_ms: int = 5000
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 5000
    resolve_interval_ms: int = 5000  # not a zmq option: read by names.NameWatch

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> SocketOptions:
        """Build from a user-supplied dict; raises ``ValueError`` naming a bad key."""
        if not values:
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        for key, value in values.items():
            if key not in known:
                raise ValueError(
                    f"unknown socket option {key!r} (known: {', '.join(sorted(known))})"
                )
            if type(value) is not int:
                raise ValueError(f"socket option {key!r} must be an int, got {value!r}")
            minimum = 1 if key in {"max_message_bytes", "sndhwm", "rcvhwm"} else 0
            if key == "resolve_interval_ms":
                minimum = 10
            if key == "linger_ms":
                minimum = 0
            if value < minimum:
                raise ValueError(f"socket option {key!r} must be >= {minimum}, got {value}")
        return dataclasses.replace(cls(), **values)

    def apply(self, sock: zmq.Socket[Any]) -> None:
        sock.setsockopt(zmq.LINGER, self.linger_ms)
        sock.setsockopt(zmq.SNDHWM, self.sndhwm)
        sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        sock.setsockopt(zmq.HEARTBEAT_IVL, self.heartbeat_ivl_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self.heartbeat_timeout_ms)
        sock.setsockopt(zmq.HEARTBEAT_TTL, self.heartbeat_ttl_ms)
        sock.setsockopt(zmq.HANDSHAKE_IVL, self.handshake_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL, self.reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, self.reconnect_ivl_max_ms)


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A ZeroMQ endpoint, e.g. ``tcp://127.0.0.1:5555``; ``ipv6`` says whether the socket
    must have IPv6 enabled to use it."""

    url: str
    ipv6: bool = False

    def __str__(self) -> str:
        return self.url


_ANY_HOST = {"*", "0.0.0.0", ""}


def parse_endpoint(value: object, *, bind: bool, where: str) -> Endpoint:
    """Turn an addresses-file value into an endpoint.

    Accepts ``"host:port"`` (the addresses-file form), ``"[v6addr]:port"``, or a full
    ``tcp://``, ``ipc://`` or ``inproc://`` URL. For binding, ``*`` or ``0.0.0.0`` means
    every interface and port ``0`` (or ``*``) means "any free port"; ``localhost`` is
    ``127.0.0.1``. ``where`` names the connection and key for error messages.
    """
    if not isinstance(value, str) or not value:
        raise AddressError(f"{where}: expected a 'host:port' string, got {value!r}")
    if value.startswith(("ipc://", "inproc://")):
        return Endpoint(value)
    text = value[len("tcp://") :] if value.startswith("tcp://") else value
    if "://" in text:
        raise AddressError(f"{where}: unsupported transport in {value!r} (tcp, ipc, inproc)")
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise AddressError(f"{where}: {value!r} has no port (expected 'host:port')")
    ipv6 = False
    if host.startswith("[") and host.endswith("]"):
        host, ipv6 = host[1:-1], True
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError(f"{where}: {value!r} is not a valid IPv6 address") from None
    if port_text in {"*", "0"}:
        if not bind:
            raise AddressError(f"{where}: cannot connect to port {port_text!r} in {value!r}")
        port_text = "*"
    else:
        try:
            port = int(port_text)
        except ValueError:
            raise AddressError(
                f"{where}: port {port_text!r} in {value!r} is not a number"
            ) from None
        if not 1 <= port <= 65535:
            raise AddressError(f"{where}: port {port} in {value!r} is out of range 1-65535")
    if host == "localhost":
        host = "127.0.0.1"
    if host in _ANY_HOST:
        if not bind:
            raise AddressError(f"{where}: cannot connect to {value!r}; give the peer's host")
        host = "*"
    shown = f"[{host}]" if ipv6 else host
    return Endpoint(f"tcp://{shown}:{port_text}", ipv6=ipv6)


def parse_endpoints(value: object, *, bind: bool, where: str) -> list[Endpoint]:
    """Like :func:`parse_endpoint`; connecting sockets may also take a list (a requester
    then spreads requests over several replyers, a subscriber hears several publishers)."""
    if isinstance(value, list) and not bind:
        if not value:
            raise AddressError(f"{where}: the list of addresses is empty")
        return [parse_endpoint(v, bind=bind, where=where) for v in value]
    return [parse_endpoint(value, bind=bind, where=where)]


def bind_or_connect(
    sock: zmq.Socket[Any], endpoints: list[Endpoint], *, bind: bool, where: str
) -> list[str]:
    """Bind or connect ``sock``; returns the actual endpoints (ports resolved)."""
    actual: list[str] = []
    for endpoint in endpoints:
        if endpoint.ipv6:
            sock.setsockopt(zmq.IPV6, 1)
        try:
            if bind:
                sock.bind(endpoint.url)
                actual.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
            else:
                sock.connect(endpoint.url)
                actual.append(endpoint.url)
        except zmq.ZMQError as exc:
            verb = "bind" if bind else "connect"
            raise AddressError(f"{where}: cannot {verb} {endpoint.url}: {exc}") from None
    return actual
