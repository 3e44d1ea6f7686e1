"""Publish/subscribe over real sockets: topics, binder/connector variants, bad input."""

from __future__ import annotations

import itertools
import json
import logging
import queue
import re
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import zmq

from conftest import after_markers, host_port, sync, wait_until, write_json
from service_framework import ValidationError
from service_framework.codec import topic_prefix
from service_framework.logs import configure_logging

SUBSCRIBER = """
import queue
received = queue.Queue()

def on_fill(args, to_send, config):
    if args.get('explode'):
        raise RuntimeError('handler failure')
    received.put(args)

connection_models = {{
    'in': {{
        'fills': {{
            'connection_type': 'subscriber',
            'required_creation_arguments': {{'{handler_key}': on_fill}},
            'optional_creation_arguments': {creation},
            'required_arguments': {{'n': int}},
            'optional_arguments': {{'tag': str, 'explode': bool}},
        }}
    }}
}}
"""


def subscriber_source(handler_key: str = "connection_function", **creation: Any) -> str:
    return SUBSCRIBER.format(handler_key=handler_key, creation=repr(creation))


def publisher_models(**creation: Any) -> dict[str, Any]:
    return {
        "out": {
            "fills": {
                "connection_type": "publisher",
                "optional_creation_arguments": {"wait_after_creation_s": 0, **creation},
                "required_arguments": {"n": int},
                "optional_arguments": {"tag": str, "explode": bool},
            }
        }
    }


MARKER = {"n": -1}


def synced(publish: Callable[[Any], object], received: queue.Queue[Any]) -> None:
    sync(publish, received, MARKER)


def next_message(received: queue.Queue[Any], timeout: float = 5.0) -> Any:
    return after_markers(received, MARKER, timeout)


def collect(received: queue.Queue[Any], count: int, timeout: float = 5.0) -> list[Any]:
    return [next_message(received, timeout) for _ in range(count)]


def publisher_and_subscriber(write_service, run_service, client) -> tuple[Any, Any]:
    """A binding publisher (a client runtime) and a subscriber service connected to it,
    the subscription in place."""
    publisher = client(publisher_models(), {"out": {"fills": {"publisher": "127.0.0.1:0"}}})
    address = host_port(publisher.endpoints()["out"]["fills"][0])
    sub = run_service(
        write_service("sub", subscriber_source()),
        addresses={"in": {"fills": {"subscriber": address}}},
    )
    synced(lambda a: publisher.to_send("fills", a), sub.module.received)
    return publisher, sub


def test_publish_reaches_subscriber_in_order(write_service, run_service, client) -> None:
    publisher, sub = publisher_and_subscriber(write_service, run_service, client)
    received = sub.module.received
    for n in range(100):
        assert publisher.to_send("fills", {"n": n}) is None
    assert [m["n"] for m in collect(received, 100)] == list(range(100))


@pytest.mark.parametrize("handler_key", ["connection_function", "on_new_message"])
def test_binding_subscriber_and_connecting_publisher(
    write_service, run_service, client, handler_key
) -> None:
    sub = run_service(
        write_service("sub", subscriber_source(handler_key, is_binder=True)),
        addresses={"in": {"fills": {"subscriber": "127.0.0.1:0"}}},
    )
    publisher = client(
        publisher_models(is_x_pub=True), {"out": {"fills": {"publisher": sub.address("fills")}}}
    )
    synced(lambda a: publisher.to_send("fills", a), sub.module.received)
    publisher.to_send("fills", {"n": 7, "tag": "x"})
    assert next_message(sub.module.received) == {"n": 7, "tag": "x"}


