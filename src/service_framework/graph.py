"""``service_framework graph TOPOLOGY``: the system as a picture.

Services are nodes; every link is an arrow from the sending connection to the receiving
one, labelled with the connection names and types, the topic (pub/sub) and the message
model (its keys; ``?`` marks an optional key; ``reply {...}`` the reply's). An
``external_target`` (a Python call, no socket) is drawn as a call from its service.

Formats: Mermaid (``flowchart LR``; GitHub renders it in Markdown), Graphviz DOT, and SVG
(DOT laid out by Graphviz's ``dot``, which must be installed). The text formats are
deterministic - services in file order, links in file order - so a picture checked into
a README can be compared with what the command prints.

The arrow's message model is the one of the side that defines the contract: the
replyer's arguments and reply for request/reply, the publisher's arguments for pub/sub,
the puller's for push/pull (``service_framework check`` reports ends that disagree).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ServiceFrameworkError
from .models import ConnectionModel, ServiceModels
from .topology import Topology, TopologyError, load_services, load_topology, resolve
from .validation import AnyNode, FieldsNode, Validator

__all__ = [
    "FORMATS",
    "Edge",
    "Graph",
    "Node",
    "main",
    "render",
    "to_dot",
    "to_mermaid",
    "to_svg",
    "topology_graph",
]

FORMATS = ("mermaid", "dot", "svg")
PROG = "service_framework graph"
_EXTENSIONS = {".mmd": "mermaid", ".mermaid": "mermaid", ".dot": "dot", ".gv": "dot", ".svg": "svg"}
# Problems that leave a link without two known, linkable ends: nothing to draw.
_FATAL = frozenset({"unknown-service", "unknown-connection", "incompatible-types"})
# Owners of a link's contract (see the module docstring).
_OWNERS = frozenset({"replyer", "publisher", "puller"})
# Words Mermaid reads as syntax where a node id is expected.
_MERMAID_RESERVED = frozenset(
    {"end", "graph", "flowchart", "subgraph", "direction", "style", "class", "classdef"}
    | {"click", "linkstyle", "default", "call", "href"}
)


@dataclass(frozen=True)
class Node:
    """A box in the picture: a service (``kind="service"``) or a call target."""

    key: str
    lines: tuple[str, ...]  # the first is the name
    kind: str = "service"


@dataclass(frozen=True)
class Edge:
    """An arrow from node ``source`` to node ``target``; ``lines`` label it."""

    source: str
    target: str
    lines: tuple[str, ...]
    dashed: bool = False


@dataclass(frozen=True)
class Graph:
    """What a picture shows, independent of the format it is drawn in."""

    title: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]


def model_keys(validator: Validator | None) -> str:
    """A model as the keys it holds: ``{order_id, qty, note?}``; ``any`` when unchecked."""
    if validator is None:
        return "{}"
    node = validator.node
    if isinstance(node, AnyNode):
        return "any"
    if isinstance(node, FieldsNode):
        keys = [str(k) for k in node.required] + [f"{k}?" for k in node.optional]
        return "{" + ", ".join(keys) + "}"
    return node.describe()


def _owner(source: ConnectionModel, target: ConnectionModel) -> ConnectionModel:
    return source if source.connection_type in _OWNERS else target


def _link_lines(source: ConnectionModel, target: ConnectionModel) -> tuple[str, ...]:
    names = source.name if source.name == target.name else f"{source.name} → {target.name}"
    lines = [f"{names}: {source.connection_type} → {target.connection_type}"]
    owner = _owner(source, target)
    if source.connection_type == "publisher":
        sent = source.creation_arguments.get("topic") or ""
        wanted = target.creation_arguments.get("topic") or ""
        lines.append(f"topic {sent!r}" if sent == wanted else f"topic {sent!r} → {wanted!r}")
    lines.append(model_keys(owner.args))
    if owner.returns is not None:
        lines.append(f"reply {model_keys(owner.returns)}")
    return tuple(lines)


def _target_name(model: ConnectionModel) -> str:
    for part in ("required_creation_arguments", "optional_creation_arguments"):
        given = model.source.get(part) or {}
        for key in ("target", "func_to_call"):
            if isinstance(given.get(key), str):
                return str(given[key])
    target = model.creation_arguments.get("target")
    return str(getattr(target, "__qualname__", None) or target)


def topology_graph(topology: Topology, models: Mapping[str, ServiceModels]) -> Graph:
    """The picture of ``topology`` whose services' parsed ``models`` are given."""
    wiring = resolve(topology, models)
    for problem in wiring.problems:
        if problem.code in _FATAL:
            raise TopologyError(
                f"{topology.path}: {problem.message} (service_framework check lists every problem)"
            )
    nodes: list[Node] = []
    edges: list[Edge] = []
    for name, spec in topology.services.items():
        lines = [name]
        if spec.replicas > 1:
            lines.append(f"{spec.replicas} replicas")
        if spec.main:
            lines.append("main mode")
        nodes.append(Node(name, tuple(lines)))
    for link in topology.links:
        source = models[link.source.service].outbound[link.source.connection]
        target = models[link.target.service].inbound[link.target.connection]
        edges.append(Edge(link.source.service, link.target.service, _link_lines(source, target)))
    for name, service in models.items():
        for model in service.outbound.values():
            if model.kind.address_keys or "target" not in model.creation_arguments:
                continue
            key = f"{name}.{model.name}"
            nodes.append(Node(key, (_target_name(model), "Python call"), kind="call"))
            call = [f"{model.name}: {model.connection_type}", model_keys(model.args)]
            if model.returns is not None:
                call.append(f"returns {model_keys(model.returns)}")
            edges.append(Edge(name, key, tuple(call), dashed=True))
    return Graph(topology.name, tuple(nodes), tuple(edges))


