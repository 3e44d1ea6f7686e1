"""``service_framework check TOPOLOGY``: find contract mismatches before anything runs.

Every service module of the topology is loaded and its models parsed (no socket opens),
then every link is compared end to end. A finding names both ends
(``trader.place -> router.place``) and has a stable ``code``:

=====================  ===============================================================
``load-error``         a service cannot be loaded (import, model, config or hook error)
``unknown-service``    a link names a service the topology does not have
``unknown-connection`` a link names a connection the service does not declare (or on the
                       wrong side: the sender is on the left of ``->``)
``incompatible-types`` the two connection types cannot be linked (requester -> replyer,
                       publisher -> subscriber, pusher -> puller)
``both-bind``          both ends bind (e.g. a publisher and an ``is_binder`` subscriber)
``both-connect``       both ends connect (e.g. an ``is_x_pub`` publisher and a subscriber)
``missing-key``        the receiver requires a key the sender may omit or never sends
``unexpected-key``     the sender may send a key the receiver refuses
``type-mismatch``      a value the sender may send is one the receiver would refuse
``return-mismatch``    a reply the replyer may return is one the requester would refuse
``topic-mismatch``     the subscriber's topic is not the one the publisher sends on
``unlinked``           a declared connection is in no link and has no address: a binder
                       nobody connects to, or a connector with nothing to connect to
``address-conflict``   a linked connection is also given an explicit address
``unknown-address``    an explicit address names a connection the service does not declare
``duplicate-port``     two binders on one host bind the same port
``port-conflict``      the links to one binder give it different ports
``curve-mismatch``     one end of a link uses CURVE and the other does not, or a
                       connector's binders have different CURVE keys
``curve-error``        a service's CURVE key files cannot be read
``curve-unauthorized`` a connector's public key is not among the binder's authorized keys
=====================  ===============================================================

Types are compared as the receiver decodes them off the wire (see README, "Models and
validation"): a value is accepted when the receiver declares its type or a supertype, or
a type it converts to losslessly (``int`` -> ``float``, ``int``/``float`` -> ``Decimal``).
A sender whose spec is untyped (``dict``, ``list``, ``Any``, or no model) cannot be
proven wrong and is not reported.

Public API: :func:`check_topology` ``(topology) -> CheckReport``, :func:`check_link`
``(out_model, in_model) -> list[Finding]`` (the model comparison alone, also used by
:class:`~service_framework.InlineServices`), :func:`compare` ``(receiver_node,
sender_node) -> list[(code, detail)]``, and :func:`main` (the subcommand).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from .errors import ServiceFrameworkError
from .loader import PreparedService
from .models import ConnectionModel
from .msgpack_codec import struct_keys
from .security import Curve
from .topology import (
    Endpoint,
    Finding,
    Topology,
    TopologyError,
    Wiring,
    binds,
    load_service,
    load_topology,
    resolve,
    topology_schema,
)
from .validation import (
    AnyNode,
    ClassNode,
    DictNode,
    FieldsNode,
    ListNode,
    LiteralNode,
    Node,
    NoneNode,
    SetNode,
    TupleNode,
    TypeNode,
    UnionNode,
    VarTupleNode,
)

__all__ = ["CheckReport", "check_link", "check_topology", "compare", "main"]

PROG = "service_framework check"


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check_topology` found. ``prepared`` holds every service that loaded;
    ``wiring`` is the binders, connectors and ports decided for the links."""

    topology: Topology
    findings: tuple[Finding, ...]
    prepared: Mapping[str, PreparedService]
    wiring: Wiring

    @property
    def ok(self) -> bool:
        return not self.findings

    def about(self, service: str) -> tuple[Finding, ...]:
        """The findings with ``service`` at one of their ends."""
        return tuple(
            f
            for f in self.findings
            if any(end == service or end.startswith(f"{service}.") for end in f.ends)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "topology": str(self.topology.path),
            "name": self.topology.name,
            "services": list(self.topology.services),
            "links": [str(link) for link in self.topology.links],
            "ok": self.ok,
            "findings": [f.as_dict() for f in self.findings],
        }

    def __repr__(self) -> str:
        return f"<CheckReport {self.topology.name}: {len(self.findings)} finding(s)>"


