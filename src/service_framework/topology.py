"""A system as one file: the services, where they run, and the links between them.

A topology file (TOML) names each service (its ``.py`` file, config, host, replicas,
main mode, CURVE keys, environment prefix) and each link from an outbound connection to
an inbound one (``"trader.place -> router.place"``). Everything else is derived: which
end binds and which connects (from the connection types and their ``is_binder`` /
``is_x_pub`` creation arguments), the port of every binder (given, or allocated), and
every service's addresses document - the same ``{"in": {...}, "out": {...}}`` shape the
hand-written addresses files use, which keep working: a topology is optional.

Public API (stable; add to it, don't rename):

* :func:`load_topology` ``(path) -> Topology`` - read and check a topology file; a file
  that cannot be read or has the wrong shape raises :class:`TopologyError` naming the
  file and the key. :func:`parse_topology` ``(data, path)`` does the same for a dict.
* :class:`Topology` - ``path``, ``name``, ``base_port``, ``services`` (name ->
  :class:`ServiceSpec`, in file order), ``links`` (a tuple of :class:`Link`);
  ``service(name)``, ``links_of(name)``.
* :class:`ServiceSpec` - ``name``, ``file`` (resolved against the topology file's
  directory), ``config`` (inline table), ``config_file``, ``host``, ``replicas``,
  ``main``, ``curve`` (:class:`CurveKeys` or ``None``), ``env_prefix``, ``addresses``
  (explicit addresses for peers outside the topology); ``load_config()`` -> the config
  file flattened, overlaid by the inline table.
* :class:`Link` - ``source`` and ``target`` (each an :class:`Endpoint`,
  ``service.connection``; the source is the outbound end), ``port`` (or ``None``).
* :func:`load_service` ``(topology, name) -> PreparedService`` and :func:`load_services`
  ``(topology) -> {name: PreparedService}`` - import each service module and parse its
  models and config (``loader.load_module`` + ``loader.prepare_service``) without opening
  a socket. ``PreparedService.models`` is a :class:`~service_framework.models.ServiceModels`.
* :func:`binds` ``(model) -> bool`` - whether a connection binds (its type's rule, with
  ``is_binder`` / ``is_x_pub`` applied).
* :func:`resolve` ``(topology, models) -> Wiring`` - binder and connector of every link
  and the port of every binder; ``Wiring.problems`` lists, as :class:`Finding` values,
  what stops a link from being wired (unknown ends, types that cannot be linked, both ends
  binding or both connecting, port clashes).
* :func:`derive_addresses` ``(topology, models, *, mode="local", host_of=None,
  public_key_of=None) -> {service: addresses}``. ``mode="local"``: a binder binds its
  service's ``host``, a connector connects to the binder's host. ``mode="cluster"``
  (Kubernetes, Compose): a binder binds ``*`` and a connector connects to the binder's
  service name (``host_of(name)`` maps it to a DNS name). With CURVE, a connector's
  entry carries the binder's public key file (``public_key_of(service)`` maps it to a
  path, e.g. a mounted Secret). :func:`system_addresses` loads the models first.
* :func:`topology_schema` ``() -> dict`` - the published JSON Schema of the file
  (``schemas/topology.schema.json`` in the package; ``service_framework check --schema``
  prints it).

Ports: a link's table form may give the binder's port; every other binder gets the next
port from ``base_port`` (default 47800) not used on its host, in file order (services,
then their connections by name), so the result is the same on every run and exports are
reproducible.
"""

from __future__ import annotations

import json
import os
import re
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from .config import flatten_seed_shape, load_json, read_text_file, validate_addresses_shape
from .errors import AddressError, ConfigError, StartupError
from .loader import PreparedService, load_module, prepare_service
from .models import ConnectionModel, ServiceModels
from .security import Curve

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "DEFAULT_BASE_PORT",
    "DEFAULT_HOST",
    "CurveKeys",
    "Endpoint",
    "Finding",
    "Link",
    "ServiceSpec",
    "Topology",
    "TopologyError",
    "Wire",
    "Wiring",
    "binds",
    "derive_addresses",
    "load_service",
    "load_services",
    "load_topology",
    "parse_topology",
    "resolve",
    "system_addresses",
    "topology_schema",
]