# --------------------------------------------------------------------------- Mermaid


def _mermaid_ids(graph: Graph) -> dict[str, str]:
    ids: dict[str, str] = {}
    taken: set[str] = set()
    for node in graph.nodes:
        base = re.sub(r"[^A-Za-z0-9_]", "_", node.key)
        if not base or base[0].isdigit() or base.lower() in _MERMAID_RESERVED:
            base = f"s_{base}"
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate)
        ids[node.key] = candidate
    return ids


def _mermaid_text(lines: Sequence[str]) -> str:
    escaped = [
        line.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
        for line in lines
    ]
    return '"' + "<br/>".join(escaped) + '"'


def to_mermaid(graph: Graph) -> str:
    """The graph as a Mermaid flowchart (without the Markdown fence)."""
    ids = _mermaid_ids(graph)
    out = ["flowchart LR"]
    for node in graph.nodes:
        text = _mermaid_text(node.lines)
        shape = f"[[{text}]]" if node.kind == "call" else f"[{text}]"
        out.append(f"    {ids[node.key]}{shape}")
    for edge in graph.edges:
        arrow = "-.->" if edge.dashed else "-->"
        out.append(
            f"    {ids[edge.source]} {arrow}|{_mermaid_text(edge.lines)}| {ids[edge.target]}"
        )
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- DOT


def _dot_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot_label(lines: Sequence[str]) -> str:
    return _dot_string("\n".join(lines)).replace("\n", "\\n")


def to_dot(graph: Graph) -> str:
    """The graph in Graphviz's DOT language."""
    out = [
        f"digraph {_dot_string(graph.title)} {{",
        "    rankdir=LR;",
        '    node [shape=box, style=rounded, fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
    ]
    for node in graph.nodes:
        attributes = f"label={_dot_label(node.lines)}"
        if node.kind == "call":
            attributes += ", shape=component, style=solid"
        out.append(f"    {_dot_string(node.key)} [{attributes}];")
    for edge in graph.edges:
        attributes = f"label={_dot_label(edge.lines)}"
        if edge.dashed:
            attributes += ", style=dashed"
        out.append(f"    {_dot_string(edge.source)} -> {_dot_string(edge.target)} [{attributes}];")
    out.append("}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- SVG


class GraphvizMissing(ServiceFrameworkError):
    """``--format svg`` needs Graphviz's ``dot`` program."""


def to_svg(graph: Graph) -> str:
    """The graph laid out by Graphviz (``dot -Tsvg``); raises :class:`GraphvizMissing`
    when ``dot`` is not on ``PATH``."""
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizMissing(
            "--format svg needs Graphviz's 'dot' on PATH (e.g. apt-get install graphviz); "
            "--format mermaid and --format dot need nothing"
        )
    result = subprocess.run(
        [dot, "-Tsvg"], input=to_dot(graph).encode(), capture_output=True, check=False
    )
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise ServiceFrameworkError(
            f"dot -Tsvg failed (exit {result.returncode}): {detail[0] if detail else ''}"
        )
    return result.stdout.decode()


def render(graph: Graph, fmt: str) -> str:
    """``graph`` in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "mermaid":
        return to_mermaid(graph)
    if fmt == "dot":
        return to_dot(graph)
    if fmt == "svg":
        return to_svg(graph)
    raise ValueError(f"unknown format {fmt!r} (formats: {', '.join(FORMATS)})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Draw a topology: services as nodes, links as labelled arrows.",
    )
    parser.add_argument("topology", help="the topology file (.toml)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="mermaid (default), dot, or svg (needs Graphviz); "
        "default from -o's extension (.mmd, .dot/.gv, .svg)",
    )
    parser.add_argument("-o", "--output", help="write to this file (default: stdout)")
    return parser


def main(argv: Sequence[str]) -> int:
    """``service_framework graph TOPOLOGY [--format F] [-o FILE]``: 0, or 2 with one line."""
    args = _parser().parse_args(list(argv))
    fmt = args.format
    if fmt is None:
        fmt = _EXTENSIONS.get(Path(args.output).suffix, "mermaid") if args.output else "mermaid"
    try:
        topology = load_topology(args.topology)
        models = {name: prepared.models for name, prepared in load_services(topology).items()}
        text = render(topology_graph(topology, models), fmt)
        if args.output:
            Path(args.output).write_text(text)
        else:
            sys.stdout.write(text)
    except (ServiceFrameworkError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0
