"""Push/pull work queues: spread over pullers, validation, bad input, bounded waits,
CURVE, workflow ids, inline relations, and the system tools."""

from __future__ import annotations

import json
import queue
import shutil
import signal
import textwrap
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
import zmq.auth

from conftest import wait_until
from service_framework import InlineServices, RequestTimeout, ValidationError
from service_framework import cli as commands
from service_framework import topology as topo
from service_framework.asyncapi import topology_document
from service_framework.check import check_topology
from service_framework.security import Curve, create_keypair
from test_asyncapi import assert_valid_asyncapi

PULLER = """
import queue
from service_framework.workflow import current_workflow_id
received = queue.Queue()
ids = queue.Queue()

def on_job(args, to_send, config):
    if args.get('explode'):
        raise RuntimeError('handler failure')
    received.put(args['n'])
    ids.put(current_workflow_id())
    return {'ignored': True}  # a puller's return goes nowhere

connection_models = {
    'in': {
        'jobs': {
            'connection_type': 'puller',
            'required_creation_arguments': {'connection_function': on_job},
            'optional_creation_arguments': {'socket_options': %(socket_options)r},
            'required_arguments': {'n': int},
            'optional_arguments': {'explode': bool, 'blob': str},
        }
    }
}
"""


def puller_source(**socket_options: int) -> str:
    return PULLER % {"socket_options": socket_options}


def pusher_models(timeout_s: float = 5.0, **socket_options: int) -> dict[str, Any]:
    return {
        "out": {
            "jobs": {
                "connection_type": "pusher",
                "optional_creation_arguments": {
                    "timeout_s": timeout_s,
                    "socket_options": socket_options,
                },
                "required_arguments": {"n": int},
                "optional_arguments": {"explode": bool, "blob": str},
            }
        }
    }


def start_puller(write_service, run_service, name: str = "puller", **kwargs: Any) -> Any:
    socket_options = kwargs.pop("socket_options", {})
    return run_service(
        write_service(name, puller_source(**socket_options)),
        addresses={"in": {"jobs": {"puller": "127.0.0.1:0"}}},
        **kwargs,
    )


def take(received: queue.Queue[Any], count: int, timeout: float = 10.0) -> list[Any]:
    return [received.get(timeout=timeout) for _ in range(count)]


def test_work_is_spread_over_every_puller_and_each_message_handled_once(
    write_service, run_service, client
) -> None:
    pullers = [start_puller(write_service, run_service, f"puller_{i}") for i in range(3)]
    pusher = client(
        pusher_models(), {"out": {"jobs": {"pusher": [p.address("jobs") for p in pullers]}}}
    )
    queues = [p.module.received for p in pullers]
    seen: list[list[int]] = [[] for _ in pullers]

    def drain() -> None:
        for got, received in zip(seen, queues, strict=True):
            while not received.empty():
                got.append(received.get_nowait())

    # Connections come up one by one: push until every puller has had work.
    n = 0
    while not all(seen) and n < 10_000:
        assert pusher.to_send("jobs", {"n": n}) is None
        n += 1
        drain()
        if not all(seen):
            wait_until(lambda: any(not q.empty() for q in queues), 0.05)
            drain()
    assert all(seen), f"some puller got no work: {[len(s) for s in seen]}"
    first = n
    for n in range(first, first + 300):
        pusher.to_send("jobs", {"n": n})
    total = first + 300
    assert wait_until(lambda: (drain(), sum(map(len, seen)))[1] >= total, 10)
    drain()
    everything = sorted(m for got in seen for m in got)
    assert everything == list(range(total))  # every message, exactly once
    later = [[m for m in got if m >= first] for got in seen]
    assert all(later), f"round-robin left a connected puller out: {[len(x) for x in later]}"
    assert sum(p.runtime.stats()["jobs"].handled for p in pullers) == total
    assert pusher.stats()["jobs"].handled == total


def test_push_validates_before_anything_is_sent(client) -> None:
    # Nothing listens there: a message that got as far as the socket would time out.
    pusher = client(pusher_models(timeout_s=0.2), {"out": {"jobs": {"pusher": "127.0.0.1:9"}}})
    with pytest.raises(ValidationError, match=r"jobs\.args: expected int, got str at \$\.n"):
        pusher.to_send("jobs", {"n": "1"})
    with pytest.raises(ValidationError, match="unexpected key 'extra'"):
        pusher.to_send("jobs", {"n": 1, "extra": 2})
    stats = pusher.stats()["jobs"]
    assert (stats.handled, stats.timeouts) == (0, 0)


