"""``service_framework graph``: Mermaid, DOT and SVG pictures of a topology, compared by
structure (nodes, arrows, labels), never by pixels."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from service_framework import cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "orders"
SYSTEM = EXAMPLE / "system.toml"

MERMAID_NODE = re.compile(r'^    (\w+)(\[\[|\[)"(.*)"(\]\]|\])$')
MERMAID_EDGE = re.compile(r'^    (\w+) (-->|-\.->)\|"(.*)"\| (\w+)$')
DOT_NODE = re.compile(r'^    "([^"]+)" \[label="(.*?)"(.*)\];$')
DOT_EDGE = re.compile(r'^    "([^"]+)" -> "([^"]+)" \[label="(.*?)"(.*)\];$')

# The example system's arrows: (from, to, first label line), in the topology's order.
EXAMPLE_ARROWS = [
    ("trader", "pricing", "quote: requester → replyer"),
    ("trader", "router", "place: requester → replyer"),
    ("trader", "ledger", "positions: requester → replyer"),
    ("router", "ledger", "fills: publisher → subscriber"),
    ("router", "router_execute", "execute: external_target"),
]


def graph(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(["graph", *argv]) == 0
    return capsys.readouterr().out


def mermaid_structure(text: str) -> tuple[dict[str, list[str]], list[tuple[str, str, list[str]]]]:
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    nodes: dict[str, list[str]] = {}
    edges: list[tuple[str, str, list[str]]] = []
    for line in lines[1:]:
        node, edge = MERMAID_NODE.match(line), MERMAID_EDGE.match(line)
        assert node or edge, f"not a node or an arrow: {line!r}"
        if node:
            nodes[node[1]] = node[3].split("<br/>")
        elif edge:
            assert edge[1] in nodes and edge[4] in nodes, line
            edges.append((edge[1], edge[4], edge[3].split("<br/>")))
    return nodes, edges


def cli_process(args: list[str], cwd: Path, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service_framework", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": path},
        check=False,
    )


def test_example_as_mermaid(capsys: pytest.CaptureFixture[str]) -> None:
    nodes, edges = mermaid_structure(graph([str(SYSTEM)], capsys))
    assert nodes == {
        "pricing": ["pricing"],
        "router": ["router"],
        "ledger": ["ledger"],
        "trader": ["trader", "main mode"],
        "router_execute": ["exchange.execute", "Python call"],
    }
    assert [(a, b, label[0]) for a, b, label in edges] == EXAMPLE_ARROWS
    place = edges[1][2]
    assert place[1:] == ["{order_id, symbol, side, qty, limit}", "reply {order_id, status, price}"]
    fills = edges[3][2]
    assert fills[1:] == ["topic 'fills'", "{order_id, symbol, side, qty, price}"]


def test_example_as_dot_has_the_same_structure(capsys: pytest.CaptureFixture[str]) -> None:
    text = graph([str(SYSTEM), "--format", "dot"], capsys)
    lines = text.splitlines()
    assert lines[0] == 'digraph "orders" {' and lines[-1] == "}"
    nodes = [m[1] for m in map(DOT_NODE.match, lines) if m]
    edges = [(m[1], m[2], m[3].split("\\n")[0]) for m in map(DOT_EDGE.match, lines) if m]
    assert nodes == ["pricing", "router", "ledger", "trader", "router.execute"]
    expected = [(a, b.replace("router_execute", "router.execute"), c) for a, b, c in EXAMPLE_ARROWS]
    assert edges == expected
    assert "style=dashed" in lines[-2]  # the Python call


def test_optional_keys_replicas_odd_names_and_quotes_are_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "end.py").write_text(
        textwrap.dedent(
            """
            connection_models = {"out": {"say": {
                "connection_type": "publisher",
                "optional_creation_arguments": {"topic": 'q"t', "wait_after_creation_s": 0},
                "required_arguments": {"text": str},
                "optional_arguments": {"lang": str},
            }}}
            """
        )
    )
    (tmp_path / "ear.py").write_text(
        textwrap.dedent(
            """
            def on(args, to_send, config):
                pass

            connection_models = {"in": {"hear": {
                "connection_type": "subscriber",
                "required_creation_arguments": {"connection_function": on},
                "optional_creation_arguments": {"topic": "other"},
                "required_arguments": {"text": str},
            }}}
            """
        )
    )
    topology = tmp_path / "system.toml"
    topology.write_text(
        textwrap.dedent(
            """
            name = 'say "hi"'
            links = ["end.say -> ear-1.hear"]
            [services.end]
            file = "end.py"
            [services.ear-1]
            file = "ear.py"
            replicas = 3
            """
        )
    )
    nodes, edges = mermaid_structure(graph([str(topology)], capsys))
    # 'end' closes a Mermaid block and '-' is not an id character: both get safe ids.
    assert nodes == {"s_end": ["end"], "ear_1": ["ear-1", "3 replicas"]}
    assert edges == [
        (
            "s_end",
            "ear_1",
            ["say → hear: publisher → subscriber", "topic 'q#quot;t' → 'other'", "{text, lang?}"],
        )
    ]
    dot = graph([str(topology), "--format", "dot"], capsys)
    assert dot.splitlines()[0] == 'digraph "say \\"hi\\"" {'
    assert '"end" -> "ear-1"' in dot
    assert "topic 'q\\\"t' → 'other'" in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_example_as_svg(tmp_path: Path) -> None:
    out = tmp_path / "system.svg"
    done = cli_process(["graph", str(SYSTEM), "-o", str(out)], tmp_path, "/usr/bin:/bin")
    assert done.returncode == 0, done.stderr
    svg = ET.fromstring(out.read_text())
    ns = {"svg": "http://www.w3.org/2000/svg"}
    groups = svg.findall(".//svg:g", ns)
    titles = {
        kind: sorted(
            g.findtext("svg:title", namespaces=ns) or "" for g in groups if g.get("class") == kind
        )
        for kind in ("node", "edge")
    }
    assert titles["node"] == sorted(["pricing", "router", "ledger", "trader", "router.execute"])
    assert titles["edge"] == sorted(
        f"{a}->{b.replace('router_execute', 'router.execute')}" for a, b, _ in EXAMPLE_ARROWS
    )
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert "place: requester → replyer" in texts


def test_svg_without_graphviz_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    done = cli_process(["graph", str(SYSTEM), "--format", "svg"], tmp_path, str(empty))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "service_framework graph: error: --format svg needs Graphviz's 'dot' on PATH "
        "(e.g. apt-get install graphviz); --format mermaid and --format dot need nothing"
    ]


def test_output_file_format_follows_its_extension(tmp_path: Path) -> None:
    for name, first in (("g.dot", 'digraph "orders" {'), ("g.mmd", "flowchart LR")):
        done = cli_process(["graph", str(SYSTEM), "-o", name], tmp_path, "/usr/bin:/bin")
        assert done.returncode == 0, done.stderr
        assert (tmp_path / name).read_text().splitlines()[0] == first


def test_graph_errors_are_one_line(tmp_path: Path) -> None:
    done = cli_process(["graph", str(tmp_path / "none.toml")], tmp_path, "/usr/bin:/bin")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"service_framework graph: error: topology file not found: {tmp_path / 'none.toml'}"
    ]


def test_readme_shows_the_example_picture_the_command_draws(
    capsys: pytest.CaptureFixture[str],
) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Pictures and AsyncAPI", 1)[1]
    block = re.search(r"```mermaid\n(.*?)```", section, re.S)
    assert block is not None, "the README's example picture is missing"
    assert block[1] == graph([str(SYSTEM)], capsys)