DEFAULT_BASE_PORT = 47800
DEFAULT_HOST = "127.0.0.1"

AddressMode = Literal["local", "cluster"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_LINK = re.compile(r"^\s*(?P<source>\S+?)\s*->\s*(?P<target>\S+?)\s*$")
_TOP_KEYS = ("name", "base_port", "services", "links")
_SERVICE_KEYS = (
    "file",
    "config",
    "config_file",
    "host",
    "replicas",
    "main",
    "curve",
    "env_prefix",
    "addresses",
)
_LINK_KEYS = ("from", "to", "port")
_CURVE_KEYS = ("secret_key", "public_key", "authorized_keys", "allow_any")


class TopologyError(ConfigError):
    """A topology file cannot be read, or its content has the wrong shape."""


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, order=True)
class Endpoint:
    """One end of a link: ``service.connection``."""

    service: str
    connection: str

    @classmethod
    def parse(cls, text: str, *, where: str) -> Endpoint:
        service, dot, connection = text.strip().partition(".")
        if not dot or not _NAME.match(service) or not connection:
            raise TopologyError(f"{where}: {text!r} is not 'service.connection'")
        return cls(service, connection)

    def __str__(self) -> str:
        return f"{self.service}.{self.connection}"


@dataclass(frozen=True)
class Link:
    """``source -> target``: what ``source`` (an outbound connection) sends reaches
    ``target`` (an inbound one). ``port`` is the binder's port, if the file gives it."""

    source: Endpoint
    target: Endpoint
    port: int | None = None

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}"


@dataclass(frozen=True)
class CurveKeys:
    """A service's CURVE key files (paths resolved against the topology file)."""

    secret_key: Path
    public_key: Path  # given, or the secret key's path without ``_secret``
    authorized_keys: Path | None = None
    allow_any: bool = False

    def load(self) -> Curve:
        """The :class:`~service_framework.security.Curve` these files describe."""
        return Curve.from_files(self.secret_key, self.authorized_keys, allow_any=self.allow_any)


@dataclass(frozen=True)
class ServiceSpec:
    """One ``[services.NAME]`` table."""

    name: str
    file: Path
    config: Mapping[str, Any] = field(default_factory=dict)
    config_file: Path | None = None
    host: str = DEFAULT_HOST
    replicas: int = 1
    main: bool = False
    curve: CurveKeys | None = None
    env_prefix: str | None = None
    # Addresses for connections to peers outside the topology (same shape as a file).
    addresses: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(
        default_factory=lambda: {"in": {}, "out": {}}
    )

    def load_config(self) -> dict[str, Any]:
        """The config file (flattened from the seed's required/optional shape), overlaid
        by the inline ``config`` table."""
        config: dict[str, Any] = {}
        if self.config_file is not None:
            config = flatten_seed_shape(load_json(self.config_file, f"{self.name}: config"))
        config.update(flatten_seed_shape(self.config))
        return config


@dataclass(frozen=True)
class Topology:
    """A parsed topology file."""

    path: Path
    name: str
    base_port: int
    services: Mapping[str, ServiceSpec]
    links: tuple[Link, ...]

    @property
    def directory(self) -> Path:
        return self.path.parent

    def service(self, name: str) -> ServiceSpec:
        """The service called ``name``; an unknown name lists the known ones."""
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(self.services) or "none"
            raise TopologyError(f"{self.path}: no service {name!r} (services: {known})") from None

    def links_of(self, name: str) -> tuple[Link, ...]:
        """Every link with ``name`` at either end."""
        return tuple(
            link for link in self.links if name in (link.source.service, link.target.service)
        )

    def __repr__(self) -> str:
        return (
            f"<Topology {self.name} ({self.path}) services={list(self.services)} "
            f"links={len(self.links)}>"
        )


