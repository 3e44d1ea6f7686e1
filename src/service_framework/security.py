"""CURVE encryption and authentication for a service's sockets.

With CURVE on, every socket of the service encrypts. Sockets that bind (replyer,
publisher, a binding subscriber) are CURVE servers: only clients whose public key is in
the ``authorized_keys`` directory may connect - a ZAP authenticator is started on the
service's context before anything binds, so an unknown or NULL client gets no message
through. Sockets that connect are CURVE clients and must know the server's public key:
give it as ``server_public_key`` in that connection's addresses entry (the Z85 text, or
a path to a ``.key`` file). A service that binds nothing needs only its own key pair.

The authorized keys directory is re-read when it changes (checked about once a second:
its listing and each ``.key`` file's size and modification time). Keys added are
admitted from the next handshake; when a key is removed, every binding socket drops all
its clients, which reconnect and handshake again, so a revoked key gets nothing more
through without a restart.

Create key pairs with ``service_framework keygen DIR NAME``: it writes ``NAME.key``
(public, shareable) and ``NAME.key_secret`` (mode 0600, never share); a directory it
creates is mode 0700.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils import z85

from .errors import AddressError, ConfigError

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

# zmq.auth is imported where it is used, not here: its authenticator thread module
# imports asyncio, tens of milliseconds at every start of a service without CURVE.

__all__ = ["Curve", "CurveGate", "create_keypair", "load_public_key"]

LOG = logging.getLogger("service_framework.security")

ZAP_DOMAIN = "service_framework"


def create_keypair(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` in ``directory``; the secret file is
    readable and writable by its owner only. Returns ``(public_file, secret_file)``."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"key name {name!r} must be a plain file name")
    folder = Path(directory)
    if not folder.is_dir():
        folder.mkdir(parents=True, mode=0o700)
        # mkdir's mode passes through the umask, which may narrow it below what the
        # owner needs, or be widened by nothing: set it exactly.
        os.chmod(folder, 0o700)
    public_file, secret_file = folder / f"{name}.key", folder / f"{name}.key_secret"
    for existing in (public_file, secret_file):
        if existing.exists():
            raise ConfigError(f"{existing} already exists; refusing to overwrite a key")
    public, secret = zmq.curve_keypair()
    # The secret file is 0600 from the start: no moment where others can read it.
    _write_new(secret_file, _certificate(public, secret), 0o600)
    # The public key is shareable but must not be replaceable by others (whoever can
    # swap a server or authorized key can impersonate or admit).
    _write_new(public_file, _certificate(public, None), 0o644)
    return public_file, secret_file


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create ``path`` (never overwrite it) with ``mode`` from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)  # in case the umask or the filesystem narrowed or widened it


def _certificate(public: bytes, secret: bytes | None) -> str:
    # The ZPL format zmq.auth.load_certificate reads.
    lines = ["metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _valid_key(key: bytes | None) -> bool:
    """A CURVE key in Z85 text: 40 characters decoding to 32 bytes."""
    if key is None or len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except Exception:  # KeyError, struct.error, ValueError: not Z85
        return False


def load_public_key(value: str, *, where: str) -> bytes:
    """A server public key from Z85 text (40 characters) or a ``.key`` file path."""
    if len(value) == 40 and not os.path.exists(value):
        if not _valid_key(value.encode()):
            raise AddressError(f"{where}: server_public_key is not a valid Z85 CURVE key")
        return value.encode()
    try:
        import zmq.auth

        public, _ = zmq.auth.load_certificate(value)
    except (OSError, ValueError) as exc:
        raise AddressError(f"{where}: cannot read server_public_key {value!r}: {exc}") from None
    if not _valid_key(public):
        raise AddressError(f"{where}: server_public_key {value!r} holds no valid CURVE key")
    return bytes(public)


@dataclass(frozen=True)
class Curve:
    """A service's CURVE identity and who may connect to it.

    ``authorized_keys`` is a directory of client ``.key`` files; ``allow_any=True``
    encrypts but admits any client that knows the server key (use with care). With
    neither, the identity is a client's only: a socket that binds refuses to start.
    """

    public_key: bytes
    secret_key: bytes
    authorized_keys: Path | None = None
    allow_any: bool = False

    @classmethod
    def from_files(
        cls,
        secret_key_file: str | os.PathLike[str],
        authorized_keys: str | os.PathLike[str] | None = None,
        *,
        allow_any: bool = False,
    ) -> Curve:
        path = Path(secret_key_file)
        try:
            import zmq.auth

            public, secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read CURVE secret key file {path}: {exc}") from None
        if secret is None or public is None:
            raise ConfigError(f"{path} holds no secret key (use the NAME.key_secret file)")
        if not (_valid_key(public) and _valid_key(secret)):
            raise ConfigError(f"{path} does not hold a valid CURVE key pair")
        info = path.stat()
        if info.st_mode & 0o077:
            raise ConfigError(f"CURVE secret key file {path} is readable by others; chmod 600 it")
        if info.st_uid != os.geteuid():
            # Whoever owns the file can swap the identity (or read it later).
            raise ConfigError(
                f"CURVE secret key file {path} is owned by uid {info.st_uid}, not by this "
                f"user (uid {os.geteuid()}); use a key file of your own"
            )
        folder = None
        if authorized_keys is not None and allow_any:
            raise ConfigError("give an authorized keys directory or allow_any, not both")
        if authorized_keys is not None:
            folder = Path(authorized_keys)
            if not folder.is_dir():
                raise ConfigError(f"authorized keys directory not found: {folder}")
            if folder.stat().st_mode & stat.S_IWOTH:
                # Anyone could add a key of their own and be admitted.
                raise ConfigError(
                    f"authorized keys directory {folder} is writable by everyone; chmod o-w it"
                )
        return cls(bytes(public), bytes(secret), folder, allow_any)

    def __post_init__(self) -> None:
        if self.authorized_keys is not None and self.allow_any:
            raise ConfigError("give an authorized keys directory or allow_any, not both")

    @property
    def admits(self) -> bool:
        """Whether this identity may serve (bind): it says who may connect."""
        return self.allow_any or self.authorized_keys is not None

    def start(self, context: zmq.Context[Any]) -> CurveGate | None:
        """Start the ZAP authenticator on ``context``; call before any socket binds.
        ``None`` for a client-only identity (it has nothing to admit)."""
        if not self.admits:
            return None
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(context)
        auth.start()
        location = (
            zmq.auth.CURVE_ALLOW_ANY if self.authorized_keys is None else str(self.authorized_keys)
        )
        # The domain must be the one server sockets announce: pyzmq maps only an empty
        # domain to its '*' default, and libzmq refuses an empty ZAP_DOMAIN.
        auth.configure_curve(domain=ZAP_DOMAIN, location=location)
        return CurveGate(auth, self.authorized_keys)

    def make_server(self, sock: zmq.Socket[Any], *, where: str = "CURVE") -> None:
        if not self.admits:
            # Fail closed: a server must say who may connect.
            raise ConfigError(
                f"{where} binds, so CURVE needs an authorized keys directory "
                "(--curve_authorized_keys) or allow_any (--curve_allow_any)"
            )
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)

    def make_client(
        self, sock: zmq.Socket[Any], addresses: Mapping[str, Any], *, where: str
    ) -> None:
        server_key = addresses.get("server_public_key")
        if not isinstance(server_key, str):
            raise AddressError(
                f"{where}: CURVE is on, so its addresses entry needs 'server_public_key' "
                "(the server's Z85 public key or its .key file)"
            )
        sock.setsockopt(zmq.CURVE_SERVERKEY, load_public_key(server_key, where=where))
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)

    def __repr__(self) -> str:  # never show the secret key
        key = self.public_key.decode()
        return f"Curve(public_key={key!r}, authorized_keys={self.authorized_keys})"


class CurveGate:
    """The running ZAP authenticator, and the authorized keys it admits.

    :meth:`reload_if_changed` is cheap enough to call every second: a ``stat`` of the
    directory and of each ``.key`` file in it; the keys are read again only on change.
    """

    def __init__(self, auth: ThreadAuthenticator, folder: Path | None) -> None:
        self.auth = auth
        self.folder = folder
        self._signature = self._look() if folder is not None else None
        self._keys = frozenset(auth.certs.get(ZAP_DOMAIN, {}))

    def _look(self) -> object:
        assert self.folder is not None
        try:
            files = []
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    if entry.name.endswith(".key"):
                        info = entry.stat()
                        files.append((entry.name, info.st_ino, info.st_size, info.st_mtime_ns))
            files.sort()
            return (os.stat(self.folder).st_mtime_ns, tuple(files))
        except OSError as exc:
            return ("unreadable", str(exc))

    def reload_if_changed(self) -> bool:
        """Re-read the keys if the directory changed; True if a key was removed (its
        clients must then be cut off). An unreadable directory admits nobody."""
        if self.folder is None:
            return False
        signature = self._look()
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            import zmq.auth

            certs = zmq.auth.load_certificates(self.folder)
        except (OSError, ValueError) as exc:
            LOG.error(
                "authorized keys directory %s cannot be read (%s): admitting no client",
                self.folder,
                exc,
            )
            certs = {}
        keys = frozenset(certs)
        removed = self._keys - keys
        # One dict assignment: the authenticator thread sees the old or the new set.
        self.auth.certs[ZAP_DOMAIN] = certs
        LOG.warning(
            "authorized keys in %s changed: %d key(s) now, %d added, %d removed",
            self.folder,
            len(keys),
            len(keys - self._keys),
            len(removed),
        )
        self._keys = keys
        return bool(removed)

    def stop(self) -> None:
        self.auth.stop()

    def __repr__(self) -> str:
        return f"CurveGate(authorized_keys={self.folder}, keys={len(self._keys)})"
