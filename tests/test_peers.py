"""Peers that break the session: a connecting socket libzmq gave up on is reconnected,
and a listener out of file descriptors is loud, counted, and does not spin."""

from __future__ import annotations

import os
import re
import resource
import socket
import time
from typing import Any

import pytest
import zmq

from conftest import after_markers, echo_requester, resync, sync, wait_until, write_json

SUBSCRIBER = """
import queue
received = queue.Queue()

def on_fill(args, to_send, config):
    received.put(args)

connection_models = {
    'in': {
        'fills': {
            'connection_type': 'subscriber',
            'required_creation_arguments': {'connection_function': on_fill},
            'optional_creation_arguments': {'socket_options': {'max_message_bytes': 4096}},
            'required_arguments': {'n': int},
        }
    }
}
"""
# A second inbound connection makes the loop poll several sockets (not block on one).
SPARE = """
connection_models['in']['spare'] = {
    **connection_models['in']['fills'],
    'required_creation_arguments': {'connection_function': lambda args, to_send, config: None},
}
"""

ECHO = """
def on_request(args, to_send, config):
    return {'text': args['text']}

connection_models = {
    'in': {
        'reply': {
            'connection_type': 'replyer',
            'required_creation_arguments': {'connection_function': on_request},
            'required_arguments': {'text': str},
            'required_return_arguments': {'text': str},
        }
    }
}
"""

MARKER = {"n": -1}


def bind_pub(zctx: zmq.Context[Any], port: int = 0) -> tuple[zmq.Socket[Any], int]:
    """A bare PUB bound on 127.0.0.1 (a free port, or ``port`` once it is free again)."""
    pub = zctx.socket(zmq.PUB)
    pub.linger = 0
    if not port:
        return pub, pub.bind_to_random_port("tcp://127.0.0.1")

    def bound() -> bool:
        try:
            pub.bind(f"tcp://127.0.0.1:{port}")
        except zmq.ZMQError:  # the old listener closes in libzmq's I/O thread
            return False
        return True

    assert wait_until(bound, 10), f"port {port} never became free"
    return pub, port


@pytest.mark.parametrize("loop", ["one_socket", "polling"])
def test_subscriber_hears_again_after_a_peer_sent_an_oversized_frame(
    run_service, write_service, zctx, caplog, loop
) -> None:
    caplog.set_level("INFO", logger="service_framework")
    pub, port = bind_pub(zctx)
    entry = {"subscriber": f"127.0.0.1:{port}"}
    service = run_service(
        write_service("sub", SUBSCRIBER + (SPARE if loop == "polling" else "")),
        addresses={
            "in": {"fills": entry, "spare": entry} if loop == "polling" else {"fills": entry}
        },
    )
    received, stats = service.module.received, service.runtime.stats()["fills"]
    codec = service.runtime.inbound["fills"].codec  # the frames this subscriber accepts

    def publisher(sock: zmq.Socket[Any]) -> Any:
        return lambda args: sock.send(codec.encode(args, "wf-1"))

    sync(publisher(pub), received, MARKER)
    # Over max_message_bytes: libzmq ends this session and would never reconnect.
    pub.send(b"\x00" * 8192)
    resync(publisher(pub), received, {"n": -2})
    for n in range(10):
        publisher(pub)({"n": n})
    assert [after_markers(received, {"n": -2})["n"] for _ in range(10)] == list(range(10))
    assert stats.reconnects == 1
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelname == "WARNING" and "reconnected" in r.getMessage()
    ]
    expected = f"sub: connection 'fills' peer tcp://127.0.0.1:{port} dropped the connection"
    assert any(w.startswith(expected) for w in warnings), warnings

    # A publisher restarted on the same port is heard too; an ordinary drop like this
    # one is libzmq's to reconnect, not ours.
    pub.close(linger=0)
    restarted, _ = bind_pub(zctx, port)
    try:
        resync(publisher(restarted), received, {"n": -3})
        for n in range(10, 20):
            publisher(restarted)({"n": n})
        assert [after_markers(received, {"n": -3})["n"] for _ in range(10)] == list(range(10, 20))
    finally:
        restarted.close(linger=0)
    assert stats.reconnects == 1
    assert stats.handled >= 20 and stats.rejected == 0  # the oversized frame never arrived


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (every thread)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs Linux prlimit")
def test_out_of_file_descriptors_is_logged_counted_and_does_not_spin(
    cli, write_service, tmp_path, client
) -> None:
    write_service("echo", ECHO)
    write_json(tmp_path / "addresses.json", {"in": {"reply": {"replyer": "127.0.0.1:0"}}})
    process = cli("-s", "echo.py", "-a", "addresses.json")
    address = process.ready()["reply"]
    pid = process.popen.pid
    # A few descriptors to spare, then far more connections than that.
    limit = open_fds(pid) + 8
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    host, port = address.rsplit(":", 1)
    flood = [socket.create_connection((host, int(port)), timeout=5) for _ in range(limit + 40)]
    try:
        process.wait_for(r"echo: connection 'reply' failed to accept a connection on .*", 20)
        process.wait_for(r"echo: connection 'reply' stopped accepting on ", 20)
        # libzmq 4.3.5 retries a failing accept at once, forever: one core at 100%.
        interval = 2.0
        before, started = cpu_seconds(pid), time.monotonic()
        time.sleep(interval)  # the measured interval itself, not a wait for readiness
        used = (cpu_seconds(pid) - before) / (time.monotonic() - started)
        assert used < 0.3, f"the service used {used:.0%} of a CPU while out of descriptors"
    finally:
        for sock in flood:
            sock.close()
    process.wait_for(r"echo: connection 'reply' accepting on .* again", 30)
    caller = client({"out": {"echo": echo_requester(5)}}, {"out": {"echo": {"requester": address}}})
    assert caller.to_send("echo", {"text": "still here"}) == {"text": "still here"}
    process.signal()
    assert process.finish() == 0
    log = process.log()
    found = [int(n) for n in re.findall(r"accept_failures=(\d+)", log)]
    assert found and found[0] >= 1, log
    error_lines = [line for line in log.splitlines() if "failed to accept" in line]
    assert len(error_lines) <= 5, "accept failures are logged rate-limited"


def soft_fd_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as handle:
        for line in handle:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no open-files line in /proc/PID/limits")


def test_startup_raises_the_soft_open_files_limit_to_the_hard_one(
    cli, write_service, tmp_path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 256)
    if hard != resource.RLIM_INFINITY and hard <= low:
        pytest.skip("the hard limit leaves nothing to raise")
    write_service("echo", ECHO)
    write_json(tmp_path / "addresses.json", {"in": {"reply": {"replyer": "127.0.0.1:0"}}})
    # The child inherits this process's limits at the moment it starts.
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        process = cli("-s", "echo.py", "-a", "addresses.json")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    process.ready()
    expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
    assert soft_fd_limit(process.popen.pid) == expected