# --------------------------------------------------------------------------- topology


def check_topology(topology: Topology) -> CheckReport:
    """Load every service of ``topology`` (no sockets) and report every finding."""
    findings: list[Finding] = []
    prepared: dict[str, PreparedService] = {}
    for name in topology.services:
        try:
            prepared[name] = load_service(topology, name)
        except (ServiceFrameworkError, ValueError) as exc:
            findings.append(Finding("load-error", f"{name}: cannot be loaded: {exc}", (name,)))
    wiring = resolve(topology, prepared)
    findings.extend(wiring.problems)
    linked: set[Endpoint] = set()
    for wire in wiring.wires:
        link = wire.link
        linked.update((link.source, link.target))
        out_model = prepared[link.source.service].models.outbound[link.source.connection]
        in_model = prepared[link.target.service].models.inbound[link.target.connection]
        findings.extend(check_link(out_model, in_model, link=str(link)))
    # Ends of links that could not be wired still count as linked: they are reported.
    for link in topology.links:
        linked.update((link.source, link.target))
    findings.extend(_addressing(topology, prepared, linked))
    findings.extend(_curve(topology, wiring))
    return CheckReport(topology, tuple(findings), prepared, wiring)


def _addressing(
    topology: Topology, prepared: Mapping[str, PreparedService], linked: set[Endpoint]
) -> list[Finding]:
    findings: list[Finding] = []
    for name, service in prepared.items():
        explicit = topology.services[name].addresses
        models = service.models
        for side, declared in (("in", models.inbound), ("out", models.outbound)):
            for conn in explicit.get(side, {}):
                end = f"{name}.{conn}"
                if conn not in declared:
                    findings.append(
                        Finding(
                            "unknown-address",
                            f"{end}: the topology gives an '{side}' address for a connection "
                            f"{name} does not declare ('{side}' connections: "
                            f"{', '.join(declared) or 'none'})",
                            (end,),
                        )
                    )
                elif Endpoint(name, conn) in linked:
                    findings.append(
                        Finding(
                            "address-conflict",
                            f"{end} is linked and also given an explicit address; drop one "
                            "(the link's address would be used)",
                            (end,),
                        )
                    )
            for conn, model in declared.items():
                if not model.kind.address_keys or Endpoint(name, conn) in linked:
                    continue
                if conn in explicit.get(side, {}):
                    continue
                end = f"{name}.{conn}"
                role = (
                    "binds, but nothing connects to it"
                    if binds(model)
                    else "connects, but has nothing to connect to"
                )
                findings.append(
                    Finding(
                        "unlinked",
                        f"{end} (a {model.connection_type}) is in no link and has no address: "
                        f"it {role}",
                        (end,),
                    )
                )
    return findings


