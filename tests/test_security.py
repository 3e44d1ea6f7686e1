"""CURVE encryption and authentication: key files, start-up checks, and attacks.

The replyer/publisher under test is a CURVE server with an authorized-keys directory that
holds exactly one client key (``replyer``), or one with ``allow_any`` (``open_replyer``,
where any key pair that knows the server key is admitted). Every attack asserts both
sides of "no message through": the attacker gets nothing back, and the service's handler
is never called (its socket never even hands a frame to the framework). Afterwards a
legitimate client is still served.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from conftest import after_markers, host_port, resync, sync, wait_until, write_json
from service_framework import AddressError, ConfigError, HandshakeRefused, RequestTimeout
from service_framework.codec import MessageCodec
from service_framework.runtime import RunOptions, ServiceRuntime
from service_framework.security import Curve, create_keypair

REPLYER = """
import queue
calls = queue.Queue()

def on_request(args, to_send, config):
    calls.put(args)
    return {'order_id': args['order_id'], 'total': args['qty'] * args['price']}

connection_models = {
    'in': {
        'reply': {
            'connection_type': 'replyer',
            'required_creation_arguments': {'connection_function': on_request},
            'required_arguments': {'order_id': str, 'qty': int, 'price': float},
            'required_return_arguments': {'order_id': str, 'total': float},
        }
    }
}
"""

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
            'required_arguments': {'n': int},
        }
    }
}
"""

ORDER = {"order_id": "o-1", "qty": 3, "price": 2.5}
VALID_REQUEST = MessageCodec.encode_request(ORDER, "attack-1")
NOTHING_MS = 500  # how long an attacker waits for an answer that must never come
CLIENT_TIMEOUT_S = 2.0  # a legitimate call on localhost needs milliseconds
ERROR_LINE = "service_framework: error: "


def requester_models(timeout_s: float = 5) -> dict[str, Any]:
    return {
        "out": {
            "request": {
                "connection_type": "requester",
                "optional_creation_arguments": {"timeout_s": timeout_s},
                "required_arguments": {"order_id": str, "qty": int, "price": float},
                "required_return_arguments": {"order_id": str, "total": float},
            }
        }
    }


PUBLISHER_MODELS = {
    "out": {
        "fills": {
            "connection_type": "publisher",
            "optional_creation_arguments": {"wait_after_creation_s": 0},
            "required_arguments": {"n": int},
        }
    }
}


# ---------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class Keys:
    """Key pairs ``server``, ``client`` and ``stranger``; ``authorized`` holds only
    ``client.key``."""

    folder: Path
    authorized: Path

    def public(self, name: str) -> Path:
        return self.folder / f"{name}.key"

    def secret(self, name: str) -> Path:
        return self.folder / f"{name}.key_secret"

    def z85(self, name: str) -> str:
        public, _ = zmq.auth.load_certificate(self.public(name))
        return bytes(public).decode()

    def pair(self, name: str) -> tuple[bytes, bytes]:
        public, secret = zmq.auth.load_certificate(self.secret(name))
        assert public is not None and secret is not None
        return bytes(public), bytes(secret)

    def server_curve(self, mode: str = "authorized") -> Curve:
        if mode == "allow_any":
            return Curve.from_files(self.secret("server"), allow_any=True)
        return Curve.from_files(self.secret("server"), self.authorized)

    def client_curve(self, name: str = "client") -> Curve:
        # A pure client binds nothing: its own key pair is all it needs.
        return Curve.from_files(self.secret(name))


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    folder, authorized = tmp_path / "keys", tmp_path / "authorized"
    for name in ("server", "client", "stranger"):
        create_keypair(folder, name)
    authorized.mkdir()
    shutil.copy(folder / "client.key", authorized / "client.key")
    return Keys(folder, authorized)


@pytest.fixture
def curve_client(client) -> Callable[..., ServiceRuntime]:
    """A started (not running) requester runtime with its own CURVE identity."""

    def make(
        curve: Curve, address: str, server_key: str, timeout_s: float = CLIENT_TIMEOUT_S
    ) -> ServiceRuntime:
        entry = {"requester": address, "server_public_key": server_key}
        return client(  # type: ignore[no-any-return]
            requester_models(timeout_s),
            {"out": {"request": entry}},
            name="curve_client",
            curve=curve,
        )

    return make


def start_replyer(write_service, run_service, curve: Curve | None):
    return run_service(
        write_service("replyer", REPLYER),
        addresses={"in": {"reply": {"replyer": "127.0.0.1:0"}}},
        curve=curve,
    )


@pytest.fixture
def replyer_factory(write_service, run_service):
    return lambda curve: start_replyer(write_service, run_service, curve)


@pytest.fixture
def replyer(write_service, run_service, keys):
    """A CURVE replyer that admits only ``client``."""
    return start_replyer(write_service, run_service, keys.server_curve())


@pytest.fixture
def open_replyer(write_service, run_service, keys):
    """A CURVE replyer with allow_any: encrypted, any client that knows the server key."""
    return start_replyer(write_service, run_service, keys.server_curve("allow_any"))


