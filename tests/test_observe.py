"""The observer seam: what the pipeline and the connections report, the stats as its
default, more observers plugged in next to them; and a connection type that works in
topologies and inline by declaring its peer, with nothing else edited."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import echo_requester, wait_until
from service_framework import InlineServices, RemoteError
from service_framework import topology as topo
from service_framework.connections import CONNECTION_TYPES, register
from service_framework.connections.publisher import Publisher
from service_framework.connections.subscriber import Subscriber
from service_framework.observe import ONE_WAY_TIME_EVERY

ECHO = """
def on_echo(args, to_send, config):
    if args['text'] == 'fail':
        raise KeyError('boom')
    return {'text': args['text']}

connection_models = {
    'in': {
        'echo': {
            'connection_type': 'replyer',
            'required_creation_arguments': {'connection_function': on_echo},
            'required_arguments': {'text': str},
            'required_return_arguments': {'text': str},
        }
    }
}
"""


class Recorder:
    """An observer that writes down every event it hears, with the connection's name."""

    def __init__(self, name: str, events: list[tuple[str, str, Any]]) -> None:
        self.name, self.events = name, events
        self.lock = threading.Lock()

    def _add(self, event: str, value: Any = None) -> None:
        with self.lock:
            self.events.append((self.name, event, value))

    def on_received(self) -> None:
        self._add("received")

    def on_handled(self, ns: int) -> None:
        self._add("handled", ns)

    def on_failed(self, ns: int) -> None:
        self._add("failed", ns)

    def on_rejected(self) -> None:
        self._add("rejected")

    def on_timed_out(self) -> None:
        self._add("timed_out")

    def on_retried(self) -> None:
        self._add("retried")

    def on_peer(self, event: str) -> None:
        self._add("peer", event)

    def count(self, key: str, n: int = 1) -> None:
        self._add(key, n)


@pytest.fixture
def recorded() -> tuple[list[tuple[str, str, Any]], Callable[[Any], list[Recorder]]]:
    events: list[tuple[str, str, Any]] = []

    def observers(connection: Any) -> list[Recorder]:
        return [Recorder(f"{connection.env.service}.{connection.name}", events)]

    return events, observers


def kinds(events: list[tuple[str, str, Any]], name: str) -> Counter[str]:
    return Counter(event for who, event, _ in list(events) if who == name)


def test_an_observer_hears_what_the_stats_count_over_sockets(
    write_service, run_service, client, recorded
) -> None:
    events, observers = recorded
    server = run_service(
        write_service("server", ECHO),
        addresses={"in": {"echo": {"replyer": "127.0.0.1:0"}}},
        observers=observers,
    )
    # Looser than the server: it sends a key the server refuses.
    loose = {**echo_requester(5), "optional_arguments": {"extra": int}}
    caller = client(
        {"out": {"echo": loose}},
        {"out": {"echo": {"requester": server.address("echo")}}},
    )
    assert caller.to_send("echo", {"text": "hi"}) == {"text": "hi"}
    with pytest.raises(RemoteError, match="remote KeyError"):
        caller.to_send("echo", {"text": "fail"})
    with pytest.raises(RemoteError, match="remote ValidationError"):
        caller.to_send("echo", {"text": "x", "extra": 2})
    assert wait_until(lambda: kinds(events, "server.echo")["rejected"] == 1, timeout=5)
    heard = kinds(events, "server.echo")
    assert {key: heard[key] for key in ("received", "handled", "failed", "rejected")} == {
        "received": 3,
        "handled": 1,
        "failed": 1,
        "rejected": 1,
    }
    # The monitor reports the requester's connection as a peer event.
    assert ("server.echo", "peer", "peers_connected") in events
    # Handling is timed over sockets; the stats keep the total and the longest.
    handled_ns = [ns for who, event, ns in events if who == "server.echo" and event == "handled"]
    assert handled_ns[0] > 0
    stats = server.runtime.stats()["echo"]
    assert (stats.received, stats.handled, stats.failed, stats.rejected) == (3, 1, 1, 1)
    assert stats.handling_ns >= stats.handling_max_ns >= handled_ns[0] > 0
    assert stats.timed == 2  # a replyer times every message it handles or fails
    assert stats.mean_handling_ms() > 0


PULLER = """
def on_work(args, to_send, config):
    pass

connection_models = {
    'in': {
        'work': {
            'connection_type': 'puller',
            'required_creation_arguments': {'connection_function': on_work},
            'required_arguments': {'n': int},
        }
    }
}
"""


