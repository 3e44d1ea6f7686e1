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

import itertools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Any

from .check import check_link
from .codec import DEFAULT_CODEC
from .connections.base import ConnectionEnv
from .connections.external_target import ExternalTarget, call_target
from .errors import RemoteError, UnknownConnectionError, ValidationError
from .loader import PreparedService, load_module, prepare_service
from .logs import (
    DEFAULT_LOG_MAX_BYTES,
    ERROR_TEXT_MAX,
    check_logging,
    clip,
    configure_logging,
)
from .models import ConnectionModel
from .topology import Finding, Topology, load_topology
from .validation import Validator, compile_fields
from .workflow import (
    IDLE,
    Flow,
    current_flow,
    flow_of,
    install_flow,
    new_workflow_id,
    outgoing_flow,
)

__all__ = ["InlineServices"]

LOG = logging.getLogger("service_framework.inline")

_COMPATIBLE = {"requester": "replyer", "publisher": "subscriber", "pusher": "puller"}


@dataclass
class _Target:
    """One related inbound connection, with everything a call needs bound once."""

    service: str
    connection: str
    model: ConnectionModel
    handler: Callable[[Any, Any, Any], Any]
    to_send: ToSend
    config: dict[str, Any]
    check_args: Callable[[Any], bool] | None  # None: identical to the sender's check
    receive: Callable[[Any], Any]  # what the wire makes of args check_args refused
    check_return: Callable[[Any], bool] | None
    none_ok: bool


Route = Callable[[Any], Any]
ToSend = Callable[[str, Any], Any]


@dataclass
class _Service:
    prepared: PreparedService
    to_send: ToSend
    # connection name -> a function delivering one message, built once per relation
    routes: dict[str, Route] = field(default_factory=dict)


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
        env = ConnectionEnv(
            service=name,
            config=prepared.config,
            context=None,
            to_send=service.to_send,
        )
        for conn_name, model in prepared.models.outbound.items():
            if model.kind is ExternalTarget:
                service.routes[conn_name] = partial(call_target, ExternalTarget(model, env))
            else:
                service.routes[conn_name] = partial(_unrelated, name, conn_name)
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
                f"only {', '.join(_COMPATIBLE)} connections take relations"
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
        # Models that disagree may still work for the values a test sends (0.0.20 files
        # often do): warn, and let check() report them, rather than refuse the relation.
        for finding in check_link(out_model, in_model):
            LOG.warning("relation %s", finding.message.removeprefix("link "))
            self._findings.append(finding)
        targets = [self._target(out_model, *p) for p in related]
        if expected == "puller":
            out_service.routes[out_connection] = _push_route(out_model, targets)
        elif out_model.returns is None:
            out_service.routes[out_connection] = _publish_route(out_model, targets)
        else:
            out_service.routes[out_connection] = _request_route(out_model, targets)

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
            receive=_as_received(model.args),
            check_return=check_return,
            none_ok=none_ok,
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

    def _service(self, name: str) -> _Service:
        service = self._services.get(name)
        if service is None:
            known = ", ".join(map(repr, self._services)) or "none"
            raise ValueError(f"no service named {name!r} (services: {known})")
        return service


def _unrelated(service: str, connection: str, args: Any) -> Any:
    raise ValueError(
        f"{service}.{connection} has no relation: call "
        f"add_relation({service!r}, {connection!r}, ...) first"
    )


def _log_failure(target: _Target, error: Exception, flow: Flow) -> None:
    LOG.error(
        "%s: handler of connection '%s' raised %s: %s [%s]",
        target.service,
        target.connection,
        type(error).__name__,
        clip(error, ERROR_TEXT_MAX),  # as over sockets: cut short, escaped, never failing
        flow.id,
        exc_info=not isinstance(error, ValidationError),
    )


def _remote(target: _Target, error: Exception, flow: Flow) -> RemoteError:
    """What the caller sees when the far side fails, as it would over the wire."""
    _log_failure(target, error, flow)
    return RemoteError(
        type(error).__name__,
        clip(error, ERROR_TEXT_MAX),  # as the wire's error reply carries it
        connection=f"{target.service}: connection '{target.connection}'",
        workflow_id=flow.id,
    )


def _as_received(validator: Validator) -> Callable[[Any], Any]:
    """What the wire makes of a value its receiver's check refused.

    A receiver converts losslessly what a sender may send as another type - an ``int``
    where ``float`` is declared, a number where ``Decimal`` is (README, "Models and
    validation") - so inline the refused value is encoded as a sender would and decoded
    as the receiver does: the handler gets the converted value, or the caller the very
    error the wire would give. Runs only after a failed check, never on the usual path.
    """
    codec = DEFAULT_CODEC.request_reply(validator, _UNCHECKED)

    def receive(value: Any) -> Any:
        try:
            frame = codec.encode_request(value, "")
        except (TypeError, ValueError, OverflowError):  # no msgpack form: not sendable
            raise validator.error(value) from None
        return codec.decode_request(frame).args

    return receive


