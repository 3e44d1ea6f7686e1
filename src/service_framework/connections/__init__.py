"""Connection types, by the ``connection_type`` names models use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Connection, ConnectionEnv, InboundConnection, OutboundConnection
from .external_target import ExternalTarget
from .publisher import Publisher
from .puller import Puller
from .pusher import Pusher
from .replyer import Replyer
from .requester import Requester
from .subscriber import Subscriber
from .timer import Timer

if TYPE_CHECKING:
    from ..models import ServiceModels

__all__ = [
    "CONNECTION_TYPES",
    "Connection",
    "InboundConnection",
    "OutboundConnection",
    "build_connections",
    "register",
]

CONNECTION_TYPES: dict[str, type[Connection]] = {}


def register(kind: type[Connection]) -> type[Connection]:
    """Make ``kind`` available to models under its ``type_name`` and aliases."""
    for name in (kind.type_name, *kind.type_aliases):
        CONNECTION_TYPES[name] = kind
    return kind


for _kind in (Replyer, Subscriber, Requester, Publisher, ExternalTarget, Pusher, Puller, Timer):
    register(_kind)


def build_connections(
    models: ServiceModels, env: ConnectionEnv
) -> tuple[dict[str, InboundConnection], dict[str, OutboundConnection]]:
    """Every connection a service declares, built (not opened): inbound, outbound."""
    inbound: dict[str, InboundConnection] = {}
    outbound: dict[str, OutboundConnection] = {}
    for name, model in models.outbound.items():
        out_conn = model.kind(model, env)
        assert isinstance(out_conn, OutboundConnection)
        outbound[name] = out_conn
    for name, model in models.inbound.items():
        in_conn = model.kind(model, env)
        assert isinstance(in_conn, InboundConnection)
        inbound[name] = in_conn
    return inbound, outbound