def test_topics_are_exact_not_prefixes(write_service, run_service, client) -> None:
    orders = client(
        publisher_models(topic="orders"), {"out": {"fills": {"publisher": "127.0.0.1:0"}}}
    )
    orders_eu = client(
        publisher_models(topic="orders_eu"), {"out": {"fills": {"publisher": "127.0.0.1:0"}}}
    )
    addresses = [host_port(p.endpoints()["out"]["fills"][0]) for p in (orders, orders_eu)]
    only_orders = run_service(
        write_service("only_orders", subscriber_source(topic="orders")),
        addresses={"in": {"fills": {"subscriber": addresses}}},
    )
    everything = run_service(
        write_service("everything", subscriber_source()),
        addresses={"in": {"fills": {"subscriber": addresses}}},
    )
    synced(lambda a: orders.to_send("fills", a), only_orders.module.received)
    synced(lambda a: orders.to_send("fills", a), everything.module.received)
    synced(lambda a: orders_eu.to_send("fills", a), everything.module.received)
    orders_eu.to_send("fills", {"n": 1, "tag": "eu"})
    orders.to_send("fills", {"n": 2, "tag": "plain"})
    assert next_message(only_orders.module.received)["tag"] == "plain"
    got = {next_message(everything.module.received)["tag"] for _ in range(2)}
    assert got == {"eu", "plain"}
    orders.to_send("fills", {"n": 3})
    assert next_message(only_orders.module.received)["n"] == 3  # "eu" never arrived


def test_publish_validates_before_sending(client) -> None:
    publisher = client(publisher_models(), {"out": {"fills": {"publisher": "127.0.0.1:0"}}})
    with pytest.raises(ValidationError, match=r"fills\.args: expected int, got str at \$\.n"):
        publisher.to_send("fills", {"n": "1"})
    assert publisher.stats()["fills"].handled == 0


def test_bad_frames_are_dropped_and_counted(write_service, run_service, zctx) -> None:
    sub = run_service(
        write_service("sub", subscriber_source(is_binder=True)),
        addresses={"in": {"fills": {"subscriber": "127.0.0.1:0"}}},
    )
    raw = zctx.socket(zmq.PUB)
    raw.connect(f"tcp://{sub.address('fills')}")
    prefix = topic_prefix("")

    def envelope(args: Any, v: int = 1) -> bytes:
        return msgspec.msgpack.encode(["", v, "w", args, None])

    received = sub.module.received
    synced(lambda a: raw.send(envelope(a)), received)
    before = sub.runtime.stats()["fills"].rejected
    bad = [
        b"",
        b"\xc1\xc1\xc1",
        prefix + b"\xc1",
        prefix + msgspec.msgpack.encode([1, 2]),
        msgspec.msgpack.encode(["", 1, "w"]),  # too short
        msgspec.msgpack.encode({"v": 1, "workflow_id": "w", "args": {"n": 1}}),  # a request
        envelope({"n": "one"}),
        envelope({"n": 1, "unknown": True}),
        envelope({}),
        envelope({"n": 1}, v=2),
        prefix + b"\x91" * 5000 + b"\x01",  # deep nesting
    ]
    for frame in bad:
        raw.send(frame)
    # Frames are taken one by one: a multi-frame message's first frame is a message like
    # any other, and its extra frames are rejected as frames that do not decode.
    raw.send_multipart([envelope({"n": 99}), b"trailing frame"])
    raw.send(envelope({"n": 1, "explode": True}))  # the handler raises
    raw.send(envelope({"n": 42}))
    assert next_message(received) == {"n": 99}
    assert next_message(received) == {"n": 42}
    assert received.empty()
    stats = sub.runtime.stats()["fills"]
    assert stats.rejected - before == len(bad) + 1
    assert stats.failed == 1
    raw.close(linger=0)


def test_handler_failure_does_not_stop_later_messages(write_service, run_service, client) -> None:
    publisher, sub = publisher_and_subscriber(write_service, run_service, client)
    for n in range(6):
        publisher.to_send("fills", {"n": n, "explode": n % 2 == 0})
    assert [m["n"] for m in collect(sub.module.received, 3)] == [1, 3, 5]
    assert sub.runtime.stats()["fills"].failed == 3


def test_debug_logs_each_published_and_handled_message_with_its_id(
    write_service, run_service, client, tmp_path
) -> None:
    log_file = tmp_path / "pubsub.log"
    configure_logging(console_loglevel=None, log_path=log_file, file_loglevel="DEBUG")
    try:
        publisher, sub = publisher_and_subscriber(write_service, run_service, client)
        markers_end = len(log_file.read_text())
        publisher.to_send("fills", {"n": 5})
        assert next_message(sub.module.received) == {"n": 5}
        sub.stop()
    finally:
        configure_logging(console_loglevel="WARNING")
    text = log_file.read_text()
    markers = re.findall(r"client: publishing on 'fills' \[(\S+)\]", text[:markers_end])
    published = re.findall(r"client: publishing on 'fills' \[(\S+)\]", text[markers_end:])
    handled = re.findall(r"sub: handling 'fills' \[(\S+)\]", text)
    # Markers may still be handled after the sync; the one real message is handled once.
    assert len(published) == 1
    assert [wid for wid in handled if wid not in markers] == published