def assert_served(curve_client, keys: Keys, replyer, name: str = "client") -> None:
    """A legitimate client is answered, and that request reaches the handler."""
    good = curve_client(keys.client_curve(name), replyer.address("reply"), keys.z85("server"))
    assert good.to_send("request", ORDER) == {"order_id": "o-1", "total": 7.5}
    assert replyer.module.calls.get(timeout=5) == ORDER


def assert_untouched(replyer) -> None:
    assert replyer.module.calls.empty(), "an attacker's request reached the handler"
    assert replyer.runtime.stats()["reply"].received == 0, "a frame got past the handshake"


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    assert lines[0].startswith(ERROR_LINE), lines[0]
    assert "Traceback" not in stderr
    return lines[0]


def run_module(*args: str, cwd: Path, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service_framework", *args]
    if umask is not None:  # a shell wrapper: no preexec_fn in a threaded test process
        # umask_probe shows the umask really applied to the process that ran.
        script = f'umask {umask:o} && : > umask_probe && exec "$0" "$@"'
        command = ["sh", "-c", script, *command]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=30)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ---------------------------------------------------------------------------- keygen
def test_keygen_cli_writes_a_loadable_pair_with_an_owner_only_secret(tmp_path) -> None:
    result = run_module("keygen", "out/certs", "alice", cwd=tmp_path, umask=0)
    assert result.returncode == 0, result.stderr
    assert mode(tmp_path / "umask_probe") == 0o666  # the umask was really 0
    public_file = tmp_path / "out" / "certs" / "alice.key"
    secret_file = tmp_path / "out" / "certs" / "alice.key_secret"
    assert mode(secret_file) == 0o600  # even with umask 0
    public, secret = zmq.auth.load_certificate(secret_file)
    assert public is not None and secret is not None
    assert len(public) == len(secret) == 40
    assert zmq.curve_public(secret) == public  # a real pair, not two random keys
    shared_public, shared_secret = zmq.auth.load_certificate(public_file)
    assert (shared_public, shared_secret) == (public, None)  # the public file has no secret
    assert secret.decode() not in public_file.read_text()
    assert "out/certs/alice.key" in result.stdout and "alice.key_secret" in result.stdout
    assert secret.decode() not in result.stdout + result.stderr  # never printed


@pytest.mark.parametrize("umask", [0, 0o022, 0o277], ids=["umask_0", "umask_022", "umask_277"])
def test_keygen_cli_creates_the_key_directory_0700_whatever_the_umask(tmp_path, umask) -> None:
    result = run_module("keygen", "certs/team", "alice", cwd=tmp_path, umask=umask)
    assert result.returncode == 0, result.stderr
    assert mode(tmp_path / "umask_probe") == 0o666 & ~umask  # that umask really applied
    assert mode(tmp_path / "certs" / "team") == 0o700
    assert mode(tmp_path / "certs" / "team" / "alice.key_secret") == 0o600
    # A directory that already exists is the owner's: left as it is.
    (tmp_path / "shared").mkdir(mode=0o755)
    (tmp_path / "shared").chmod(0o755)
    assert run_module("keygen", "shared", "bob", cwd=tmp_path, umask=umask).returncode == 0
    assert mode(tmp_path / "shared") == 0o755


def test_keygen_cli_refuses_to_overwrite_a_key(tmp_path) -> None:
    assert run_module("keygen", "certs", "alice", cwd=tmp_path).returncode == 0
    secret_file = tmp_path / "certs" / "alice.key_secret"
    before = secret_file.read_bytes(), (tmp_path / "certs" / "alice.key").read_bytes()
    result = run_module("keygen", "certs", "alice", cwd=tmp_path)
    assert result.returncode != 0
    line = one_error_line(result.stderr)
    assert "already exists" in line and "alice.key" in line
    after = secret_file.read_bytes(), (tmp_path / "certs" / "alice.key").read_bytes()
    assert after == before


def test_keygen_cli_refuses_when_only_the_secret_is_left(tmp_path) -> None:
    assert run_module("keygen", "certs", "bob", cwd=tmp_path).returncode == 0
    (tmp_path / "certs" / "bob.key").unlink()
    secret = (tmp_path / "certs" / "bob.key_secret").read_bytes()
    result = run_module("keygen", "certs", "bob", cwd=tmp_path)
    assert result.returncode != 0
    assert "bob.key_secret already exists" in one_error_line(result.stderr)
    assert (tmp_path / "certs" / "bob.key_secret").read_bytes() == secret
    assert not (tmp_path / "certs" / "bob.key").exists()


def test_create_keypair_secret_is_0600_even_with_umask_0(tmp_path) -> None:
    previous = os.umask(0)
    try:
        public_file, secret_file = create_keypair(tmp_path / "new", "svc")
    finally:
        os.umask(previous)
    assert (public_file, secret_file) == (tmp_path / "new/svc.key", tmp_path / "new/svc.key_secret")
    assert mode(secret_file) == 0o600
    public, secret = zmq.auth.load_certificate(secret_file)
    assert secret is not None and zmq.curve_public(secret) == public
    assert zmq.auth.load_certificate(public_file) == (public, None)
    with pytest.raises(ConfigError, match="already exists; refusing to overwrite"):
        create_keypair(tmp_path / "new", "svc")
    assert zmq.auth.load_certificate(secret_file) == (public, secret)


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", ".."])
def test_create_keypair_rejects_names_that_are_not_plain_file_names(tmp_path, name) -> None:
    with pytest.raises(ConfigError, match="must be a plain file name"):
        create_keypair(tmp_path / "certs", name)
    assert not list(tmp_path.rglob("*.key*"))


