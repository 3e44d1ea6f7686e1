"""numpy arrays as a type spec: dtype, shape and values round-trip over sockets and
inline, through one msgpack extension type; object dtypes are refused before sending;
a malformed extension from the network is an error reply, never a crash."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from conftest import host_port, sync
from service_framework import InlineServices, RemoteError, ValidationError
from service_framework.codec import MessageCodec

np = pytest.importorskip("numpy")

# Echoes every array it gets, doubled, so a reply proves the request arrived intact
# and the reply travels intact too.
REPLYER = """
import numpy as np

seen = []

def on_arrays(args, to_send, config):
    seen.append(args)
    flags = [not a.flags.writeable for a in args['many']]  # read-only views
    return {
        'one': args['one'] * 2,
        'many': [np.asarray(a * 2) for a in args['many']],  # 0-d * 2 is a scalar
        'named': {k: v for k, v in args['named'].items()},
        'flags': flags,
        **({'maybe': args['maybe']} if 'maybe' in args else {}),
    }

ARGS = {'one': np.ndarray, 'many': [np.ndarray], 'named': {str: np.ndarray}}
connection_models = {'in': {'arrays': {
    'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': on_arrays},
    'required_arguments': ARGS,
    'optional_arguments': {'maybe': np.ndarray | None},
    'required_return_arguments': {**ARGS, 'flags': [bool]},
    'optional_return_arguments': {'maybe': np.ndarray | None},
}}}
"""


def requester_model() -> dict[str, Any]:
    args = {"one": np.ndarray, "many": [np.ndarray], "named": {str: np.ndarray}}
    return {
        "connection_type": "requester",
        "optional_creation_arguments": {"timeout_s": 10},
        "required_arguments": args,
        "optional_arguments": {"maybe": np.ndarray | None},
        "required_return_arguments": {**args, "flags": [bool]},
        "optional_return_arguments": {"maybe": np.ndarray | None},
    }


# Several dtypes (byte orders included) and shapes: 0-d, empty, 1-d, 3-d, and a
# non-contiguous view (a transpose and a strided slice).
def many_arrays() -> list[Any]:
    grid = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    return [
        np.array(3.25),  # 0-d
        np.zeros((0, 5), dtype=np.float32),  # empty
        np.arange(7, dtype=">i8"),  # big-endian
        grid,
        grid.T,  # not C-contiguous
        np.arange(20, dtype=np.float64)[::3],  # strided
        np.array([1 + 2j, -3j], dtype=np.complex128),
        np.array([True, False, True]),
        np.array([250, 3], dtype=np.uint8),
        np.array([1.5, -2.0], dtype=np.float16),
    ]


def named_arrays() -> dict[str, Any]:
    return {
        "words": np.array(["ab", "c", "xyz"]),
        "raw": np.array([b"\x00\x01", b"z"], dtype="S2"),
        "when": np.array(["2024-01-02T03:04", "1970-01-01"], dtype="datetime64[m]"),
        "span": np.array([5, -1], dtype="timedelta64[s]"),
    }


def assert_same(got: Any, sent: Any, factor: int = 1) -> None:
    assert isinstance(got, np.ndarray)
    assert got.dtype == sent.dtype and got.dtype.str == sent.dtype.str
    assert got.shape == sent.shape
    np.testing.assert_array_equal(got, sent * factor if factor != 1 else sent)


def check_reply(reply: dict[str, Any], sent: dict[str, Any]) -> None:
    assert_same(reply["one"], sent["one"], 2)
    assert len(reply["many"]) == len(sent["many"])
    for got, original in zip(reply["many"], sent["many"], strict=True):
        doubled = np.asarray(original * 2)
        assert got.dtype == doubled.dtype and got.shape == doubled.shape
        np.testing.assert_array_equal(got, doubled)
    assert reply["named"].keys() == sent["named"].keys()
    for key, original in sent["named"].items():
        assert_same(reply["named"][key], original)


def message() -> dict[str, Any]:
    # bools and bytes do not double; keep the doubled list numeric
    return {
        "one": np.linspace(0.0, 1.0, 11),
        "many": [a for a in many_arrays() if a.dtype.kind in "iufc"],
        "named": named_arrays(),
    }


@pytest.fixture
def replyer(run_service, write_service):
    path = write_service("array_replyer", REPLYER)
    return run_service(str(path), addresses={"in": {"arrays": {"replyer": "127.0.0.1:0"}}})


@pytest.fixture
def requester(replyer, client):
    runtime = client(
        {"out": {"arrays": requester_model()}},
        {"out": {"arrays": {"requester": replyer.address("arrays")}}},
    )
    return runtime.to_send


def test_arrays_round_trip_over_sockets(replyer, requester) -> None:
    sent = message()
    reply = requester("arrays", sent)
    check_reply(reply, sent)
    # What the handler received: the arrays as sent, as read-only views of the message.
    (received,) = replyer.module.seen
    for got, original in zip(received["many"], sent["many"], strict=True):
        assert_same(got, original)
    assert all(reply["flags"])
    assert not any(a.flags.writeable for a in reply["many"])
    mine = reply["one"].copy()  # a writable array of its own
    mine += 1
    np.testing.assert_array_equal(mine, sent["one"] * 2 + 1)


def test_optional_array_key_present_absent_and_none(replyer, requester) -> None:
    base = {"one": np.array([1]), "many": [], "named": {}}
    assert "maybe" not in requester("arrays", base)
    assert requester("arrays", {**base, "maybe": None})["maybe"] is None
    nested = np.arange(6, dtype="<u2").reshape(3, 2)
    assert_same(requester("arrays", {**base, "maybe": nested})["maybe"], nested)


def test_object_dtype_is_refused_before_sending(replyer, requester) -> None:
    bad = {"one": np.array([1.0]), "many": [], "named": {"x": np.array([{}, 1], dtype=object)}}
    with pytest.raises(ValidationError) as caught:
        requester("arrays", bad)
    text = str(caught.value)
    assert text.startswith("client: arrays.args: an array of dtype object")
    assert "pickle" in text and text.endswith("at $.named.x")
    structured = np.zeros(2, dtype=[("a", "i4"), ("b", "f8")])
    with pytest.raises(ValidationError, match=r"structured dtype .* at \$\.one"):
        requester("arrays", {"one": structured, "many": [], "named": {}})
    with pytest.raises(ValidationError, match=r"expected ndarray, got list at \$\.one"):
        requester("arrays", {"one": [1.0, 2.0], "many": [], "named": {}})
    assert replyer.module.seen == []  # nothing reached the replyer
    assert replyer.runtime.stats()["arrays"].received == 0


def test_object_array_in_an_undeclared_position_is_refused_too(replyer, client) -> None:
    runtime = client(
        {"out": {"loose": {"connection_type": "requester", "required_arguments": {"d": dict}}}},
        {"out": {"loose": {"requester": replyer.address("arrays")}}},
    )
    with pytest.raises(ValidationError, match=r"cannot be encoded as msgpack.*pickle"):
        runtime.to_send("loose", {"d": {"x": np.array([None], dtype=object)}})
    assert replyer.runtime.stats()["arrays"].received == 0


@pytest.fixture
def raw(replyer, zctx):
    """A bare REQ socket connected to the array replyer (a peer we do not control)."""
    sock = zctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(f"tcp://{replyer.address('arrays')}")
    yield sock
    sock.close()


def ext_request(value: Any) -> bytes:
    return msgspec.msgpack.encode(
        {"v": 1, "workflow_id": "wf-bad", "args": {"one": value, "many": [], "named": {}}}
    )


def header(dtype: bytes, *shape: int, layout: int = 1, ndim: int | None = None) -> Any:
    dims = b"".join(d.to_bytes(8, "little") for d in shape)
    count = len(shape) if ndim is None else ndim
    return Ext(1, bytes([layout, len(dtype)]) + dtype + bytes([count]) + dims)


Ext = msgspec.msgpack.Ext
# The same two extension values the framework sends for np.arange(3.0).
GOOD = [header(b"<f8", 3), Ext(2, np.arange(3.0).tobytes())]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([Ext(1, b""), Ext(2, b"")], "a header of 0 bytes"),
        ([header(b"<f8", 3, layout=9), GOOD[1]], "unknown layout 9"),
        ([Ext(1, bytes([1, 40]) + b"<f8"), GOOD[1]], "truncated header"),
        ([header(b"zz9"), Ext(2, b"")], "bad dtype b'zz9'"),
        ([header(b"|O", 1), Ext(2, bytes(8))], "only pickle could send"),
        ([header(b"<f8", 1, ndim=200), GOOD[1]], "for 200 dimensions"),
        ([header(b"<f8", 4), GOOD[1]], "shape (4,) of <f8 needs 32 bytes, got 24"),
        ([header(b"<f8", 2**63, 2**63), Ext(2, b"")], "shape"),
        ([header(b"<f8", 2**40, 2**30), Ext(2, b"")], "needs"),
        (GOOD[0], "a header and its elements come as a pair"),
        ([GOOD[1], GOOD[0]], "a header, then its elements"),
    ],
)
def test_malformed_array_is_an_error_reply(replyer, raw, value, expected) -> None:
    sock = raw
    sock.send(ext_request(value))
    reply = msgspec.msgpack.decode(sock.recv())
    assert reply["workflow_id"] == "wf-bad"
    assert reply["error"]["type"] == "ValidationError"
    message = reply["error"]["message"]
    assert expected in message and message.endswith("at $.one"), message
    # The service keeps serving: a well-formed array is answered.
    sock.send(ext_request(GOOD))
    reply = msgspec.msgpack.decode(sock.recv())
    assert "error" not in reply, reply
    # The reply's array on the wire: its header, then its elements (doubled).
    head, elements = reply["return_args"]["one"]
    assert (head.code, head.data) == (1, GOOD[0].data)
    assert (elements.code, elements.data) == (2, (np.arange(3.0) * 2).tobytes())
    assert replyer.runtime.stats()["arrays"].rejected == 1
    assert replyer.runtime.stats()["arrays"].handled == 1


def test_a_non_array_where_an_array_is_declared_is_a_validation_error(replyer, raw) -> None:
    sock = raw
    frame = {"v": 1, "workflow_id": "w", "args": {"one": [1.0], "many": [], "named": {}}}
    sock.send(msgspec.msgpack.encode(frame))
    reply = msgspec.msgpack.decode(sock.recv())
    assert reply["error"]["type"] == "ValidationError"
    assert "expected ndarray, got list at $.one" in reply["error"]["message"]


INLINE_REQUESTER = """
import numpy as np