def _curve(topology: Topology, wiring: Wiring) -> list[Finding]:
    findings: list[Finding] = []
    loaded: dict[str, Curve | None] = {}
    for name, spec in topology.services.items():
        if spec.curve is None:
            loaded[name] = None
            continue
        try:
            loaded[name] = spec.curve.load()
        except ServiceFrameworkError as exc:
            loaded[name] = None
            findings.append(Finding("curve-error", f"{name}: {exc}", (name,)))
    # One addresses entry holds one server key: a connector linked to several binders
    # needs them to share a key pair.
    keys_of: dict[Endpoint, dict[str, Path]] = {}
    for wire in wiring.wires:
        b_spec = topology.services[wire.binder.service].curve
        if b_spec is not None:
            keys_of.setdefault(wire.connector, {})[str(wire.binder)] = b_spec.public_key
    for connector, keys in keys_of.items():
        if len(set(keys.values())) > 1:
            binders = ", ".join(keys)
            findings.append(
                Finding(
                    "curve-mismatch",
                    f"{connector} connects to {binders}, which have different CURVE keys; "
                    "a connecting address holds one server key, so give them one key pair",
                    (str(connector), *keys),
                )
            )
    for wire in wiring.wires:
        binder, connector = wire.binder, wire.connector
        ends = (str(wire.link.source), str(wire.link.target))
        b_spec = topology.services[binder.service].curve
        c_spec = topology.services[connector.service].curve
        if (b_spec is None) != (c_spec is None):
            on, off = (binder, connector) if b_spec is not None else (connector, binder)
            findings.append(
                Finding(
                    "curve-mismatch",
                    f"link {wire.link}: {on.service} uses CURVE but {off.service} does not; "
                    "the two could never talk",
                    ends,
                    str(wire.link),
                )
            )
            continue
        server, client = loaded.get(binder.service), loaded.get(connector.service)
        if server is None or client is None or server.authorized_keys is None:
            continue
        if not _authorized(server, client.public_key):
            findings.append(
                Finding(
                    "curve-unauthorized",
                    f"link {wire.link}: {connector.service}'s public key is not in "
                    f"{binder.service}'s authorized keys ({server.authorized_keys}); "
                    f"{binder} would refuse {connector}",
                    ends,
                    str(wire.link),
                )
            )
    return findings


def _authorized(server: Curve, public_key: bytes) -> bool:
    import zmq.auth

    folder = server.authorized_keys
    assert folder is not None
    for path in sorted(Path(folder).glob("*.key")):
        try:
            key, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError):
            continue
        if key == public_key:
            return True
    return False


# --------------------------------------------------------------------------- one link


def check_link(
    out_model: ConnectionModel, in_model: ConnectionModel, *, link: str | None = None
) -> list[Finding]:
    """Compare the models of one link: arguments (sender -> receiver), the reply
    (replyer -> requester) and the topic. ``link`` is how the link reads in messages
    (default ``"out.service.conn -> in.service.conn"``)."""
    source = f"{out_model.service}.{out_model.name}"
    target = f"{in_model.service}.{in_model.name}"
    text = link or f"{source} -> {target}"
    ends = (source, target)
    findings: list[Finding] = []
    for code, detail in compare(in_model.args.node, out_model.args.node, source, target):
        findings.append(Finding(code, f"link {text}: arguments: {detail}", ends, text))
    if out_model.returns is not None and in_model.returns is not None:
        # The reply travels the other way: the replyer sends, the requester receives.
        for code, detail in compare(out_model.returns.node, in_model.returns.node, target, source):
            findings.append(
                Finding("return-mismatch", f"link {text}: reply: {detail} ({code})", ends, text)
            )
    if "topic" in in_model.kind.optional_creation_arguments:
        published = out_model.creation_arguments.get("topic") or ""
        wanted = in_model.creation_arguments.get("topic") or ""
        if wanted and wanted != published:
            on = f"topic {published!r}" if published else "no topic"
            findings.append(
                Finding(
                    "topic-mismatch",
                    f"link {text}: {target} subscribes to topic {wanted!r} but {source} "
                    f"publishes on {on}: it would never receive a message",
                    ends,
                    text,
                )
            )
    return findings


# --------------------------------------------------------------------------- nodes

_ARRAYS = (list, tuple, set, frozenset)
_BINARY = (bytes, bytearray, memoryview)


def compare(
    receiver: Node, sender: Node, sender_name: str = "sender", receiver_name: str = "receiver"
) -> list[tuple[str, str]]:
    """Why values valid for ``sender`` may be refused by ``receiver``: a list of
    ``(code, detail)``, empty when every such value is accepted (or the sender is
    untyped and cannot be proven wrong). Codes: ``missing-key``, ``unexpected-key``,
    ``type-mismatch``."""
    return _Comparison(sender_name, receiver_name).run(receiver, sender, "$")


