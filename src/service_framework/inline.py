"""``InlineServices``: many services in one thread, no sockets.

Each service is loaded and configured exactly as it would be over sockets (the same
hooks, the same compiled validators, the same wire checks), and ``to_send`` calls the
related handlers directly. Over the wire a message is validated twice - by the sender
against its outbound model and by the receiver against its inbound model - and so it is
here, as is the reply: a contract bug found inline is the one a deployment would hit.
Errors travel the same way too: a handler that raises, or a message the receiver
rejects, reaches a requester as :class:`~service_framework.errors.RemoteError`; a
subscriber's failure is logged and the publisher carries on.

Differences from running over sockets, by design: everything runs in the calling
thread, no signal handlers are installed, and handlers receive the sender's objects
rather than decoded copies.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from .connections.base import ConnectionEnv, RunState
from .connections.external_target import ExternalTarget, call_target
from .errors import RemoteError, UnknownConnectionError, ValidationError
from .loader import PreparedService, load_module, prepare_service
from .logs import configure_logging
from .models import ConnectionModel
from .workflow import Flow, current_flow, outgoing_id

__all__ = ["InlineServices"]

LOG = logging.getLogger("service_framework.inline")

_COMPATIBLE = {"requester": "replyer", "publisher": "subscriber"}


@dataclass
class _Target:
    """One related inbound connection, with everything a call needs bound once."""

    service: str
    connection: str
    model: ConnectionModel
    handler: Callable[[Any, Any, Any], Any]
    to_send: _InlineSender
    config: dict[str, Any]
    check_args: Callable[[Any], bool] | None  # None: identical to the sender's check
    check_return: Callable[[Any], bool] | None
    none_ok: bool


@dataclass
class _Service:
    prepared: PreparedService
    to_send: _InlineSender
    routes: dict[str, list[_Target]] = field(default_factory=dict)
    targets: dict[str, ExternalTarget] = field(default_factory=dict)


class _InlineSender:
    """``to_send`` for one inline service."""

    __slots__ = ("_owner", "_service")

    def __init__(self, owner: InlineServices, service: str) -> None:
        self._owner = owner
        self._service = service

    def __call__(self, connection_name: str, args: Any) -> Any:
        return self._owner._send(self._service, connection_name, args)

    def __repr__(self) -> str:
        return f"<inline to_send of {self._service}>"


class InlineServices:
    """Run several services together in the calling thread (see the module docstring)."""

    def __init__(
        self,
        console_loglevel: str | None = "INFO",
        log_path: str | os.PathLike[str] | None = None,
        file_loglevel: str = "INFO",
        backup_count: int = 24,
    ) -> None:
        configure_logging(
            console_loglevel,
            os.fspath(log_path) if log_path is not None else None,
            file_loglevel,
            backup_count,
        )
        self._services: dict[str, _Service] = {}
        self._main: str | None = None
        self._relations: dict[tuple[str, str], list[tuple[str, str]]] = {}

    def __repr__(self) -> str:
        return f"<InlineServices main={self._main!r} services={list(self._services)}>"

    # ------------------------------------------------------------------ building
    def set_main_service(
        self,
        service_name: str,
        service_path: str | os.PathLike[str],
        config: Mapping[str, Any] | None = None,
    ) -> None:
        """Add the service whose ``main`` :meth:`start` runs, from a ``.py`` path."""
        self._require_path(service_path)
        self.set_main_service_by_module(service_name, service_path, config)

    def set_main_service_by_module(
        self,
        service_name: str,
        service_module: ModuleType | str | os.PathLike[str],
        config: Mapping[str, Any] | None = None,
    ) -> None:
        """Add the main service from a module (a path is accepted too)."""
        if self._main is not None:
            raise ValueError(f"the main service is already set to {self._main!r}")
        self._add(service_name, service_module, config)
        if not hasattr(self._services[service_name].prepared.module, "main"):
            del self._services[service_name]
            raise ValueError(f"main service {service_name!r} has no main(to_send, config)")
        self._main = service_name

    def add_service(
        self,
        service_name: str,
        service_path: str | os.PathLike[str],
        config: Mapping[str, Any] | None = None,
    ) -> None:
        """Add a service from a ``.py`` path."""
        self._require_path(service_path)
        self._add(service_name, service_path, config)

    def add_service_by_module(
        self,
        service_name: str,
        service_module: ModuleType | str | os.PathLike[str],
        config: Mapping[str, Any] | None = None,
    ) -> None:
        """Add a service from a module (a path is accepted too)."""
        self._add(service_name, service_module, config)

    @staticmethod
    def _require_path(path: object) -> None:
        if isinstance(path, ModuleType):
            raise ValueError(
                f"expected a path to a .py file, got the module {path.__name__}; "
                "use the *_by_module method for modules"
            )
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"expected a path to a .py file, got {type(path).__name__}")

    def _add(
        self,
        name: str,
        source: ModuleType | str | os.PathLike[str],
        config: Mapping[str, Any] | None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a service name must be a non-empty str, got {name!r}")
        if name in self._services:
            raise ValueError(f"a service named {name!r} was already added; choose another name")
        module = load_module(source)
        prepared = prepare_service(module, name=name, config=config)
        sender = _InlineSender(self, name)
        service = _Service(prepared, sender)
        env = ConnectionEnv(
            service=name, config=prepared.config, context=None, state=RunState(), to_send=sender
        )
        for conn_name, model in prepared.models.outbound.items():
            if model.kind is ExternalTarget:
                service.targets[conn_name] = ExternalTarget(model, env)
        self._services[name] = service

    def add_relation(
        self, out_service_name: str, out_connection: str, in_service_name: str, in_connection: str
    ) -> None:
        """Deliver what ``out_service_name`` sends on ``out_connection`` to
        ``in_service_name``'s ``in_connection`` handler."""
        out_service = self._service(out_service_name)
        in_service = self._service(in_service_name)
        out_model = out_service.prepared.models.outbound.get(out_connection)
        if out_model is None:
            raise ValueError(
                f"service {out_service_name!r} has no outbound connection {out_connection!r} "
                f"(outbound: {', '.join(out_service.prepared.models.outbound) or 'none'})"
            )
        in_model = in_service.prepared.models.inbound.get(in_connection)
        if in_model is None:
            raise ValueError(
                f"service {in_service_name!r} has no inbound connection {in_connection!r} "
                f"(inbound: {', '.join(in_service.prepared.models.inbound) or 'none'})"
            )
        expected = _COMPATIBLE.get(out_model.connection_type)
        if expected is None:
            raise ValueError(
                f"{out_service_name}.{out_connection} is a {out_model.connection_type}; "
                "only requesters and publishers take relations"
            )
        if in_model.connection_type != expected:
            raise ValueError(
                f"{out_service_name}.{out_connection} is a {out_model.connection_type} and "
                f"needs a {expected}, but {in_service_name}.{in_connection} is a "
                f"{in_model.connection_type}"
            )
        if expected == "subscriber":
            pub_topic = out_model.creation_arguments.get("topic") or ""
            sub_topic = in_model.creation_arguments.get("topic") or ""
            if sub_topic and sub_topic != pub_topic:
                raise ValueError(
                    f"{in_service_name}.{in_connection} subscribes to topic {sub_topic!r} but "
                    f"{out_service_name}.{out_connection} publishes on {pub_topic!r}: it would "
                    "never receive a message"
                )
        key = (out_service_name, out_connection)
        pair = (in_service_name, in_connection)
        related = self._relations.setdefault(key, [])
        if pair in related:
            raise ValueError(
                f"relation {out_service_name}.{out_connection} -> "
                f"{in_service_name}.{in_connection} already exists"
            )
        related.append(pair)
        out_service.routes[out_connection] = [self._target(out_model, *p) for p in related]

    def _target(self, out_model: ConnectionModel, service_name: str, connection: str) -> _Target:
        service = self._services[service_name]
        model = service.prepared.models.inbound[connection]
        # The receiver re-validates, as it would over the wire - unless its compiled
        # check is the very same function as the sender's.
        check_args = None if model.args.check is out_model.args.check else model.args.check
        check_return = None
        none_ok = True
        if model.returns is not None:
            check_return = model.returns.check
            none_ok = model.returns.check({})
        return _Target(
            service=service_name,
            connection=connection,
            model=model,
            handler=model.creation_arguments["connection_function"],
            to_send=service.to_send,
            config=service.prepared.config,
            check_args=check_args,
            check_return=check_return,
            none_ok=none_ok,
        )

    # ------------------------------------------------------------------ running
    def start(self) -> Any:
        """Run every service's ``init_function`` (in the order they were added), then the
        main service's ``main(to_send, config)``; returns what ``main`` returns."""
        if self._main is None:
            raise ValueError("no main service: call set_main_service() before start()")
        for service in self._services.values():
            module = service.prepared.module
            if hasattr(module, "init_function"):
                module.init_function(service.to_send, service.prepared.config)
        main = self._services[self._main]
        return main.prepared.module.main(main.to_send, main.prepared.config)

    def get_service_config(self, service_name: str) -> dict[str, Any]:
        return self._service(service_name).prepared.config

    def get_service_module(self, service_name: str) -> ModuleType:
        return self._service(service_name).prepared.module

    def _service(self, name: str) -> _Service:
        service = self._services.get(name)
        if service is None:
            known = ", ".join(map(repr, self._services)) or "none"
            raise ValueError(f"no service named {name!r} (services: {known})")
        return service

    # ------------------------------------------------------------------ to_send
    def _send(self, service_name: str, connection_name: str, args: Any) -> Any:
        service = self._services[service_name]
        targets = service.routes.get(connection_name)
        if targets is None:
            return self._send_unrouted(service, connection_name, args)
        out_model = service.prepared.models.outbound[connection_name]
        if not out_model.args.check(args):
            raise out_model.args.error(args)
        workflow_id = outgoing_id()
        if out_model.returns is None:  # publisher: fan out, nothing comes back
            for target in targets:
                self._deliver(target, args, workflow_id, publish=True)
            return None
        replies = [self._deliver(target, args, workflow_id, publish=False) for target in targets]
        given = [reply for reply in replies if reply is not None]
        if len(given) > 1:
            raise RuntimeError(
                f"{service_name}.{connection_name} is related to {len(given)} handlers that "
                "each returned a reply; a request gets exactly one reply"
            )
        result = given[0] if given else {}
        if not out_model.returns.check(result):
            raise out_model.returns.error(result)
        return result

    def _send_unrouted(self, service: _Service, connection_name: str, args: Any) -> Any:
        target = service.targets.get(connection_name)
        if target is not None:
            return call_target(target, args)
        models = service.prepared.models.outbound
        if connection_name in models:
            raise ValueError(
                f"{service.prepared.name}.{connection_name} has no relation: call "
                f"add_relation({service.prepared.name!r}, {connection_name!r}, ...) first"
            )
        names = ", ".join(map(repr, models)) or "none"
        raise UnknownConnectionError(
            f"{service.prepared.name}: no outbound connection {connection_name!r} "
            f"(outbound connections: {names})"
        )

    @staticmethod
    def _deliver(target: _Target, args: Any, workflow_id: str, *, publish: bool) -> Any:
        """Call one handler as its service would on receiving the message."""
        token = current_flow.set(Flow(workflow_id))
        try:
            if target.check_args is not None and not target.check_args(args):
                raise target.model.args.error(args)
            result = target.handler(args, target.to_send, target.config)
            if publish:
                return None
            if result is None and target.none_ok:
                return None
            if target.check_return is not None and not target.check_return(result):
                assert target.model.returns is not None
                raise target.model.returns.error(result)
            return result
        except Exception as exc:
            LOG.error(
                "%s: handler of connection '%s' raised %s: %s",
                target.service,
                target.connection,
                type(exc).__name__,
                exc,
                exc_info=not isinstance(exc, ValidationError),
            )
            if publish:
                return None
            raise RemoteError(
                type(exc).__name__,
                str(exc),
                connection=f"{target.service}: connection '{target.connection}'",
                workflow_id=workflow_id,
            ) from exc
        finally:
            current_flow.reset(token)
