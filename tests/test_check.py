"""``service_framework check``: contract mismatches across a topology, both ends named."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from service_framework import topology as topo
from service_framework.check import check_topology, compare
from service_framework.security import create_keypair
from service_framework.validation import compile_fields

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "orders" / "system.toml"

HEADER = """
from decimal import Decimal
from typing import Literal, TypedDict

def on(args, to_send, config):
    return None
"""


def service(out: str = "", in_: str = "") -> str:
    """A service module whose connection_models are the given Python dict bodies."""
    return HEADER + f"\nconnection_models = {{'out': {{{out}}}, 'in': {{{in_}}}}}\n"


def requester(name: str, args: str, returns: str = "{}", extra: str = "") -> str:
    return (
        f"'{name}': {{'connection_type': 'requester', {args}, "
        f"'required_return_arguments': {returns}, {extra}}},"
    )


def replyer(name: str, args: str, returns: str = "{}", extra: str = "") -> str:
    return (
        f"'{name}': {{'connection_type': 'replyer', "
        f"'required_creation_arguments': {{'connection_function': on}}, {args}, "
        f"'required_return_arguments': {returns}, {extra}}},"
    )


def publisher(name: str, args: str, creation: str = "{}") -> str:
    return (
        f"'{name}': {{'connection_type': 'publisher', "
        f"'optional_creation_arguments': {creation}, {args}}},"
    )


def subscriber(name: str, args: str, creation: str = "{}") -> str:
    return (
        f"'{name}': {{'connection_type': 'subscriber', "
        f"'required_creation_arguments': {{'connection_function': on}}, "
        f"'optional_creation_arguments': {creation}, {args}}},"
    )


def system(tmp_path: Path, links: list[str], services: dict[str, str], extra: str = "") -> Path:
    """Write the services and a topology linking them; returns the topology's path."""
    tables = []
    for name, source in services.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        tables.append(f'[services.{name}]\nfile = "{name}.py"\n')
    path = tmp_path / "system.toml"
    path.write_text(f"links = {json.dumps(links)}\n{extra}\n" + "\n".join(tables))
    return path


def findings(path: Path) -> list[topo.Finding]:
    return list(check_topology(topo.load_topology(path)).findings)


def only(path: Path) -> topo.Finding:
    found = findings(path)
    assert len(found) == 1, found
    return found[0]


def test_the_example_system_is_clean() -> None:
    report = check_topology(topo.load_topology(EXAMPLE))
    assert report.ok, report.findings
    assert set(report.prepared) == {"pricing", "router", "ledger", "trader"}