results = []

def main(to_send, config):
    results.append(to_send('arrays', config['message']))
    try:
        to_send('arrays', {'one': np.array([object()]), 'many': [], 'named': {}})
    except ValueError as exc:
        results.append(exc)

config_model = {'required': {'message': dict}}
ARGS = {'one': np.ndarray, 'many': [np.ndarray], 'named': {str: np.ndarray}}
connection_models = {'out': {'arrays': {
    'connection_type': 'requester',
    'required_arguments': ARGS,
    'optional_arguments': {'maybe': np.ndarray | None},
    'required_return_arguments': {**ARGS, 'flags': [bool]},
    'optional_return_arguments': {'maybe': np.ndarray | None},
}}}
"""


def test_arrays_inline(write_service) -> None:
    replyer = write_service("inline_array_replyer", REPLYER)
    requester = write_service("inline_array_requester", INLINE_REQUESTER)
    sent = message()
    services = InlineServices(console_loglevel="WARNING")
    services.set_main_service("requester", str(requester), {"message": sent})
    services.add_service("replyer", str(replyer))
    services.add_relation("requester", "arrays", "replyer", "arrays")
    services.start()
    reply, refused = services.get_service_module("requester").results
    check_reply(reply, sent)
    assert isinstance(refused, ValidationError) and not isinstance(refused, RemoteError)
    assert "pickle" in str(refused) and "$.one" in str(refused)
    assert len(services.get_service_module("replyer").seen) == 1


def test_ndarray_annotation_is_an_array_spec(run_service, write_service, client) -> None:
    path = write_service(
        "typed_arrays",
        """
        import numpy as np
        from numpy.typing import NDArray

        def on_sum(args, to_send, config):
            return {'total': float(args['values'].sum())}

        connection_models = {'in': {'sum': {
            'connection_type': 'replyer',
            'required_creation_arguments': {'connection_function': on_sum},
            'required_arguments': {'values': NDArray[np.float64]},
            'required_return_arguments': {'total': float},
        }}}
        """,
    )
    service = run_service(str(path), addresses={"in": {"sum": {"replyer": "127.0.0.1:0"}}})
    model = {
        "connection_type": "requester",
        "required_arguments": {"values": np.ndarray},
        "required_return_arguments": {"total": float},
    }
    address = {"out": {"sum": {"requester": service.address("sum")}}}
    to_send = client({"out": {"sum": model}}, address).to_send
    assert to_send("sum", {"values": np.array([1.5, 2.5])}) == {"total": 4.0}


def test_missing_numpy_is_a_startup_error_with_the_install_hint(tmp_path: Path) -> None:
    service = tmp_path / "needs_numpy.py"
    service.write_text(
        textwrap.dedent(
            """
            import numpy as np

            def main(to_send, config):
                pass
            """
        )
    )
    # This interpreter has numpy; make it look absent, then run the CLI as usual.
    runner = (
        "import sys, runpy; sys.modules['numpy'] = None; "
        "runpy.run_module('service_framework', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", runner, "-s", str(service), "-m"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "needs_numpy.py" in done.stderr
    assert "ModuleNotFoundError" in done.stderr
    assert "pip install 'service-framework[numpy]'" in done.stderr


def test_services_without_arrays_do_not_import_numpy(tmp_path: Path) -> None:
    service = tmp_path / "plain.py"
    service.write_text(
        textwrap.dedent(
            """
            import sys

            def main(to_send, config):
                assert to_send('echo', {'text': 'x'}) == {'text': 'x'}
                print('numpy imported:', 'numpy' in sys.modules)

            connection_models = {'out': {'echo': {
                'connection_type': 'external_target',
                'required_creation_arguments': {'target': lambda **kw: kw},
                'required_arguments': {'text': str},
                'required_return_arguments': {'text': str},
            }}}
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "service_framework", "-s", str(service), "-m"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "numpy imported: False" in done.stdout


