"""Parse a service module's ``config_model`` and ``connection_models`` once.

The result is plain, introspectable values (:class:`ServiceModels`,
:class:`ConnectionModel`) holding compiled validators. Every mistake in a model is an
error here, at start-up, naming the service, the connection and the key - never a
``KeyError`` at the first message.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .codec import DEFAULT_CODEC
from .connections import CONNECTION_TYPES, Connection
from .errors import ModelError
from .validation import SpecError, UnsupportedOnWire, Validator, compile_fields

__all__ = [
    "MODEL_KEYS",
    "ConnectionModel",
    "ServiceModels",
    "parse_config_model",
    "parse_connection_models",
]

MODEL_KEYS = (
    "connection_type",
    "required_creation_arguments",
    "optional_creation_arguments",
    "required_connection_arguments",
    "optional_connection_arguments",
    "required_arguments",
    "optional_arguments",
    "required_return_arguments",
    "optional_return_arguments",
)
_SIDES = ("in", "out")


@dataclass(frozen=True, eq=False)
class ConnectionModel:
    """One parsed entry of ``connection_models``."""

    service: str
    name: str
    side: str  # "in" or "out"
    connection_type: str  # canonical name ("external_request" -> "external_target")
    kind: type[Connection]
    creation_arguments: Mapping[str, Any]  # aliases resolved, setup_connections merged
    args: Validator  # the message: required/optional (connection) arguments
    returns: Validator | None  # the reply, for types that have one
    source: Mapping[str, Any] = field(repr=False)  # the model as the service wrote it

    @property
    def handler(self) -> Any:
        """The inbound handler (``connection_function``), if this type has one."""
        return self.creation_arguments.get("connection_function")

    def __repr__(self) -> str:
        return (
            f"<ConnectionModel {self.service}.{self.name} {self.side} {self.connection_type} "
            f"args={self.args.node.describe()}>"
        )


@dataclass(frozen=True, eq=False)
class ServiceModels:
    """Everything a service declares, parsed."""

    service: str
    config: Validator | None  # None: the service has no config_model
    inbound: Mapping[str, ConnectionModel]
    outbound: Mapping[str, ConnectionModel]

    def __repr__(self) -> str:
        return f"<ServiceModels {self.service} in={list(self.inbound)} out={list(self.outbound)}>"


def parse_config_model(service: str, config_model: object) -> Validator:
    """``{'required': {key: spec}, 'optional': {key: spec}}`` -> a config validator."""
    if not isinstance(config_model, Mapping):
        raise ModelError(
            f"{service}: config_model must be a dict with 'required' and/or 'optional', "
            f"got {type(config_model).__name__}"
        )
    unknown = [k for k in config_model if k not in ("required", "optional")]
    if unknown:
        raise ModelError(
            f"{service}: config_model has unknown key {unknown[0]!r} "
            "(allowed: 'required', 'optional')"
        )
    try:
        node = compile_fields(
            config_model.get("required") or {},
            config_model.get("optional") or {},
            what="config_model",
        )
    except SpecError as exc:
        raise ModelError(f"{service}: config_model: {exc}") from None
    return Validator(node, service=service, direction="config")


def parse_connection_models(
    service: str,
    connection_models: object,
    *,
    extra_creation_arguments: Mapping[str, Mapping[str, Any]] | None = None,
    namespace: Mapping[str, Any] | None = None,
    for_wire: bool = True,
) -> ServiceModels:
    """Parse ``connection_models``.

    ``extra_creation_arguments`` is what ``setup_connections(config)`` returned
    (connection name -> arguments, merged over the model's creation arguments);
    ``namespace`` is the service module's globals (for resolving dotted targets);
    ``for_wire`` also checks that every socket connection's models have a msgpack form.
    """
    if not isinstance(connection_models, Mapping):
        raise ModelError(
            f"{service}: connection_models must be a dict with 'in' and/or 'out', "
            f"got {type(connection_models).__name__}"
        )
    for side in connection_models:
        if side not in _SIDES:
            raise ModelError(
                f"{service}: connection_models has unknown side {side!r} (allowed: 'in', 'out')"
            )
    extra = dict(extra_creation_arguments or {})
    parsed: dict[str, dict[str, ConnectionModel]] = {"in": {}, "out": {}}
    for side in _SIDES:
        entries = connection_models.get(side)
        if entries is None:
            entries = {}
        if not isinstance(entries, Mapping):
            raise ModelError(
                f"{service}: connection_models['{side}'] must be a dict of name: model, "
                f"got {type(entries).__name__}"
            )
        for name, model in entries.items():
            if not isinstance(name, str) or not name:
                raise ModelError(f"{service}: connection name {name!r} must be a non-empty str")
            if name in parsed["in"] or name in parsed["out"]:
                raise ModelError(f"{service}: connection '{name}' is declared twice")
            parsed[side][name] = _parse_one(
                service, side, name, model, extra.pop(name, {}), namespace or {}, for_wire
            )
    if extra:
        raise ModelError(
            f"{service}: setup_connections returned arguments for undeclared connection "
            f"{sorted(extra)[0]!r}"
        )
    return ServiceModels(
        service=service,
        config=None,
        inbound=MappingProxyType(parsed["in"]),
        outbound=MappingProxyType(parsed["out"]),
    )


def _parse_one(
    service: str,
    side: str,
    name: str,
    model: object,
    extra: Mapping[str, Any],
    namespace: Mapping[str, Any],
    for_wire: bool,
) -> ConnectionModel:
    where = f"{service}: connection '{name}'"
    if not isinstance(model, Mapping):
        raise ModelError(f"{where}: the model must be a dict, got {type(model).__name__}")
    for key in model:
        if key not in MODEL_KEYS:
            raise ModelError(
                f"{where}: unknown model key {key!r} (allowed: {', '.join(MODEL_KEYS)})"
            )
    if "connection_type" not in model:
        raise ModelError(f"{where}: missing required model key 'connection_type'")
    type_name = model["connection_type"]
    kind = CONNECTION_TYPES.get(type_name) if isinstance(type_name, str) else None
    if kind is None:
        known = sorted({k.type_name for k in CONNECTION_TYPES.values()})
        raise ModelError(
            f"{where}: unknown connection_type {type_name!r} (known: {', '.join(known)})"
        )
    if kind.side != side:
        raise ModelError(
            f"{where}: a {kind.type_name} is an '{kind.side}' connection but is declared "
            f"under '{side}'"
        )
    creation = _creation_arguments(where, kind, model, extra, namespace)
    args = _validator(
        where, model, "required_arguments", "optional_arguments", "args", service, name
    )
    conn_args = (
        _dict_part(where, model, "required_connection_arguments"),
        _dict_part(where, model, "optional_connection_arguments"),
    )
    if conn_args[0] or conn_args[1]:
        # 0.0.20 merged connection arguments into the message arguments; so do we.
        args = _validator(
            where,
            {
                "required_arguments": {
                    **conn_args[0],
                    **_dict_part(where, model, "required_arguments"),
                },
                "optional_arguments": {
                    **conn_args[1],
                    **_dict_part(where, model, "optional_arguments"),
                },
            },
            "required_arguments",
            "optional_arguments",
            "args",
            service,
            name,
        )
    returns = None
    if kind.has_reply:
        returns = _validator(
            where,
            model,
            "required_return_arguments",
            "optional_return_arguments",
            "return_args",
            service,
            name,
        )
    if for_wire and kind.address_keys:
        _check_wire(where, args, "arguments")
        if returns is not None:
            _check_wire(where, returns, "return arguments")
    return ConnectionModel(
        service=service,
        name=name,
        side=side,
        connection_type=kind.type_name,
        kind=kind,
        creation_arguments=MappingProxyType(creation),
        args=args,
        returns=returns,
        source=MappingProxyType(dict(model)),
    )


def _dict_part(where: str, model: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = _spec_dict(where, model, key)
    return {} if value is None else dict(value)


def _spec_dict(where: str, model: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """``model[key]`` ({} when absent), which must be a dict or ``None``."""
    value = model.get(key, {})
    if value is not None and not isinstance(value, Mapping):
        raise ModelError(
            f"{where}: model key {key!r} must be a dict of key: spec, got {type(value).__name__}"
        )
    return value


def _validator(
    where: str,
    model: Mapping[str, Any],
    required_key: str,
    optional_key: str,
    direction: str,
    service: str,
    name: str,
) -> Validator:
    # None on both sides means "not checked" (see compile_fields): keep it.
    required = _spec_dict(where, model, required_key)
    optional = _spec_dict(where, model, optional_key)
    try:
        node = compile_fields(required, optional, what=direction)
    except SpecError as exc:
        raise ModelError(f"{where}: {required_key}/{optional_key}: {exc}") from None
    return Validator(node, service=service, connection=name, direction=direction)


def _check_wire(where: str, validator: Validator, what: str) -> None:
    try:
        DEFAULT_CODEC.check_wire(validator.node)
    except UnsupportedOnWire as exc:
        raise ModelError(f"{where}: {what}: {exc}") from None


def _creation_arguments(
    where: str,
    kind: type[Connection],
    model: Mapping[str, Any],
    extra: Mapping[str, Any],
    namespace: Mapping[str, Any],
) -> dict[str, Any]:
    if not isinstance(extra, Mapping):
        raise ModelError(
            f"{where}: setup_connections must map it to a dict of arguments, "
            f"got {type(extra).__name__}"
        )
    merged: dict[str, Any] = {}
    for source in (
        _dict_part(where, model, "required_creation_arguments"),
        _dict_part(where, model, "optional_creation_arguments"),
        dict(extra),
    ):
        for key, value in source.items():
            key = kind.creation_argument_aliases.get(key, key)
            merged[key] = value
    for key in list(merged):
        if key in kind.ignored_creation_arguments:
            del merged[key]
    known = {**kind.required_creation_arguments, **kind.optional_creation_arguments}
    for key in merged:
        if key not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise ModelError(
                f"{where}: unknown creation argument {key!r} for a {kind.type_name} "
                f"(allowed: {allowed})"
            )
    for key in kind.required_creation_arguments:
        if key not in merged:
            raise ModelError(
                f"{where}: missing required creation argument {key!r} for a {kind.type_name}"
            )
    checker = Validator(
        compile_fields(kind.required_creation_arguments, kind.optional_creation_arguments),
        direction="creation_arguments",
    )
    if not checker.check(merged):
        raise ModelError(f"{where}: creation arguments: {checker.error(merged).detail}")
    handler = merged.get("connection_function")
    if handler is not None:
        _check_handler(where, handler)
    try:
        return kind.prepare(merged, namespace)
    except ValueError as exc:
        raise ModelError(f"{where}: {exc}") from None


def _check_handler(where: str, handler: Any) -> None:
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to inspect
    try:
        signature.bind(None, None, None)
    except TypeError:
        name = getattr(handler, "__qualname__", repr(handler))
        raise ModelError(
            f"{where}: handler {name}{signature} cannot be called with the three "
            "arguments (args, to_send, config)"
        ) from None
