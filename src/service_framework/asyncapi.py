"""``service_framework asyncapi``: an AsyncAPI 3.0 document for one service or a system.

The document describes what travels between services, built from the same parsed models
the runtime validates with (nothing is started, no socket is opened):

* a **channel** per socket connection of a single service, or per link of a topology;
  pub/sub channels have the topic as their ``address``;
* an **operation** per connection end: ``send`` (requester, publisher, pusher) or
  ``receive`` (replyer, subscriber, puller); request/reply is one operation with a
  ``reply`` (Operation Reply Object) naming the reply and the error message;
* **messages** whose payload is the envelope the framework puts on the wire (see
  ``msgpack_codec.py``): ``{"v", "workflow_id", "args", "meta"?}`` for a request,
  ``{"v", "workflow_id", "return_args"}`` or ``{"v", "workflow_id", "error"}`` for a
  reply, ``[topic, v, workflow_id, args, meta]`` for a published message; content type
  ``application/msgpack``;
* **payload schemas** from the models via ``msgspec.json.schema_components``, renamed
  after the connection that declares them (``router.place.args``) and written as JSON
  Schema Draft 07 - AsyncAPI's default schema format - rather than msgspec's 2020-12
  (tuples use ``items: [...]`` + ``additionalItems: false`` instead of ``prefixItems``);
* **servers**: one per bound endpoint, protocol ``zmtp``, with an ``x-zmq`` binding
  (socket type, which end binds, CURVE) - AsyncAPI has no ZeroMQ binding of its own, and
  ``x-`` extensions are the sanctioned way to add one. Operations carry an ``x-zmq``
  binding too: their own socket type and whether they bind or connect.

Schemas describe values as msgspec's JSON view of them: ``Decimal`` is a string with
``format: decimal``, ``bytes`` a base64 string, sets are arrays with unique items. On the
wire (msgpack) ``bytes`` travel as bin and datetimes as timestamps.

Connections without sockets (``external_target``, timers) carry no messages between
services and are left out.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import flatten_seed_shape, load_json, validate_addresses_shape
from .errors import AddressError, ServiceFrameworkError
from .loader import load_module, prepare_service
from .models import ConnectionModel, ServiceModels
from .msgpack_codec import ENVELOPE_VERSION, GENERATED_SCHEMA_NAME, json_schemas
from .topology import (
    Topology,
    TopologyError,
    binds,
    derive_addresses,
    load_services,
    load_topology,
    resolve,
)
from .validation import Validator

__all__ = [
    "ASYNCAPI_VERSION",
    "ChannelSpec",
    "EndSpec",
    "build_document",
    "main",
    "service_document",
    "socket_type",
    "topology_channels",
    "topology_document",
]

ASYNCAPI_VERSION = "3.0.0"
CONTENT_TYPE = "application/msgpack"
# libzmq 4.3 speaks ZMTP 3.1.
ZMTP_VERSION = "3.1"
PROG = "service_framework asyncapi"

# The ZeroMQ socket behind each socket-based connection type (types not listed here are
# described without a socket type).
_SOCKET_TYPES: dict[str, str] = {
    "replyer": "REP",
    "requester": "REQ",
    "publisher": "PUB",
    "subscriber": "SUB",
    "pusher": "PUSH",
    "puller": "PULL",
}
# The socket a connecting end expects at the far side (for a peer outside the document).
_PEER_SOCKET_TYPES: dict[str, str] = {
    "requester": "REP",
    "subscriber": "PUB",
    "pusher": "PULL",
}
# The type whose models name a channel's messages when two ends declare the same model:
# the side that defines the contract (the replyer, the publisher, the puller).
_OWNER_FIRST = {"replyer": 0, "publisher": 0, "puller": 0}
_PATTERNS = {
    "replyer": "request-reply",
    "requester": "request-reply",
    "publisher": "publish-subscribe",
    "subscriber": "publish-subscribe",
    "pusher": "push-pull",
    "puller": "push-pull",
}
# framed as [topic, v, workflow_id, args, meta] (a pushed message: topic "")
_PUBLISHED = {"publisher", "subscriber", "pusher", "puller"}
_REQUESTS = {"requester", "replyer"}  # framed as {v, workflow_id, args, meta?}
_NAME_CHARS = re.compile(r"[^\w.\-]")
_GENERATED = GENERATED_SCHEMA_NAME  # names of the structs the msgpack codec makes
_REF = "#/components/schemas/"


def socket_type(model: ConnectionModel) -> str | None:
    """The ZeroMQ socket type of a connection (``"REP"``...), ``None`` if it has none."""
    if not model.kind.address_keys:
        return None
    return _SOCKET_TYPES.get(model.connection_type)


@dataclass(frozen=True)
class EndSpec:
    """One connection at one end of a channel.

    ``endpoints`` are the ``host:port`` it binds or connects to, when known; ``curve``
    says whether its socket uses CURVE (``None``: not known).
    """

    service: str
    model: ConnectionModel
    endpoints: tuple[str, ...] = ()
    curve: bool | None = None

    @property
    def key(self) -> str:
        return f"{self.service}.{self.model.name}"


@dataclass(frozen=True)
class ChannelSpec:
    """A channel: the connection ends that exchange messages on it."""

    key: str
    ends: tuple[EndSpec, ...]
    description: str = ""


@dataclass
class _Schemas:
    """Every payload schema of the document, generated by msgspec in one pass (so a class
    used by two connections is one component, and msgspec resolves name clashes)."""

    components: dict[str, Any]
    top: dict[tuple[str, str], Any]  # (end key, "args"/"return_args") -> schema or $ref

    @classmethod
    def build(cls, wanted: Sequence[tuple[str, str, Validator]]) -> _Schemas:
        nodes = [validator.node for _, _, validator in wanted]
        schemas, components = json_schemas(nodes, ref_template=_REF + "{name}")
        # Name msgspec's generated structs after the connection and key that declare
        # them, in model order: stable from run to run and readable in a viewer.
        renames: dict[str, str] = {}
        taken = {name for name in components if not _GENERATED.match(name)}

        def claim(name: str) -> str:
            base, n = name, 1
            while name in taken:
                n += 1
                name = f"{base}_{n}"
            taken.add(name)
            return name

        def visit(node: Any, owner: str) -> None:
            if isinstance(node, dict):
                ref = node.get("$ref")
                if isinstance(ref, str) and ref.startswith(_REF):
                    target = ref[len(_REF) :]
                    if _GENERATED.match(target) and target not in renames:
                        renames[target] = claim(owner)
                        visit(components[target], renames[target])
                for key, value in node.items():
                    if key == "properties" and isinstance(value, dict):
                        for prop, sub in value.items():
                            visit(sub, f"{owner}.{_NAME_CHARS.sub('_', prop)}")
                    elif key != "$ref":
                        visit(value, owner)
            elif isinstance(node, list):
                for item in node:
                    visit(item, owner)

        for (end_key, direction, _), schema in zip(wanted, schemas, strict=True):
            visit(schema, f"{end_key}.{direction}")
        for name in sorted(components):  # anything reached only through a user class
            if _GENERATED.match(name) and name not in renames:
                renames[name] = claim("model")
                visit(components[name], renames[name])

        def rename(node: Any) -> Any:
            if isinstance(node, dict):
                out = {}
                for key, value in node.items():
                    if key == "$ref" and isinstance(value, str) and value.startswith(_REF):
                        target = value[len(_REF) :]
                        out[key] = _REF + renames.get(target, target)
                    else:
                        out[key] = rename(value)
                return out
            if isinstance(node, list):
                return [rename(item) for item in node]
            return node

        renamed: dict[str, Any] = {}
        for name, schema in components.items():
            new = renames.get(name, name)
            schema = _draft07(rename(schema))
            if name != new and schema.get("title") == name:
                schema["title"] = new
            renamed[new] = schema
        top = {
            (end_key, direction): _draft07(rename(schema))
            for (end_key, direction, _), schema in zip(wanted, schemas, strict=True)
        }
        for name, schema in _ENVELOPE_SCHEMAS.items():
            renamed[name] = copy.deepcopy(schema)
        return cls(renamed, top)

    def canonical(self, schema: Any) -> str:
        """``schema`` with every reference inlined and titles dropped, as text: two
        connections whose models accept the same values give the same text."""

        def inline(node: Any, stack: tuple[str, ...]) -> Any:
            if isinstance(node, dict):
                ref = node.get("$ref")
                if isinstance(ref, str) and ref.startswith(_REF):
                    name = ref[len(_REF) :]
                    if name in stack or name not in self.components:
                        return {"$ref": name}  # a recursive class: compare by name
                    return inline(self.components[name], (*stack, name))
                # A "title" keyword is a string; a property called "title" is a schema.
                return {
                    k: inline(v, stack)
                    for k, v in node.items()
                    if not (k == "title" and isinstance(v, str))
                }
            if isinstance(node, list):
                return [inline(item, stack) for item in node]
            return node

        return json.dumps(inline(schema, ()), sort_keys=True)

    def used(self, document: Any) -> dict[str, Any]:
        """The components reachable from ``document`` (sorted by name)."""
        seen: set[str] = set()

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                ref = node.get("$ref")
                if isinstance(ref, str) and ref.startswith(_REF):
                    name = ref[len(_REF) :]
                    if name not in seen and name in self.components:
                        seen.add(name)
                        walk(self.components[name])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for item in node:
                    walk(item)

        walk(document)
        return {name: self.components[name] for name in sorted(seen)}


def _draft07(schema: Any) -> Any:
    """Rewrite the JSON Schema 2020-12 constructs msgspec emits into Draft 07.

    Only ``prefixItems`` differs for what msgspec generates: a fixed-length tuple is
    ``prefixItems: [...]`` + ``items: false`` in 2020-12 and ``items: [...]`` +
    ``additionalItems: false`` in Draft 07.
    """
    if isinstance(schema, list):
        return [_draft07(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _draft07(value) for key, value in schema.items()}
    if "prefixItems" in out:
        prefix = out.pop("prefixItems")
        rest = out.pop("items", True)
        out["items"] = prefix
        if rest is not True:
            out["additionalItems"] = rest
    return out


# Parts every envelope shares, as components (the names hold a dot, which no class
# name msgspec reports for a model does).
_ENVELOPE_SCHEMAS: dict[str, Any] = {
    "envelope.version": {
        "const": ENVELOPE_VERSION,
        "description": "envelope version; a receiver rejects versions it does not know",
    },
    "envelope.workflow_id": {
        "type": "string",
        "description": "id shared by every message of one workflow (tracing, logs)",
    },
    "envelope.meta": {
        "type": "object",
        "description": "metadata travelling with the message (deadlines, tracing)",
    },
    "envelope.error": {
        "type": "object",
        "description": "error reply: the request was invalid or its handler raised "
        "(the requester raises RemoteError)",
        "properties": {
            "v": {"$ref": _REF + "envelope.version"},
            "workflow_id": {"$ref": _REF + "envelope.workflow_id"},
            "error": {
                "type": "object",
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                "required": ["type", "message"],
            },
        },
        "required": ["v", "workflow_id", "error"],
    },
}
_ERROR_MESSAGE = {
    "name": "error",
    "title": "Error reply",
    "payload": {"$ref": _REF + "envelope.error"},
}


def _envelope(name: str, schema: Any, description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": {
            "v": {"$ref": _REF + "envelope.version"},
            "workflow_id": {"$ref": _REF + "envelope.workflow_id"},
            name: schema,
        },
        "required": ["v", "workflow_id", name],
    }


def _request_payload(args: Any) -> dict[str, Any]:
    payload = _envelope("args", args, "request envelope; receivers ignore keys they do not know")
    payload["properties"]["meta"] = {"$ref": _REF + "envelope.meta"}
    return payload


def _reply_payload(returns: Any) -> dict[str, Any]:
    return _envelope("return_args", returns, "reply envelope")


def _published_payload(topic: str, args: Any) -> dict[str, Any]:
    return {
        "type": "array",
        "description": (
            "published frame [topic, v, workflow_id, args, meta]; SUB sockets filter on "
            "its leading bytes, receivers ignore elements after the fifth"
        ),
        "items": [
            {"const": topic, "description": "topic ('' reaches every subscriber)"},
            {"$ref": _REF + "envelope.version"},
            {"$ref": _REF + "envelope.workflow_id"},
            args,
            {"anyOf": [{"$ref": _REF + "envelope.meta"}, {"type": "null"}]},
        ],
        "minItems": 5,
    }


def _topic(model: ConnectionModel) -> str:
    topic = model.creation_arguments.get("topic")
    return topic if isinstance(topic, str) else ""


def _sends(model: ConnectionModel) -> bool:
    return model.side == "out"


def _sorted_ends(ends: Iterable[EndSpec]) -> list[EndSpec]:
    return sorted(ends, key=lambda e: (_OWNER_FIRST.get(e.model.connection_type, 1), e.key))


@dataclass
class _Builder:
    title: str
    version: str
    description: str
    channels: Sequence[ChannelSpec]
    schemas: _Schemas = field(init=False)
    doc_channels: dict[str, Any] = field(default_factory=dict)
    operations: dict[str, Any] = field(default_factory=dict)
    servers: dict[str, Any] = field(default_factory=dict)
    curve_used: bool = False
    occurrences: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        wanted: list[tuple[str, str, Validator]] = []
        for channel in self.channels:
            for end in _sorted_ends(channel.ends):
                self.occurrences[end.key] = self.occurrences.get(end.key, 0) + 1
                wanted.append((end.key, "args", end.model.args))
                if end.model.returns is not None:
                    wanted.append((end.key, "return_args", end.model.returns))
        self.schemas = _Schemas.build(wanted)

    def document(self) -> dict[str, Any]:
        for channel in self.channels:
            self._channel(channel)
        info: dict[str, Any] = {"title": self.title, "version": self.version}
        if self.description:
            info["description"] = self.description
        doc: dict[str, Any] = {
            "asyncapi": ASYNCAPI_VERSION,
            "info": info,
            "defaultContentType": CONTENT_TYPE,
        }
        if self.servers:
            doc["servers"] = dict(sorted(self.servers.items()))
        doc["channels"] = self.doc_channels
        doc["operations"] = self.operations
        messages: dict[str, Any] = {}
        if any("error" in channel["messages"] for channel in self.doc_channels.values()):
            messages["error"] = copy.deepcopy(_ERROR_MESSAGE)
        components: dict[str, Any] = {"schemas": self.schemas.used([doc, messages])}
        if messages:
            components["messages"] = messages
        if self.curve_used:
            components["securitySchemes"] = {
                "curve": {
                    "type": "asymmetricEncryption",
                    "description": (
                        "ZeroMQ CURVE (CurveZMQ): the binding socket is the CURVE server "
                        "and admits only clients whose public key it holds"
                    ),
                }
            }
        doc["components"] = components
        return doc

    def _message(
        self, messages: dict[str, Any], seen: dict[str, str], name: str, payload: Any
    ) -> str:
        """Add ``payload`` as a message of the channel, unless one with the same payload
        is there already; returns the message's key."""
        canonical = self.schemas.canonical(payload)
        existing = seen.get(canonical)
        if existing is not None:
            return existing
        messages[name] = {"name": name, "payload": payload}
        seen[canonical] = name
        return name

    def _channel(self, channel: ChannelSpec) -> None:
        ends = _sorted_ends(channel.ends)
        messages: dict[str, Any] = {}
        seen: dict[str, str] = {}
        ch_ref = {"$ref": f"#/channels/{channel.key}"}
        binder = next((e for e in ends if binds(e.model)), None)
        if binder is not None:
            server_keys = self._servers(binder, binder.key, bound_by=binder.key)
        else:  # only the connecting end is known: its peer's endpoints, if given
            server_keys = []
            for end in ends:
                if end.endpoints:
                    server_keys += self._servers(end, f"{end.key}.peer", bound_by=None)
        patterns = [_PATTERNS[t] for e in ends if (t := e.model.connection_type) in _PATTERNS]
        pattern = patterns[0] if patterns else None
        published = any(e.model.connection_type in _PUBLISHED for e in ends)
        topics = sorted({_topic(e.model) for e in ends})
        error_key: str | None = None
        for end in ends:
            model = end.model
            args = self.schemas.top[(end.key, "args")]
            kind = "request" if model.connection_type in _REQUESTS else "message"
            if published:
                payload = _published_payload(_topic(model), args)
            elif kind == "request":
                payload = _request_payload(args)
            else:  # a type registered beyond the built-in ones: its arguments only
                payload = {
                    "description": f"the arguments a {model.connection_type} carries (its "
                    "envelope is not described here)",
                    "allOf": [args],
                }
            sent = self._message(messages, seen, f"{end.key}.{kind}", payload)
            operation: dict[str, Any] = {
                "action": "send" if _sends(model) else "receive",
                "channel": ch_ref,
                "title": f"{end.key} ({model.connection_type})",
                "messages": [{"$ref": f"#/channels/{channel.key}/messages/{sent}"}],
                "tags": [{"name": end.service}],
            }
            if model.returns is not None:
                returns = self.schemas.top[(end.key, "return_args")]
                reply = self._message(messages, seen, f"{end.key}.reply", _reply_payload(returns))
                if error_key is None:
                    error_key = "error"
                    messages[error_key] = {"$ref": "#/components/messages/error"}
                operation["reply"] = {
                    "channel": ch_ref,
                    "messages": [
                        {"$ref": f"#/channels/{channel.key}/messages/{reply}"},
                        {"$ref": f"#/channels/{channel.key}/messages/{error_key}"},
                    ],
                }
            operation["bindings"] = {"x-zmq": self._operation_binding(end)}
            key = end.key
            if self.occurrences[end.key] > 1:  # e.g. a publisher linked to two subscribers
                peers = "+".join(other.key for other in ends if other is not end)
                key = f"{end.key}__{peers}" if peers else f"{end.key}__{channel.key}"
            self.operations[key] = operation
        doc_channel: dict[str, Any] = {
            "address": topics[0] if published and len(topics) == 1 else None,
        }
        if channel.description:
            doc_channel["description"] = channel.description
        doc_channel["messages"] = messages
        if server_keys:
            doc_channel["servers"] = [{"$ref": f"#/servers/{k}"} for k in server_keys]
        channel_binding: dict[str, Any] = {}
        if pattern:
            channel_binding["pattern"] = pattern
        if published:
            channel_binding["topics"] = topics
        if channel_binding:
            doc_channel["bindings"] = {"x-zmq": channel_binding}
        self.doc_channels[channel.key] = doc_channel

    def _operation_binding(self, end: EndSpec) -> dict[str, Any]:
        binding: dict[str, Any] = {"connectionType": end.model.connection_type}
        sock = socket_type(end.model)
        if sock:
            binding["socketType"] = sock
        binding["role"] = "bind" if binds(end.model) else "connect"
        if end.endpoints:
            binding["endpoints"] = list(end.endpoints)
        if end.curve is not None:
            binding["curve"] = end.curve
        return binding

    def _servers(self, end: EndSpec, name: str, *, bound_by: str | None) -> list[str]:
        """Servers for the endpoints of ``end``: the ones it binds (``bound_by`` is its
        key) or, when no end of the channel binds, the peer endpoints it connects to."""
        hosts = list(end.endpoints)
        variables: dict[str, Any] = {}
        if not hosts:
            hosts = ["{address}"]
            variables = {"address": {"description": "host:port it binds, from its addresses file"}}
        binding: dict[str, Any] = {}
        if bound_by is not None:
            binding["boundBy"] = bound_by
            sock = socket_type(end.model)
            title = f"{end.key} ({end.model.connection_type})"
        else:
            binding["connectedBy"] = end.key
            sock = _PEER_SOCKET_TYPES.get(end.model.connection_type)
            title = f"peer of {end.key}"
        if sock:
            binding["socketType"] = sock
        binding["transport"] = "tcp"
        if end.curve is not None:
            binding["curve"] = end.curve
        keys: list[str] = []
        for i, host in enumerate(hosts):
            key = f"{name}_{i + 1}" if len(hosts) > 1 else name
            server: dict[str, Any] = {
                "host": host,
                "protocol": "zmtp",
                "protocolVersion": ZMTP_VERSION,
                "title": title,
            }
            if variables:
                server["variables"] = variables
            if end.curve:
                server["security"] = [{"$ref": "#/components/securitySchemes/curve"}]
                self.curve_used = True
            server["bindings"] = {"x-zmq": dict(binding)}
            self.servers[key] = server
            keys.append(key)
        return keys


