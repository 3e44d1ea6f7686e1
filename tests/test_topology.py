"""The topology file: parsing, derived addresses, the published schema."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from service_framework import topology as topo
from service_framework.security import create_keypair

if sys.version_info >= (3, 11):
    import tomllib
else:  # the conditional dependency of Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "orders"

REPLYER = """
def on(args, to_send, config):
    return {"text": args["text"]}

connection_models = {"in": {"echo": {
    "connection_type": "replyer",
    "required_creation_arguments": {"connection_function": on},
    "required_arguments": {"text": str},
    "required_return_arguments": {"text": str},
}}}
"""
REQUESTER = """
connection_models = {"out": {"ask": {
    "connection_type": "requester",
    "required_arguments": {"text": str},
    "required_return_arguments": {"text": str},
}}}
"""


def subscriber(is_binder: bool = False) -> str:
    return f"""
def on(args, to_send, config):
    pass

connection_models = {{"in": {{"ticks": {{
    "connection_type": "subscriber",
    "required_creation_arguments": {{"connection_function": on}},
    "optional_creation_arguments": {{"is_binder": {is_binder}}},
    "required_arguments": {{"n": int}},
}}}}}}
"""


def publisher(is_x_pub: bool = False) -> str:
    return f"""
connection_models = {{"out": {{"ticks": {{
    "connection_type": "publisher",
    "optional_creation_arguments": {{"is_x_pub": {is_x_pub}, "wait_after_creation_s": 0}},
    "required_arguments": {{"n": int}},
}}}}}}
"""


def system(tmp_path: Path, toml: str, **services: str) -> topo.Topology:
    """Write ``services`` (name -> source) and a topology file; load it."""
    for name, source in services.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    path = tmp_path / "system.toml"
    path.write_text(textwrap.dedent(toml))
    return topo.load_topology(path)


def addresses_of(topology: topo.Topology, **kwargs: Any) -> dict[str, Any]:
    return topo.derive_addresses(topology, topo.load_services(topology), **kwargs)


def test_example_topology_derives_the_shipped_addresses_files() -> None:
    topology = topo.load_topology(EXAMPLE / "system.toml")
    assert list(topology.services) == ["pricing", "router", "ledger", "trader"]
    assert topology.services["trader"].main is True
    assert topology.services["pricing"].file == EXAMPLE / "services" / "pricing.py"
    derived = addresses_of(topology)
    for name in topology.services:
        shipped = json.loads((EXAMPLE / "addresses" / f"{name}.json").read_text())
        shipped = {"in": {}, "out": {}, **shipped}
        assert derived[name] == shipped, name


def test_example_topology_is_valid_against_the_published_schema() -> None:
    schema = topo.topology_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    data = tomllib.loads((EXAMPLE / "system.toml").read_text())
    jsonschema.Draft202012Validator(schema).validate(data)


@pytest.mark.parametrize(
    "toml",
    [
        'colour = "red"\n[services.a]\nfile = "a.py"\n',
        '[services.a]\nfile = "a.py"\nreplicas = 0\n',
        "[services.a]\n",
        'links = ["a.ask b.echo"]\n[services.a]\nfile = "a.py"\n',
        'links = [{from = "a.ask", to = "b.echo", port = 70000}]\n[services.a]\nfile = "a.py"\n',
        'links = [{from = "a.ask", to = "b.echo", colour = 1}]\n[services.a]\nfile = "a.py"\n',
        'links = ["a -> b.echo"]\n[services.a]\nfile = "a.py"\n',
        '[services.1a]\nfile = "a.py"\n',
        '[services.a]\nfile = "a.py"\nhost = "my host"\n',
        '[services.a]\nfile = "a.py"\nmain = "yes"\n',
        '[services.a]\nfile = "a.py"\ncurve = {secret_key = "k.key_secret"}\n',
        '[services.a]\nfile = "a.py"\n'
        'curve = {secret_key = "k.key_secret", authorized_keys = "d", allow_any = true}\n',
        '[services.a]\nfile = "a.py"\naddresses = {sideways = {}}\n',
        'base_port = 0\n[services.a]\nfile = "a.py"\n',
        "services = {}\n",
    ],
)
def test_the_schema_and_the_loader_refuse_the_same_mistakes(tmp_path: Path, toml: str) -> None:
    validator = jsonschema.Draft202012Validator(topo.topology_schema())
    assert not validator.is_valid(tomllib.loads(toml))
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(topo.TopologyError, match=r"bad\.toml"):
        topo.load_topology(path)


def test_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('[services.a]\nfile = "a.py"\nhots = "x"\n')
    with pytest.raises(topo.TopologyError, match=r"t\.toml: services\.a: unknown key 'hots'"):
        topo.load_topology(path)
    path.write_text("[services.a\n")
    with pytest.raises(topo.TopologyError, match="not valid TOML"):
        topo.load_topology(path)
    with pytest.raises(topo.TopologyError, match="not found"):
        topo.load_topology(tmp_path / "missing.toml")
    path.write_text('[services.a]\nfile = "a.py"\n')
    with pytest.raises(topo.TopologyError, match=r"no service 'b' \(services: a\)"):
        topo.load_topology(path).service("b")


def test_requesters_connect_to_the_replyer_and_ports_come_from_base_port(tmp_path: Path) -> None:
    topology = system(
        tmp_path,
        """
        base_port = 6000
        links = ["c1.ask -> r.echo", "c2.ask -> r.echo", "c1.ask -> r2.echo"]
        [services.r]
        file = "r.py"
        [services.r2]
        file = "r.py"
        [services.c1]
        file = "c.py"
        [services.c2]
        file = "c.py"
        """,
        r=REPLYER,
        c=REQUESTER,
    )
    derived = addresses_of(topology)
    assert derived["r"] == {"in": {"echo": {"replyer": "127.0.0.1:6000"}}, "out": {}}
    assert derived["r2"]["in"]["echo"] == {"replyer": "127.0.0.1:6001"}
    # One requester linked to two replyers spreads its requests over both.
    assert derived["c1"]["out"]["ask"] == {"requester": ["127.0.0.1:6000", "127.0.0.1:6001"]}
    assert derived["c2"]["out"]["ask"] == {"requester": "127.0.0.1:6000"}
    # Deterministic: the same file gives the same ports every time.
    assert addresses_of(topo.load_topology(topology.path)) == derived


def test_ports_are_unique_per_host_and_given_ports_are_kept(tmp_path: Path) -> None:
    topology = system(
        tmp_path,
        """
        base_port = 7000
        links = [
            {from = "c.ask", to = "a.echo", port = 7001},
            "c.ask -> b.echo",
            "c.ask -> far.echo",
            "c.ask -> d.echo",
        ]
        [services.a]
        file = "r.py"
        [services.b]
        file = "r.py"
        [services.far]
        file = "r.py"
        host = "10.0.0.9"
        [services.d]
        file = "r.py"
        [services.c]
        file = "c.py"
        """,
        r=REPLYER,
        c=REQUESTER,
    )
    wiring = topo.resolve(topology, topo.load_services(topology))
    ports = {str(e): p for e, p in wiring.ports.items()}
    # a keeps its port; b and d skip it on 127.0.0.1; far, on another host, may reuse 7000.
    assert ports == {"a.echo": 7001, "b.echo": 7000, "far.echo": 7000, "d.echo": 7002}
    assert wiring.problems == ()
    derived = topo.derive_addresses(topology, topo.load_services(topology), wiring=wiring)
    assert derived["far"]["in"]["echo"] == {"replyer": "10.0.0.9:7000"}
    assert "10.0.0.9:7000" in derived["c"]["out"]["ask"]["requester"]


def test_a_publisher_binds_once_for_many_subscribers(tmp_path: Path) -> None:
    topology = system(
        tmp_path,
        """
        base_port = 7100
        links = ["p.ticks -> s1.ticks", "p.ticks -> s2.ticks"]
        [services.p]
        file = "p.py"
        [services.s1]
        file = "s.py"
        [services.s2]
        file = "s.py"
        """,
        p=publisher(),
        s=subscriber(),
    )
    derived = addresses_of(topology)
    assert derived["p"]["out"]["ticks"] == {"publisher": "127.0.0.1:7100"}
    assert derived["s1"]["in"]["ticks"] == {"subscriber": "127.0.0.1:7100"}
    assert derived["s2"]["in"]["ticks"] == {"subscriber": "127.0.0.1:7100"}


def test_a_binding_subscriber_takes_many_connecting_publishers(tmp_path: Path) -> None:
    topology = system(
        tmp_path,
        """
        base_port = 7200
        links = ["p1.ticks -> s.ticks", "p2.ticks -> s.ticks"]
        [services.p1]
        file = "xp.py"
        [services.p2]
        file = "xp.py"
        [services.s]
        file = "bs.py"
        """,
        xp=publisher(is_x_pub=True),
        bs=subscriber(is_binder=True),
    )
    derived = addresses_of(topology)
    assert derived["s"]["in"]["ticks"] == {"subscriber": "127.0.0.1:7200"}
    assert derived["p1"]["out"]["ticks"] == {"publisher": "127.0.0.1:7200"}
    assert derived["p2"]["out"]["ticks"] == {"publisher": "127.0.0.1:7200"}
    wiring = topo.resolve(topology, topo.load_services(topology))
    assert {str(w.binder) for w in wiring.wires} == {"s.ticks"}


def test_cluster_mode_binds_every_interface_and_connects_by_service_name() -> None:
    topology = topo.load_topology(EXAMPLE / "system.toml")
    derived = addresses_of(topology, mode="cluster")
    assert derived["pricing"]["in"]["quote"] == {"replyer": "*:47811"}
    assert derived["trader"]["out"]["quote"] == {"requester": "pricing:47811"}
    assert derived["ledger"]["in"]["fills"] == {"subscriber": "router:47813"}
    named = addresses_of(topology, mode="cluster", host_of=lambda name: f"orders-{name}")
    assert named["trader"]["out"]["place"] == {"requester": "orders-router:47812"}


def test_explicit_addresses_cover_peers_outside_the_topology(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"out": {"ask": {"requester": "10.1.1.1:9"}}}))
    topology = system(
        tmp_path,
        """
        [services.c]
        file = "c.py"
        addresses = "c.json"
        [services.r]
        file = "r.py"
        addresses = {in = {echo = {replyer = "0.0.0.0:47800"}}}
        """,
        r=REPLYER,
        c=REQUESTER,
    )
    derived = addresses_of(topology)
    assert derived["c"]["out"]["ask"] == {"requester": "10.1.1.1:9"}
    assert derived["r"]["in"]["echo"] == {"replyer": "0.0.0.0:47800"}


def test_curve_connectors_get_the_binders_public_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    public, secret = create_keypair(keys, "r")
    create_keypair(keys / "clients", "c")
    topology = system(
        tmp_path,
        """
        links = ["c.ask -> r.echo"]
        [services.r]
        file = "r.py"
        curve = {secret_key = "keys/r.key_secret", authorized_keys = "keys/clients"}
        [services.c]
        file = "c.py"
        curve = {secret_key = "keys/clients/c.key_secret", allow_any = true}
        """,
        r=REPLYER,
        c=REQUESTER,
    )
    spec = topology.services["r"].curve
    assert spec is not None and spec.secret_key == secret and spec.public_key == public
    assert spec.load().public_key == public.read_bytes().split(b'"')[1]
    derived = addresses_of(topology)
    assert derived["c"]["out"]["ask"]["server_public_key"] == str(public)
    cluster = addresses_of(topology, mode="cluster", public_key_of=lambda n: f"/keys/{n}.key")
    assert cluster["c"]["out"]["ask"]["server_public_key"] == "/keys/r.key"


def test_config_file_is_overlaid_by_the_inline_table(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps({"required": {"a": 1}, "optional": {"b": 2}}))
    topology = system(
        tmp_path,
        """
        [services.r]
        file = "r.py"
        config_file = "r.json"
        config = {b = 3}
        env_prefix = "R_"
        """,
    )
    spec = topology.services["r"]
    assert spec.load_config() == {"a": 1, "b": 3}
    assert spec.env_prefix == "R_"


def test_the_readme_shows_the_shipped_example_topology() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The system: topology and check", 1)[1]
    shown = section.split("```toml\n", 1)[1].split("```", 1)[0]
    shipped = (EXAMPLE / "system.toml").read_text()
    body = shipped[shipped.index("name = ") :]
    assert shown == body


def test_a_topology_runs_inline_with_its_config_and_links(capsys) -> None:
    from service_framework import InlineServices

    inline = InlineServices.from_topology(EXAMPLE / "system.toml", console_loglevel=None)
    assert inline.check() == []
    assert inline.get_service_config("pricing") == {"spread_bps": 5}
    inline.start()  # the trader's main: quotes, orders, then the ledger must agree
    out = capsys.readouterr().out
    assert out.count(" filled at ") == 5
    assert "ledger: 5 fills" in out
    # Every connection counted what it did, as it would over sockets: the quote for
    # DOGE-USD failed on pricing's side, the order the trader refused never left it.
    stats = inline.stats()

    def counts(service: str, connection: str) -> tuple[int, int, int, int]:
        got = stats[service][connection]
        return got["received"], got["handled"], got["failed"], got["rejected"]

    assert counts("pricing", "quote") == (6, 5, 1, 0)
    assert counts("router", "place") == (5, 5, 0, 0)
    assert counts("router", "execute") == (5, 5, 0, 0)  # the external target
    assert counts("ledger", "fills") == (5, 5, 0, 0)


def test_inline_runs_one_main_service(tmp_path: Path) -> None:
    from service_framework import InlineServices

    (tmp_path / "m.py").write_text("def main(to_send, config):\n    pass\n")
    path = tmp_path / "t.toml"
    path.write_text(
        '[services.a]\nfile = "m.py"\nmain = true\n[services.b]\nfile = "m.py"\nmain = true\n'
    )
    with pytest.raises(ValueError, match="one main service, but a, b are all main = true"):
        InlineServices.from_topology(path)
