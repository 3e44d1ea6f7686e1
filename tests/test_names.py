"""Host names that resolve to several addresses: every address is connected, and the
name is followed as it changes; a name that does not resolve is a warning.

The service under test runs in a private mount namespace whose /etc/hosts (and
nsswitch.conf: files only, so no lookup ever leaves the machine) are temp files, with
names mapped to loopback addresses 127.0.0.2-4 where the tests' peers listen.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Process, wait_until, write_json

# A private /etc/hosts needs root and unshare(1).
namespaced = [
    pytest.mark.netns,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("unshare") is None,
        reason="needs root and unshare(1) for a private /etc/hosts",
    ),
]


def private_hosts(test: Callable[..., None]) -> Callable[..., None]:
    for mark in namespaced:
        test = mark(test)
    return test


# Wraps a command: a new mount namespace, /etc/hosts and /etc/nsswitch.conf bound to
# the test's files, then exec.
PRIVATE_HOSTS = (
    'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/nsswitch.conf && shift 2 && exec "$@"'
)


class Hosts:
    """A private hosts file; :meth:`write` rewrites it in place (same inode, so the bind
    mount sees it)."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "hosts"
        self.nsswitch = tmp_path / "nsswitch.conf"
        self.nsswitch.write_text("hosts: files\n")
        self.write({})

    def write(self, names: dict[str, list[str]]) -> None:
        lines = ["127.0.0.1 localhost"]
        lines += [f"{ip} {name}" for name, ips in names.items() for ip in ips]
        with open(self.path, "r+" if self.path.exists() else "w") as f:
            f.write("\n".join(lines) + "\n")
            f.truncate()

    def argv(self, *command: str) -> list[str]:
        files = (str(self.path), str(self.nsswitch))
        return ["unshare", "-m", "sh", "-c", PRIVATE_HOSTS, "sh", *files, *command]


@pytest.fixture
def hosts(tmp_path: Path) -> Hosts:
    made = Hosts(tmp_path)
    made.write({"peers.test": ["127.0.0.2", "127.0.0.3"]})
    # glibc must return every address of a name written on several lines.
    probe = "import socket; print(sorted({a[4][0] for a in socket.getaddrinfo('peers.test', 1)}))"
    done = subprocess.run(
        made.argv(sys.executable, "-c", probe), capture_output=True, text=True, timeout=30
    )
    if done.returncode != 0:
        pytest.skip(f"cannot make a private /etc/hosts here: {done.stderr.strip()}")
    assert done.stdout.strip() == "['127.0.0.2', '127.0.0.3']"
    return made


@pytest.fixture
def in_namespace(tmp_path: Path, hosts: Hosts):
    """Start ``python -m service_framework ARGS`` with the private hosts file."""
    started: list[Process] = []

    def start(*args: str) -> Process:
        command = hosts.argv(sys.executable, "-m", "service_framework", *args)
        process = Process(list(args), tmp_path, command=command)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        for pipe in (process.popen.stdout, process.popen.stderr):
            if pipe is not None:
                pipe.close()


REPLYER = """
seen = []

def on_work(args, to_send, config):
    seen.append(config['who'])
    return {'who': config['who']}

config_model = {'required': {'who': str}}
connection_models = {'in': {'work': {
    'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': on_work},
    'required_arguments': {'n': int},
    'required_return_arguments': {'who': str},
}}}
"""

# Sends requests until the stop file appears (bounded: 120 s), each on its own round
# trip, so a REQ socket connected to several replyers spreads them over all of them.
REQUESTER = """
import os, time
from service_framework import get_logger

def main(to_send, config):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not os.path.exists(config['stop_file']):
        try:
            to_send('work', {'n': 1})
        except Exception as exc:  # no peer for a moment: go on
            get_logger().info('request failed: %s', exc)
        time.sleep(0.002)  # pacing only: a shared machine

config_model = {'required': {'stop_file': str}}
connection_models = {'out': {'work': {
    'connection_type': 'requester',
    'optional_creation_arguments': {
        'timeout_s': 2,
        'socket_options': {'resolve_interval_ms': 100},
    },
    'required_arguments': {'n': int},
    'required_return_arguments': {'who': str},
}}}
"""


def start_replyers(
    run_service: Callable[..., Any], path: Path, ips: list[str]
) -> tuple[int, dict[str, Any]]:
    """One replyer per loopback address, all on one port; returns (port, ip -> running)."""
    first = run_service(
        str(path),
        config={"who": ips[0]},
        addresses={"in": {"work": {"replyer": f"{ips[0]}:0"}}},
    )
    port = int(first.address("work").rpartition(":")[2])
    running = {ips[0]: first}
    for ip in ips[1:]:
        running[ip] = run_service(
            str(path),
            config={"who": ip},
            addresses={"in": {"work": {"replyer": f"{ip}:{port}"}}},
        )
    return port, running


@private_hosts
def test_requests_reach_every_address_and_follow_changes(
    hosts: Hosts, in_namespace, run_service, write_service, tmp_path: Path
) -> None:
    replyer = write_service("names_replyer", REPLYER)
    port, replyers = start_replyers(run_service, replyer, ["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    seen: list[str] = replyers["127.0.0.2"].module.seen
    write_service("names_requester", REQUESTER)
    write_json(tmp_path / "req.json", {"out": {"work": {"requester": f"peers.test:{port}"}}})
    stop = tmp_path / "stop"
    client = in_namespace(
        "-s", "names_requester.py", "-a", "req.json", "-m", "--stop_file", str(stop)
    )
    two = f"tcp://127.0.0.2:{port}, tcp://127.0.0.3:{port}"
    client.wait_for(re.escape(f"peers now {two} "))
    # Both addresses get requests (libzmq alone would connect to the first only).
    assert wait_until(lambda: {"127.0.0.2", "127.0.0.3"} <= set(seen), 20), seen

    # .3 leaves, .4 joins: rewritten in place, picked up at the next resolve.
    hosts.write({"peers.test": ["127.0.0.2", "127.0.0.4"]})
    client.wait_for(
        re.escape(
            f"peers now tcp://127.0.0.2:{port}, tcp://127.0.0.4:{port} "
            f"(connected tcp://127.0.0.4:{port}; disconnected tcp://127.0.0.3:{port})"
        )
    )
    mark = len(seen)

    def both_served() -> bool:
        after = seen[mark:]
        return after.count("127.0.0.2") >= 3 and after.count("127.0.0.4") >= 3

    assert wait_until(both_served, 20), seen[mark:]
    assert "127.0.0.3" not in seen[mark:]  # disconnected: no request reached it since
    stop.touch()
    assert client.finish(30) == 0, client.log()


@private_hosts
def test_a_name_that_does_not_resolve_is_a_warning_not_a_silent_timeout(
    hosts: Hosts, in_namespace, run_service, write_service, tmp_path: Path
) -> None:
    replyer = write_service("names_replyer", REPLYER)
    port, replyers = start_replyers(run_service, replyer, ["127.0.0.2"])
    write_service("names_requester", REQUESTER)
    write_json(tmp_path / "req.json", {"out": {"work": {"requester": f"later.test:{port}"}}})
    stop = tmp_path / "stop"
    client = in_namespace(
        "-s", "names_requester.py", "-a", "req.json", "-m", "--stop_file", str(stop)
    )
    warning = (
        r"WARNING .*names_requester: connection 'work', address key 'requester': host name "
        r"'later.test' does not resolve \(.*\); not connected to it, trying again every 0.1s"
    )
    client.wait_for(warning)
    client.ready()  # start-up went on
    client.wait_for_count(warning, 3)  # and each failed re-resolve says so again
    # Once the name exists, the service connects and its requests are answered.
    hosts.write({"later.test": ["127.0.0.2"]})
    client.wait_for("host name 'later.test' now resolves")
    assert wait_until(lambda: len(replyers["127.0.0.2"].module.seen) >= 3, 20)
    stop.touch()
    assert client.finish(30) == 0, client.log()


SUBSCRIBER = """
from service_framework import get_logger

def on_tick(args, to_send, config):
    get_logger().warning('got tick from %s', args['who'])

connection_models = {'in': {'ticks': {
    'connection_type': 'subscriber',
    'required_creation_arguments': {'connection_function': on_tick},
    'optional_creation_arguments': {'socket_options': {'resolve_interval_ms': 100}},
    'required_arguments': {'who': str},
}}}
"""


@private_hosts
def test_a_subscriber_hears_every_publisher_behind_a_name(
    hosts: Hosts, in_namespace, client, write_service, tmp_path: Path
) -> None:
    publisher_model = {
        "connection_type": "publisher",
        "optional_creation_arguments": {"wait_after_creation_s": 0},
        "required_arguments": {"who": str},
    }
    first = client(
        {"out": {"ticks": publisher_model}},
        {"out": {"ticks": {"publisher": "127.0.0.2:0"}}},
        name="pub2",
    )
    port = first.endpoints()["out"]["ticks"][0].rpartition(":")[2]
    publishers = {"127.0.0.2": first}
    for ip in ("127.0.0.3", "127.0.0.4"):
        publishers[ip] = client(
            {"out": {"ticks": publisher_model}},
            {"out": {"ticks": {"publisher": f"{ip}:{port}"}}},
            name=f"pub{ip[-1]}",
        )
    write_service("names_subscriber", SUBSCRIBER)
    write_json(tmp_path / "sub.json", {"in": {"ticks": {"subscriber": f"peers.test:{port}"}}})
    subscriber = in_namespace("-s", "names_subscriber.py", "-a", "sub.json")
    subscriber.ready()

    def heard(ip: str) -> None:
        # Publish until the subscriber says it got one (the slow joiner).
        heard_line = f"got tick from {ip}"
        done = threading.Event()

        def publish() -> None:
            while not done.is_set():
                publishers[ip].to_send("ticks", {"who": ip})
                done.wait(0.05)

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        try:
            subscriber.wait_for(heard_line, timeout=20)
        finally:
            done.set()
            thread.join(5)

    heard("127.0.0.2")
    heard("127.0.0.3")
    # The loop applies changes too: .4 joins, heard once the name says so.
    hosts.write({"peers.test": ["127.0.0.2", "127.0.0.3", "127.0.0.4"]})
    subscriber.wait_for(re.escape(f"(connected tcp://127.0.0.4:{port}; disconnected none)"))
    heard("127.0.0.4")


def test_ip_literal_addresses_start_no_resolver(run_service, write_service) -> None:
    replyer = write_service("names_replyer", REPLYER)
    run_service(
        str(replyer),
        config={"who": "x"},
        addresses={"in": {"work": {"replyer": "127.0.0.1:0"}}},
    )
    assert not [t.name for t in threading.enumerate() if t.name.endswith("-names")]


def test_resolve_interval_is_a_checked_socket_option(client) -> None:
    from service_framework.errors import ModelError

    model = {
        "connection_type": "requester",
        "optional_creation_arguments": {"socket_options": {"resolve_interval_ms": 5}},
        "required_arguments": {},
        "required_return_arguments": {},
    }
    with pytest.raises(ModelError, match=r"'resolve_interval_ms' must be >= 10, got 5"):
        client({"out": {"work": model}}, {"out": {"work": {"requester": "peers.test:1"}}})
