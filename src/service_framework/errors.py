"""Every error the framework raises.

One root, :class:`ServiceFrameworkError`, and each error also subclasses the builtin a
caller would naturally catch: code written for 0.0.20 that catches ``ValueError`` around
validation or start-up keeps working, and a timed-out request is a ``TimeoutError``.
"""

from __future__ import annotations

__all__ = [
    "AddressError",
    "ConfigError",
    "DecodeError",
    "HookError",
    "ModelError",
    "RemoteError",
    "RequestTimeout",
    "ServiceFrameworkError",
    "StartupError",
    "UnknownConnectionError",
    "ValidationError",
]


class ServiceFrameworkError(Exception):
    """Root of every error raised by service_framework."""


class ValidationError(ServiceFrameworkError, ValueError):
    """A value does not match its declared model.

    ``str(error)`` reads ``<service>: <connection>.<direction>: <detail>``, for example
    ``pricing: request.args: expected int, got str at $.orders[2].qty``.
    """

    def __init__(
        self,
        detail: str,
        *,
        service: str | None = None,
        connection: str | None = None,
        direction: str | None = None,
    ) -> None:
        self.detail = detail
        self.service = service
        self.connection = connection
        self.direction = direction
        super().__init__(self._compose())

    def _compose(self) -> str:
        where = ".".join(part for part in (self.connection, self.direction) if part)
        text = f"{where}: {self.detail}" if where else self.detail
        return f"{self.service}: {text}" if self.service else text

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments need an explicit recipe to survive pickling
        # (errors cross process boundaries when a Service reports a start-up failure).
        return (
            _rebuild_validation_error,
            (self.detail, self.service, self.connection, self.direction),
        )


def _rebuild_validation_error(
    detail: str, service: str | None, connection: str | None, direction: str | None
) -> ValidationError:
    return ValidationError(detail, service=service, connection=connection, direction=direction)


class DecodeError(ServiceFrameworkError, ValueError):
    """Bytes from the network are not a well-formed message."""


class StartupError(ServiceFrameworkError, ValueError):
    """A service cannot start: its module, models, config, addresses or hooks are wrong."""


class ModelError(StartupError):
    """A ``connection_models`` or ``config_model`` entry is malformed."""


class ConfigError(StartupError):
    """The config cannot be read, converted or is not allowed."""


class AddressError(StartupError):
    """The addresses are missing, malformed or cannot be bound/connected."""


class HookError(StartupError):
    """A service hook (``setup_config``, ``setup_addresses``, ...) returned the wrong thing."""


class UnknownConnectionError(ServiceFrameworkError, KeyError):
    """``to_send`` was given a connection name the service does not declare."""

    def __str__(self) -> str:
        # KeyError would repr() the message; show it as written.
        return str(self.args[0]) if self.args else ""


class RequestTimeout(ServiceFrameworkError, TimeoutError):
    """No reply arrived within ``timeout_s`` after every retry.

    ``workflow_id`` is the id the request was sent with, so the failure can be matched
    to the replyer's log lines; the message ends with ``[workflow <id>]``.
    """

    def __init__(self, message: str, *, workflow_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.workflow_id = workflow_id

    def __str__(self) -> str:
        # Composed when read: the id may be attached after construction, where the
        # timeout is raised deeper than the code that knows the request's id.
        return _with_workflow(self.message, self.workflow_id)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_request_timeout, (self.message, self.workflow_id))


def _rebuild_request_timeout(message: str, workflow_id: str | None) -> RequestTimeout:
    return RequestTimeout(message, workflow_id=workflow_id)


def _with_workflow(message: str, workflow_id: str | None) -> str:
    return f"{message} [workflow {workflow_id}]" if workflow_id else message


class HandshakeRefused(ServiceFrameworkError, ConnectionRefusedError):
    """The server refused this client's CURVE/ZMTP handshake (an unauthorized or
    revoked key, a wrong ``server_public_key``, CURVE on one side only): retrying the
    same request cannot help."""


class RemoteError(ServiceFrameworkError, RuntimeError):
    """The far side answered with an error instead of a reply.

    ``remote_type`` is the exception class name on the far side (``"ValidationError"``,
    ``"KeyError"``, ...) and ``remote_message`` its message. ``workflow_id`` is the id the
    request carried - the one in the far side's log line about the failure - and the
    message ends with ``[workflow <id>]``.
    """

    def __init__(
        self,
        remote_type: str,
        remote_message: str,
        *,
        connection: str | None = None,
        workflow_id: str | None = None,
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.connection = connection
        self.workflow_id = workflow_id
        where = f"{connection}: " if connection else ""
        super().__init__(
            _with_workflow(f"{where}remote {remote_type}: {remote_message}", workflow_id)
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_remote_error,
            (self.remote_type, self.remote_message, self.connection, self.workflow_id),
        )


def _rebuild_remote_error(
    remote_type: str, remote_message: str, connection: str | None, workflow_id: str | None
) -> RemoteError:
    return RemoteError(remote_type, remote_message, connection=connection, workflow_id=workflow_id)