def test_a_one_way_connection_times_one_message_in_sixteen(
    write_service, run_service, client, recorded
) -> None:
    events, observers = recorded
    server = run_service(
        write_service("worker", PULLER),
        addresses={"in": {"work": {"puller": "127.0.0.1:0"}}},
        observers=observers,
    )
    pusher = {"connection_type": "pusher", "required_arguments": {"n": int}}
    boss = client({"out": {"work": pusher}}, {"out": {"work": {"pusher": server.address("work")}}})
    for n in range(2 * ONE_WAY_TIME_EVERY):
        boss.to_send("work", {"n": n})
    assert wait_until(lambda: server.runtime.stats()["work"].handled == 32, timeout=5)
    stats = server.runtime.stats()["work"]
    assert (stats.received, stats.handled, stats.timed) == (32, 32, 2)
    assert stats.handling_max_ns > 0
    # The other observers hear every message, with None for those not timed.
    times = [ns for who, event, ns in list(events) if who == "worker.work" and event == "handled"]
    assert len(times) == 32
    assert sum(ns is not None for ns in times) == 2


def test_inline_stats_and_observers_while_running(write_service, recorded) -> None:
    events, observers = recorded
    seen: dict[str, Any] = {}
    main = """
def main(to_send, config):
    to_send('echo', {'text': 'hi'})
    try:
        to_send('echo', {'text': 'fail'})
    except Exception:
        pass
    config['during'] = STATS()

connection_models = {
    'out': {
        'echo': {
            'connection_type': 'requester',
            'required_arguments': {'text': str},
            'required_return_arguments': {'text': str},
        }
    }
}
"""
    inline = InlineServices(console_loglevel=None, observers=observers)
    inline.set_main_service("caller", str(write_service("caller", main)), {})
    inline.add_service("server", str(write_service("server", ECHO)))
    inline.add_relation("caller", "echo", "server", "echo")
    inline.get_service_module("caller").STATS = inline.stats
    inline.start()
    seen = inline.get_service_config("caller")["during"]
    echo = seen["server"]["echo"]
    assert (echo["received"], echo["handled"], echo["failed"]) == (2, 1, 1)
    assert echo["handling_ns"] == 0  # inline calls are not timed
    heard = kinds(events, "server.echo")
    assert (heard["received"], heard["handled"], heard["failed"]) == (2, 1, 1)


class Announcer(Publisher):
    """A new outbound type for this test: a publisher under another name, linking to
    its own inbound type."""

    type_name = "announcer"


class Listener(Subscriber):
    type_name = "listener"


Announcer.peer = Listener

ANNOUNCER = """
def main(to_send, config):
    to_send('news', {'n': 1})
    to_send('news', {'n': 2})

connection_models = {'out': {'news': {'connection_type': 'announcer',
                                      'required_arguments': {'n': int}}}}
"""

LISTENER = """
got = []

def on_news(args, to_send, config):
    got.append(args['n'])

connection_models = {'in': {'news': {
    'connection_type': 'listener',
    'required_creation_arguments': {'connection_function': on_news},
    'required_arguments': {'n': int},
}}}
"""


@pytest.fixture
def new_types() -> Iterator[None]:
    register(Announcer)
    register(Listener)
    yield
    for name in ("announcer", "listener"):
        CONNECTION_TYPES.pop(name, None)


@pytest.mark.usefixtures("new_types")
def test_a_type_that_declares_its_peer_links_inline_and_in_checks(write_service, tmp_path) -> None:
    inline = InlineServices(console_loglevel=None)
    inline.set_main_service("announcer", str(write_service("announcer", ANNOUNCER)))
    inline.add_service("listener", str(write_service("listener", LISTENER)))
    inline.add_relation("announcer", "news", "listener", "news")
    inline.start()
    assert inline.get_service_module("listener").got == [1, 2]
    assert inline.check() == []
    # Its peer is the only type it links to, inline and in a topology check alike.
    write_service("sub", LISTENER.replace("'listener'", "'subscriber'"))
    inline.add_service("sub", str(tmp_path / "sub.py"))
    with pytest.raises(ValueError, match=r"needs a listener, but sub\.news is a subscriber"):
        inline.add_relation("announcer", "news", "sub", "news")
    # A topology links it to its peer, and says what it needs for anything else.
    system = tmp_path / "system.toml"
    system.write_text(
        "[services.announcer]\nfile = 'announcer.py'\n"
        "[services.listener]\nfile = 'listener.py'\n"
        "[services.sub]\nfile = 'sub.py'\n"
        "[[links]]\nfrom = 'announcer.news'\nto = 'listener.news'\n"
        "[[links]]\nfrom = 'announcer.news'\nto = 'sub.news'\n"
    )
    topology = topo.load_topology(system)
    wiring = topo.resolve(topology, topo.load_services(topology))
    assert len(wiring.wires) == 1
    assert [(p.code, p.message) for p in wiring.problems] == [
        (
            "incompatible-types",
            "link announcer.news -> sub.news: announcer.news is a announcer, which links to "
            "listener, but sub.news is a subscriber",
        )
    ]
