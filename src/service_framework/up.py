"""``service_framework up TOPOLOGY``: the whole system on this machine, on honcho.

honcho (the Procfile runner, ``pip install 'service-framework[up]'``) starts one process
per service, prefixes every line each one prints with its name, and stops them all when
one ends or when it gets SIGINT/SIGTERM. What this module adds:

* **Ready-ordering.** Each service's command is ``service_framework up --launch RUN NAME``:
  it waits until every binder the service connects to is live and connected (its
  heartbeat file, see ``probe.py``), writes the service's addresses with the ports those
  binders actually bound, and then *becomes* the service (``exec``), so signals reach it
  directly. With ``--free_ports`` every binder binds port 0, so a run never collides with
  anything else on the machine.
* **Exit code.** A main-mode service ending stops the system; ``up`` exits with its code
  (or 1 if another service did not stop cleanly). Ctrl-C (SIGINT) or SIGTERM stops every
  service gracefully; ``up`` then exits 0 when all of them stopped cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .deploy import STOP_GRACE_S, DeployError, SystemPlan, plan_system, service_args, to_json
from .errors import ServiceFrameworkError
from .probe import check_probe_file
from .topology import load_topology

__all__ = ["up_main"]

PROG = "service_framework up"
PLAN_FILE = "plan.json"


def up_main(argv: Sequence[str]) -> int:
    """``service_framework up``: run a topology locally until it ends or is stopped."""
    args = list(argv)
    if args[:1] == ["--launch"]:
        return _launch(args[1:])
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run every service of a topology as a local process on honcho, with "
        "prefixed logs, binders started before the services that connect to them, and a "
        "graceful stop on Ctrl-C.",
    )
    parser.add_argument("topology", help="the topology file (TOML)")
    parser.add_argument(
        "--free_ports",
        action="store_true",
        help="binders bind free ports (port 0) instead of the topology's; the services that "
        "connect to them learn the ports at start",
    )
    parser.add_argument(
        "--run_dir",
        help="keep the generated addresses, configs and heartbeat files here "
        "(default: a temporary directory, removed at the end)",
    )
    parser.add_argument(
        "--ready_timeout_s",
        type=float,
        default=60.0,
        help="how long a service waits for the binders it needs (default 60)",
    )
    parser.add_argument(
        "-cl", "--console_loglevel", default="INFO", help="every service's console log level"
    )
    parser.add_argument("--no_colour", action="store_true", help="no coloured prefixes")
    options = parser.parse_args(args)
    try:
        from honcho.manager import Manager  # noqa: F401 - an optional extra: fail early
    except ImportError:
        print(f"{PROG}: error: needs honcho: pip install 'service-framework[up]'", file=sys.stderr)
        return 2
    try:
        plan = plan_system(load_topology(options.topology))
    except ServiceFrameworkError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    for name in plan.order:
        service = plan.services[name]
        if service.is_binder and service.spec.replicas > 1:
            print(
                f"{PROG}: error: {name} binds port(s) {', '.join(map(str, service.bound_ports))}, "
                f"so it cannot run {service.spec.replicas} replicas on one host (only services "
                "that only connect scale locally)",
                file=sys.stderr,
            )
            return 2
    if options.run_dir:
        run_dir = Path(options.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        return _run(plan, run_dir, options)
    temporary = Path(tempfile.mkdtemp(prefix=f"service_framework-up-{plan.topology.name}-"))
    try:
        return _run(plan, temporary, options)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _run(plan: SystemPlan, run_dir: Path, options: argparse.Namespace) -> int:
    from honcho.printer import Printer

    try:
        processes = write_plan(
            plan,
            run_dir,
            free_ports=options.free_ports,
            ready_timeout_s=options.ready_timeout_s,
            console_loglevel=options.console_loglevel,
        )
    except DeployError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    main_names = {
        process for process, service in processes.items() if plan.services[service].spec.main
    }
    manager = _honcho_manager(Printer(sys.stdout, colour=not options.no_colour))
    # Unbuffered, so that what a service prints appears in order with what it logs.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for process in processes:
        command = shlex.join(
            [sys.executable, "-m", "service_framework", "up", "--launch", str(run_dir), process]
        )
        manager.add_process(process, f"exec {command}", env=env)
    manager.loop()
    return _exit_code(manager, main_names)


def write_plan(
    plan: SystemPlan,
    run_dir: Path,
    *,
    free_ports: bool,
    ready_timeout_s: float,
    console_loglevel: str = "INFO",
) -> dict[str, str]:
    """Write each service's config and the launch plan into ``run_dir``; returns
    process name -> service name, in start order (a service with ``replicas = N`` runs
    as ``NAME.1`` ... ``NAME.N``)."""
    processes: dict[str, str] = {}
    launches: dict[str, Any] = {}
    for name in plan.order:
        service = plan.services[name]
        addresses = json.loads(json.dumps(service.addresses))
        if free_ports:
            for side, connection, key in service.bound:
                entry = addresses[side][connection]
                entry[key] = f"{entry[key].rpartition(':')[0]}:0"
        for learned in service.learned:
            for binder, _, _ in learned.binders:
                if free_ports and binder.service not in service.needs:
                    raise DeployError(
                        f"{name} and {binder.service} connect to each other's binders, so one "
                        f"of them starts first and cannot learn the other's port: run without "
                        "--free_ports (the topology's ports)"
                    )
        config_path = None
        if service.config:
            config_path = run_dir / f"{name}.config.json"
            config_path.write_text(to_json(service.config))
        replicas = service.spec.replicas
        for index in range(1, replicas + 1):
            process = name if replicas == 1 else f"{name}.{index}"
            processes[process] = name
            launches[process] = {
                "service": name,
                "needs": list(service.needs),
                "addresses": addresses,
                "learned": []
                if not free_ports
                else [
                    {
                        "side": learned.side,
                        "connection": learned.connection,
                        "key": learned.key,
                        "binders": [
                            [str(binder.service), binder.connection, side, host]
                            for binder, side, host in learned.binders
                        ],
                    }
                    for learned in service.learned
                ],
                "args": [
                    *service_args(
                        service,
                        file=str(service.spec.file),
                        addresses=str(run_dir / f"{process}.addresses.json"),
                        config=str(config_path) if config_path else None,
                        probe_file=str(run_dir / f"{process}.probe"),
                    ),
                    "-cl",
                    console_loglevel,
                ],
            }
    (run_dir / PLAN_FILE).write_text(
        to_json({"ready_timeout_s": ready_timeout_s, "processes": launches})
    )
    return processes


def _honcho_manager(printer: Any) -> Any:
    """honcho's Manager, plus what ``up`` needs to know at the end: whether the stop
    began with a signal to ``up`` (rather than a service ending), and each service's
    exit code."""
    from honcho.manager import Manager

    class SystemManager(Manager):  # type: ignore[misc]
        interrupted = False
        stop_asked_at: float | None = None

        def terminate(self) -> None:
            # honcho calls terminate() from its SIGINT/SIGTERM handler, or once a process
            # has stopped: before any has, it was a signal.
            if not self._terminating and not self._any_stopped():
                self.interrupted = True
            if self.stop_asked_at is None:
                self.stop_asked_at = time.monotonic()
            super().terminate()

        def kill(self) -> None:
            # honcho kills whatever still runs 5 s after the stop, and asks again every
            # turn of its loop from then on: a service finishing the work it had queued
            # (up to its stop_timeout_s) gets the grace every export gives it instead.
            asked = self.stop_asked_at
            if asked is not None and time.monotonic() - asked < STOP_GRACE_S:
                return
            super().kill()

        def exit_codes(self) -> dict[str, int | None]:
            # honcho 2.x keeps each process's exit code here; it has no public accessor.
            return {name: state.get("returncode") for name, state in self._processes.items()}

    return SystemManager(printer)


def _exit_code(manager: Any, main_names: set[str]) -> int:
    codes: dict[str, int | None] = manager.exit_codes()
    summary = ", ".join(f"{name} {code}" for name, code in codes.items())
    interrupted_main = 128 + signal.SIGTERM  # a main-mode service stopped mid-main

    def clean(name: str, code: int | None) -> bool:
        return code == 0 or (name in main_names and code == interrupted_main)

    if manager.interrupted:
        ok = all(clean(name, code) for name, code in codes.items())
        print(f"up: stopped on request; exit codes: {summary}", flush=True)
        return 0 if ok else 1
    first = manager.returncode if manager.returncode is not None else 1
    print(f"up: the system stopped; exit codes: {summary}", flush=True)
    if first != 0:
        return first
    return 0 if all(clean(name, code) for name, code in codes.items()) else 1


# --------------------------------------------------------------------------- launch


def _launch(argv: list[str]) -> int:
    """``up --launch RUN PROCESS``: wait for the binders PROCESS needs, write its
    addresses with their actual ports, then exec the service."""
    run_dir, process = Path(argv[0]), argv[1]
    plan = json.loads((run_dir / PLAN_FILE).read_text())
    launch = plan["processes"][process]
    # Stopped while waiting: nothing has started, so that is a clean stop.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: os._exit(0))
    deadline = time.monotonic() + float(plan["ready_timeout_s"])
    needs: list[str] = launch["needs"]
    if needs:
        print(f"waiting for {', '.join(needs)}", file=sys.stderr, flush=True)
    for service in needs:
        probe = run_dir / f"{service}.probe"
        while (problem := check_probe_file(probe, connected=True)) is not None:
            if time.monotonic() >= deadline:
                print(
                    f"{PROG}: {launch['service']}: {service} was not ready within "
                    f"{plan['ready_timeout_s']:g}s: {problem}",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            time.sleep(0.05)  # a file: no event announces that it changed
    addresses = launch["addresses"]
    for learned in launch["learned"]:
        found = []
        for binder, connection, side, host in learned["binders"]:
            beat = json.loads((run_dir / f"{binder}.probe").read_text())
            endpoints = beat["connections"][side][connection]["endpoints"]
            if not endpoints:
                raise DeployError(f"{binder}.{connection} reports no bound endpoint")
            port = endpoints[0].rpartition(":")[2]
            found.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        entry = addresses[learned["side"]][learned["connection"]]
        entry[learned["key"]] = found[0] if len(found) == 1 else found
    args: list[str] = launch["args"]
    Path(args[args.index("-a") + 1]).write_text(to_json(addresses))
    command = [sys.executable, "-m", "service_framework", *args]
    with contextlib.suppress(AttributeError):
        sys.stdout.flush()
    os.execv(sys.executable, command)