_UNCHECKED = Validator(compile_fields(None, None))


def _replier(target: _Target) -> Callable[[Any, Flow], Any]:
    """The replyer's side of a request, as its service would run it on receiving one:
    its args check, its handler, its return check, under ``flow`` (already the callee's).
    Returns ``None`` for a ``None`` reply its model allows."""
    handler, to_send, config = target.handler, target.to_send, target.config
    check_in, check_return, none_ok = target.check_args, target.check_return, target.none_ok
    receive = target.receive

    def reply(args: Any, flow: Flow) -> Any:
        try:
            if check_in is not None and not check_in(args):
                args = receive(args)  # converted as the wire would, or its error
            result = handler(args, to_send, config)
            if result is None and none_ok:
                return None
            if check_return is not None and not check_return(result):
                raise target.model.returns.error(result)  # type: ignore[union-attr]
            return result
        except Exception as error:
            raise _remote(target, error, flow) from error

    return reply


def _request_route(out_model: ConnectionModel, targets: list[_Target]) -> Route:
    """Deliver a request to its replyer(s); return the one validated reply.

    Inline calls nest on one thread, so rather than set a new Flow in the context per
    call (the costliest part of an inline call), the current one is turned into the
    callee's for the duration of the call and restored after. Each replyer counts its
    onward sends from ``_1``, as each would over the wire.
    """
    check_args, args_error = out_model.args.check, out_model.args.error
    assert out_model.returns is not None
    check_reply = out_model.returns.check
    reply_received = _as_received(out_model.returns)
    replies = [_replier(target) for target in targets]
    single = replies[0] if len(replies) == 1 else None
    # When the one replyer checks its return with the very same function the requester
    # would, check once: the replyer's failure is what the wire would report.
    reply_checked_twice = single is None or targets[0].check_return is not check_reply
    get_flow = current_flow.get

    def several(args: Any, flow: Flow, callee_id: str | None) -> Any:
        given = []
        for reply in replies:
            flow._id, flow.calls = callee_id, 0
            answer = reply(args, flow)
            if answer is not None:
                given.append(answer)
        if len(given) > 1:
            raise RuntimeError(
                f"{out_model.service}.{out_model.name} is related to {len(given)} handlers "
                "that each returned a reply; a request gets exactly one reply"
            )
        return given[0] if given else None

    def route(args: Any) -> Any:
        if not check_args(args):
            raise args_error(args)
        flow = get_flow()
        if flow is None:
            flow = install_flow()
        if flow._id is not IDLE:
            callee_id: str | None = flow.next_call_id()
        elif single is not None:
            callee_id = None  # a new workflow; its id is made if something reads it
        else:
            callee_id = new_workflow_id()  # several replyers share it
        saved_id, saved_calls = flow._id, flow.calls
        try:
            if single is not None:
                flow._id, flow.calls = callee_id, 0
                result = single(args, flow)
            else:
                result = several(args, flow, callee_id)
        finally:
            flow._id, flow.calls = saved_id, saved_calls
        if result is None:
            result = {}
        if reply_checked_twice and not check_reply(result):
            result = reply_received(result)  # converted as the wire would, or its error
        return result

    return route


def _publish_route(out_model: ConnectionModel, targets: list[_Target]) -> Route:
    """Deliver a published message to every related subscriber; nothing comes back, and
    a subscriber's failure stays with it (it is logged), as over the wire."""
    check_args, args_error = out_model.args.check, out_model.args.error

    def route(args: Any) -> None:
        if not check_args(args):
            raise args_error(args)
        flow = outgoing_flow()
        for target in targets:
            # Each subscriber counts its own onward sends, as each would over the wire.
            token = current_flow.set(flow if len(targets) == 1 else flow_of(flow.id))
            try:
                received = args
                if target.check_args is not None and not target.check_args(args):
                    received = target.receive(args)  # as the wire would, or its error
                target.handler(received, target.to_send, target.config)
            except Exception as error:
                _log_failure(target, error, flow)
            finally:
                current_flow.reset(token)

    return route


def _push_route(out_model: ConnectionModel, targets: list[_Target]) -> Route:
    """Deliver each pushed message to one related puller, taking them in turn (the wire
    round-robins over connected pullers); a puller's failure stays with it, as a
    subscriber's does."""
    routes = itertools.cycle([_publish_route(out_model, [target]) for target in targets])
    take = routes.__next__

    def route(args: Any) -> None:
        take()(args)

    return route