@pytest.mark.parametrize(
    ("sender", "receiver", "code", "detail"),
    [
        (
            "'required_arguments': {'id': str}, 'optional_arguments': {'reason': str}",
            "'required_arguments': {'id': str, 'reason': str}",
            "missing-key",
            "b.take requires key 'reason' at $, a.give may omit it",
        ),
        (
            "'required_arguments': {'id': str}",
            "'required_arguments': {'id': str, 'reason': str}",
            "missing-key",
            "b.take requires key 'reason' at $, a.give never sends it",
        ),
        (
            "'required_arguments': {'id': str, 'colour': str}",
            "'required_arguments': {'id': str}",
            "unexpected-key",
            "a.give always sends key 'colour' at $, b.take refuses it (allowed: 'id')",
        ),
        (
            "'required_arguments': {'qty': float}",
            "'required_arguments': {'qty': int}",
            "type-mismatch",
            "at $.qty a.give may send float, b.take accepts int",
        ),
        (
            "'required_arguments': {'side': str}",
            "'required_arguments': {'side': {'buy', 'sell'}}",
            "type-mismatch",
            "at $.side a.give may send str, b.take accepts one of {'buy', 'sell'}",
        ),
        (
            "'required_arguments': {'side': {'buy', 'sell', 'hold'}}",
            "'required_arguments': {'side': Literal['buy', 'sell']}",
            "type-mismatch",
            "'hold' would be refused",
        ),
        (
            "'required_arguments': {'fills': [{'qty': int, 'px': str}]}",
            "'required_arguments': {'fills': list[{'qty': int, 'px': Decimal}]}",
            "type-mismatch",
            "at $.fills[].px a.give may send str, b.take accepts Decimal",
        ),
        (
            "'required_arguments': {'at': (int, int)}",
            "'required_arguments': {'at': (int, int, int)}",
            "type-mismatch",
            "the lengths differ",
        ),
        (
            "'required_arguments': {'n': int | None}",
            "'required_arguments': {'n': int}",
            "type-mismatch",
            "at $.n a.give may send None, b.take accepts int",
        ),
        (
            "'required_arguments': {'m': {str: int}}",
            "'required_arguments': {'m': {'a': int}}",
            "type-mismatch",
            "any keys, where 'a' are required",
        ),
        (
            "'required_arguments': {'flag': bool}",
            "'required_arguments': {'flag': int}",
            "type-mismatch",
            "at $.flag a.give may send bool, b.take accepts int",
        ),
    ],
)
def test_argument_mismatches_are_reported_with_both_ends(
    tmp_path: Path, sender: str, receiver: str, code: str, detail: str
) -> None:
    path = system(
        tmp_path,
        ["a.give -> b.take"],
        {"a": service(out=requester("give", sender)), "b": service(in_=replyer("take", receiver))},
    )
    finding = only(path)
    assert finding.code == code
    assert finding.ends == ("a.give", "b.take")
    assert finding.link == "a.give -> b.take"
    assert finding.message.startswith("link a.give -> b.take: arguments: ")
    assert detail in finding.message


@pytest.mark.parametrize(
    ("sender", "receiver"),
    [
        # Lossless conversions the receiver makes off the wire.
        ("'required_arguments': {'x': int}", "'required_arguments': {'x': float}"),
        ("'required_arguments': {'x': int}", "'required_arguments': {'x': Decimal}"),
        ("'required_arguments': {'x': float}", "'required_arguments': {'x': Decimal}"),
        # Narrower senders.
        ("'required_arguments': {'x': {'buy'}}", "'required_arguments': {'x': str}"),
        ("'required_arguments': {'x': int}", "'required_arguments': {'x': int | None}"),
        ("'required_arguments': {'x': (int, str)}", "'required_arguments': {'x': list}"),
        ("'required_arguments': {'x': [int]}", "'required_arguments': {'x': tuple[float, ...]}"),
        (
            "'required_arguments': {'id': str}",
            "'required_arguments': {'id': str}, 'optional_arguments': {'note': str}",
        ),
        ("'required_arguments': {'x': {'a': int}}", "'required_arguments': {'x': {str: float}}"),
        # Untyped senders cannot be proven wrong.
        ("'required_arguments': {'x': dict}", "'required_arguments': {'x': {'a': int}}"),
        ("'required_arguments': None, 'optional_arguments': None", "'required_arguments': {}"),
    ],
)
def test_compatible_models_give_no_finding(tmp_path: Path, sender: str, receiver: str) -> None:
    path = system(
        tmp_path,
        ["a.give -> b.take"],
        {"a": service(out=requester("give", sender)), "b": service(in_=replyer("take", receiver))},
    )
    assert findings(path) == []


def test_a_reply_the_requester_cannot_accept(tmp_path: Path) -> None:
    path = system(
        tmp_path,
        ["a.give -> b.take"],
        {
            "a": service(
                out=requester("give", "'required_arguments': {}", "{'price': Decimal, 'at': int}")
            ),
            "b": service(
                in_=replyer(
                    "take",
                    "'required_arguments': {}",
                    "{'price': str}",
                    "'optional_return_arguments': {'at': int}",
                )
            ),
        },
    )
    found = findings(path)
    assert {f.code for f in found} == {"return-mismatch"}
    assert all(f.ends == ("a.give", "b.take") for f in found)
    text = "\n".join(f.message for f in found)
    assert "reply: at $.price b.take may send str, a.give accepts Decimal" in text
    assert "reply: a.give requires key 'at' at $, b.take may omit it" in text