def test_no_puller_is_a_bounded_request_timeout(client) -> None:
    pusher = client(pusher_models(timeout_s=0.2), {"out": {"jobs": {"pusher": "127.0.0.1:9"}}})
    for attempt in (1, 2):  # and the connection is usable (fails the same way) afterwards
        with pytest.raises(RequestTimeout) as caught:
            pusher.to_send("jobs", {"n": attempt})
        text = str(caught.value)
        assert text.startswith("client: connection 'jobs' found no puller ready")
        assert "for 0.2s" in text and "tcp://127.0.0.1:9" in text
        assert isinstance(caught.value, TimeoutError) and caught.value.workflow_id
        assert pusher.stats()["jobs"].timeouts == attempt
    assert pusher.stats()["jobs"].handled == 0


def test_an_oversized_message_is_refused_before_sending(write_service, run_service, client) -> None:
    puller = start_puller(write_service, run_service, socket_options={"max_message_bytes": 1024})
    pusher = client(
        pusher_models(max_message_bytes=1024), {"out": {"jobs": {"pusher": puller.address("jobs")}}}
    )
    with pytest.raises(ValidationError) as caught:
        pusher.to_send("jobs", {"n": 1, "blob": "x" * 2000})
    text = str(caught.value)
    assert text.startswith("client: jobs.args: the encoded message is ")
    assert text.endswith("bytes, over this connection's max_message_bytes of 1,024")
    # Nothing was sent, so the puller kept its connection: the next message arrives.
    pusher.to_send("jobs", {"n": 2})
    assert puller.module.received.get(timeout=10) == 2
    assert puller.runtime.stats()["jobs"].rejected == 0


def test_bad_frames_are_dropped_and_counted_and_good_ones_handled(
    write_service, run_service, zctx
) -> None:
    puller = start_puller(write_service, run_service)
    raw = zctx.socket(zmq.PUSH)
    raw.setsockopt(zmq.SNDTIMEO, 5000)
    raw.connect(f"tcp://{puller.address('jobs')}")

    def frame(args: Any, v: int = 1) -> bytes:
        return msgspec.msgpack.encode(["", v, "w", args, None])

    bad = [
        b"",
        b"\xc1\xc1\xc1",
        msgspec.msgpack.encode(["", 1, "w"]),  # too short
        msgspec.msgpack.encode({"v": 1, "workflow_id": "w", "args": {"n": 1}}),  # a request
        frame({"n": "one"}),
        frame({"n": 1, "unknown": True}),
        frame({}),
        frame({"n": 1}, v=2),
        b"\x95\xa0" + b"\x91" * 5000 + b"\x01",  # deep nesting
    ]
    raw.send(frame({"n": 1}))
    for data in bad:
        raw.send(data)
    # A multi-frame message never runs the handler, whatever its first frame holds.
    raw.send_multipart([frame({"n": 99}), b"trailing frame", b"another"])
    raw.send(frame({"n": 5, "explode": True}))  # the handler raises
    raw.send(frame({"n": 42}))
    received = puller.module.received
    assert take(received, 2) == [1, 42]  # one PUSH to one PULL keeps its order
    assert received.empty()
    stats = puller.runtime.stats()["jobs"]
    assert stats.rejected == len(bad) + 1
    assert stats.failed == 1
    assert stats.handled == 2
    assert stats.received == len(bad) + 4
    raw.close(linger=0)


def test_the_workflow_id_continues_across_a_pusher_in_a_handler(
    write_service, run_service, client
) -> None:
    last = start_puller(write_service, run_service, "last")
    relay_source = """
    from service_framework.workflow import current_workflow_id
    ids = []

    def on_job(args, to_send, config):
        ids.append(current_workflow_id())
        to_send('next', args)

    connection_models = {
        'in': {'jobs': {
            'connection_type': 'puller',
            'required_creation_arguments': {'connection_function': on_job},
            'required_arguments': {'n': int},
        }},
        'out': {'next': {
            'connection_type': 'pusher',
            'required_arguments': {'n': int},
        }},
    }
    """
    relay = run_service(
        write_service("relay", relay_source),
        addresses={
            "in": {"jobs": {"puller": "127.0.0.1:0"}},
            "out": {"next": {"pusher": last.address("jobs")}},
        },
    )
    pusher = client(pusher_models(), {"out": {"jobs": {"pusher": relay.address("jobs")}}})
    pusher.to_send("jobs", {"n": 7})
    assert last.module.received.get(timeout=10) == 7
    (first_id,) = relay.module.ids
    assert first_id and last.module.ids.get(timeout=5) == f"{first_id}_1"


