"""Error messages a caller can match to the far side's log lines."""

from __future__ import annotations

import pickle
import re
from typing import Any

import pytest
import zmq

from conftest import write_json
from service_framework import InlineServices, RemoteError, RequestTimeout

FAILING = """
def on_echo(args, to_send, config):
    raise KeyError('boom')

connection_models = {'in': {'echo': {
    'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': on_echo},
    'required_arguments': {'text': str},
    'required_return_arguments': {'text': str},
}}}
"""

CALLER = """
def main(to_send, config):
    to_send('echo', {'text': 'hi'})

connection_models = {'out': {'echo': {
    'connection_type': 'requester',
    'required_arguments': {'text': str},
    'required_return_arguments': {'text': str},
}}}
"""


def echo_out(timeout_s: float) -> dict[str, Any]:
    return {
        "connection_type": "requester",
        "optional_creation_arguments": {"timeout_s": timeout_s},
        "required_arguments": {"text": str},
        "required_return_arguments": {"text": str},
    }


def test_remote_error_names_the_workflow_in_the_replyers_log(
    write_service, tmp_path, cli, client
) -> None:
    write_service("failing", FAILING)
    write_json(tmp_path / "a.json", {"in": {"echo": {"replyer": "127.0.0.1:0"}}})
    replyer = cli("-s", "failing.py", "-a", "a.json")
    address = replyer.ready()["echo"]
    runtime = client({"out": {"e": echo_out(10)}}, {"out": {"e": {"requester": address}}})
    with pytest.raises(RemoteError) as caught:
        runtime.to_send("e", {"text": "hi"})
    workflow_id = caught.value.workflow_id
    assert workflow_id
    assert str(caught.value) == (
        f"client: connection 'e': remote KeyError: 'boom' [workflow {workflow_id}]"
    )
    replyer.wait_for(
        rf"\[{re.escape(workflow_id)}\] failing: handler of connection 'echo' raised KeyError"
    )


def test_request_timeout_names_the_workflow_the_request_carried(client, zctx) -> None:
    silent = zctx.socket(zmq.ROUTER)
    silent.linger = 0
    silent.rcvtimeo = 10_000
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    runtime = client(
        {"out": {"e": echo_out(0.2)}}, {"out": {"e": {"requester": f"127.0.0.1:{port}"}}}
    )
    with pytest.raises(RequestTimeout) as caught:
        runtime.to_send("e", {"text": "hi"})
    workflow_id = caught.value.workflow_id
    assert workflow_id
    assert str(caught.value).endswith(f"s each (tcp://127.0.0.1:{port}) [workflow {workflow_id}]")
    request = silent.recv_multipart()[-1]  # what a replyer would have logged it under
    assert workflow_id.encode() in request
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (str(copy), copy.workflow_id) == (str(caught.value), workflow_id)


def test_inline_remote_error_names_the_workflow_like_the_wire(
    write_service, capsys: pytest.CaptureFixture[str]
) -> None:
    inline = InlineServices(console_loglevel="WARNING")
    inline.set_main_service("caller", str(write_service("caller", CALLER)))
    inline.add_service("failing", str(write_service("failing", FAILING)))
    inline.add_relation("caller", "echo", "failing", "echo")
    with pytest.raises(RemoteError) as caught:
        inline.start()
    workflow_id = caught.value.workflow_id
    assert workflow_id
    # As over the wire: the error names the caller's connection, and the callee's log
    # line carries the same workflow id.
    assert str(caught.value) == (
        f"caller: connection 'echo': remote KeyError: 'boom' [workflow {workflow_id}]"
    )
    err = capsys.readouterr().err
    assert f"[{workflow_id}] failing: handler of connection 'echo' raised KeyError: 'boom'" in err
    # The traceback runs through the compiled delivery, and shows its line.
    assert "deliver failing.echo" in err
    assert "result = handler(args, to_send, config)" in err
