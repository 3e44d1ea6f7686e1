"""``service_framework probe``: a service run with ``--probe_file`` is live while its loop
turns, and not once a handler is stuck, the service has stopped, or its process is gone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import zmq

from conftest import echo_requester, wait_until, write_json
from service_framework import RequestTimeout

STUCK = """
import time
from service_framework import get_logger
LOG = get_logger()

def on_echo(args, to_send, config):
    if args['text'] == 'hang':
        LOG.info('handler hangs now')
        time.sleep(3600)
    return {'text': args['text']}

connection_models = {'in': {'echo': {
    'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': on_echo},
    'required_arguments': {'text': str},
    'required_return_arguments': {'text': str},
}}}
"""

LISTENER = """
def on_tick(args, to_send, config):
    pass

connection_models = {'in': {
    'ticks': {
        'connection_type': 'subscriber',
        'required_creation_arguments': {'connection_function': on_tick},
        'required_arguments': {'n': int},
    },
    'control': {
        'connection_type': 'replyer',
        'required_creation_arguments': {'connection_function': on_tick},
        'required_arguments': {'n': int},
    },
}}
"""


def probe(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service_framework", "probe", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.fixture
def stuck_files(write_service, tmp_path: Path) -> list[str]:
    write_service("stuck", STUCK)
    write_json(tmp_path / "stuck.json", {"in": {"echo": {"replyer": "127.0.0.1:0"}}})
    return ["-s", "stuck.py", "-a", "stuck.json"]


def test_probe_passes_while_the_loop_turns_and_fails_once_stopped(
    stuck_files, tmp_path, cli
) -> None:
    service = cli(*stuck_files, "--probe_file", "run/stuck.probe")
    service.ready()
    ready = probe(tmp_path, "--wait_s", "20", "run/stuck.probe")
    assert ready.returncode == 0, ready.stderr
    beat = json.loads((tmp_path / "run" / "stuck.probe").read_text())
    assert beat["service"] == "stuck"
    assert beat["pid"] == service.popen.pid
    assert beat["connections"]["in"]["echo"]["binds"] is True

    service.signal(signal.SIGTERM)
    assert service.finish() == 0
    after = probe(tmp_path, "run/stuck.probe")
    assert after.returncode == 1
    assert "no heartbeat file" in after.stderr


def test_probe_fails_when_a_handler_is_stuck(stuck_files, tmp_path, cli, client) -> None:
    service = cli(*stuck_files, "--probe_file", "stuck.probe")
    address = service.ready()["echo"]
    assert probe(tmp_path, "--wait_s", "20", "--max_age_s", "2", "stuck.probe").returncode == 0

    requester = client(
        {"out": {"echo": echo_requester(timeout_s=1)}}, {"out": {"echo": {"requester": address}}}
    )

    def hang() -> None:
        with contextlib.suppress(RequestTimeout):  # expected: the handler never answers
            requester.to_send("echo", {"text": "hang"})

    caller = threading.Thread(target=hang, daemon=True)
    caller.start()
    service.wait_for("handler hangs now")
    caller.join(30)
    # The loop is stuck in the handler, so the file stops being refreshed: within the
    # max age (plus the probe's own wait) the probe says so.
    results: list[subprocess.CompletedProcess[str]] = []

    def probe_fails() -> bool:
        results.append(probe(tmp_path, "--max_age_s", "2", "stuck.probe"))
        return results[-1].returncode != 0

    assert wait_until(probe_fails, timeout=30, interval=0.2)
    stuck = results[-1]
    assert stuck.returncode == 1
    assert "stuck: the service loop last turned" in stuck.stderr
    assert service.popen.poll() is None  # the process is still there: only its loop is stuck


def test_probe_fails_at_once_when_the_process_is_gone(stuck_files, tmp_path, cli) -> None:
    service = cli(*stuck_files, "--probe_file", "stuck.probe")
    service.ready()
    assert probe(tmp_path, "--wait_s", "20", "stuck.probe").returncode == 0
    service.kill()  # SIGKILL: the file stays behind, fresh
    gone = probe(tmp_path, "--max_age_s", "3600", "stuck.probe")
    assert gone.returncode == 1
    assert f"process {service.popen.pid} is gone" in gone.stderr


def test_probe_connected_waits_for_a_peer_on_every_connecting_socket(
    write_service, tmp_path, cli, zctx
) -> None:
    publisher = zctx.socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    port = publisher.bind_to_random_port("tcp://127.0.0.1")
    publisher.unbind(publisher.last_endpoint)  # a port nobody listens on, for now
    write_service("listener", LISTENER)
    write_json(
        tmp_path / "listener.json",
        {
            "in": {
                "ticks": {"subscriber": f"127.0.0.1:{port}"},
                "control": {"replyer": "127.0.0.1:0"},
            }
        },
    )
    env = {**os.environ, "SERVICE_FRAMEWORK_PROBE_FILE": str(tmp_path / "l.probe")}
    service = cli("-s", "listener.py", "-a", "listener.json", env=env)
    service.ready()
    # Live (the env var names the file, for the service and the probe alike)...
    assert probe(tmp_path, "--wait_s", "20", env=env).returncode == 0
    # ...but its subscriber has no publisher to talk to yet.
    alone = probe(tmp_path, "--connected", env=env)
    assert alone.returncode == 1
    assert "'ticks' have no peer connected yet" in alone.stderr
    publisher.bind(f"tcp://127.0.0.1:{port}")
    connected = probe(tmp_path, "--connected", "--wait_s", "20", env=env)
    publisher.close()
    assert connected.returncode == 0, connected.stderr


def test_probe_without_a_file_is_a_usage_error(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SERVICE_FRAMEWORK_PROBE_FILE"}
    result = probe(tmp_path, env=env)
    assert result.returncode == 2
    assert "no heartbeat file given" in result.stderr


def test_service_object_keeps_a_heartbeat_file(stuck_files, tmp_path) -> None:
    from service_framework import Service

    probe_file = tmp_path / "object.probe"
    service = Service(
        str(tmp_path / "stuck.py"),
        addresses={"in": {"echo": {"replyer": "127.0.0.1:0"}}},
        probe_file=probe_file,
        console_loglevel=None,
    )
    service.run_service()
    try:
        assert probe(tmp_path, "--wait_s", "20", str(probe_file)).returncode == 0
        assert json.loads(probe_file.read_text())["pid"] == service.pid
    finally:
        assert service.stop_service() == 0
    assert probe(tmp_path, str(probe_file)).returncode == 1


def test_an_unwritable_heartbeat_file_is_logged_and_the_service_keeps_serving(
    stuck_files, tmp_path, cli, client
) -> None:
    (tmp_path / "a_file").write_text("not a directory")
    service = cli(*stuck_files, "--probe_file", "a_file/stuck.probe")
    address = service.ready()["echo"]
    service.wait_for(r"stuck: cannot write heartbeat file a_file/stuck.probe .*probes will fail")
    requester = client(
        {"out": {"echo": echo_requester(timeout_s=10)}}, {"out": {"echo": {"requester": address}}}
    )
    assert requester.to_send("echo", {"text": "still here"}) == {"text": "still here"}
