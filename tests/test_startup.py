"""What a service's start-up loads: only what running one service needs.

CURVE's authenticator thread (``zmq.auth.thread``) and pyzmq's monitor helpers
(``zmq.utils.monitor``) both import asyncio, tens of milliseconds at every start; the
topology, link checking, export, graph and AsyncAPI modules (and InlineServices, which
uses them) belong to other commands. A service started by the CLI loads none of them.
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import write_json

# Must not be imported by a service that does not use them.
NOT_AT_START = (
    "asyncio",
    "zmq.asyncio",
    "zmq.auth",
    "zmq.auth.thread",
    "zmq.utils.monitor",
    "service_framework.inline",
    "service_framework.check",
    "service_framework.topology",
    "service_framework.topology_run",
    "service_framework.asyncapi",
    "service_framework.export",
    "service_framework.graph",
    "service_framework.up",
    "honcho",
)

LOADED = f"""
import sys

def loaded():
    return sorted(name for name in {NOT_AT_START!r} if name in sys.modules)
"""

# A replyer (service loop, its socket watched by the peer monitor) answers with what
# its process has loaded.
REPLYER = (
    LOADED
    + """
def on_ask(args, to_send, config):
    return {'loaded': loaded()}

connection_models = {'in': {'ask': {
    'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': on_ask},
    'required_arguments': {},
    'required_return_arguments': {'loaded': [str]},
}}}
"""
)

# A main-mode client: asks, then prints both processes' lists.
CLIENT = (
    LOADED
    + """
import json

connection_models = {'out': {'ask': {
    'connection_type': 'requester',
    'optional_creation_arguments': {'timeout_s': 20},
    'required_arguments': {},
    'required_return_arguments': {'loaded': [str]},
}}}

def main(to_send, config):
    replyer = to_send('ask', {})['loaded']
    print(json.dumps({'replyer': replyer, 'client': loaded()}))
"""
)


def test_a_service_start_loads_no_curve_monitor_or_topology_machinery(
    write_service, tmp_path, cli
) -> None:
    write_service("replyer", REPLYER)
    write_service("client", CLIENT)
    write_json(tmp_path / "replyer.json", {"in": {"ask": {"replyer": "127.0.0.1:0"}}})
    replyer = cli("-s", "replyer.py", "-a", "replyer.json")
    port = replyer.ready()["ask"].rsplit(":", 1)[1]
    write_json(tmp_path / "client.json", {"out": {"ask": {"requester": f"127.0.0.1:{port}"}}})
    client = subprocess.run(
        [sys.executable, "-m", "service_framework", "-s", "client.py", "-a", "client.json", "-m"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert client.returncode == 0, client.stderr
    assert json.loads(client.stdout) == {"replyer": [], "client": []}


def test_inline_services_is_still_importable_from_the_package() -> None:
    # Imported on first use rather than with the package (see the test above).
    code = (
        "import sys, service_framework\n"
        "assert 'service_framework.inline' not in sys.modules\n"
        "from service_framework import InlineServices\n"
        "from service_framework.inline import InlineServices as same\n"
        "assert InlineServices is same and 'InlineServices' in service_framework.__all__\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr
