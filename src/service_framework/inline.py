"""``InlineServices``: many services in one thread, no sockets.

Each service is loaded and configured exactly as it would be over sockets (the same
hooks, the same compiled validators, the same wire checks), and ``to_send`` calls the
related handlers directly. Over the wire a message is validated twice - by the sender
against its outbound model and by the receiver against its inbound model - and so it is
here, as is the reply: a contract bug found inline is the one a deployment would hit.
Errors travel the same way too: a handler that raises, or a message the receiver
rejects, reaches a requester as :class:`~service_framework.errors.RemoteError`; a
subscriber's (or puller's) failure is logged and the publisher (or pusher) carries on. A
pusher hands each message to one of its related pullers, in turn, as the wire would.

Differences from running over sockets, by design: everything runs in the calling
thread, no signal handlers are installed, and handlers receive the sender's objects
rather than decoded copies - except a value the receiver's check refuses, which is
judged as the wire would judge it (see ``_as_received``): converted losslessly, or
refused with the wire's own error.

Contracts are checked as ``service_framework check`` checks a topology: a relation whose
connection types or topics can never work is refused by ``add_relation``
(``ValueError``); one whose models disagree (a key the receiver requires that the sender
may omit, a type the receiver would refuse, a reply the requester cannot accept) is
logged as a warning when the relation is added, and :meth:`InlineServices.check` returns
every such finding, plus every requester or publisher left without a relation - so a
test can ``assert not inline.check()``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from .check import check_link
from .codec import DEFAULT_CODEC
from .connections import CONNECTION_TYPES, build_connections
from .connections.base import (
    Connection,
    ConnectionEnv,
    InboundConnection,
    InlineTarget,
    OutboundConnection,
    Route,
)
from .connections.external_target import ExternalTarget
from .errors import UnknownConnectionError
from .loader import PreparedService, load_module, prepare_service
from .logs import DEFAULT_LOG_MAX_BYTES, check_logging, configure_logging
from .observe import Observer
from .topology import Finding, Topology, load_topology
from .validation import Validator, compile_fields
from .workflow import FlowScope

__all__ = ["InlineServices"]

LOG = logging.getLogger("service_framework.inline")

ToSend = Callable[[str, Any], Any]


@dataclass
class _Service:
    prepared: PreparedService
    to_send: ToSend
    # connection name -> a function delivering one message, built once per relation
    routes: dict[str, Route] = field(default_factory=dict)
    # every connection, as the socket runtime would build it (never opened)
    inbound: dict[str, InboundConnection] = field(default_factory=dict)
    outbound: dict[str, OutboundConnection] = field(default_factory=dict)


def _make_to_send(name: str, routes: dict[str, Route]) -> ToSend:
    """``to_send`` for one inline service: one dict lookup, then the relation's route (a
    closure, not an object with ``__call__``: every inline call goes through it)."""

    def to_send(connection_name: str, args: Any) -> Any:
        try:
            route = routes[connection_name]
        except (KeyError, TypeError):
            names = ", ".join(map(repr, routes)) or "none"
            raise UnknownConnectionError(
                f"{name}: no outbound connection {connection_name!r} "
                f"(outbound connections: {names})"
            ) from None
        return route(args)

    to_send.__qualname__ = f"inline to_send of {name}"
    return to_send


class InlineServices:
    """Run several services together in the calling thread (see the module docstring)."""

    def __init__(
        self,
        console_loglevel: str | None = "INFO",
        log_path: str | os.PathLike[str] | None = None,
        file_loglevel: str = "INFO",
        backup_count: int = 24,
        *,
        log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
        observers: Callable[[Connection], Sequence[Observer]] | None = None,
    ) -> None:
        # Applied by start(), when the services run: building an InlineServices (to check
        # relations, say) leaves the process's logging as it was. Bad values fail here.
        check_logging(console_loglevel, file_loglevel, log_max_bytes)
        self._logging = (
            console_loglevel,
            os.fspath(log_path) if log_path is not None else None,
            file_loglevel,
            backup_count,
            log_max_bytes,
        )
        self._services: dict[str, _Service] = {}
        self._main: str | None = None
        self._relations: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self._findings: list[Finding] = []  # model disagreements of the relations added
        # Heard next to each connection's stats (see observe.py), as over sockets.
        self._observers = observers

    def __repr__(self) -> str:
        return f"<InlineServices main={self._main!r} services={list(self._services)}>"

    @classmethod
    def from_topology(
        cls,
        topology: str | os.PathLike[str] | Topology,
        *,
        console_loglevel: str | None = "INFO",
        log_path: str | os.PathLike[str] | None = None,
        file_loglevel: str = "INFO",
        backup_count: int = 24,
    ) -> InlineServices:
        """Every service of a topology file (or a loaded :class:`Topology`) with its
        config, and a relation per link; the service with ``main = true`` is the main
        one. Addresses, hosts, replicas and keys do not apply inline."""
        system = topology if isinstance(topology, Topology) else load_topology(topology)
        mains = [name for name, spec in system.services.items() if spec.main]
        if len(mains) > 1:
            raise ValueError(
                f"{system.path}: inline runs one main service, but {', '.join(mains)} are "
                "all main = true"
            )
        inline = cls(console_loglevel, log_path, file_loglevel, backup_count)
        for name, spec in system.services.items():
            config = spec.load_config() or None
            if spec.main:
                inline.set_main_service(name, spec.file, config)
            else:
                inline.add_service(name, spec.file, config)
        for link in system.links:
            inline.add_relation(
                link.source.service,
                link.source.connection,
                link.target.service,
                link.target.connection,
            )
        return inline

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
        routes: dict[str, Route] = {}
        service = _Service(prepared, _make_to_send(name, routes), routes)
        # The same connection objects the socket runtime builds, never opened: their
        # pipeline, stats and inline routes are the ones a deployment runs.
        env = ConnectionEnv(
            service=name,
            config=prepared.config,
            context=None,
            to_send=service.to_send,
            scope=FlowScope(),  # inline calls nest in the calling thread's flow
            log=logging.getLogger(f"service_framework.service.{name}"),
            timed=False,
            observers=self._observers,
        )
        service.inbound, service.outbound = build_connections(prepared.models, env)
        for conn_name, out_conn in service.outbound.items():
            if isinstance(out_conn, ExternalTarget):
                routes[conn_name] = out_conn.call
            else:
                routes[conn_name] = _unrelated(name, conn_name)
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
        kind = out_model.kind
        if not issubclass(kind, OutboundConnection) or kind.peer is None:
            raise ValueError(
                f"{out_service_name}.{out_connection} is a {out_model.connection_type}; "
                f"only {', '.join(_linkable())} connections take relations"
            )
        peer = kind.peer
        if in_model.kind is not peer:
            raise ValueError(
                f"{out_service_name}.{out_connection} is a {out_model.connection_type} and "
                f"needs a {peer.type_name}, but {in_service_name}.{in_connection} is a "
                f"{in_model.connection_type}"
            )
        problem = kind.relation_problem(out_model, in_model)
        if problem is not None:
            raise ValueError(problem)
        key = (out_service_name, out_connection)
        pair = (in_service_name, in_connection)
        related = self._relations.setdefault(key, [])
        if pair in related:
            raise ValueError(
                f"relation {out_service_name}.{out_connection} -> "
                f"{in_service_name}.{in_connection} already exists"
            )
        related.append(pair)
        # Models that disagree may still work for the values a test sends (0.0.20 files
        # often do): warn, and let check() report them, rather than refuse the relation.
        for finding in check_link(out_model, in_model):
            LOG.warning("relation %s", finding.message.removeprefix("link "))
            self._findings.append(finding)
        targets = [self._target(out_model, *p) for p in related]
        sender = out_service.outbound[out_connection]
        out_service.routes[out_connection] = sender.inline_route(targets, _receiving)

    def _target(self, out_model: Any, service_name: str, connection: str) -> InlineTarget:
        in_conn = self._services[service_name].inbound[connection]
        check = in_conn.model.args.check
        # The receiver re-validates, as it would over the wire - unless its compiled
        # check is the very same function as the sender's.
        return InlineTarget(
            in_conn, None if check is out_model.args.check else _receiving(in_conn.model.args)
        )

    def check(self) -> list[Finding]:
        """Every contract finding (see ``service_framework check``): the model
        disagreements of the relations added so far, and every requester or publisher
        with no relation (``to_send`` on it would fail). Empty when all is well."""
        findings = list(self._findings)
        for name, service in self._services.items():
            for conn, model in service.prepared.models.outbound.items():
                if not model.kind.address_keys or (name, conn) in self._relations:
                    continue
                end = f"{name}.{conn}"
                findings.append(
                    Finding(
                        "unlinked",
                        f"{end} (a {model.connection_type}) has no relation: to_send on it "
                        f"would fail (call add_relation({name!r}, {conn!r}, ...))",
                        (end,),
                    )
                )
        return findings

    # ------------------------------------------------------------------ running
    def start(self) -> Any:
        """Set up logging as the constructor's arguments say, run every service's
        ``init_function`` (in the order they were added), then the main service's
        ``main(to_send, config)``; returns what ``main`` returns."""
        if self._main is None:
            raise ValueError("no main service: call set_main_service() before start()")
        configure_logging(*self._logging)
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

    def stats(self) -> dict[str, dict[str, dict[str, int]]]:
        """Every connection's counters (``service -> connection -> counter -> value``),
        as they stand now: what a handler received, handled, failed and rejected, and
        its handling time. Readable while the services run, e.g. from ``main``."""
        return {
            name: {
                conn_name: dataclasses.asdict(conn.stats)
                for conn_name, conn in (*service.inbound.items(), *service.outbound.items())
            }
            for name, service in self._services.items()
        }

    def _service(self, name: str) -> _Service:
        service = self._services.get(name)
        if service is None:
            known = ", ".join(map(repr, self._services)) or "none"
            raise ValueError(f"no service named {name!r} (services: {known})")
        return service


def _linkable() -> list[str]:
    """The connection types that take relations (those that name a peer type)."""
    return sorted(
        name
        for name, kind in CONNECTION_TYPES.items()
        if issubclass(kind, OutboundConnection) and kind.peer is not None
    )


def _unrelated(service: str, connection: str) -> Route:
    def unrelated(args: Any) -> Any:
        raise ValueError(
            f"{service}.{connection} has no relation: call "
            f"add_relation({service!r}, {connection!r}, ...) first"
        )

    return unrelated


def _receiving(validator: Validator) -> Callable[[Any], Any]:
    """What the wire makes of a value, for a receiver with ``validator``'s model: the
    value itself when the check passes; else converted losslessly as a receiver
    converts what a sender may send as another type - an ``int`` where ``float`` is
    declared, a number where ``Decimal`` is (README, "Models and validation") - by
    encoding it as a sender would and decoding it as the receiver does, or refused with
    the very error the wire would give."""
    check = validator.check
    codec = DEFAULT_CODEC.request_reply(validator, _UNCHECKED)

    def receive(value: Any) -> Any:
        if check(value):
            return value
        try:
            frame = codec.encode_request(value, "")
        except (TypeError, ValueError, OverflowError):  # no msgpack form: not sendable
            raise validator.error(value) from None
        return codec.decode_request(frame).args

    return receive


_UNCHECKED = Validator(compile_fields(None, None))