def test_keypairs_differ(tmp_path) -> None:
    create_keypair(tmp_path, "a")
    create_keypair(tmp_path, "b")
    a = zmq.auth.load_certificate(tmp_path / "a.key_secret")
    b = zmq.auth.load_certificate(tmp_path / "b.key_secret")
    assert a[0] != b[0] and a[1] != b[1]


# ---------------------------------------------------------------------------- Curve.from_files
def test_from_files_loads_a_valid_setup_and_never_shows_the_secret(keys) -> None:
    curve = keys.server_curve()
    public, secret = keys.pair("server")
    assert (curve.public_key, curve.secret_key) == (public, secret)
    assert curve.authorized_keys == keys.authorized and not curve.allow_any
    assert secret.decode() not in repr(curve) and secret.decode() not in str(curve)
    assert secret.decode() not in repr(RunOptions(curve=curve))


def test_from_files_rejects_a_public_key_file(keys) -> None:
    with pytest.raises(ConfigError, match=r"holds no secret key \(use the NAME\.key_secret file\)"):
        Curve.from_files(keys.public("server"), keys.authorized)


@pytest.mark.parametrize("bits", [0o644, 0o640, 0o604, 0o660])
def test_from_files_refuses_a_secret_readable_by_others(keys, bits) -> None:
    keys.secret("server").chmod(bits)
    with pytest.raises(ConfigError, match="readable by others; chmod 600 it"):
        Curve.from_files(keys.secret("server"), keys.authorized)


def test_from_files_rejects_a_missing_secret_file(keys) -> None:
    with pytest.raises(ConfigError, match="cannot read CURVE secret key file"):
        Curve.from_files(keys.folder / "nobody.key_secret", keys.authorized)


def test_from_files_rejects_a_missing_authorized_keys_directory(keys, tmp_path) -> None:
    with pytest.raises(ConfigError, match="authorized keys directory not found"):
        Curve.from_files(keys.secret("server"), tmp_path / "no_such_dir")
    with pytest.raises(ConfigError, match="authorized keys directory not found"):
        Curve.from_files(keys.secret("server"), keys.public("client"))  # a file, not a dir


def test_a_client_only_identity_needs_no_admission_flag_but_cannot_bind(
    keys, write_service
) -> None:
    curve = Curve.from_files(keys.secret("server"))
    assert not curve.admits and Curve.from_files(keys.secret("server"), allow_any=True).admits
    runtime = ServiceRuntime(
        write_service("replyer", REPLYER),
        addresses={"in": {"reply": {"replyer": "127.0.0.1:0"}}},
        options=RunOptions(install_signals=False, curve=curve),
    )
    # Fail closed: a server socket must say who may connect.
    with pytest.raises(ConfigError, match="replyer: connection 'reply' binds, so CURVE needs"):
        runtime.start()
    runtime.close()


def test_from_files_refuses_a_world_writable_authorized_keys_directory(keys) -> None:
    keys.authorized.chmod(0o777)
    with pytest.raises(ConfigError, match="writable by everyone"):
        Curve.from_files(keys.secret("server"), keys.authorized)
    keys.authorized.chmod(0o775)  # group-writable is the owner's call
    assert Curve.from_files(keys.secret("server"), keys.authorized).admits


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_from_files_refuses_a_secret_key_owned_by_another_user(keys) -> None:
    os.chown(keys.secret("server"), 65534, 65534)
    with pytest.raises(ConfigError, match=r"owned by uid 65534, not by this user"):
        Curve.from_files(keys.secret("server"), keys.authorized)


# ---------------------------------------------------------------------------- request/reply
def test_curve_round_trip_with_authorized_keys(replyer, curve_client, keys) -> None:
    runtime = curve_client(keys.client_curve(), replyer.address("reply"), keys.z85("server"))
    assert runtime.to_send("request", ORDER) == {"order_id": "o-1", "total": 7.5}
    assert replyer.module.calls.get(timeout=5) == ORDER


@pytest.mark.parametrize("key_form", ["z85", "key_file"])
def test_curve_round_trip_server_key_forms(open_replyer, curve_client, keys, key_form) -> None:
    server_key = keys.z85("server") if key_form == "z85" else str(keys.public("server"))
    runtime = curve_client(keys.client_curve(), open_replyer.address("reply"), server_key)
    for i in range(3):
        order = {**ORDER, "order_id": f"o-{i}"}
        assert runtime.to_send("request", order) == {"order_id": f"o-{i}", "total": 7.5}
        assert open_replyer.module.calls.get(timeout=5) == order


def test_connecting_socket_without_server_key_is_a_startup_error(replyer, keys) -> None:
    module = types.ModuleType("no_key")
    module.connection_models = requester_models()  # type: ignore[attr-defined]
    runtime = ServiceRuntime(
        module,
        addresses={"out": {"request": {"requester": replyer.address("reply")}}},
        options=RunOptions(install_signals=False, curve=keys.client_curve()),
    )
    with pytest.raises(AddressError, match="needs 'server_public_key'"):
        runtime.start()
    runtime.close()


