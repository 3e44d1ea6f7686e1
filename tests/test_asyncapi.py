"""``service_framework asyncapi``: AsyncAPI 3.0 documents, checked against the official
schema (vendored in tests/data) and against the messages the models accept."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from service_framework import cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "orders"
DATA = Path(__file__).resolve().parent / "data"

# Every shape of the spec grammar that has a JSON Schema form worth checking.
RICH = """
\"\"\"Books trades: a model using most of the spec grammar.\"\"\"
from decimal import Decimal
from typing import Literal

def on_book(args, to_send, config):
    return {"id": args["id"], "fees": {"USD": Decimal("0.1")}}

connection_models = {"in": {"book": {
    "connection_type": "replyer",
    "required_creation_arguments": {"connection_function": on_book},
    "required_arguments": {
        "id": str,
        "price": Decimal,
        "legs": [(str, int)],
        "account": {"owner": str, "limits": {"daily": Decimal}},
        "side": Literal["buy", "sell"],
        "venue": {"xnys", "xnas"},
        "tags": list[str],
        "pair": (str, str),
    },
    "optional_arguments": {"note": str, "expires": int | None},
    "required_return_arguments": {"id": str, "fees": {str: Decimal}},
    "optional_return_arguments": {"warnings": [str]},
}}}
"""

RICH_ARGS: dict[str, Any] = {
    "id": "T1",
    "price": Decimal("101.25"),
    "legs": [("AAPL", 10), ("MSFT", -5)],
    "account": {"owner": "ann", "limits": {"daily": Decimal("1000")}},
    "side": "buy",
    "venue": "xnys",
    "tags": ["a", "b"],
    "pair": ("USD", "EUR"),
    "note": "hi",
}


@cache
def official_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((DATA / "asyncapi-3.0.0.schema.json").read_text())
    return jsonschema.Draft7Validator(schema)


def assert_valid_asyncapi(document: dict[str, Any]) -> None:
    errors = sorted(official_validator().iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message[:300]}" for e in errors)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert cli.main(["asyncapi", *argv]) == 0
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    return document


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def payload_validator(document: dict[str, Any], ref: str) -> jsonschema.Draft7Validator:
    """A Draft 07 validator for one schema of ``document`` (its refs resolved in it)."""
    root = {"$ref": ref, "components": document["components"]}
    jsonschema.Draft7Validator.check_schema(root)
    return jsonschema.Draft7Validator(root)


def as_json(value: Any) -> Any:
    """A value as msgspec's JSON view of it (what the payload schemas describe)."""
    return json.loads(msgspec.json.encode(value))


def walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


# --------------------------------------------------------------------------- one service


