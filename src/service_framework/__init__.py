"""service_framework: a service is a plain Python module; its declared models become
typed, validated ZeroMQ connections, run as a process, an object, or inline."""

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
from .inline import InlineServices
from .logs import get_logger
from .security import Curve, create_keypair
from .service import Service

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