@dataclass(frozen=True)
class Finding:
    """One thing ``check`` reports: a ``code`` (stable, for CI), a message naming both
    ends, the ends themselves (``service.connection``) and the link, if any."""

    code: str
    message: str
    ends: tuple[str, ...] = ()
    link: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "ends": list(self.ends),
            "link": self.link,
        }

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class Wire:
    """A link with its binder and connector decided and the binder's port."""

    link: Link
    binder: Endpoint
    connector: Endpoint
    port: int


@dataclass(frozen=True)
class Wiring:
    """What :func:`resolve` decided: a :class:`Wire` per link that can be wired, the
    port of every binder, and the problems that stop the other links."""

    wires: tuple[Wire, ...]
    ports: Mapping[Endpoint, int]
    problems: tuple[Finding, ...]


# --------------------------------------------------------------------------- loading


def topology_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a topology file, as shipped in the package."""
    text = resources.files(__package__).joinpath("schemas/topology.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def load_topology(path: str | os.PathLike[str]) -> Topology:
    """Read a topology file (TOML). Raises :class:`TopologyError` naming the file and
    what is wrong (unreadable, not TOML, a bad key or value)."""
    file = Path(path)
    text = read_text_file(file, "topology", TopologyError)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"topology file {path} is not valid TOML: {exc}") from None
    return parse_topology(data, file)


def parse_topology(data: Mapping[str, Any], path: str | os.PathLike[str]) -> Topology:
    """A :class:`Topology` from the parsed TOML ``data``; relative paths in it are
    resolved against ``path``'s directory."""
    file = Path(path).resolve()
    where = str(path)
    _no_unknown(where, data, _TOP_KEYS, "top-level key")
    name = data.get("name", file.stem)
    if not isinstance(name, str) or not name:
        raise TopologyError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    base_port = data.get("base_port", DEFAULT_BASE_PORT)
    if not _is_port(base_port) or base_port == 0:
        raise TopologyError(f"{where}: 'base_port' must be a port 1-65535, got {base_port!r}")
    raw_services = data.get("services")
    if not isinstance(raw_services, Mapping) or not raw_services:
        raise TopologyError(f"{where}: needs at least one [services.NAME] table")
    services: dict[str, ServiceSpec] = {}
    for service_name, table in raw_services.items():
        services[service_name] = _parse_service(where, file.parent, service_name, table)
    raw_links = data.get("links", [])
    if not isinstance(raw_links, list):
        raise TopologyError(f"{where}: 'links' must be an array, got {type(raw_links).__name__}")
    links: list[Link] = []
    for index, item in enumerate(raw_links):
        link = _parse_link(f"{where}: links[{index}]", item)
        if link in links or any(
            (other.source, other.target) == (link.source, link.target) for other in links
        ):
            raise TopologyError(f"{where}: links[{index}]: link {link} is given twice")
        links.append(link)
    return Topology(
        path=file,
        name=name,
        base_port=base_port,
        services=MappingProxyType(services),
        links=tuple(links),
    )


def _no_unknown(where: str, table: Mapping[str, Any], allowed: Iterable[str], what: str) -> None:
    allowed = tuple(allowed)
    for key in table:
        if key not in allowed:
            raise TopologyError(f"{where}: unknown {what} {key!r} (allowed: {', '.join(allowed)})")


def _is_port(value: object) -> bool:
    return type(value) is int and 0 <= value <= 65535