class _Comparison:
    def __init__(self, sender: str, receiver: str) -> None:
        self.sender = sender
        self.receiver = receiver
        self.seen: set[tuple[int, int]] = set()  # recursive specs (a class naming itself)

    def run(self, r: Node, s: Node, path: str) -> list[tuple[str, str]]:
        key = (id(r), id(s))
        if key in self.seen:
            return []
        self.seen.add(key)
        try:
            return self._compare(r, s, path)
        finally:
            self.seen.discard(key)

    def mismatch(self, r: Node, s: Node, path: str, why: str = "") -> list[tuple[str, str]]:
        detail = (
            f"at {path} {self.sender} may send {s.describe()}, "
            f"{self.receiver} accepts {r.describe()}"
        )
        return [("type-mismatch", detail + (f" ({why})" if why else ""))]

    def _compare(self, r: Node, s: Node, path: str) -> list[tuple[str, str]]:
        if isinstance(r, AnyNode) or isinstance(s, AnyNode):
            return []
        if isinstance(s, UnionNode):
            return [found for member in s.members for found in self.run(r, member, path)]
        if isinstance(r, UnionNode):
            results = [self.run(member, s, path) for member in r.members]
            if any(not found for found in results):
                return []
            # `X | None`: what is wrong with the value is what is wrong with X.
            pairs = zip(r.members, results, strict=True)
            typed = [found for m, found in pairs if not isinstance(m, NoneNode)]
            return typed[0] if len(typed) == 1 else self.mismatch(r, s, path)
        if isinstance(s, LiteralNode):
            return self._literal_sender(r, s, path)
        if isinstance(s, NoneNode):
            return [] if _value_ok(r, None) else self.mismatch(r, s, path)
        if isinstance(r, TypeNode):
            return self._type_receiver(r, s, path)
        if isinstance(r, LiteralNode):
            return self._literal_receiver(r, s, path)
        if isinstance(r, NoneNode):
            return self.mismatch(r, s, path)
        if isinstance(s, TypeNode):
            # An untyped container cannot be proven wrong for a structured receiver of
            # the same family; anything else is.
            if s.cls in _ARRAYS and isinstance(r, (ListNode, SetNode, VarTupleNode, TupleNode)):
                return []
            if issubclass(s.cls, dict) and isinstance(r, (FieldsNode, DictNode, ClassNode)):
                return []
            return self.mismatch(r, s, path)
        if isinstance(r, (ListNode, SetNode, VarTupleNode)):
            return self._items_receiver(r, s, path)
        if isinstance(r, TupleNode):
            return self._tuple_receiver(r, s, path)
        if isinstance(r, DictNode):
            return self._dict_receiver(r, s, path)
        if isinstance(r, (FieldsNode, ClassNode)):
            return self._fields_receiver(r, s, path)
        return self.mismatch(r, s, path)

    # ---- receivers
    def _type_receiver(self, r: TypeNode, s: Node, path: str) -> list[tuple[str, str]]:
        cls = r.cls
        if cls is object:
            return []
        if isinstance(s, TypeNode):
            return [] if _class_ok(cls, s.cls) else self.mismatch(r, s, path)
        if isinstance(s, (ListNode, SetNode, VarTupleNode, TupleNode)):
            return [] if cls in _ARRAYS else self.mismatch(r, s, path)
        if isinstance(s, (FieldsNode, DictNode)):
            return [] if issubclass(dict, cls) else self.mismatch(r, s, path)
        if isinstance(s, ClassNode):
            if issubclass(s.cls, cls) or issubclass(dict, cls):  # a class travels as a map
                return []
            return self.mismatch(r, s, path)
        return self.mismatch(r, s, path)

    def _literal_receiver(self, r: LiteralNode, s: Node, path: str) -> list[tuple[str, str]]:
        if isinstance(s, TypeNode) and s.cls is bool and {True, False} <= set(r.values):
            return []
        allowed = r.describe().removeprefix("one of ")
        return self.mismatch(r, s, path, f"only {allowed} are accepted")

    def _literal_sender(self, r: Node, s: LiteralNode, path: str) -> list[tuple[str, str]]:
        # The seed grammar's literal sets also accept a collection of the values; senders
        # in practice send one value, and only that form is compared.
        refused = [v for v in s.values if not _value_ok(r, v)]
        if not refused:
            return []
        shown = ", ".join(repr(v) for v in refused)
        return self.mismatch(r, s, path, f"{shown} would be refused")

    def _items_receiver(
        self, r: ListNode | SetNode | VarTupleNode, s: Node, path: str
    ) -> list[tuple[str, str]]:
        if isinstance(s, (ListNode, SetNode, VarTupleNode)):
            return self.run(r.item, s.item, f"{path}[]")
        if isinstance(s, TupleNode):
            return [
                found
                for i, item in enumerate(s.items)
                for found in self.run(r.item, item, f"{path}[{i}]")
            ]
        return self.mismatch(r, s, path)

    def _tuple_receiver(self, r: TupleNode, s: Node, path: str) -> list[tuple[str, str]]:
        if isinstance(s, TupleNode):
            if len(s.items) != len(r.items):
                return self.mismatch(r, s, path, "the lengths differ")
            return [
                found
                for i, (ri, si) in enumerate(zip(r.items, s.items, strict=True))
                for found in self.run(ri, si, f"{path}[{i}]")
            ]
        if isinstance(s, (ListNode, SetNode, VarTupleNode)):
            return self.mismatch(r, s, path, f"any length, where exactly {len(r.items)} items")
        return self.mismatch(r, s, path)

    def _dict_receiver(self, r: DictNode, s: Node, path: str) -> list[tuple[str, str]]:
        if isinstance(s, DictNode):
            return self.run(r.key, s.key, f"{path}{{key}}") + self.run(
                r.value, s.value, f"{path}[...]"
            )
        if isinstance(s, (FieldsNode, ClassNode)):
            key_problems = self.run(r.key, TypeNode(str), f"{path}{{key}}")
            required, optional = _fields(s)
            return key_problems + [
                found
                for key, node in {**required, **optional}.items()
                for found in self.run(r.value, node, _key_path(path, key))
            ]
        return self.mismatch(r, s, path)

    def _fields_receiver(
        self, r: FieldsNode | ClassNode, s: Node, path: str
    ) -> list[tuple[str, str]]:
        if isinstance(r, ClassNode) and isinstance(s, ClassNode) and issubclass(s.cls, r.cls):
            return []
        if isinstance(s, DictNode):
            required, _ = _fields(r)
            if required:
                keys = ", ".join(map(repr, required))
                return self.mismatch(r, s, path, f"any keys, where {keys} are required")
            return self.mismatch(r, s, path)
        if not isinstance(s, (FieldsNode, ClassNode)):
            return self.mismatch(r, s, path)
        r_required, r_optional = _fields(r)
        s_required, s_optional = _fields(s)
        found: list[tuple[str, str]] = []
        for key, node in r_required.items():
            where = _key_path(path, key)
            if key in s_required:
                found += self.run(node, s_required[key], where)
            elif key in s_optional:
                found.append(
                    (
                        "missing-key",
                        f"{self.receiver} requires key {key!r} at {path}, "
                        f"{self.sender} may omit it (it is optional there)",
                    )
                )
                found += self.run(node, s_optional[key], where)
            else:
                found.append(
                    (
                        "missing-key",
                        f"{self.receiver} requires key {key!r} at {path}, "
                        f"{self.sender} never sends it",
                    )
                )
        # A TypedDict receiver drops keys it does not know (the msgpack codec decodes it
        # natively); others refuse them.
        drops_unknown = isinstance(r, FieldsNode) and hasattr(r, "td")
        for key, node in {**s_required, **s_optional}.items():
            if key in r_required:
                continue
            if key in r_optional:
                found += self.run(r_optional[key], node, _key_path(path, key))
            elif not drops_unknown:
                how = "always sends" if key in s_required else "may send"
                allowed = ", ".join(map(repr, [*r_required, *r_optional])) or "none"
                found.append(
                    (
                        "unexpected-key",
                        f"{self.sender} {how} key {key!r} at {path}, {self.receiver} refuses it "
                        f"(allowed: {allowed})",
                    )
                )
        return found