def write_key_file(path: Path, public: str, secret: str | None = None) -> Path:
    text = f'metadata\ncurve\n    public-key = "{public}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret}"\n'
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    "bad_key",
    [
        pytest.param("no/such/server.key", id="missing_file"),
        pytest.param("," * 40, id="z85_bad_alphabet"),
        pytest.param("#" * 40, id="z85_out_of_range"),
        pytest.param("FILE:" + "," * 40, id="key_file_bad_key"),
        pytest.param("FILE:abc", id="key_file_short_key"),
    ],
)
def test_bad_server_key_is_an_address_error(replyer, curve_client, keys, tmp_path, bad_key) -> None:
    if bad_key.startswith("FILE:"):
        bad_key = str(write_key_file(tmp_path / "bad_server.key", bad_key[5:]))
    with pytest.raises(AddressError, match="server_public_key"):
        curve_client(keys.client_curve(), replyer.address("reply"), bad_key)


@pytest.mark.parametrize("public, secret", [("abc", "def"), ("," * 40, "," * 40)])
def test_from_files_rejects_a_malformed_secret_key_file(tmp_path, keys, public, secret) -> None:
    path = write_key_file(tmp_path / "bad.key_secret", public, secret)
    with pytest.raises(ConfigError, match=str(path)):
        Curve.from_files(path, keys.authorized)


