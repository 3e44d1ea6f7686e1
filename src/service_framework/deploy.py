"""What every engine needs to run a topology: each service's command line, config,
addresses, and the order to start the services in.

Shared by ``service_framework up`` (local processes on honcho) and ``service_framework
export`` (files for Kubernetes, Compose, systemd, a Procfile). A service always runs as
the plain CLI does - ``service_framework -s FILE -a ADDRESSES -c CONFIG [-m]`` - with its
addresses derived from the topology (``topology.derive_addresses``): nothing about a
deployment needs a second way to start a service.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .check import check_topology
from .errors import StartupError
from .models import ConnectionModel, ServiceModels
from .topology import (
    AddressMode,
    Endpoint,
    ServiceSpec,
    Topology,
    Wiring,
    binds,
    derive_addresses,
)

__all__ = ["DeployError", "ServicePlan", "SystemPlan", "plan_system", "service_args", "to_json"]


#: How long every engine waits, after asking a service to stop, before it kills it: the
#: service's ``stop_timeout_s`` (10 s by default) to finish the work already queued,
#: then its refusals of what is left and its sockets' linger, with room to spare.
STOP_GRACE_S: Final = 30


class DeployError(StartupError):
    """A topology that cannot be run or exported as it stands (the message says why)."""


@dataclass(frozen=True)
class Learned:
    """A connector's address that comes from its binder: ``binder`` (``service.connection``,
    on ``binder_side``) bound at ``host``; the connector's entry is ``side``/``connection``,
    address key ``key``."""

    side: str
    connection: str
    key: str
    binders: tuple[tuple[Endpoint, str, str], ...]  # (binder, its side, its host)


@dataclass(frozen=True)
class ServicePlan:
    """One service of a topology, ready to be turned into a command or a manifest."""

    name: str
    spec: ServiceSpec
    config: dict[str, Any]
    addresses: dict[str, dict[str, dict[str, Any]]]
    bound_ports: tuple[int, ...]  # the ports its binders bind, sorted
    bound: tuple[tuple[str, str, str], ...]  # (side, connection, address key) of its links' binders
    # Binder services it connects to that start before it (all of them, unless two
    # services connect to each other: then the later one waits and the earlier does not).
    needs: tuple[str, ...]
    learned: tuple[Learned, ...]

    @property
    def is_binder(self) -> bool:
        return bool(self.bound_ports)


@dataclass(frozen=True)
class SystemPlan:
    topology: Topology
    services: Mapping[str, ServicePlan]
    order: tuple[str, ...]  # a start order: every service after the binders it needs
    wiring: Wiring


def plan_system(
    topology: Topology,
    *,
    mode: AddressMode = "local",
    host_of: Callable[[str], str] | None = None,
    public_key_of: Callable[[str], str] | None = None,
) -> SystemPlan:
    """Check the topology as ``service_framework check`` does (every module loaded, no
    socket opened; every link compared end to end), then derive each service's
    addresses. Any finding is a :class:`DeployError` listing them all: a system that
    would fail at its first message is not started or exported."""
    report = check_topology(topology)
    if report.findings:
        listed = "\n  ".join(str(finding) for finding in report.findings)
        raise DeployError(
            f"{topology.path}: {len(report.findings)} finding(s) (see 'service_framework "
            f"check {topology.path}'):\n  {listed}"
        )
    prepared, wiring = report.prepared, report.wiring
    addresses = derive_addresses(
        topology,
        prepared,
        mode=mode,
        host_of=host_of,
        public_key_of=public_key_of,
        wiring=wiring,
    )
    needs: dict[str, list[str]] = {name: [] for name in topology.services}
    learned: dict[str, dict[tuple[str, str], list[tuple[Endpoint, str, str]]]] = {
        name: {} for name in topology.services
    }
    models = {name: service.models for name, service in prepared.items()}

    def side_of(endpoint: Endpoint) -> str:
        return _side_and_model(models, endpoint)[0]

    for wire in wiring.wires:
        connector, binder = wire.connector, wire.binder
        if binder.service not in needs[connector.service] and binder.service != connector.service:
            needs[connector.service].append(binder.service)
        binder_host = topology.services[binder.service].host
        where = (side_of(connector), connector.connection)
        learned[connector.service].setdefault(where, []).append(
            (binder, side_of(binder), binder_host)
        )
    ports: dict[str, set[int]] = {name: set() for name in topology.services}
    bound: dict[str, list[tuple[str, str, str]]] = {name: [] for name in topology.services}
    for binder, port in wiring.ports.items():
        ports[binder.service].add(port)
        side, model = _side_and_model(models, binder)
        bound[binder.service].append((side, binder.connection, model.kind.address_keys[0]))
    for name, spec in topology.services.items():
        for side, declared in (("in", models[name].inbound), ("out", models[name].outbound)):
            for connection, entry in spec.addresses.get(side, {}).items():
                given = declared.get(connection)
                if given is not None and given.kind.address_keys and binds(given):
                    value = entry.get(given.kind.address_keys[0])
                    for address in value if isinstance(value, list) else [value]:
                        digits = str(address).rpartition(":")[2]
                        if digits.isdigit() and int(digits):
                            ports[name].add(int(digits))
    order = _start_order(topology, needs)
    position = {name: index for index, name in enumerate(order)}
    plans: dict[str, ServicePlan] = {}
    for name, spec in topology.services.items():
        entries = []
        for (side, connection), binders in learned[name].items():
            model = (models[name].inbound if side == "in" else models[name].outbound)[connection]
            entries.append(Learned(side, connection, model.kind.address_keys[0], tuple(binders)))
        plans[name] = ServicePlan(
            name=name,
            spec=spec,
            config=spec.load_config(),
            addresses=addresses[name],
            bound_ports=tuple(sorted(ports[name])),
            bound=tuple(bound[name]),
            needs=tuple(n for n in needs[name] if position[n] < position[name]),
            learned=tuple(entries),
        )
    return SystemPlan(topology, plans, order, wiring)


def _side_and_model(
    models: Mapping[str, ServiceModels], endpoint: Endpoint
) -> tuple[str, ConnectionModel]:
    service = models[endpoint.service]
    if endpoint.connection in service.outbound:
        return "out", service.outbound[endpoint.connection]
    return "in", service.inbound[endpoint.connection]


def _start_order(topology: Topology, needs: Mapping[str, list[str]]) -> tuple[str, ...]:
    """Services in file order, each moved after the binders it needs. A cycle (two
    services each connecting to the other's binder) is broken where it closes: ZeroMQ
    connects in the background, so one of the two simply starts first."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order or name in visiting:
            return
        visiting.add(name)
        for dependency in needs[name]:
            visit(dependency)
        visiting.discard(name)
        order.append(name)

    for name in topology.services:
        visit(name)
    return tuple(order)


def service_args(
    plan: ServicePlan,
    *,
    file: str,
    addresses: str,
    config: str | None,
    probe_file: str | None = None,
    curve_secret_key: str | None = None,
    curve_authorized_keys: str | None = None,
) -> list[str]:
    """The CLI arguments (after ``service_framework``) that run ``plan``'s service."""
    args = ["-s", file, "-a", addresses]
    if config is not None:
        args += ["-c", config]
    if plan.spec.main:
        args.append("-m")
    if probe_file is not None:
        args += ["--probe_file", probe_file]
    if plan.spec.env_prefix is not None:
        args += ["--env_prefix", plan.spec.env_prefix]
    curve = plan.spec.curve
    if curve is not None:
        args += ["--curve_secret_key", curve_secret_key or str(curve.secret_key)]
        if curve.allow_any:
            args.append("--curve_allow_any")
        else:
            args += [
                "--curve_authorized_keys",
                curve_authorized_keys or str(curve.authorized_keys),
            ]
    return args


def to_json(data: Any) -> str:
    """Stable, readable JSON for generated files (sorted keys, two-space indent)."""
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