ARRAY_SUBSCRIBER = """
import queue
import numpy as np

received = queue.Queue()

def on_frame(args, to_send, config):
    received.put(args)

connection_models = {'in': {'frames': {
    'connection_type': 'subscriber',
    'required_creation_arguments': {'connection_function': on_frame},
    'optional_creation_arguments': {'topic': 'frames'},
    'required_arguments': {'seq': int, 'frame': np.ndarray},
}}}
"""


def test_arrays_are_published_and_received(run_service, write_service, client) -> None:
    model = {
        "connection_type": "publisher",
        "optional_creation_arguments": {"topic": "frames", "wait_after_creation_s": 0},
        "required_arguments": {"seq": int, "frame": np.ndarray},
    }
    publisher = client(
        {"out": {"frames": model}}, {"out": {"frames": {"publisher": "127.0.0.1:0"}}}
    )
    address = host_port(publisher.endpoints()["out"]["frames"][0])
    path = write_service("array_subscriber", ARRAY_SUBSCRIBER)
    subscriber = run_service(str(path), addresses={"in": {"frames": {"subscriber": address}}})
    received = subscriber.module.received
    marker = {"seq": -1, "frame": np.zeros(1)}
    sync(lambda m: publisher.to_send("frames", m), received, marker)
    frame = np.arange(12, dtype="<u2").reshape(3, 4)[:, ::2]  # a strided view
    publisher.to_send("frames", {"seq": 1, "frame": frame})
    while True:
        got = received.get(timeout=10)
        if got["seq"] != -1:
            break
    assert got["seq"] == 1
    assert_same(got["frame"], frame)