def _key_path(path: str, key: object) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


def _class_ok(receiver: type, sender: type) -> bool:
    """Whether the receiver's declared class accepts every value of the sender's."""
    excluded = TypeNode._EXCLUDED.get(receiver)
    if excluded is not None and issubclass(sender, excluded):
        return False
    if issubclass(sender, receiver):
        return True
    if sender is bool:
        return False
    # Lossless conversions the receiver makes (README, "Models and validation").
    if receiver is float and issubclass(sender, int):
        return True
    if receiver is Decimal and issubclass(sender, (int, float)):
        return True
    # Arrays travel as msgpack arrays, bytes-likes as bin: any of each decodes as any.
    if receiver in _ARRAYS and issubclass(sender, _ARRAYS):
        return True
    return receiver in _BINARY and issubclass(sender, _BINARY)


def _value_ok(receiver: Node, value: object) -> bool:
    """Whether ``receiver`` accepts one literal ``value`` (as decoded off the wire)."""
    if receiver.compiled_check()(value):
        return True
    if isinstance(receiver, UnionNode):
        return any(_value_ok(m, value) for m in receiver.members)
    if isinstance(receiver, TypeNode) and value is not None:
        return _class_ok(receiver.cls, type(value))
    return False


def _fields(node: FieldsNode | ClassNode) -> tuple[dict[Any, Node], dict[Any, Node]]:
    """(required, optional) keys of a dict-shaped node, as the map travels."""
    if isinstance(node, FieldsNode):
        return dict(node.required), dict(node.optional)
    cls = node.cls
    required: dict[Any, Node] = {}
    optional: dict[Any, Node] = {}
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            # A dataclass sends every field; one with a default may be omitted by others.
            (optional if has_default else required)[f.name] = node.fields[f.name]
    else:
        for info in struct_keys(cls):
            (optional if info.has_default else required)[info.key] = node.fields[info.field]
    return required, optional