def test_a_topic_mismatch(tmp_path: Path) -> None:
    path = system(
        tmp_path,
        ["p.ticks -> s.ticks"],
        {
            "p": service(
                out=publisher("ticks", "'required_arguments': {'n': int}", "{'topic': 'a'}")
            ),
            "s": service(
                in_=subscriber("ticks", "'required_arguments': {'n': int}", "{'topic': 'b'}")
            ),
        },
    )
    finding = only(path)
    assert finding.code == "topic-mismatch"
    assert finding.ends == ("p.ticks", "s.ticks")
    assert "s.ticks subscribes to topic 'b' but p.ticks publishes on topic 'a'" in finding.message


def test_connection_types_that_cannot_be_linked(tmp_path: Path) -> None:
    path = system(
        tmp_path,
        ["a.give -> s.ticks"],
        {
            "a": service(out=requester("give", "'required_arguments': {'n': int}")),
            "s": service(in_=subscriber("ticks", "'required_arguments': {'n': int}")),
        },
    )
    finding = only(path)
    assert finding.code == "incompatible-types"
    assert finding.ends == ("a.give", "s.ticks")
    assert "a.give is a requester, which links to replyer, but s.ticks is a subscriber" in (
        finding.message
    )


@pytest.mark.parametrize(
    ("pub", "sub", "code"),
    [("{}", "{'is_binder': True}", "both-bind"), ("{'is_x_pub': True}", "{}", "both-connect")],
)
def test_a_link_needs_one_binder_and_one_connector(
    tmp_path: Path, pub: str, sub: str, code: str
) -> None:
    path = system(
        tmp_path,
        ["p.ticks -> s.ticks"],
        {
            "p": service(out=publisher("ticks", "'required_arguments': {'n': int}", pub)),
            "s": service(in_=subscriber("ticks", "'required_arguments': {'n': int}", sub)),
        },
    )
    finding = only(path)
    assert finding.code == code
    assert finding.ends == ("p.ticks", "s.ticks")
    assert "p.ticks (a publisher" in finding.message and "s.ticks (a subscriber" in finding.message


def test_unlinked_connections_both_ways(tmp_path: Path) -> None:
    path = system(
        tmp_path,
        [],
        {
            "a": service(out=requester("give", "'required_arguments': {}")),
            "b": service(in_=replyer("take", "'required_arguments': {}")),
        },
    )
    found = {f.ends: f for f in findings(path)}
    assert set(found) == {("a.give",), ("b.take",)}
    assert found[("a.give",)].code == found[("b.take",)].code == "unlinked"
    assert (
        "a.give (a requester) is in no link and has no address: it connects, but has nothing"
        in (found[("a.give",)].message)
    )
    assert "it binds, but nothing connects to it" in found[("b.take",)].message


def test_an_explicit_address_counts_and_a_stray_one_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(service(out=requester("give", "'required_arguments': {}")))
    path = tmp_path / "system.toml"
    path.write_text(
        textwrap.dedent(
            """
            [services.a]
            file = "a.py"
            addresses = {out = {give = {requester = "10.0.0.1:5000"}, gone = {requester = "x:1"}}}
            """
        )
    )
    finding = only(path)
    assert finding.code == "unknown-address"
    assert finding.ends == ("a.gone",)


def test_duplicate_ports_on_a_host(tmp_path: Path) -> None:
    links = ["a.one -> b.take", "a.two -> c.take"]
    path = system(
        tmp_path,
        [],
        {
            "a": service(
                out=requester("one", "'required_arguments': {}")
                + requester("two", "'required_arguments': {}")
            ),
            "b": service(in_=replyer("take", "'required_arguments': {}")),
            "c": service(in_=replyer("take", "'required_arguments': {}")),
        },
    )
    text = path.read_text().replace(
        "links = []",
        "links = ["
        + ", ".join(
            f'{{from = "{s}", to = "{t}", port = 6000}}'
            for s, t in (link.split(" -> ") for link in links)
        )
        + "]",
    )
    path.write_text(text)
    finding = only(path)
    assert finding.code == "duplicate-port"
    assert finding.ends == ("b.take", "c.take")
    assert "b.take and c.take both bind port 6000 on host 127.0.0.1" in finding.message