@pytest.mark.parametrize(
    "bad_key",
    [
        pytest.param("nofile.key", id="missing_file"),
        pytest.param("," * 40, id="z85_bad_alphabet"),
    ],
)
def test_cli_bad_server_key_is_one_error_line(write_service, tmp_path, keys, bad_key) -> None:
    write_service("sub", SUBSCRIBER)  # a subscriber connects: a CURVE client
    entry = {"subscriber": "127.0.0.1:9", "server_public_key": bad_key}
    write_json(tmp_path / "addresses.json", {"in": {"fills": entry}})
    secret = str(keys.secret("client"))
    result = run_module(
        "-s", "sub.py", "-a", "addresses.json", "--curve_secret_key", secret, cwd=tmp_path
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "server_public_key" in one_error_line(result.stderr)


class Relay:
    """A TCP man-in-the-middle that forwards one connection and records every byte."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = [self.listener]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        try:
            downstream, _ = self.listener.accept()
        except OSError:
            return
        upstream = socket.create_connection(self.upstream, timeout=5)
        self.sockets += [downstream, upstream]
        for source, target in ((downstream, upstream), (upstream, downstream)):
            threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                with self.lock:
                    self.seen += data
                target.sendall(data)
        except OSError:
            pass

    def captured(self) -> bytes:
        with self.lock:
            return bytes(self.seen)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.mark.parametrize("secure", [True, False], ids=["curve", "null"])
def test_an_eavesdropper_sees_no_plaintext(
    write_service, run_service, client, curve_client, keys, secure
) -> None:
    # Encryption does not depend on who is authorized, so allow_any is enough here.
    marker = "MARKER-7f3a9c-secret-order"
    curve = keys.server_curve("allow_any") if secure else None
    service = start_replyer(write_service, run_service, curve)
    relay = Relay(service.address("reply"))
    try:
        if secure:
            runtime = curve_client(keys.client_curve(), relay.address, keys.z85("server"))
        else:
            runtime = client(requester_models(), {"out": {"request": {"requester": relay.address}}})
        assert runtime.to_send("request", {**ORDER, "order_id": marker})["order_id"] == marker
        seen = relay.captured()
    finally:
        relay.close()
    assert len(seen) > 128  # the relay did carry the conversation, both ways
    # Without CURVE the marker crosses the wire in clear (so this check can fail).
    assert (marker.encode() in seen) is (not secure)
    assert (b"CURVE" in seen) is secure  # the mechanism named in the greetings


# ---------------------------------------------------------------------------- attacks
def _zmq_attacker(zctx, address: str, curve: tuple[bytes, bytes, bytes] | None) -> None:
    """A REQ socket sending a valid envelope; ``curve`` = (own public, own secret, server
    key) or None for NULL security. Asserts nothing comes back."""
    sock = zctx.socket(zmq.REQ)
    sock.linger = 0
    try:
        if curve is not None:
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = curve
        sock.connect(f"tcp://{address}")
        sock.send(VALID_REQUEST)
        assert sock.poll(NOTHING_MS) == 0, "the attacker got a reply"
    finally:
        sock.close(linger=0)


def attack_null_client(zctx, address: str, keys: Keys) -> None:
    _zmq_attacker(zctx, address, None)


def attack_unknown_client_key(zctx, address: str, keys: Keys) -> None:
    _zmq_attacker(zctx, address, (*keys.pair("stranger"), keys.z85("server").encode()))


def attack_wrong_server_key(zctx, address: str, keys: Keys) -> None:
    # An authorized client identity, but it talks to "stranger" as the server.
    _zmq_attacker(zctx, address, (*keys.pair("client"), keys.z85("stranger").encode()))


def attack_impersonate_authorized_key(zctx, address: str, keys: Keys) -> None:
    # Claims the authorized client's public key without holding its secret key.
    client_public, _ = keys.pair("client")
    _, stranger_secret = keys.pair("stranger")
    _zmq_attacker(zctx, address, (client_public, stranger_secret, keys.z85("server").encode()))


def _read(sock: socket.socket, into: bytearray, idle: float, until: bytes = b"") -> bool:
    """Read until the peer closes (True), or stays silent for ``idle`` seconds, or has
    sent ``until`` (False)."""
    sock.settimeout(idle)
    try:
        while chunk := sock.recv(4096):
            into += chunk
            if until and until in into:
                return False
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def raw_conversation(address: str, *payloads: bytes, until: bytes = b"") -> tuple[bytes, bool]:
    """Write each payload on a plain TCP connection, reading the server's answer after
    each; returns everything the server sent and whether it closed the connection
    (waiting up to 2 s for that, or for ``until``, at the end)."""
    host, port = address.rsplit(":", 1)
    received = bytearray()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        for payload in payloads:
            try:
                sock.sendall(payload)
            except OSError:  # already closed by the server
                return bytes(received), True
            if _read(sock, received, idle=0.3, until=until):
                return bytes(received), True
        if until and until in received:
            return bytes(received), False
        return bytes(received), _read(sock, received, idle=2.0, until=until)


def _assert_dropped(answer: tuple[bytes, bool]) -> None:
    data, closed = answer
    # A ZMTP server sends (part of) its 64-byte greeting unasked; nothing may follow it.
    assert len(data) <= 64, f"the server answered beyond its greeting: {data!r}"
    assert b"return_args" not in data and b"error" not in data
    assert closed, "the server kept the attacker's connection open"


def attack_raw_tcp_garbage(zctx, address: str, keys: Keys) -> None:
    garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 4 + VALID_REQUEST
    _assert_dropped(raw_conversation(address, garbage))


def _zmtp_frame(body: bytes, *, more: bool = False, command: bool = False) -> bytes:
    flags = (0x01 if more else 0) | (0x04 if command else 0)
    return bytes([flags, len(body)]) + body


ZMTP_NULL_GREETING = (
    b"\xff" + b"\x00" * 7 + b"\x01\x7f"  # signature
    + b"\x03\x01"  # ZMTP 3.1
    + b"NULL".ljust(20, b"\x00")  # mechanism
    + b"\x00" * 32  # as-server 0, filler
)  # fmt: skip
ZMTP_READY_REQ = _zmtp_frame(
    b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 3) + b"REQ"
    + b"\x08Identity" + struct.pack(">I", 0),
    command=True,
)  # fmt: skip


def attack_raw_zmtp_null_handshake(zctx, address: str, keys: Keys) -> None:
    """Speak ZMTP by hand, as a NULL REQ peer: greeting, READY, then a request."""
    request = _zmtp_frame(b"", more=True) + _zmtp_frame(VALID_REQUEST)
    _assert_dropped(raw_conversation(address, ZMTP_NULL_GREETING, ZMTP_READY_REQ, request))


def test_raw_zmtp_client_is_answered_by_a_plain_server(replyer_factory) -> None:
    # The control for the raw attacks: against a NULL replyer the same bytes get a reply.
    service = replyer_factory(None)
    request = _zmtp_frame(b"", more=True) + _zmtp_frame(VALID_REQUEST)
    address = service.address("reply")
    data, _ = raw_conversation(
        address, ZMTP_NULL_GREETING, ZMTP_READY_REQ, request, until=b"return_args"
    )
    assert b"return_args" in data
    assert service.module.calls.get(timeout=5) == ORDER


ATTACKS = [
    attack_null_client,
    attack_unknown_client_key,
    attack_wrong_server_key,
    attack_impersonate_authorized_key,
    attack_raw_tcp_garbage,
    attack_raw_zmtp_null_handshake,
]
attack_ids = pytest.mark.parametrize(
    "attack", ATTACKS, ids=lambda f: f.__name__.removeprefix("attack_")
)


@attack_ids
def test_attack_gets_nothing_and_never_reaches_the_handler(replyer, keys, zctx, attack) -> None:
    attack(zctx, replyer.address("reply"), keys)
    assert_untouched(replyer)


@pytest.mark.parametrize(
    "attack",
    [a for a in ATTACKS if a is not attack_unknown_client_key],  # allow_any admits that one
    ids=lambda f: f.__name__.removeprefix("attack_"),
)
def test_allow_any_attack_gets_nothing_and_clients_are_still_served(
    open_replyer, curve_client, keys, zctx, attack
) -> None:
    # allow_any still demands the server key, a real key pair and CURVE itself.
    attack(zctx, open_replyer.address("reply"), keys)
    assert_untouched(open_replyer)
    assert_served(curve_client, keys, open_replyer, "stranger")
    assert open_replyer.runtime.stats()["reply"].received == 1  # only the legitimate one


@contextlib.contextmanager
def idle_connections(address: str, count: int = 20) -> Iterator[None]:
    """Half-open TCP connections that never handshake (CVE-2020-15166), open throughout."""
    host, port = address.rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(count)]
    try:
        yield
    finally:
        for sock in idle:
            sock.close()


def test_after_every_attack_the_authorized_client_is_served(
    replyer, curve_client, keys, zctx
) -> None:
    with idle_connections(replyer.address("reply")):
        for attack in ATTACKS:
            attack(zctx, replyer.address("reply"), keys)
    assert_untouched(replyer)
    assert_served(curve_client, keys, replyer)


def test_idle_half_open_connections_do_not_block_clients(
    open_replyer, curve_client, keys, zctx
) -> None:
    with idle_connections(open_replyer.address("reply")):
        assert_served(curve_client, keys, open_replyer)


@pytest.mark.parametrize(
    ("name", "server", "reason"),
    [
        pytest.param("stranger", "server", "HANDSHAKE_FAILED_AUTH", id="unknown_key"),
        pytest.param("client", "stranger", "HANDSHAKE_FAILED_NO_DETAIL", id="wrong_server_key"),
    ],
)
def test_refused_framework_client_is_told_so_and_never_reaches_the_handler(
    replyer, curve_client, keys, name, server, reason
) -> None:
    # The refusal is reported as soon as no server is left to try, or at the latest
    # when the attempt's time is up (a request already queued waits that long).
    refused = curve_client(
        keys.client_curve(name), replyer.address("reply"), keys.z85(server), timeout_s=1
    )
    for _ in range(2):  # and again on the fresh socket that replaced the refused one
        with pytest.raises(HandshakeRefused) as caught:
            refused.to_send("request", ORDER)
        message = str(caught.value)
        assert message.startswith("curve_client: connection 'request': the server refused")
        assert reason in message and replyer.address("reply") in message
    stats = refused.stats()["request"]
    assert stats.handshake_failures >= 2 and stats.failed == 2 and stats.timeouts == 0
    assert isinstance(caught.value, ConnectionRefusedError)
    assert_untouched(replyer)


def test_refused_handshakes_are_counted_and_logged_rate_limited(
    replyer, keys, zctx, caplog
) -> None:
    caplog.set_level("WARNING", logger="service_framework")
    stranger = (*keys.pair("stranger"), keys.z85("server").encode())
    attackers = []
    try:
        for _ in range(12):  # each is refused once: libzmq does not retry after a denial
            sock = zctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = stranger
            sock.connect(f"tcp://{replyer.address('reply')}")
            attackers.append(sock)
        stats = replyer.runtime.stats()["reply"]
        assert wait_until(lambda: stats.handshake_failures == 12, 10), stats
    finally:
        for sock in attackers:
            sock.close(linger=0)
    lines = [r.getMessage() for r in caplog.records if "rejected a peer's handshake" in r.msg]
    assert 1 <= len(lines) <= 5, lines
    assert_untouched(replyer)


def test_a_curve_needs_at_most_one_admission_rule(keys) -> None:
    public, secret = keys.pair("server")
    with pytest.raises(ConfigError, match="not both"):
        Curve(public, secret, authorized_keys=Path("."), allow_any=True)
    assert Curve(public, secret).start(zmq.Context.instance()) is None  # nothing to admit


# ---------------------------------------------------------------------------- publish/subscribe
@pytest.mark.parametrize(
    ("mode", "good", "bad"),
    [
        pytest.param(
            "authorized",
            "client",
            [("stranger", "server"), ("client", "stranger")],
            id="authorized",
        ),
        # allow_any admits any key pair, but never a wrong server key (or NULL).
        pytest.param("allow_any", "stranger", [("client", "stranger")], id="allow_any"),
    ],
)
def test_pubsub_only_admitted_subscribers_receive(
    write_service, run_service, client, keys, zctx, mode, good, bad
) -> None:
    publisher = client(
        PUBLISHER_MODELS,
        {"out": {"fills": {"publisher": "127.0.0.1:0"}}},
        name="curve_publisher",
        curve=keys.server_curve(mode),
    )
    sniffer = zctx.socket(zmq.SUB)  # a NULL subscriber trying to read the whole feed
    try:
        address = host_port(publisher.endpoints()["out"]["fills"][0])

        def subscriber(name: str, server: str):
            entry = {"subscriber": address, "server_public_key": keys.z85(server)}
            return run_service(
                write_service(f"sub_{name}_{server}", SUBSCRIBER),
                addresses={"in": {"fills": entry}},
                curve=keys.client_curve(name),
            )

        # The rejected subscribers start first, so they have every chance to connect.
        rejected = [subscriber(name, server) for name, server in bad]
        sniffer.linger = 0
        sniffer.setsockopt(zmq.SUBSCRIBE, b"")
        sniffer.connect(f"tcp://{address}")
        received = subscriber(good, "server").module.received

        marker = {"n": -1}
        sync(lambda a: publisher.to_send("fills", a), received, marker)
        for n in range(20):
            publisher.to_send("fills", {"n": n})
        got = [after_markers(received, marker)["n"] for _ in range(20)]
        assert got == list(range(20))
        assert sniffer.poll(NOTHING_MS) == 0, "a NULL subscriber read the feed"
        for service in rejected:
            assert service.module.received.empty(), "a rejected subscriber read the feed"
            assert service.runtime.stats()["fills"].received == 0
    finally:
        sniffer.close(linger=0)


# ---------------------------------------------------------------------------- CLI + logs
@pytest.mark.parametrize(
    "mode",
    [pytest.param("authorized"), "allow_any"],
)
def test_cli_curve_flags_serve_admitted_clients_only(
    cli, write_service, tmp_path, keys, curve_client, zctx, mode
) -> None:
    write_service("replyer", REPLYER)
    write_json(tmp_path / "addresses.json", {"in": {"reply": {"replyer": "127.0.0.1:0"}}})
    flags = ["--curve_secret_key", str(keys.secret("server"))]
    if mode == "authorized":
        flags += ["--curve_authorized_keys", str(keys.authorized)]
    else:
        flags += ["--curve_allow_any"]
    process = cli("-s", "replyer.py", "-a", "addresses.json", *flags)
    address = process.ready()["reply"]
    good = curve_client(keys.client_curve(), address, str(keys.public("server")))
    assert good.to_send("request", ORDER) == {"order_id": "o-1", "total": 7.5}
    attack_null_client(zctx, address, keys)
    # The rejection is in the service's log (the socket monitor saw the failed handshake).
    process.wait_for(r"^.*replyer: connection 'reply' rejected a peer's handshake", timeout=10)
    if mode == "authorized":
        attack_unknown_client_key(zctx, address, keys)
        process.wait_for(r"rejected a peer's handshake .*HANDSHAKE_FAILED_AUTH", timeout=10)
    assert good.to_send("request", ORDER)["total"] == 7.5
    process.signal()
    assert process.finish() == 0
    log = process.log()
    assert "received=2" in log, log  # only the two legitimate requests reached the replyer
    assert keys.pair("server")[1].decode() not in log + process.stdout()


@pytest.mark.parametrize(
    "flags",
    [
        ["--curve_authorized_keys", "authorized"],
        ["--curve_allow_any"],
    ],
)
def test_cli_curve_options_need_a_secret_key(write_service, tmp_path, keys, flags) -> None:
    write_service("replyer", REPLYER)
    result = run_module("-s", "replyer.py", *flags, cwd=tmp_path)
    assert result.returncode == 2
    assert "need --curve_secret_key" in one_error_line(result.stderr)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("world_readable", "readable by others; chmod 600 it"),
        ("public_file", "holds no secret key"),
        ("no_authorized", "connection 'reply' binds, so CURVE needs an authorized keys directory"),
        ("missing_dir", "authorized keys directory not found"),
        ("world_writable_dir", "is writable by everyone; chmod o-w it"),
        pytest.param(
            "foreign_owner",
            "is owned by uid 65534, not by this user",
            marks=pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root"),
        ),
    ],
)
def test_cli_bad_curve_setup_is_one_error_line(
    write_service, tmp_path, keys, setup, message
) -> None:
    write_service("replyer", REPLYER)
    write_json(tmp_path / "addresses.json", {"in": {"reply": {"replyer": "127.0.0.1:0"}}})
    secret, authorized = str(keys.secret("server")), str(keys.authorized)
    if setup == "world_readable":
        keys.secret("server").chmod(0o644)
    elif setup == "public_file":
        secret = str(keys.public("server"))
    elif setup == "missing_dir":
        authorized = str(tmp_path / "nowhere")
    elif setup == "world_writable_dir":
        keys.authorized.chmod(0o777)
    elif setup == "foreign_owner":
        os.chown(keys.secret("server"), 65534, 65534)
    flags = ["--curve_secret_key", secret]
    if setup != "no_authorized":
        flags += ["--curve_authorized_keys", authorized]
    result = run_module("-s", "replyer.py", "-a", "addresses.json", *flags, cwd=tmp_path)
    assert result.returncode == 2
    assert message in one_error_line(result.stderr)


def test_rejected_handshake_is_logged(replyer, keys, zctx, caplog) -> None:
    caplog.set_level("WARNING", logger="service_framework")
    attack_unknown_client_key(zctx, replyer.address("reply"), keys)

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if "rejected a peer's handshake" in r.msg]

    assert wait_until(lambda: any("HANDSHAKE_FAILED_AUTH" in m for m in logged()), 10)
    assert all(m.startswith("replyer: connection 'reply' rejected") for m in logged())
    attack_null_client(zctx, replyer.address("reply"), keys)
    assert wait_until(lambda: any("HANDSHAKE_FAILED_AUTH" not in m for m in logged()), 10)


# ---------------------------------------------------------------------------- key changes
def test_a_revoked_key_gets_nothing_through_without_a_restart(
    write_service, run_service, curve_client, keys, caplog
) -> None:
    caplog.set_level("WARNING", logger="service_framework")
    shutil.copy(keys.public("stranger"), keys.authorized / "stranger.key")
    replyer = start_replyer(write_service, run_service, keys.server_curve())
    address, server_key = replyer.address("reply"), keys.z85("server")
    kept = curve_client(keys.client_curve("client"), address, server_key)
    revoked = curve_client(keys.client_curve("stranger"), address, server_key, timeout_s=1)
    for runtime in (kept, revoked):  # both connected and served
        assert runtime.to_send("request", ORDER)["total"] == 7.5
        assert replyer.module.calls.get(timeout=5) == ORDER

    (keys.authorized / "stranger.key").unlink()

    def logged(text: str) -> bool:
        return any(text in r.getMessage() for r in caplog.records)

    assert wait_until(lambda: logged("dropped every client"), 10)
    assert logged("1 key(s) now, 0 added, 1 removed")
    # The connection it had is gone, and a new one is refused.
    with pytest.raises((HandshakeRefused, RequestTimeout)):
        revoked.to_send("request", ORDER)
    with pytest.raises(HandshakeRefused, match="HANDSHAKE_FAILED_AUTH"):
        revoked.to_send("request", ORDER)
    assert replyer.module.calls.empty(), "a revoked key reached the handler"
    assert kept.to_send("request", ORDER)["total"] == 7.5  # reconnected, handshook anew
    assert replyer.runtime.stats()["reply"].received == 3


def test_a_key_added_is_admitted_without_a_restart(replyer, curve_client, keys, caplog) -> None:
    caplog.set_level("WARNING", logger="service_framework")
    newcomer = curve_client(
        keys.client_curve("stranger"), replyer.address("reply"), keys.z85("server"), timeout_s=1
    )
    with pytest.raises(HandshakeRefused):
        newcomer.to_send("request", ORDER)
    shutil.copy(keys.public("stranger"), keys.authorized / "stranger.key")
    assert wait_until(
        lambda: any("2 key(s) now, 1 added, 0 removed" in r.getMessage() for r in caplog.records),
        10,
    )
    assert newcomer.to_send("request", ORDER)["total"] == 7.5
    assert not any("dropped every client" in r.getMessage() for r in caplog.records)


CLI_SUBSCRIBER = """
from service_framework import get_logger

def on_fill(args, to_send, config):
    get_logger().warning('got n=%d', args['n'])

connection_models = {
    'in': {
        'fills': {
            'connection_type': 'subscriber',
            'required_creation_arguments': {'connection_function': on_fill},
            'required_arguments': {'n': int},
        }
    }
}
"""


def test_cli_service_that_only_connects_needs_only_its_secret_key(
    cli, write_service, tmp_path, client, keys
) -> None:
    publisher = client(
        PUBLISHER_MODELS,
        {"out": {"fills": {"publisher": "127.0.0.1:0"}}},
        name="curve_publisher",
        curve=keys.server_curve(),
    )
    address = host_port(publisher.endpoints()["out"]["fills"][0])
    write_service("sub", CLI_SUBSCRIBER)
    entry = {"subscriber": address, "server_public_key": str(keys.public("server"))}
    write_json(tmp_path / "addresses.json", {"in": {"fills": entry}})
    process = cli(
        "-s", "sub.py", "-a", "addresses.json", "--curve_secret_key", str(keys.secret("client"))
    )  # fmt: skip
    process.ready()
    for attempt in range(100):  # the slow joiner: publish until one arrives
        publisher.to_send("fills", {"n": attempt})
        try:
            process.wait_for(r"got n=\d+$", timeout=0.1)
            break
        except AssertionError:
            continue
    else:
        raise AssertionError("the CURVE subscriber never received:\n" + process.log())
    process.signal()
    assert process.finish() == 0


def test_a_revoked_subscriber_hears_nothing_more(
    write_service, run_service, client, keys, caplog
) -> None:
    # The publisher is outbound: its socket is re-bound under the connection's lock.
    caplog.set_level("WARNING", logger="service_framework")
    shutil.copy(keys.public("stranger"), keys.authorized / "stranger.key")
    publisher = client(
        PUBLISHER_MODELS,
        {"out": {"fills": {"publisher": "127.0.0.1:0"}}},
        name="curve_publisher",
        curve=keys.server_curve(),
    )
    address = host_port(publisher.endpoints()["out"]["fills"][0])
    entry = {"subscriber": address, "server_public_key": keys.z85("server")}
    kept, revoked = (
        run_service(
            write_service(f"sub_{name}", SUBSCRIBER),
            addresses={"in": {"fills": entry}},
            curve=keys.client_curve(name),
        )
        for name in ("client", "stranger")
    )
    publish = lambda args: publisher.to_send("fills", args)  # noqa: E731
    for service in (kept, revoked):
        sync(publish, service.module.received, {"n": -1})

    (keys.authorized / "stranger.key").unlink()
    assert wait_until(
        lambda: any(
            "curve_publisher: connection 'fills' dropped every client" in r.getMessage()
            for r in caplog.records
        ),
        10,
    )
    resync(publish, kept.module.received, {"n": -2})  # back, handshook anew
    for n in range(20):
        publish({"n": n})
    got = [after_markers(kept.module.received, {"n": -2})["n"] for _ in range(20)]
    assert got == list(range(20))
    stranger_stats = revoked.runtime.stats()["fills"]
    assert wait_until(lambda: stranger_stats.handshake_failures >= 1, 10)
    heard: list[Any] = []
    while not revoked.module.received.empty():
        heard.append(revoked.module.received.get_nowait()["n"])
    assert set(heard) <= {-1}, f"the revoked subscriber heard {heard}"