# --------------------------------------------------------------------------- command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Load every service of a topology (no sockets) and report every link "
        "whose models disagree, every unlinked connection and every port clash. "
        "Exit 0: clean; 1: findings; 2: the topology cannot be read.",
    )
    parser.add_argument("topology", nargs="?", help="the topology file (TOML)")
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default text)"
    )
    parser.add_argument(
        "--schema", action="store_true", help="print the topology file's JSON Schema and exit"
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """``service_framework check [--format text|json] TOPOLOGY`` / ``check --schema``."""
    args = _parser().parse_args(list(argv))
    if args.schema:
        print(json.dumps(topology_schema(), indent=2))
        return 0
    if not args.topology:
        print(f"{PROG}: error: give a topology file (or --schema)", file=sys.stderr)
        return 2
    try:
        topology = load_topology(args.topology)
    except TopologyError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    report = check_topology(topology)
    if args.format == "json":
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def format_report(report: CheckReport) -> str:
    """The report as text: one line per finding, then a summary line."""
    topology = report.topology
    summary = f"{topology.path}: {len(topology.services)} services, {len(topology.links)} links: "
    if report.ok:
        return summary + "no findings"
    lines = [f"{f.code}: {f.message}" for f in report.findings]
    count = len(report.findings)
    lines.append(summary + f"{count} finding{'s' if count != 1 else ''}")
    return "\n".join(lines)