def test_large_arrays_round_trip_and_survive_a_retry(replyer, requester, client, zctx) -> None:
    # Frames this large leave without a copy (a zmq.Frame over the encoded bytes).
    big = np.random.default_rng(7).random((512, 300))  # 1.2 MB
    sent = {"one": big, "many": [big[::2, ::3]], "named": {"ints": np.arange(100_000)}}
    check_reply(requester("arrays", sent), sent)

    # A retry sends the same frame again, on a fresh socket: it must arrive whole.
    router = zctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVTIMEO, 10_000)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    model = {**requester_model(), "optional_creation_arguments": {"timeout_s": 1, "retries": 1}}
    to_send = client(
        {"out": {"arrays": model}}, {"out": {"arrays": {"requester": f"127.0.0.1:{port}"}}}
    ).to_send
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(to_send("arrays", sent)))
    thread.start()
    try:
        first = router.recv_multipart()  # ignored: the requester times out and retries
        second = router.recv_multipart()
        assert first[-1] == second[-1] and len(second[-1]) > 1_000_000
        reply = {"one": big, "many": [], "named": {}, "flags": []}
        router.send_multipart([*second[:-1], MessageCodec.encode_reply(reply, "w")])
    finally:
        thread.join(15)
        router.close()
    assert_same(result[0]["one"], big)