def _path(base: Path, value: object, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise TopologyError(f"{where} must be a non-empty path string, got {value!r}")
    return (base / value).resolve()


def _parse_service(where: str, base: Path, name: object, table: object) -> ServiceSpec:
    if not isinstance(name, str) or not _NAME.match(name):
        raise TopologyError(
            f"{where}: service name {name!r} must start with a letter or '_' and hold only "
            "letters, digits, '_' and '-'"
        )
    here = f"{where}: services.{name}"
    if not isinstance(table, Mapping):
        raise TopologyError(f"{here} must be a table, got {type(table).__name__}")
    _no_unknown(here, table, _SERVICE_KEYS, "key")
    if "file" not in table:
        raise TopologyError(f"{here}: missing required key 'file' (the service's .py file)")
    file = _path(base, table["file"], f"{here}.file")
    config = table.get("config", {})
    if not isinstance(config, Mapping):
        raise TopologyError(f"{here}.config must be a table, got {type(config).__name__}")
    config_file = None
    if "config_file" in table:
        config_file = _path(base, table["config_file"], f"{here}.config_file")
    host = table.get("host", DEFAULT_HOST)
    if not isinstance(host, str) or not host or any(c in host for c in " /"):
        raise TopologyError(f"{here}.host must be a host name or IP address, got {host!r}")
    replicas = table.get("replicas", 1)
    if type(replicas) is not int or replicas < 1:
        raise TopologyError(f"{here}.replicas must be an integer >= 1, got {replicas!r}")
    main = table.get("main", False)
    if type(main) is not bool:
        raise TopologyError(f"{here}.main must be true or false, got {main!r}")
    env_prefix = table.get("env_prefix")
    if env_prefix is not None and (not isinstance(env_prefix, str) or not env_prefix):
        raise TopologyError(f"{here}.env_prefix must be a non-empty string, got {env_prefix!r}")
    curve = _parse_curve(here, base, table["curve"]) if "curve" in table else None
    addresses: Mapping[str, Any] = {}
    if "addresses" in table:
        given = table["addresses"]
        if isinstance(given, str):
            addresses = load_json(
                _path(base, given, f"{here}.addresses"), "addresses", AddressError
            )
        elif isinstance(given, Mapping):
            addresses = given
        else:
            raise TopologyError(
                f"{here}.addresses must be an addresses file path or a table, "
                f"got {type(given).__name__}"
            )
    try:
        shaped = validate_addresses_shape(name, addresses)
    except AddressError as exc:
        raise TopologyError(f"{here}.addresses: {exc}") from None
    return ServiceSpec(
        name=name,
        file=file,
        config=MappingProxyType(dict(config)),
        config_file=config_file,
        host=host,
        replicas=replicas,
        main=main,
        curve=curve,
        env_prefix=env_prefix,
        addresses=MappingProxyType(shaped),
    )


def _parse_curve(where: str, base: Path, table: object) -> CurveKeys:
    here = f"{where}.curve"
    if not isinstance(table, Mapping):
        raise TopologyError(f"{here} must be a table, got {type(table).__name__}")
    _no_unknown(here, table, _CURVE_KEYS, "key")
    if "secret_key" not in table:
        raise TopologyError(f"{here}: missing required key 'secret_key' (NAME.key_secret)")
    secret = _path(base, table["secret_key"], f"{here}.secret_key")
    if "public_key" in table:
        public = _path(base, table["public_key"], f"{here}.public_key")
    elif secret.name.endswith("_secret"):
        public = secret.with_name(secret.name.removesuffix("_secret"))
    else:
        raise TopologyError(
            f"{here}: give 'public_key' (the secret key file's name does not end in '_secret')"
        )
    authorized = None
    if "authorized_keys" in table:
        authorized = _path(base, table["authorized_keys"], f"{here}.authorized_keys")
    allow_any = table.get("allow_any", False)
    if type(allow_any) is not bool:
        raise TopologyError(f"{here}.allow_any must be true or false, got {allow_any!r}")
    if (authorized is None) == (not allow_any):
        raise TopologyError(
            f"{here}: give exactly one of 'authorized_keys' (a directory of client public "
            "keys) or 'allow_any = true'"
        )
    return CurveKeys(secret, public, authorized, allow_any)


def _parse_link(where: str, item: object) -> Link:
    port: int | None = None
    if isinstance(item, str):
        match = _LINK.match(item)
        if match is None:
            raise TopologyError(
                f"{where}: {item!r} is not 'service.connection -> service.connection'"
            )
        source_text, target_text = match["source"], match["target"]
    elif isinstance(item, Mapping):
        _no_unknown(where, item, _LINK_KEYS, "key")
        for key in ("from", "to"):
            if not isinstance(item.get(key), str):
                raise TopologyError(f"{where}: needs '{key}' = \"service.connection\"")
        source_text, target_text = item["from"], item["to"]
        if "port" in item:
            port = item["port"]
            if not _is_port(port) or port == 0:
                raise TopologyError(f"{where}.port must be a port 1-65535, got {port!r}")
    else:
        raise TopologyError(
            f'{where}: a link is "a.out -> b.in" or {{from = ..., to = ..., port = ...}}, '
            f"got {type(item).__name__}"
        )
    return Link(
        Endpoint.parse(source_text, where=where), Endpoint.parse(target_text, where=where), port
    )


# --------------------------------------------------------------------------- models


def load_service(topology: Topology, name: str) -> PreparedService:
    """Import ``name``'s module and parse its config and models (its ``setup_config``,
    ``setup_connection_models`` and ``setup_connections`` hooks run; no socket opens).
    The service is named as in the topology. Errors are :class:`StartupError`\\ s naming
    the service."""
    spec = topology.service(name)
    module = load_module(spec.file)
    return prepare_service(module, name=name, config=spec.load_config() or None)


def load_services(topology: Topology) -> dict[str, PreparedService]:
    """:func:`load_service` for every service, in file order (the first failure raises)."""
    return {name: load_service(topology, name) for name in topology.services}


def binds(model: ConnectionModel) -> bool:
    """Whether the connection ``model`` describes binds (``True``) or connects.

    Asks the connection type's own ``binding()`` rule (which reads ``is_binder`` /
    ``is_x_pub`` from the creation arguments) without creating the connection: the rule
    only looks at the model and the type's ``binds`` default.
    """
    view = types.SimpleNamespace(model=model, binds=model.kind.binds)
    return bool(model.kind.binding(view))  # type: ignore[arg-type]


def _models_of(models: Mapping[str, ServiceModels | PreparedService]) -> dict[str, ServiceModels]:
    return {
        name: value.models if isinstance(value, PreparedService) else value
        for name, value in models.items()
    }


def resolve(topology: Topology, models: Mapping[str, ServiceModels | PreparedService]) -> Wiring:
    """Decide the binder and connector of every link and the port of every binder.

    ``models`` maps service names to their parsed models (a service missing from it -
    one that failed to load - has its links skipped, not reported here).
    """
    parsed = _models_of(models)
    problems: list[Finding] = []
    sides: list[tuple[Link, Endpoint, Endpoint]] = []  # link, binder, connector
    for link in topology.links:
        decided = _decide(topology, parsed, link, problems)
        if decided is not None:
            sides.append((link, *decided))

    # Explicit ports: from links, and from the services' own addresses (peers outside).
    ports: dict[Endpoint, int] = {}
    for link, binder, _ in sides:
        if link.port is None:
            continue
        given = ports.get(binder)
        if given is not None and given != link.port:
            problems.append(
                Finding(
                    "port-conflict",
                    f"{binder} is given port {given} and port {link.port} by different links",
                    (str(binder),),
                    str(link),
                )
            )
            continue
        ports[binder] = link.port
    used: dict[tuple[str, int], str] = {}  # (host, port) -> who binds it
    for endpoint, port in sorted(ports.items()):
        host = topology.services[endpoint.service].host
        _claim(used, host, port, str(endpoint), problems)
    for spec in topology.services.values():
        for endpoint_text, port in _explicit_bound_ports(spec, parsed.get(spec.name)):
            _claim(used, spec.host, port, endpoint_text, problems)

    # Every other binder: the next port from base_port not taken on its host.
    order = {name: i for i, name in enumerate(topology.services)}
    pending = sorted(
        {binder for _, binder, _ in sides if binder not in ports},
        key=lambda e: (order[e.service], e.connection),
    )
    for binder in pending:
        host = topology.services[binder.service].host
        port = topology.base_port
        while (host, port) in used:
            port += 1
        if port > 65535:
            raise TopologyError(f"{topology.path}: no free port left on {host} for {binder}")
        used[(host, port)] = str(binder)
        ports[binder] = port
    wires = tuple(Wire(link, binder, connector, ports[binder]) for link, binder, connector in sides)
    return Wiring(wires, MappingProxyType(ports), tuple(problems))


def _claim(
    used: dict[tuple[str, int], str], host: str, port: int, who: str, problems: list[Finding]
) -> None:
    other = used.get((host, port))
    if other is not None and other != who:
        problems.append(
            Finding(
                "duplicate-port",
                f"{other} and {who} both bind port {port} on host {host}",
                (other, who),
            )
        )
        return
    used[(host, port)] = who


def _explicit_bound_ports(
    spec: ServiceSpec, models: ServiceModels | None
) -> Iterable[tuple[str, int]]:
    """(``service.connection``, port) for explicit addresses of binding connections."""
    if models is None:
        return
    for side, declared in (("in", models.inbound), ("out", models.outbound)):
        for name, entry in spec.addresses.get(side, {}).items():
            model = declared.get(name)
            if model is None or not model.kind.address_keys or not binds(model):
                continue
            value = entry.get(model.kind.address_keys[0])
            for address in value if isinstance(value, list) else [value]:
                port = _port_of(address)
                if port:
                    yield f"{spec.name}.{name}", port


def _port_of(address: object) -> int | None:
    if not isinstance(address, str) or ("://" in address and not address.startswith("tcp://")):
        return None
    _, _, port = address.rpartition(":")
    return int(port) if port.isdigit() else None


def _decide(
    topology: Topology, models: Mapping[str, ServiceModels], link: Link, problems: list[Finding]
) -> tuple[Endpoint, Endpoint] | None:
    """(binder, connector) of ``link``, or ``None`` after recording why it cannot be wired."""
    ends = (str(link.source), str(link.target))
    found: list[ConnectionModel] = []
    for endpoint, side in ((link.source, "out"), (link.target, "in")):
        if endpoint.service not in topology.services:
            known = ", ".join(topology.services)
            problems.append(
                Finding(
                    "unknown-service",
                    f"link {link}: no service {endpoint.service!r} (services: {known})",
                    ends,
                    str(link),
                )
            )
            return None
        service_models = models.get(endpoint.service)
        if service_models is None:
            return None  # the service did not load; that is reported on its own
        declared = service_models.outbound if side == "out" else service_models.inbound
        model = declared.get(endpoint.connection)
        if model is None:
            other = service_models.inbound if side == "out" else service_models.outbound
            hint = (
                f" (it is an '{'in' if side == 'out' else 'out'}' connection: write the "
                "sender on the left of '->')"
                if endpoint.connection in other
                else f" ({side}bound connections: {', '.join(declared) or 'none'})"
            )
            problems.append(
                Finding(
                    "unknown-connection",
                    f"link {link}: {endpoint.service} has no {side}bound connection "
                    f"{endpoint.connection!r}{hint}",
                    ends,
                    str(link),
                )
            )
            return None
        found.append(model)
    out_model, in_model = found
    # Each outbound type names the inbound type it links to (requester -> replyer).
    peer = getattr(out_model.kind, "peer", None)
    if in_model.kind is not peer:
        needs = peer.type_name if peer is not None else "nothing (it opens no socket)"
        problems.append(
            Finding(
                "incompatible-types",
                f"link {link}: {link.source} is a {out_model.connection_type}, which links to "
                f"{needs}, but {link.target} is a {in_model.connection_type}",
                ends,
                str(link),
            )
        )
        return None
    out_binds, in_binds = binds(out_model), binds(in_model)
    if out_binds == in_binds:
        verb = "bind" if out_binds else "connect"
        problems.append(
            Finding(
                "both-bind" if out_binds else "both-connect",
                f"link {link}: both {link.source} ({_how(out_model)}) and {link.target} "
                f"({_how(in_model)}) {verb}; one end must bind and the other connect",
                ends,
                str(link),
            )
        )
        return None
    return (link.source, link.target) if out_binds else (link.target, link.source)


def _how(model: ConnectionModel) -> str:
    """Why a connection binds or connects, for messages."""
    args = model.creation_arguments
    if "is_binder" in args:
        return f"a {model.connection_type} with is_binder={args['is_binder']}"
    if "is_x_pub" in args:
        return f"a {model.connection_type} with is_x_pub={args['is_x_pub']}"
    return f"a {model.connection_type}"


# --------------------------------------------------------------------------- addresses


def derive_addresses(
    topology: Topology,
    models: Mapping[str, ServiceModels | PreparedService],
    *,
    mode: AddressMode = "local",
    host_of: Callable[[str], str] | None = None,
    public_key_of: Callable[[str], str] | None = None,
    wiring: Wiring | None = None,
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """Every service's addresses document, derived from the links.

    ``mode="local"``: binders bind ``host:port`` of their own service, connectors connect
    to the binder's ``host:port``. ``mode="cluster"``: binders bind ``*:port`` and
    connectors connect to ``host_of(binder_service)`` (default: the service name, which
    is a DNS name in Kubernetes and Compose). A connector whose binder has CURVE keys
    gets ``server_public_key``: the binder's public key file, or ``public_key_of(name)``.
    The services' explicit ``addresses`` fill in connections no link covers. Links that
    cannot be wired (see :func:`resolve`) are left out; ``check`` reports them.
    """
    if mode not in ("local", "cluster"):
        raise ValueError(f"mode must be 'local' or 'cluster', got {mode!r}")
    parsed = _models_of(models)
    wiring = wiring if wiring is not None else resolve(topology, parsed)
    documents: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for name, spec in topology.services.items():
        documents[name] = {
            side: {conn: dict(entry) for conn, entry in spec.addresses.get(side, {}).items()}
            for side in ("in", "out")
        }

    def entry_of(endpoint: Endpoint) -> tuple[dict[str, Any], str]:
        model = _model(parsed, endpoint)
        side = documents[endpoint.service][model.side]
        entry = side.setdefault(endpoint.connection, {})
        return entry, model.kind.address_keys[0]

    for binder, port in wiring.ports.items():
        entry, key = entry_of(binder)
        host = "*" if mode == "cluster" else topology.services[binder.service].host
        entry.clear()  # a linked connection takes its address from the link
        entry[key] = _join(host, port)
    connected: dict[Endpoint, list[Endpoint]] = {}
    for wire in wiring.wires:
        targets = connected.setdefault(wire.connector, [])
        if wire.binder not in targets:
            targets.append(wire.binder)
    for connector, binders in connected.items():
        entry, key = entry_of(connector)
        entry.clear()
        addresses = []
        for binder in binders:
            if mode == "cluster":
                host = host_of(binder.service) if host_of else binder.service
            else:
                host = topology.services[binder.service].host
            addresses.append(_join(host, wiring.ports[binder]))
        entry[key] = addresses[0] if len(addresses) == 1 else addresses
        keyed = [b for b in binders if topology.services[b.service].curve is not None]
        if keyed:
            curve = topology.services[keyed[0].service].curve
            assert curve is not None
            entry["server_public_key"] = (
                public_key_of(keyed[0].service) if public_key_of else str(curve.public_key)
            )
    return documents


def system_addresses(
    topology: Topology, *, mode: AddressMode = "local", host_of: Callable[[str], str] | None = None
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """:func:`derive_addresses` after :func:`load_services` (the first failure raises)."""
    return derive_addresses(topology, load_services(topology), mode=mode, host_of=host_of)


def _model(models: Mapping[str, ServiceModels], endpoint: Endpoint) -> ConnectionModel:
    service = models[endpoint.service]
    model = service.outbound.get(endpoint.connection) or service.inbound.get(endpoint.connection)
    if model is None:  # resolve() only wires declared connections
        raise StartupError(f"{endpoint}: not declared")
    return model


def _join(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"  # an IPv6 address
    return f"{host}:{port}"
