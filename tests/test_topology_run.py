"""``service_framework run TOPOLOGY SERVICE``: one service of a system, over sockets."""

from __future__ import annotations

import json
import signal
import socket
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "examples" / "orders" / "services"


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out on 127.0.0.1 (bound together, so distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def test_the_example_system_runs_service_by_service_from_its_topology(tmp_path: Path, cli) -> None:
    quote, place, positions, fills = free_ports(4)
    topology = tmp_path / "system.toml"
    topology.write_text(
        textwrap.dedent(
            f"""
            links = [
                {{from = "trader.quote", to = "pricing.quote", port = {quote}}},
                {{from = "trader.place", to = "router.place", port = {place}}},
                {{from = "trader.positions", to = "ledger.positions", port = {positions}}},
                {{from = "router.fills", to = "ledger.fills", port = {fills}}},
            ]
            [services.pricing]
            file = "{SERVICES / "pricing.py"}"
            [services.router]
            file = "{SERVICES / "router.py"}"
            [services.ledger]
            file = "{SERVICES / "ledger.py"}"
            [services.trader]
            file = "{SERVICES / "trader.py"}"
            main = true
            config = {{orders = 3}}
            """
        )
    )
    servers = {name: cli("run", str(topology), name) for name in ("pricing", "router", "ledger")}
    assert servers["pricing"].ready() == {"quote": f"127.0.0.1:{quote}"}
    assert servers["router"].ready() == {
        "place": f"127.0.0.1:{place}",
        "fills": f"127.0.0.1:{fills}",
    }
    assert servers["ledger"].ready()["positions"] == f"127.0.0.1:{positions}"
    servers["ledger"].wait_for(r"connection 'fills' peer connected")
    trader = cli("run", str(topology), "trader", "-cl", "WARNING")
    assert trader.finish(60) == 0, trader.log()
    out = trader.stdout()
    assert out.count(" filled at ") == 3
    assert "ledger: 3 fills" in out
    for server in servers.values():
        server.signal(signal.SIGTERM)
        assert server.finish() == 0, server.log()


ECHO = """
def on(args, to_send, config):
    return {"text": args["text"]}

connection_models = {"in": {"echo": {
    "connection_type": "replyer",
    "required_creation_arguments": {"connection_function": on},
    "required_arguments": {"text": str},
    "required_return_arguments": {"text": str},
}}}
"""
ASK = """
connection_models = {{"out": {{"ask": {{
    "connection_type": "requester",
    "required_arguments": {{"text": {type}}},
    "required_return_arguments": {{"text": str}},
}}}}}}
"""


def test_findings_about_its_own_links_stop_start_up(tmp_path: Path, cli) -> None:
    (tmp_path / "echo.py").write_text(ECHO)
    (tmp_path / "good.py").write_text(ASK.format(type="str"))
    (tmp_path / "bad.py").write_text(ASK.format(type="int"))
    port, other = free_ports(2)
    (tmp_path / "system.toml").write_text(
        textwrap.dedent(
            f"""
            links = [
                {{from = "client.ask", to = "echo.echo", port = {port}}},
                {{from = "broken.ask", to = "other.echo", port = {other}}},
            ]
            [services.echo]
            file = "echo.py"
            [services.client]
            file = "good.py"
            [services.other]
            file = "echo.py"
            [services.broken]
            file = "bad.py"
            """
        )
    )
    refused = cli("run", "system.toml", "broken")
    assert refused.finish() == 2
    log = refused.log()
    assert (
        "service_framework run: error: type-mismatch: link broken.ask -> other.echo: arguments: "
        "at $.text broken.ask may send int, other.echo accepts str" in log
    )
    assert "broken: 1 finding about its links" in log
    assert "ready" not in log

    # A service whose own links are fine starts; findings elsewhere are warnings.
    echo = cli("run", "system.toml", "echo")
    assert echo.ready() == {"echo": f"127.0.0.1:{port}"}
    assert "service_framework run: warning: type-mismatch: link broken.ask -> other.echo" in (
        echo.log()
    )
    echo.signal(signal.SIGTERM)
    assert echo.finish() == 0


def test_config_from_the_topology_and_the_command_line(tmp_path: Path, cli) -> None:
    (tmp_path / "show.py").write_text(
        textwrap.dedent(
            """
            import json

            config_model = {"optional": {"n": int, "m": int, "f": int}}

            def main(to_send, config):
                print(json.dumps(config, sort_keys=True))
            """
        )
    )
    (tmp_path / "show.json").write_text(json.dumps({"n": 1, "m": 1, "f": 7}))
    (tmp_path / "system.toml").write_text(
        '[services.show]\nfile = "show.py"\nmain = true\nconfig_file = "show.json"\n'
        "config = {n = 2, m = 2}\n"
    )
    shown = cli("run", "system.toml", "show", "--m", "3")
    assert shown.finish() == 0, shown.log()
    # file < inline table < command line; the string "3" is converted by the model.
    assert json.loads(shown.stdout()) == {"f": 7, "m": 3, "n": 2}


def test_env_prefix_sits_between_the_topology_and_the_command_line(tmp_path: Path, cli) -> None:
    (tmp_path / "show.py").write_text(
        textwrap.dedent(
            """
            import json

            config_model = {"optional": {"n": int, "m": int}}

            def main(to_send, config):
                print(json.dumps(config, sort_keys=True))
            """
        )
    )
    (tmp_path / "system.toml").write_text(
        '[services.show]\nfile = "show.py"\nmain = true\nenv_prefix = "SHOW_"\n'
        "config = {n = 1, m = 1}\n"
    )
    shown = cli("run", "system.toml", "show", "--m", "3", env={"SHOW_n": "2", "SHOW_m": "2"})
    assert shown.finish() == 0, shown.log()
    assert json.loads(shown.stdout()) == {"m": 3, "n": 2}


def test_usage_errors_exit_2_with_one_line(tmp_path: Path, cli) -> None:
    (tmp_path / "echo.py").write_text(ECHO)
    (tmp_path / "system.toml").write_text('[services.echo]\nfile = "echo.py"\n')
    unknown = cli("run", "system.toml", "nobody")
    assert unknown.finish() == 2
    assert "no service 'nobody' (services: echo)" in unknown.log()
    flag = cli("run", "system.toml", "echo", "-a", "addresses.json")
    assert flag.finish() == 2
    assert "-a is not used with a topology: the topology gives its addresses" in flag.log()
    missing = cli("run", "nothing.toml", "echo")
    assert missing.finish() == 2
    assert "topology file not found: nothing.toml" in missing.log()
    # An unlinked, unaddressed replyer is a finding about the service itself.
    unlinked = cli("run", "system.toml", "echo")
    assert unlinked.finish() == 2
    assert "unlinked: echo.echo (a replyer) is in no link and has no address" in unlinked.log()
