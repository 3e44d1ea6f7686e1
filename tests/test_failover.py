"""Socket options reach every pipe, and a requester routes around replyers that are down
or stopped.

libzmq reads ``IMMEDIATE`` (and the HWMs, ``MAXMSGSIZE``, heartbeats) when it makes a
connection's pipe, which ``connect`` does at once: options set afterwards never reach the
pipes that exist. These tests read the options back from a running service and show the
behaviour that depends on them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from conftest import write_json

ECHO = """
config_model = {'optional': {'who': str}}

def on_request(args, to_send, config):
    return {'text': args['text'], 'who': config.get('who', '?')}

def on_message(args, to_send, config):
    pass

connection_models = {
    'in': {
        'reply': {
            'connection_type': 'replyer',
            'required_creation_arguments': {'connection_function': on_request},
            'required_arguments': {'text': str},
            'required_return_arguments': {'text': str, 'who': str},
        },
        %(more_in)s
    },
    'out': {%(out)s},
}
"""

ALL_TYPES_IN = """
        'custom_reply': {
            'connection_type': 'replyer',
            'required_creation_arguments': {'connection_function': on_request},
            'optional_creation_arguments': {'socket_options': {'rcvhwm': 50, 'linger_ms': 0}},
            'required_arguments': {'text': str},
            'required_return_arguments': {'text': str, 'who': str},
        },
        'listen': {
            'connection_type': 'subscriber',
            'required_creation_arguments': {'connection_function': on_message},
            'required_arguments': {'text': str},
        },
"""

ALL_TYPES_OUT = """
        'ask': {
            'connection_type': 'requester',
            'optional_creation_arguments': {'timeout_s': 1.5, 'retries': 1},
            'required_arguments': {'text': str},
            'required_return_arguments': {'text': str, 'who': str},
        },
        'tell': {
            'connection_type': 'publisher',
            'optional_creation_arguments': {'wait_after_creation_s': 0},
            'required_arguments': {'text': str},
        },
"""

# SocketOptions' defaults, as the README's "Socket defaults" table states them.
DEFAULTS = {
    zmq.LINGER: 1000,
    zmq.SNDHWM: 1000,
    zmq.RCVHWM: 1000,
    zmq.MAXMSGSIZE: 16 * 1024 * 1024,
    zmq.HEARTBEAT_IVL: 2000,
    zmq.HEARTBEAT_TIMEOUT: 6000,
    zmq.HEARTBEAT_TTL: 6000,
    zmq.HANDSHAKE_IVL: 5000,
    zmq.RECONNECT_IVL: 100,
    zmq.RECONNECT_IVL_MAX: 5000,
}


def echo_source(*, more_in: str = "", out: str = "") -> str:
    return ECHO % {"more_in": more_in, "out": out}


def requester_model(timeout_s: float, retries: int) -> dict[str, Any]:
    return {
        "connection_type": "requester",
        "optional_creation_arguments": {"timeout_s": timeout_s, "retries": retries},
        "required_arguments": {"text": str},
        "required_return_arguments": {"text": str, "who": str},
    }


@contextlib.contextmanager
def dead_address() -> Iterator[str]:
    """A 127.0.0.1 port held bound but not listening: every connect to it is refused, and
    no other test can take the port meanwhile."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{holder.getsockname()[1]}"
    finally:
        holder.close()


def read_options(sock: zmq.Socket[Any], options: list[int]) -> dict[int, int]:
    return {option: sock.getsockopt(option) for option in options}