def test_service_file_document_is_valid_and_has_a_channel_per_socket_connection(
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = run([str(EXAMPLE / "services" / "router.py")], capsys)
    assert_valid_asyncapi(document)
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "router"
    assert document["info"]["description"].startswith("Order router")
    assert document["defaultContentType"] == "application/msgpack"
    # 'execute' is an external_target: a Python call, no channel.
    assert list(document["channels"]) == ["place", "fills"]
    assert document["channels"]["fills"]["address"] == "fills"
    assert document["channels"]["place"]["address"] is None

    place = document["operations"]["router.place"]
    assert place["action"] == "receive"
    assert place["channel"] == {"$ref": "#/channels/place"}
    assert place["messages"] == [{"$ref": "#/channels/place/messages/router.place.request"}]
    assert place["reply"] == {
        "channel": {"$ref": "#/channels/place"},
        "messages": [
            {"$ref": "#/channels/place/messages/router.place.reply"},
            {"$ref": "#/channels/place/messages/error"},
        ],
    }
    assert place["bindings"]["x-zmq"] == {
        "connectionType": "replyer",
        "socketType": "REP",
        "role": "bind",
    }
    fills = document["operations"]["router.fills"]
    assert fills["action"] == "send"
    assert "reply" not in fills
    assert fills["bindings"]["x-zmq"]["socketType"] == "PUB"

    # Without an addresses file the bound endpoint is a server variable.
    server = document["servers"]["router.place"]
    assert server["protocol"] == "zmtp"
    assert server["host"] == "{address}"
    assert server["bindings"]["x-zmq"]["boundBy"] == "router.place"
    assert server["bindings"]["x-zmq"]["socketType"] == "REP"


def test_service_file_with_addresses_names_its_endpoints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = run(
        [
            str(EXAMPLE / "services" / "trader.py"),
            "-a",
            str(EXAMPLE / "addresses" / "trader.json"),
        ],
        capsys,
    )
    assert_valid_asyncapi(document)
    quote = document["operations"]["trader.quote"]
    assert quote["action"] == "send"
    assert quote["bindings"]["x-zmq"] == {
        "connectionType": "requester",
        "socketType": "REQ",
        "role": "connect",
        "endpoints": ["127.0.0.1:47811"],
    }
    # The far end binds it; this service only knows it as a peer.
    peer = document["servers"]["trader.quote.peer"]
    assert peer["host"] == "127.0.0.1:47811"
    assert peer["bindings"]["x-zmq"]["socketType"] == "REP"
    assert document["channels"]["quote"]["servers"] == [{"$ref": "#/servers/trader.quote.peer"}]


def test_payload_schemas_are_draft07_and_accept_what_the_model_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = run([str(write(tmp_path, "booker.py", RICH))], capsys)
    assert_valid_asyncapi(document)
    assert not [n for n in walk(document) if "prefixItems" in n or "$defs" in n]
    schemas = document["components"]["schemas"]
    # Names come from the connection and the keys (stable), nested dicts get their own.
    assert {"booker.book.args", "booker.book.args.account", "booker.book.return_args"} <= set(
        schemas
    )
    assert schemas["booker.book.args"]["properties"]["pair"] == {
        "type": "array",
        "minItems": 2,
        "maxItems": 2,
        "items": [{"type": "string"}, {"type": "string"}],
        "additionalItems": False,
    }
    assert schemas["booker.book.args"]["properties"]["price"] == {
        "type": "string",
        "format": "decimal",
    }
    assert set(schemas["booker.book.args"]["required"]) == set(RICH_ARGS) - {"note"}

    args = payload_validator(document, "#/components/schemas/booker.book.args")
    assert args.is_valid(as_json(RICH_ARGS))
    assert args.is_valid(as_json({**RICH_ARGS, "expires": None}))
    bad = {
        "a 3-tuple for a 2-tuple": {**RICH_ARGS, "pair": ["USD", "EUR", "GBP"]},
        "a leg of the wrong type": {**RICH_ARGS, "legs": [["AAPL", "ten"]]},
        "a literal not allowed": {**RICH_ARGS, "side": "hold"},
        "a set value not allowed": {**RICH_ARGS, "venue": "bats"},
        "a key not declared": {**RICH_ARGS, "colour": "red"},
        "a nested key missing": {**RICH_ARGS, "account": {"owner": "ann"}},
        "a nested key not declared": {**RICH_ARGS, "account": {**RICH_ARGS["account"], "x": 1}},
        "a required key missing": {k: v for k, v in RICH_ARGS.items() if k != "price"},
        "an optional key of the wrong type": {**RICH_ARGS, "note": 5},
    }
    for why, value in bad.items():
        assert not args.is_valid(as_json(value)), why

    # The request message wraps the args in the envelope the framework sends.
    payload = document["channels"]["book"]["messages"]["booker.book.request"]["payload"]
    envelope = jsonschema.Draft7Validator({**payload, "components": document["components"]})
    good = {"v": 1, "workflow_id": "w1", "args": as_json(RICH_ARGS)}
    assert envelope.is_valid(good)
    assert envelope.is_valid({**good, "meta": {"deadline": 1.5}})
    assert not envelope.is_valid({**good, "v": 2})
    assert not envelope.is_valid({"v": 1, "workflow_id": "w1"})

    reply_payload = document["channels"]["book"]["messages"]["booker.book.reply"]["payload"]
    reply = jsonschema.Draft7Validator({**reply_payload, "components": document["components"]})
    fees = {"id": "T1", "fees": {"USD": "0.1"}}
    assert reply.is_valid({"v": 1, "workflow_id": "w1", "return_args": fees})
    assert reply.is_valid(
        {"v": 1, "workflow_id": "w1", "return_args": {**fees, "warnings": ["late"]}}
    )
    assert not reply.is_valid({"v": 1, "workflow_id": "w1", "return_args": {"id": "T1"}})


# --------------------------------------------------------------------------- topologies

HUB = """
connection_models = {"out": {
    "ticks": {
        "connection_type": "publisher",
        "optional_creation_arguments": {"topic": "px", "wait_after_creation_s": 0},
        "required_arguments": {"symbol": str, "price": float},
    },
    "lookup": {
        "connection_type": "requester",
        "required_arguments": {"q": str},
        "required_return_arguments": {"a": str},
    },
}}
"""


def subscriber(arguments: str) -> str:
    return f"""
def on(args, to_send, config):
    pass

connection_models = {{"in": {{"ticks": {{
    "connection_type": "subscriber",
    "required_creation_arguments": {{"connection_function": on}},
    "optional_creation_arguments": {{"topic": "px"}},
    "required_arguments": {arguments},
}}}}}}
"""


def hub_system(tmp_path: Path) -> Path:
    from service_framework.security import create_keypair

    create_keypair(tmp_path / "keys", "hub")
    write(tmp_path, "hub.py", HUB)
    write(tmp_path, "chart.py", subscriber('{"symbol": str, "price": float}'))
    write(tmp_path, "audit.py", subscriber('{"symbol": str}'))  # disagrees: check says so
    return write(
        tmp_path,
        "system.toml",
        """
        name = "market"
        base_port = 50100
        links = ["hub.ticks -> chart.ticks", "hub.ticks -> audit.ticks"]

        [services.hub]
        file = "hub.py"
        curve = { secret_key = "keys/hub.key_secret", allow_any = true }

        [services.chart]
        file = "chart.py"

        [services.audit]
        file = "audit.py"
        """,
    )


def test_example_system_document_has_a_channel_per_link(
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = run([str(EXAMPLE / "system.toml")], capsys)
    assert_valid_asyncapi(document)
    assert document["info"]["title"] == "orders"
    assert list(document["channels"]) == [
        "trader.quote__pricing.quote",
        "trader.place__router.place",
        "trader.positions__ledger.positions",
        "router.fills__ledger.fills",
    ]
    place = "#/channels/trader.place__router.place"
    send, receive = document["operations"]["trader.place"], document["operations"]["router.place"]
    assert (send["action"], receive["action"]) == ("send", "receive")
    # Both ends declare the same model: one request message, named after the replyer.
    assert (
        send["messages"]
        == receive["messages"]
        == [{"$ref": f"{place}/messages/router.place.request"}]
    )
    assert send["reply"]["messages"][0] == {"$ref": f"{place}/messages/router.place.reply"}
    assert send["bindings"]["x-zmq"]["role"] == "connect"
    assert send["bindings"]["x-zmq"]["endpoints"] == ["127.0.0.1:47812"]
    assert receive["bindings"]["x-zmq"]["role"] == "bind"
    # Servers are the binders, at the addresses the topology derives.
    assert {k: v["host"] for k, v in document["servers"].items()} == {
        "ledger.positions": "127.0.0.1:47814",
        "pricing.quote": "127.0.0.1:47811",
        "router.fills": "127.0.0.1:47813",
        "router.place": "127.0.0.1:47812",
    }
    assert {v["protocol"] for v in document["servers"].values()} == {"zmtp"}
    fills = document["channels"]["router.fills__ledger.fills"]
    assert fills["address"] == "fills"
    assert fills["servers"] == [{"$ref": "#/servers/router.fills"}]
    assert list(fills["messages"]) == ["router.fills.message"]
    frame = fills["messages"]["router.fills.message"]["payload"]
    assert frame["type"] == "array"
    assert frame["items"][0] == {
        "const": "fills",
        "description": "topic ('' reaches every subscriber)",
    }
    assert frame["items"][3] == {"$ref": "#/components/schemas/router.fills.args"}
    # Every reference in the document points at something in it.
    for node in walk(document):
        ref = node.get("$ref")
        if isinstance(ref, str):
            target: Any = document
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]


def test_topology_document_with_curve_fan_out_and_disagreeing_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = run([str(hub_system(tmp_path))], capsys)
    assert_valid_asyncapi(document)
    # A channel per link, and one for the connection no link covers.
    assert list(document["channels"]) == [
        "hub.ticks__chart.ticks",
        "hub.ticks__audit.ticks",
        "hub.lookup",
    ]
    # The publisher is on two links: an operation on each, told apart by the peer.
    assert {"hub.ticks__chart.ticks", "hub.ticks__audit.ticks"} <= set(document["operations"])
    audit = document["channels"]["hub.ticks__audit.ticks"]["messages"]
    # audit declares a different model: its own message beside the publisher's.
    assert list(audit) == ["hub.ticks.message", "audit.ticks.message"]
    assert document["operations"]["audit.ticks"]["messages"] == [
        {"$ref": "#/channels/hub.ticks__audit.ticks/messages/audit.ticks.message"}
    ]
    chart = document["channels"]["hub.ticks__chart.ticks"]["messages"]
    assert list(chart) == ["hub.ticks.message"]
    # CURVE: the binder's server says so and names the security scheme.
    server = document["servers"]["hub.ticks"]
    assert server["host"] == "127.0.0.1:50100"
    assert server["bindings"]["x-zmq"]["curve"] is True
    assert server["security"] == [{"$ref": "#/components/securitySchemes/curve"}]
    assert document["components"]["securitySchemes"]["curve"]["type"] == "asymmetricEncryption"
    assert document["operations"]["chart.ticks"]["bindings"]["x-zmq"]["curve"] is True
    lookup = document["operations"]["hub.lookup"]
    assert lookup["action"] == "send"
    assert "reply" in lookup


def cli_process(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service_framework", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
        check=False,
    )


def test_cli_writes_the_same_file_on_every_run(tmp_path: Path) -> None:
    topology = hub_system(tmp_path)
    texts = []
    for seed in ("1", "2"):
        out = tmp_path / f"api-{seed}.json"
        done = cli_process(
            ["asyncapi", str(topology), "-o", str(out)], tmp_path, PYTHONHASHSEED=seed
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        texts.append(out.read_text())
    assert texts[0] == texts[1]
    assert_valid_asyncapi(json.loads(texts[0]))


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda p: p / "missing.toml", "topology file not found"),
        (lambda p: p / "missing.py", "service file not found"),
        (
            lambda p: write(
                p,
                "bad.toml",
                """
                links = ["hub.ticks -> chart.nope"]
                [services.hub]
                file = "hub.py"
                [services.chart]
                file = "chart.py"
                """,
            ),
            "link hub.ticks -> chart.nope: chart has no inbound connection 'nope'",
        ),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path, setup: Any, expected: str) -> None:
    hub_system(tmp_path)
    done = cli_process(["asyncapi", str(setup(tmp_path))], tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("service_framework asyncapi: error: ")
    assert expected in lines[0]


def test_a_registered_connection_type_is_described_without_an_invented_envelope(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from service_framework.connections import CONNECTION_TYPES, InboundConnection

    class Drain(InboundConnection):
        type_name = "drain"
        side = "in"
        address_keys = ("drain",)
        binds = True
        required_creation_arguments = {"connection_function": object}

    monkeypatch.setitem(CONNECTION_TYPES, "drain", Drain)
    source = """
    def on(args, to_send, config):
        pass

    connection_models = {"in": {"jobs": {
        "connection_type": "drain",
        "required_creation_arguments": {"connection_function": on},
        "required_arguments": {"job": int},
    }}}
    """
    document = run([str(write(tmp_path, "sink.py", source))], capsys)
    assert_valid_asyncapi(document)
    message = document["channels"]["jobs"]["messages"]["sink.jobs.message"]
    assert message["payload"]["allOf"] == [{"$ref": "#/components/schemas/sink.jobs.args"}]
    binding = document["operations"]["sink.jobs"]["bindings"]["x-zmq"]
    assert binding == {"connectionType": "drain", "role": "bind"}  # no socket type invented
    assert "bindings" not in document["channels"]["jobs"]  # nor a pattern


def test_ends_whose_models_differ_only_in_a_key_named_title_get_a_message_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(
        tmp_path,
        "asker.py",
        """
        connection_models = {"out": {"ask": {
            "connection_type": "requester",
            "required_arguments": {"title": str},
            "required_return_arguments": {"ok": bool},
        }}}
        """,
    )
    write(
        tmp_path,
        "teller.py",
        """
        def on(args, to_send, config):
            return {"ok": True}

        connection_models = {"in": {"ask": {
            "connection_type": "replyer",
            "required_creation_arguments": {"connection_function": on},
            "required_arguments": {"title": int},
            "required_return_arguments": {"ok": bool},
        }}}
        """,
    )
    topology = write(
        tmp_path,
        "system.toml",
        """
        links = ["asker.ask -> teller.ask"]
        [services.asker]
        file = "asker.py"
        [services.teller]
        file = "teller.py"
        """,
    )
    document = run([str(topology)], capsys)
    assert_valid_asyncapi(document)
    messages = document["channels"]["asker.ask__teller.ask"]["messages"]
    # The requests differ; the replies agree and are one message.
    assert list(messages) == [
        "teller.ask.request",
        "teller.ask.reply",
        "error",
        "asker.ask.request",
    ]


def test_rich_model_in_a_topology_is_valid_and_keeps_its_schemas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "booker.py", RICH)
    write(
        tmp_path,
        "client.py",
        """
        from decimal import Decimal
        from typing import Literal

        connection_models = {"out": {"book": {
            "connection_type": "requester",
            "required_arguments": {
                "id": str,
                "price": Decimal,
                "legs": [(str, int)],
                "account": {"owner": str, "limits": {"daily": Decimal}},
                "side": Literal["buy", "sell"],
                "venue": {"xnys", "xnas"},
                "tags": list[str],
                "pair": (str, str),
            },
            "optional_arguments": {"note": str, "expires": int | None},
            "required_return_arguments": {"id": str, "fees": {str: Decimal}},
            "optional_return_arguments": {"warnings": [str]},
        }}}
        """,
    )
    topology = write(
        tmp_path,
        "system.toml",
        """
        links = ["client.book -> booker.book"]
        [services.booker]
        file = "booker.py"
        [services.client]
        file = "client.py"
        """,
    )
    document = run([str(topology)], capsys)
    assert_valid_asyncapi(document)
    # The same model at both ends: one request and one reply message, one set of schemas.
    messages = document["channels"]["client.book__booker.book"]["messages"]
    assert list(messages) == ["booker.book.request", "booker.book.reply", "error"]
    schemas = document["components"]["schemas"]
    assert not [name for name in schemas if name.startswith("client.")]
    args = payload_validator(document, "#/components/schemas/booker.book.args")
    assert args.is_valid(as_json(RICH_ARGS))
    assert not args.is_valid(as_json({**RICH_ARGS, "pair": ["USD"]}))