def test_publishing_on_a_closed_connection_names_it(client) -> None:
    publisher = client(publisher_models(), {"out": {"fills": {"publisher": "127.0.0.1:0"}}})
    assert publisher.to_send is not None
    publisher.to_send("fills", {"n": 1})
    publisher.close()
    with pytest.raises(RuntimeError, match="client: connection 'fills' is closed"):
        publisher.to_send("fills", {"n": 2})


# --------------------------------------------------------------------------- loss


def test_oversized_publish_is_refused_and_deafens_nobody(
    write_service, run_service, client
) -> None:
    capped = {"socket_options": {"max_message_bytes": 2000}}
    publisher = client(publisher_models(**capped), {"out": {"fills": {"publisher": "127.0.0.1:0"}}})
    address = host_port(publisher.endpoints()["out"]["fills"][0])
    sub = run_service(
        write_service("sub", subscriber_source(**capped)),
        addresses={"in": {"fills": {"subscriber": address}}},
    )
    synced(lambda a: publisher.to_send("fills", a), sub.module.received)
    handled = publisher.stats()["fills"].handled
    with pytest.raises(
        ValidationError,
        match=r"^client: fills\.args: the encoded message is 5,\d{3} bytes, over this "
        r"connection's max_message_bytes of 2,000$",
    ):
        publisher.to_send("fills", {"n": 1, "tag": "x" * 5000})
    assert publisher.stats()["fills"].handled == handled
    # The subscriber (same cap) was not sent it, so it still hears everything after it.
    for n in range(3):
        publisher.to_send("fills", {"n": n})
    assert [m["n"] for m in collect(sub.module.received, 3)] == [0, 1, 2]


def test_topic_subscriber_takes_frames_with_and_without_sequence_numbers(
    write_service, run_service, zctx
) -> None:
    sub = run_service(
        write_service("sub", subscriber_source(is_binder=True, topic="orders")),
        addresses={"in": {"fills": {"subscriber": "127.0.0.1:0"}}},
    )
    raw = zctx.socket(zmq.PUB)
    raw.connect(f"tcp://{sub.address('fills')}")
    received = sub.module.received

    def five(topic: str, args: Any) -> bytes:
        return msgspec.msgpack.encode([topic, 1, "w", args, None])

    def seven(topic: str, args: Any, seq: int) -> bytes:
        return msgspec.msgpack.encode([topic, 1, "w", args, None, "raw/1", seq])

    sync(lambda a: raw.send(seven("orders", a, 0)), received, MARKER)
    raw.send(five("orders_eu", {"n": 1}))
    raw.send(seven("orders_eu", {"n": 2}, 1))
    raw.send(five("orders", {"n": 3}))
    raw.send(seven("orders", {"n": 4}, 10**6))
    assert [m["n"] for m in collect(received, 2)] == [3, 4]
    raw.close(linger=0)


def test_wait_for_subscribers_gives_up_at_its_timeout_with_a_warning(client, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="service_framework"):
        client(
            publisher_models(wait_for_subscribers=2, wait_for_subscribers_timeout_s=0.2),
            {"out": {"fills": {"publisher": "127.0.0.1:0"}}},
        )
    assert any(
        re.search(r"client: connection 'fills' going on with 0 of 2 subscriptions after 0\.2", m)
        for m in caplog.messages
    ), caplog.messages


@pytest.mark.parametrize(
    ("creation", "error"),
    [
        ({"wait_for_subscribers": -1}, "'wait_for_subscribers' must be >= 0, got -1"),
        ({"wait_for_subscribers": True}, "wait_for_subscribers"),
        ({"wait_for_subscribers_timeout_s": 0}, "'wait_for_subscribers_timeout_s' must be > 0"),
    ],
)
def test_bad_wait_for_subscribers_is_a_start_up_error(client, creation, error) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        client(publisher_models(**creation), {"out": {"fills": {"publisher": "127.0.0.1:0"}}})