def test_unknown_ends_and_unloadable_services(tmp_path: Path) -> None:
    path = system(
        tmp_path,
        ["a.give -> nowhere.take", "a.take -> b.take", "b.take -> a.give", "c.x -> b.take"],
        {
            "a": service(out=requester("give", "'required_arguments': {}")),
            "b": service(in_=replyer("take", "'required_arguments': {}")),
            "c": "raise RuntimeError('broken at import')\n",
        },
    )
    by_code = {}
    for finding in findings(path):
        by_code.setdefault(finding.code, []).append(finding)
    assert by_code["unknown-service"][0].ends == ("a.give", "nowhere.take")
    unknown = {f.ends: f.message for f in by_code["unknown-connection"]}
    assert (
        "a has no outbound connection 'take' (outbound connections: give)"
        in unknown[("a.take", "b.take")]
    )
    assert "write the sender on the left of '->'" in unknown[("b.take", "a.give")]
    (load_error,) = by_code["load-error"]
    assert load_error.ends == ("c",)
    assert "broken at import" in load_error.message
    assert set(by_code) == {"unknown-service", "unknown-connection", "load-error"}


def test_curve_on_one_end_only_and_unauthorized_clients(tmp_path: Path) -> None:
    create_keypair(tmp_path / "keys", "b")
    create_keypair(tmp_path / "keys" / "clients", "a")
    create_keypair(tmp_path / "keys", "stranger")
    services = {
        "a": service(out=requester("give", "'required_arguments': {}")),
        "b": service(in_=replyer("take", "'required_arguments': {}")),
    }
    path = system(tmp_path, ["a.give -> b.take"], services)
    b_curve = 'curve = {secret_key = "keys/b.key_secret", authorized_keys = "keys/clients"}\n'
    text = path.read_text().replace('file = "b.py"\n', 'file = "b.py"\n' + b_curve)
    path.write_text(text)
    finding = only(path)
    assert finding.code == "curve-mismatch"
    assert finding.ends == ("a.give", "b.take")
    stranger = 'curve = {secret_key = "keys/stranger.key_secret", allow_any = true}\n'
    path.write_text(text.replace('file = "a.py"\n', 'file = "a.py"\n' + stranger))
    finding = only(path)
    assert finding.code == "curve-unauthorized"
    assert "a's public key is not in b's authorized keys" in finding.message
    known = 'curve = {secret_key = "keys/clients/a.key_secret", allow_any = true}\n'
    path.write_text(text.replace('file = "a.py"\n', 'file = "a.py"\n' + known))
    assert findings(path) == []


def test_a_connector_whose_binders_have_different_curve_keys(tmp_path: Path) -> None:
    for name in ("b", "c"):
        create_keypair(tmp_path / "keys", name)
    create_keypair(tmp_path / "keys" / "clients", "a")
    services = {
        "a": service(out=requester("give", "'required_arguments': {}")),
        "b": service(in_=replyer("take", "'required_arguments': {}")),
        "c": service(in_=replyer("take", "'required_arguments': {}")),
    }
    path = system(tmp_path, ["a.give -> b.take", "a.give -> c.take"], services)
    text = path.read_text()
    for name in ("a", "b", "c"):
        secret = "keys/clients/a.key_secret" if name == "a" else f"keys/{name}.key_secret"
        curve = f'curve = {{secret_key = "{secret}", authorized_keys = "keys/clients"}}\n'
        text = text.replace(f'file = "{name}.py"\n', f'file = "{name}.py"\n{curve}')
    path.write_text(text)
    finding = only(path)
    assert finding.code == "curve-mismatch"
    assert finding.ends == ("a.give", "b.take", "c.take")