def test_to_send_is_thread_safe_and_a_busy_wait_is_bounded(
    write_service, run_service, client
) -> None:
    puller = start_puller(write_service, run_service)
    pusher = client(pusher_models(), {"out": {"jobs": {"pusher": puller.address("jobs")}}})
    errors: list[BaseException] = []

    def push(base: int) -> None:
        try:
            for n in range(base, base + 50):
                pusher.to_send("jobs", {"n": n})
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=push, args=(base,)) for base in range(0, 200, 50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not errors and not any(t.is_alive() for t in threads)
    assert sorted(take(puller.module.received, 200)) == list(range(200))

    # With nowhere to send, a caller waiting behind another one's send is bounded too.
    stuck = client(
        pusher_models(timeout_s=0.3), {"out": {"jobs": {"pusher": "127.0.0.1:9"}}}, name="stuck"
    )
    outcomes: queue.Queue[BaseException | None] = queue.Queue()

    def wait_out() -> None:
        try:
            stuck.to_send("jobs", {"n": 1})
        except BaseException as error:
            outcomes.put(error)
        else:
            outcomes.put(None)

    waiting = [threading.Thread(target=wait_out) for _ in range(3)]
    for thread in waiting:
        thread.start()
    for thread in waiting:
        thread.join(20)
    results = [outcomes.get(timeout=1) for _ in waiting]
    assert all(isinstance(result, RequestTimeout) for result in results), results
    assert stuck.stats()["jobs"].timeouts == 3


def test_a_cli_puller_takes_work_and_stops_cleanly(write_service, cli, client, tmp_path) -> None:
    write_service(
        "worker",
        """
        import logging
        log = logging.getLogger('worker')

        def on_job(args, to_send, config):
            log.info('job %d done', args['n'])

        connection_models = {'in': {'jobs': {
            'connection_type': 'puller',
            'required_creation_arguments': {'connection_function': on_job},
            'required_arguments': {'n': int},
        }}}
        """,
    )
    (tmp_path / "addresses.json").write_text(
        json.dumps({"in": {"jobs": {"puller": "127.0.0.1:0"}}})
    )
    process = cli("-s", "worker.py", "-a", "addresses.json")
    address = process.ready()["jobs"]
    pusher = client(pusher_models(), {"out": {"jobs": {"pusher": address}}})
    for n in range(5):
        pusher.to_send("jobs", {"n": n})
    process.wait_for_count(r"job \d done", 5)
    process.signal(signal.SIGTERM)
    assert process.finish() == 0
    assert [line for line in process.lines if "job " in line][-1].endswith("job 4 done")


# ---------------------------------------------------------------------------- CURVE
@pytest.fixture
def curve_keys(tmp_path: Path) -> dict[str, Any]:
    folder, authorized = tmp_path / "keys", tmp_path / "authorized"
    for name in ("server", "client", "stranger"):
        create_keypair(folder, name)
    authorized.mkdir()
    shutil.copy(folder / "client.key", authorized / "client.key")
    server_public, _ = zmq.auth.load_certificate(folder / "server.key")
    return {
        "server": Curve.from_files(folder / "server.key_secret", authorized),
        "client": Curve.from_files(folder / "client.key_secret"),
        "stranger": Curve.from_files(folder / "stranger.key_secret"),
        "server_key": bytes(server_public).decode(),
    }


def test_curve_pullers_take_work_only_from_admitted_pushers(
    write_service, run_service, client, curve_keys
) -> None:
    puller = start_puller(write_service, run_service, curve=curve_keys["server"])
    entry = {"pusher": puller.address("jobs"), "server_public_key": curve_keys["server_key"]}
    stranger = client(
        pusher_models(timeout_s=0.5),
        {"out": {"jobs": entry}},
        name="stranger",
        curve=curve_keys["stranger"],
    )
    # Refused at the handshake: with IMMEDIATE no pipe is made, so nothing is queued.
    with pytest.raises(RequestTimeout, match="stranger: connection 'jobs' found no puller"):
        stranger.to_send("jobs", {"n": 666})
    good = client(
        pusher_models(), {"out": {"jobs": entry}}, name="good", curve=curve_keys["client"]
    )
    good.to_send("jobs", {"n": 1})
    assert puller.module.received.get(timeout=10) == 1
    assert puller.module.received.empty()
    assert puller.runtime.stats()["jobs"].received == 1  # the stranger's frame never got in


# ---------------------------------------------------------------------------- inline
INLINE_PUSHER = """
def main(to_send, config):
    for n in range(config.get('count', 6)):
        to_send('jobs', {'n': n})

connection_models = {'out': {'jobs': {
    'connection_type': 'pusher',
    'required_arguments': {'n': int},
}}}
"""

INLINE_PULLER = """
from service_framework.workflow import current_workflow_id
got = []

def on_job(args, to_send, config):
    if args['n'] == 3:
        raise RuntimeError('a failing job stays with its puller')
    got.append((args['n'], current_workflow_id()))

connection_models = {'in': {'work': {
    'connection_type': 'puller',
    'required_creation_arguments': {'connection_function': on_job},
    'required_arguments': {'n': int},
}}}
"""


def test_inline_pusher_hands_each_message_to_one_puller_in_turn(write_service) -> None:
    inline = InlineServices(console_loglevel=None)
    inline.set_main_service("boss", str(write_service("boss", INLINE_PUSHER)))
    for name in ("a", "b"):
        inline.add_service(name, str(write_service(f"worker_{name}", INLINE_PULLER)))
        inline.add_relation("boss", "jobs", name, "work")
    assert not inline.check()
    inline.start()
    a = [n for n, _ in inline.get_service_module("a").got]
    b = [n for n, _ in inline.get_service_module("b").got]
    assert (a, b) == ([0, 2, 4], [1, 5])  # 3 went to b, whose handler raised
    ids = [wid for _, wid in inline.get_service_module("a").got]
    assert all(ids) and len(set(ids)) == 3  # each message from main starts a workflow


def test_inline_pusher_validates_and_refuses_a_subscriber(write_service) -> None:
    inline = InlineServices(console_loglevel=None)
    inline.set_main_service("boss", str(write_service("boss", INLINE_PUSHER)))
    inline.add_service("a", str(write_service("worker_a", INLINE_PULLER)))
    subscriber = INLINE_PULLER.replace("'puller'", "'subscriber'")
    inline.add_service("s", str(write_service("sub", subscriber)))
    with pytest.raises(
        ValueError, match=r"is a pusher and needs a puller, but s\.work is a subscriber"
    ):
        inline.add_relation("boss", "jobs", "s", "work")
    inline.add_relation("boss", "jobs", "a", "work")
    send = inline._services["boss"].to_send
    with pytest.raises(ValidationError, match=r"expected int, got str at \$\.n"):
        send("jobs", {"n": "x"})
    assert inline.get_service_module("a").got == []


# ---------------------------------------------------------------------------- system tools
def write_system(tmp_path: Path, puller_args: str = "{'n': int}") -> Path:
    (tmp_path / "boss.py").write_text(textwrap.dedent(INLINE_PUSHER))
    worker = INLINE_PULLER.replace(
        "'required_arguments': {'n': int}", f"'required_arguments': {puller_args}"
    )
    (tmp_path / "worker.py").write_text(textwrap.dedent(worker))
    path = tmp_path / "system.toml"
    path.write_text(
        'links = ["boss.jobs -> worker.work"]\n'
        '[services.boss]\nfile = "boss.py"\n[services.worker]\nfile = "worker.py"\n'
    )
    return path


def test_check_asyncapi_and_graph_handle_a_push_pull_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_system(tmp_path)
    assert list(check_topology(topo.load_topology(path)).findings) == []
    assert commands.main(["check", str(path)]) == 0

    document = topology_document(path)
    assert_valid_asyncapi(document)
    bindings = json.dumps(document)
    assert '"PUSH"' in bindings and '"PULL"' in bindings and "push-pull" in bindings
    actions = sorted(op["action"] for op in document["operations"].values())
    assert actions == ["receive", "send"]

    assert commands.main(["graph", str(path)]) == 0
    assert 'boss -->|"jobs → work: pusher → puller<br/>{n}"| worker' in capsys.readouterr().out

    (tmp_path / "dirty").mkdir()
    dirty = write_system(tmp_path / "dirty", "{'n': int, 'who': str}")
    (finding,) = check_topology(topo.load_topology(dirty)).findings
    assert finding.code == "missing-key" and "boss.jobs -> worker.work" in finding.message