def test_publisher_reads_what_its_peers_send_while_idle(client, zctx) -> None:
    publisher = client(publisher_models(), {"out": {"fills": {"publisher": "127.0.0.1:0"}}})
    stats = publisher.stats()["fills"]
    peer = zctx.socket(zmq.XSUB)  # a peer that may write anything upstream
    peer.connect(publisher.endpoints()["out"]["fills"][0])
    for _ in range(200):  # (fewer than the peer's own sndhwm, which would drop them)
        peer.send(b"junk a publisher has no use for")
    peer.send(b"\x01" + topic_prefix("other")[:1])  # the frame header alone: everything
    peer.send(b"\x01\x95")  # the old frame header: not this publisher's frames
    # Nothing is published, yet the socket is read: the subscription is counted.
    assert wait_until(lambda: stats.subscriptions == 1, 10), stats
    peer.close(linger=0)


PUBLISHER_PROCESS = """
connection_models = {{'in': {{}}, 'out': {{'ticks': {{
    'connection_type': 'publisher',
    'optional_creation_arguments': {creation},
    'required_arguments': {{'n': int}},
}}}}}}

def {hook}(to_send, config):
    for n in range(10):
        to_send('ticks', {{'n': n}})
"""

COUNTING_SUBSCRIBER = """
import logging
log = logging.getLogger('counting')

def on_tick(args, to_send, config):
    log.warning('got %d', args['n'])

connection_models = {'in': {'ticks': {
    'connection_type': 'subscriber',
    'required_creation_arguments': {'connection_function': on_tick},
    'required_arguments': {'n': int},
}}, 'out': {}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_counting_subscriber(cli, write_service, tmp_path, name: str, port: int) -> Any:
    addresses = write_json(
        tmp_path / f"{name}.json", {"in": {"ticks": {"subscriber": f"127.0.0.1:{port}"}}}
    )
    process = cli("-s", str(write_service(name, COUNTING_SUBSCRIBER)), "-a", str(addresses))
    process.ready()
    return process


def run_publisher(cli, write_service, tmp_path, port: int, hook: str, **creation: Any) -> Any:
    source = PUBLISHER_PROCESS.format(creation=repr(creation), hook=hook)
    addresses = write_json(
        tmp_path / "pub.json", {"in": {}, "out": {"ticks": {"publisher": f"127.0.0.1:{port}"}}}
    )
    args = ["-s", str(write_service("pub", source)), "-a", str(addresses)]
    process = cli(*args, *(["-m"] if hook == "main" else []))
    assert process.finish() == 0, process.log()
    return process


def received_numbers(subscriber: Any) -> list[int]:
    subscriber.wait_for_count(r"counting \[.*\] got \d+$", 10, timeout=15)
    return [int(line.rsplit(" ", 1)[1]) for line in subscriber.lines if " got " in line]


@pytest.mark.slow
@pytest.mark.parametrize("trial", [1, 2, 3])
def test_subscriber_first_then_a_publisher_that_sends_at_once_loses_nothing(
    cli, write_service, tmp_path, trial
) -> None:
    port = free_port()
    subscriber = start_counting_subscriber(cli, write_service, tmp_path, "sub", port)
    # The scenario itself, not a readiness wait: the subscriber has been retrying the
    # absent publisher for a while, so its reconnect back-off has grown (libzmq's own
    # would be at 1.6-3.2 s by now).
    time.sleep(2.0)
    run_publisher(cli, write_service, tmp_path, port, "main")
    assert received_numbers(subscriber) == list(range(10))


@pytest.mark.slow
def test_wait_for_subscribers_starts_publishing_once_they_joined(
    cli, write_service, tmp_path
) -> None:
    port = free_port()
    subscribers = [
        start_counting_subscriber(cli, write_service, tmp_path, f"sub{i}", port) for i in (1, 2)
    ]
    time.sleep(2.0)  # as above: subscribers that have been waiting a while
    publisher = run_publisher(
        cli, write_service, tmp_path, port, "init_function", wait_for_subscribers=2
    )
    assert re.search(r"connection 'ticks' has 2 of 2 subscriptions after", publisher.log())
    for subscriber in subscribers:
        assert received_numbers(subscriber) == list(range(10))


FLOODED_SUBSCRIBER = """
import json, logging
log = logging.getLogger('flooded')
seen = {'count': 0, 'low': None, 'high': None, 'ended': False}
config_model = {'required': {'summary_path': str}}