def test_nested_typed_dicts_drop_unknown_keys_so_they_are_not_reported() -> None:
    from typing import TypedDict

    class Point(TypedDict):
        x: int

    receiver = compile_fields({"p": Point}, {})
    sender = compile_fields({"p": {"x": int, "y": int}}, {})
    assert compare(receiver, sender) == []
    plain = compile_fields({"p": {"x": int}}, {})
    assert [code for code, _ in compare(plain, sender)] == ["unexpected-key"]


# --------------------------------------------------------------------------- CLI


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service_framework", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    clean = run_cli("check", str(EXAMPLE))
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.strip().endswith("4 services, 4 links: no findings")

    path = system(
        tmp_path,
        ["a.give -> b.take"],
        {
            "a": service(out=requester("give", "'required_arguments': {'qty': float}")),
            "b": service(in_=replyer("take", "'required_arguments': {'qty': int}")),
        },
    )
    dirty = run_cli("check", str(path))
    assert dirty.returncode == 1
    assert "type-mismatch: link a.give -> b.take: arguments: at $.qty" in dirty.stdout
    assert dirty.stdout.strip().endswith("2 services, 1 links: 1 finding")

    as_json = run_cli("check", "--format", "json", str(path))
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert report["links"] == ["a.give -> b.take"]
    (finding,) = report["findings"]
    assert finding["code"] == "type-mismatch"
    assert finding["ends"] == ["a.give", "b.take"]

    (tmp_path / "broken.toml").write_text("[services.a\n")
    unreadable = run_cli("check", str(tmp_path / "broken.toml"))
    assert unreadable.returncode == 2
    assert "service_framework check: error: topology file" in unreadable.stderr
    assert "is not valid TOML" in unreadable.stderr
    assert run_cli("check", str(tmp_path / "missing.toml")).returncode == 2


def test_cli_prints_the_schema() -> None:
    printed = run_cli("check", "--schema")
    assert printed.returncode == 0
    assert json.loads(printed.stdout) == topo.topology_schema()


# --------------------------------------------------------------------------- inline


def test_inline_services_warn_about_and_report_model_findings(tmp_path: Path, caplog) -> None:
    from service_framework import InlineServices

    (tmp_path / "asker.py").write_text(
        service(
            out=requester("give", "'required_arguments': {'qty': float}")
            + requester("spare", "'required_arguments': {}")
        )
        + "\ndef main(to_send, config):\n    return to_send('give', {'qty': 2.0})\n"
    )
    (tmp_path / "taker.py").write_text(
        service(in_=replyer("take", "'required_arguments': {'qty': int}"))
    )
    inline = InlineServices(console_loglevel=None)
    inline.set_main_service("a", str(tmp_path / "asker.py"))
    inline.add_service("b", str(tmp_path / "taker.py"))
    with caplog.at_level("WARNING", logger="service_framework"):
        inline.add_relation("a", "give", "b", "take")
    assert "relation a.give -> b.take: arguments: at $.qty a.give may send float" in caplog.text
    found = {f.code: f for f in inline.check()}
    assert set(found) == {"type-mismatch", "unlinked"}
    assert found["type-mismatch"].ends == ("a.give", "b.take")
    assert found["unlinked"].ends == ("a.spare",)
    # A warning, not a refusal: the relation works for values both sides accept...
    with pytest.raises(Exception, match=r"expected int, got float at \$\.qty"):
        inline.start()  # ...and the receiver still refuses the ones it does not.


def test_inline_services_with_matching_models_check_clean(tmp_path: Path) -> None:
    from service_framework import InlineServices

    (tmp_path / "asker.py").write_text(
        service(out=requester("give", "'required_arguments': {'qty': int}"))
    )
    (tmp_path / "taker.py").write_text(
        service(in_=replyer("take", "'required_arguments': {'qty': float}"))
    )
    inline = InlineServices(console_loglevel=None)
    inline.add_service("a", str(tmp_path / "asker.py"))
    inline.add_service("b", str(tmp_path / "taker.py"))
    inline.add_relation("a", "give", "b", "take")
    assert inline.check() == []
