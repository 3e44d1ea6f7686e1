"""Connection types, by the ``connection_type`` names models use."""

from __future__ import annotations

from .base import Connection, InboundConnection, OutboundConnection
from .external_target import ExternalTarget
from .publisher import Publisher
from .puller import Puller
from .pusher import Pusher
from .replyer import Replyer
from .requester import Requester
from .subscriber import Subscriber
from .timer import Timer

__all__ = [
    "CONNECTION_TYPES",
    "Connection",
    "InboundConnection",
    "OutboundConnection",
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