def test_every_connection_type_has_its_options_on_its_socket(write_service, run_service) -> None:
    source = echo_source(more_in=ALL_TYPES_IN, out=ALL_TYPES_OUT)
    with dead_address() as nowhere:
        service = run_service(
            write_service("all_types", source),
            addresses={
                "in": {
                    "reply": {"replyer": "127.0.0.1:0"},
                    "custom_reply": {"replyer": "127.0.0.1:0"},
                    "listen": {"subscriber": nowhere},
                },
                "out": {"ask": {"requester": nowhere}, "tell": {"publisher": "127.0.0.1:0"}},
            },
        )
        runtime = service.runtime
        sockets = {
            name: connection.socket  # type: ignore[attr-defined]
            for group in (runtime.inbound, runtime.outbound)
            for name, connection in group.items()
        }
        assert all(sock is not None for sock in sockets.values()), sockets
        got = {name: read_options(sock, list(DEFAULTS)) for name, sock in sockets.items()}
        # A replyer holds at most rcvhwm requests per peer (see the README's Guarantees).
        assert got["reply"] == {**DEFAULTS, zmq.RCVHWM: 8}
        # The creation argument overrides the type's default as well as the global one.
        assert got["custom_reply"] == {**DEFAULTS, zmq.RCVHWM: 50, zmq.LINGER: 0}
        # A subscriber retries a missing publisher quickly (see the README's pub/sub part).
        assert got["listen"] == {**DEFAULTS, zmq.RECONNECT_IVL_MAX: 200}
        assert got["tell"] == DEFAULTS
        assert got["ask"] == DEFAULTS
        ask = sockets["ask"]
        assert read_options(ask, [zmq.IMMEDIATE, zmq.SNDTIMEO, zmq.RCVTIMEO]) == {
            zmq.IMMEDIATE: 1,
            zmq.SNDTIMEO: 1500,
            zmq.RCVTIMEO: 100,  # a reply is awaited in 100 ms slices up to the timeout
        }


def test_a_dead_replyer_first_in_the_list_costs_no_timeout(
    write_service, run_service, client
) -> None:
    path = write_service("echo", echo_source())
    live = [
        run_service(
            path, config={"who": f"r{i}"}, addresses={"in": {"reply": {"replyer": "127.0.0.1:0"}}}
        )
        for i in range(3)
    ]
    with dead_address() as nowhere:
        caller = client(
            {"out": {"ask": requester_model(timeout_s=1, retries=3)}},
            {"out": {"ask": {"requester": [nowhere, *(s.address("reply") for s in live)]}}},
        )
        served = [caller.to_send("ask", {"text": str(i)}) for i in range(20)]
    assert [reply["text"] for reply in served] == [str(i) for i in range(20)]
    stats = caller.stats()["ask"]
    # Not one attempt was queued onto the dead replyer to wait out its timeout.
    assert (stats.handled, stats.timeouts, stats.retries) == (20, 0, 0), stats
    assert {reply["who"] for reply in served} <= {"r0", "r1", "r2"}


@pytest.mark.slow
def test_a_stopped_replyer_costs_a_caller_at_most_one_attempt(
    write_service, tmp_path, cli, client
) -> None:
    write_service("echo", echo_source())
    write_json(tmp_path / "addresses.json", {"in": {"reply": {"replyer": "127.0.0.1:0"}}})
    replyers = [cli("-s", "echo.py", "-a", "addresses.json", "--who", f"r{i}") for i in range(4)]
    addresses = [process.ready()["reply"] for process in replyers]
    caller = client(
        {"out": {"ask": requester_model(timeout_s=1, retries=3)}},
        {"out": {"ask": {"requester": addresses}}},
    )
    # Until every replyer has answered once, the caller's socket has a pipe to each.
    seen: set[str] = set()
    for i in range(200):
        seen.add(caller.to_send("ask", {"text": f"warm-{i}"})["who"])
        if len(seen) == 4:
            break
    assert seen == {"r0", "r1", "r2", "r3"}
    stats = caller.stats()["ask"]
    warm_timeouts = stats.timeouts  # 0, unless the machine kept a live replyer for 1 s
    paused = replyers[0].popen.pid
    os.kill(paused, signal.SIGSTOP)
    try:
        served = [caller.to_send("ask", {"text": str(i)}) for i in range(20)]
    finally:
        os.kill(paused, signal.SIGCONT)
    assert [reply["text"] for reply in served] == [str(i) for i in range(20)]
    assert {reply["who"] for reply in served} <= {"r1", "r2", "r3"}
    # The one request that was already routed to the stopped replyer timed out once; the
    # fresh socket then never gets a pipe to it (its handshake cannot complete).
    assert stats.timeouts - warm_timeouts <= 1, stats