def on_tick(args, to_send, config):
    n = args['n']
    seen['count'] += 1
    if seen['low'] is None:
        seen['low'] = n
        log.warning('first %d', n)
    seen['high'] = n
    if args.get('tag') == 'end' and not seen['ended']:
        seen['ended'] = True
        log.warning('end %d', n)

def sigterm_handler(signum, frame, to_send, config):
    with open(config['summary_path'], 'w') as f:
        json.dump(seen, f)

connection_models = {'in': {'ticks': {
    'connection_type': 'subscriber',
    'required_creation_arguments': {'connection_function': on_tick},
    'optional_creation_arguments': {'socket_options': {'rcvhwm': 10}},
    'required_arguments': {'n': int},
    'optional_arguments': {'tag': str, 'pad': str},
}}, 'out': {}}
"""


def publish_until(publish: Callable[[], object], process: Any, pattern: str) -> None:
    """Publish (one message per try) until ``process`` logs a line matching ``pattern``."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        publish()
        try:
            process.wait_for(pattern, timeout=0.1)
            return
        except AssertionError:
            continue
    raise AssertionError(f"never saw {pattern!r}:\n{process.log()}")


@pytest.mark.slow
def test_a_stopped_subscriber_counts_and_logs_exactly_what_it_missed(
    cli, write_service, client, tmp_path
) -> None:
    models = publisher_models(socket_options={"sndhwm": 10})
    models["out"]["fills"]["optional_arguments"]["pad"] = str
    publisher = client(models, {"out": {"fills": {"publisher": "127.0.0.1:0"}}}, name="flood")
    address = host_port(publisher.endpoints()["out"]["fills"][0])
    summary = tmp_path / "summary.json"
    addresses = write_json(tmp_path / "sub.json", {"in": {"ticks": {"subscriber": address}}})
    source = write_service("flooded", FLOODED_SUBSCRIBER)
    subscriber = cli("-s", str(source), "-a", str(addresses), "--summary_path", str(summary))
    subscriber.ready()
    numbers = itertools.count()  # n = the publisher's sequence number: one per publish

    def publish(tag: str, pad: str = "") -> None:
        publisher.to_send("fills", {"n": next(numbers), "tag": tag, "pad": pad})

    publish_until(lambda: publish("sync"), subscriber, r"flooded \[.*\] first \d+$")
    subscriber.signal(signal.SIGSTOP)
    try:
        pad = "p" * 1000  # far more than the socket buffers and high-water marks hold
        for _ in range(40_000):
            publish("flood", pad)
    finally:
        subscriber.signal(signal.SIGCONT)
    publish_until(lambda: publish("end"), subscriber, r"flooded \[.*\] end \d+$")
    subscriber.signal(signal.SIGTERM)
    assert subscriber.finish() == 0, subscriber.log()
    seen = json.loads(summary.read_text())
    sent = seen["high"] - seen["low"] + 1  # every message sent since the first one heard
    lost = sent - seen["count"]
    assert lost > 10_000, seen  # the flood did overflow the subscriber
    log = subscriber.log()
    stats = re.search(r"connection 'ticks' ConnectionStats\(.*missed=(\d+), gaps=(\d+)", log)
    assert stats, log
    assert int(stats.group(1)) == lost
    assert int(stats.group(2)) >= 1
    gap_lines = re.findall(
        r"flooded: connection 'ticks' missed ([\d,]+) messages from publisher ([0-9a-f]{8}) ", log
    )
    # The tag is the one the publisher logged it publishes as ("publishes as publisher").
    assert {found for _, found in gap_lines} == {publisher.outbound["fills"].publisher_name}
    gap_lines = [missed for missed, _ in gap_lines]
    assert sum(int(n.replace(",", "")) for n in gap_lines) == lost
