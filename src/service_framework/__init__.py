"""service_framework: a service is a plain Python module; its declared models become
typed, validated ZeroMQ connections, run as a process, an object, or inline."""

from typing import TYPE_CHECKING, Any

from .errors import (
    AddressError,
    ConfigError,
    DecodeError,
    HandshakeRefused,
    HookError,
    ModelError,
    RemoteError,
    RequestTimeout,
    ServiceFrameworkError,
    StartupError,
    UnknownConnectionError,
    ValidationError,
)
from .logs import get_logger
from .security import Curve, create_keypair
from .service import Service

if TYPE_CHECKING:
    from .inline import InlineServices

__all__ = [
    "AddressError",
    "ConfigError",
    "Curve",
    "DecodeError",
    "HandshakeRefused",
    "HookError",
    "InlineServices",
    "ModelError",
    "RemoteError",
    "RequestTimeout",
    "Service",
    "ServiceFrameworkError",
    "StartupError",
    "UnknownConnectionError",
    "ValidationError",
    "create_keypair",
    "get_logger",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # InlineServices is imported on first use: it brings the topology and link checks,
    # which a service started on its own never needs.
    if name == "InlineServices":
        from .inline import InlineServices

        return InlineServices
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