def build_document(
    channels: Sequence[ChannelSpec], *, title: str, version: str = "1.0.0", description: str = ""
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document (a JSON-ready dict) for ``channels``."""
    return _Builder(title, version, description, channels).document()


def _endpoints(entry: object) -> tuple[str, ...]:
    if isinstance(entry, str):
        return (entry,)
    if isinstance(entry, (list, tuple)):
        return tuple(str(item) for item in entry)
    return ()


def service_channels(
    models: ServiceModels, addresses: Mapping[str, Any] | None = None
) -> list[ChannelSpec]:
    """One channel per socket connection of one service (``addresses``: its addresses
    file, optional: it gives the endpoints and, for clients, whether CURVE is on)."""
    channels: list[ChannelSpec] = []
    by_side = {"in": models.inbound, "out": models.outbound}
    for side, connections in by_side.items():
        for name, model in connections.items():
            if not model.kind.address_keys:
                continue
            entry: Mapping[str, Any] = {}
            if addresses is not None:
                raw = addresses.get(side, {}).get(name, {})
                entry = raw if isinstance(raw, Mapping) else {}
            endpoints: tuple[str, ...] = ()
            for key in model.kind.address_keys:
                endpoints += _endpoints(entry.get(key))
            curve = True if entry.get("server_public_key") else None
            end = EndSpec(models.service, model, endpoints, curve)
            channels.append(ChannelSpec(name, (end,)))
    return channels


def _first_paragraph(text: str | None) -> str:
    if not text:
        return ""
    return text.strip().split("\n\n", 1)[0].replace("\n", " ")


def service_document(
    source: str | Path,
    *,
    config: Mapping[str, Any] | None = None,
    addresses: Mapping[str, Any] | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI document for one service file (its models; nothing is started)."""
    module = load_module(source)
    prepared = prepare_service(module, config=config)
    if addresses is not None:
        addresses = validate_addresses_shape(prepared.name, addresses)
    module_version = getattr(module, "__version__", None)
    return build_document(
        service_channels(prepared.models, addresses),
        title=prepared.name,
        version=version or (module_version if isinstance(module_version, str) else "1.0.0"),
        description=_first_paragraph(module.__doc__),
    )


# Problems that leave a link without two known, linkable ends: nothing to document.
_FATAL = frozenset({"unknown-service", "unknown-connection", "incompatible-types"})


def _end(
    topology: Topology,
    models: Mapping[str, ServiceModels],
    addresses: Mapping[str, Mapping[str, Mapping[str, Any]]],
    service: str,
    model: ConnectionModel,
) -> EndSpec:
    entry = addresses.get(service, {}).get(model.side, {}).get(model.name, {})
    endpoints: tuple[str, ...] = ()
    for key in model.kind.address_keys:
        endpoints += _endpoints(entry.get(key))
    curve = topology.services[service].curve is not None or bool(entry.get("server_public_key"))
    return EndSpec(service, model, endpoints, curve)


def topology_channels(topology: Topology, models: Mapping[str, ServiceModels]) -> list[ChannelSpec]:
    """A channel per link of ``topology`` (both ends, endpoints derived from the links),
    then one per socket connection no link covers (its own end only)."""
    wiring = resolve(topology, models)
    for problem in wiring.problems:
        if problem.code in _FATAL:
            raise TopologyError(
                f"{topology.path}: {problem.message} (service_framework check lists every problem)"
            )
    addresses = derive_addresses(topology, models, wiring=wiring)
    channels: list[ChannelSpec] = []
    linked: set[tuple[str, str]] = set()
    for link in topology.links:
        ends = []
        for endpoint, side in ((link.source, "out"), (link.target, "in")):
            service = models[endpoint.service]
            declared = service.outbound if side == "out" else service.inbound
            ends.append(
                _end(topology, models, addresses, endpoint.service, declared[endpoint.connection])
            )
            linked.add((endpoint.service, endpoint.connection))
        channels.append(
            ChannelSpec(f"{link.source}__{link.target}", tuple(ends), description=f"link {link}")
        )
    for name, service in models.items():
        for model in (*service.inbound.values(), *service.outbound.values()):
            if not model.kind.address_keys or (name, model.name) in linked:
                continue
            end = _end(topology, models, addresses, name, model)
            channels.append(ChannelSpec(end.key, (end,), description="not linked in the topology"))
    return channels


def topology_document(topology: Topology | str | Path, *, version: str = "1.0.0") -> dict[str, Any]:
    """The AsyncAPI document for a whole system (its services' models; nothing starts)."""
    if not isinstance(topology, Topology):
        topology = load_topology(topology)
    models = {name: prepared.models for name, prepared in load_services(topology).items()}
    return build_document(
        topology_channels(topology, models),
        title=topology.name,
        version=version,
        description=f"The {topology.name} system: {len(topology.services)} services "
        f"({', '.join(topology.services)}), {len(topology.links)} links.",
    )


def dumps(document: Mapping[str, Any]) -> str:
    """The document as JSON text: two-space indent, keys in the order built (stable)."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write an AsyncAPI 3.0 document (JSON) for a topology file or one "
        "service's .py file.",
    )
    parser.add_argument("source", help="a topology (.toml) or a service file (.py)")
    parser.add_argument("-o", "--output", help="write to this file (default: stdout)")
    parser.add_argument("-c", "--config_path", help="a service's config JSON (.py form)")
    parser.add_argument("-a", "--addresses_path", help="a service's addresses JSON (.py form)")
    parser.add_argument("--api_version", help="info.version (default: the module's "
                        "__version__, or 1.0.0)")  # fmt: skip
    return parser


def main(argv: Sequence[str]) -> int:
    """``service_framework asyncapi SOURCE [-o FILE]``: exit 0, or 2 with one line."""
    args = _parser().parse_args(list(argv))
    try:
        if args.source.endswith(".py"):
            config = None
            if args.config_path:
                config = flatten_seed_shape(load_json(args.config_path, "config"))
            addresses = None
            if args.addresses_path:
                addresses = load_json(args.addresses_path, "addresses", AddressError)
            document = service_document(
                args.source, config=config, addresses=addresses, version=args.api_version
            )
        else:
            if args.config_path or args.addresses_path:
                raise ServiceFrameworkError(
                    "-c/-a apply to a service file; a topology gives config and addresses"
                )
            document = topology_document(args.source, version=args.api_version or "1.0.0")
        text = dumps(document)
        if args.output:
            Path(args.output).write_text(text)
        else:
            sys.stdout.write(text)
    except (ServiceFrameworkError, ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0
