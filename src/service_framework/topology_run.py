"""``service_framework run TOPOLOGY SERVICE [flags] [--key value ...]``: run one service
of a topology.

The service's file, config, main mode and CURVE keys come from the topology, and its
addresses are derived from the links (see :mod:`service_framework.topology`); it then
runs through the same :class:`~service_framework.Service` path as ``-s FILE -a FILE``.
Before anything opens, the topology is checked (:mod:`service_framework.check`): a
finding about this service's own links or connections stops start-up with one error
line per finding and exit code 2; findings elsewhere in the system are printed as
warnings.

Flags: ``-cl/--console_loglevel``, ``-l/--log_path``, ``-f/--file_loglevel``,
``-bc/--backup_count``, ``-wt/--service_loop_min_wait_time_s``, ``--traceback``.
Anything else is ``--key value`` config. Config sources, lowest precedence first: the
service's ``config_file``, its inline ``config`` table, the environment (variables
starting with the service's ``env_prefix``), the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Mapping, Sequence

from .check import CheckReport, check_topology
from .config import environment_config, parse_cli_pairs
from .errors import ServiceFrameworkError, StartupError
from .service import Service
from .topology import ServiceSpec, TopologyError, derive_addresses, load_topology

__all__ = ["main"]

PROG = "service_framework run"

# flag -> takes a value (the framework flags that make sense for one service of a system)
_FLAGS: dict[str, bool] = {
    "-cl": True, "--console_loglevel": True,
    "-l": True, "--log_path": True,
    "-f": True, "--file_loglevel": True,
    "-bc": True, "--backup_count": True,
    "-wt": True, "--service_loop_min_wait_time_s": True,
    "--traceback": False,
    "-h": False, "--help": False,
}  # fmt: skip
# What the topology decides; given here, it is a mistake worth a clear word.
_FROM_TOPOLOGY = {
    "-s": "the service's file",
    "--service_path": "the service's file",
    "-a": "its addresses",
    "--addresses_path": "its addresses",
    "-c": "its config file",
    "--config_path": "its config file",
    "-m": "main mode",
    "--main_mode": "main mode",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run one service of a topology: its file, config, main mode, CURVE keys "
        "and addresses come from the topology, which is checked first.",
        epilog="Any other --key value pair is added to the service's config.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("topology", help="the topology file (TOML)")
    add("service", help="the name of the service in the topology")
    add("-cl", "--console_loglevel", default="INFO", help="console log level (default INFO)")
    add("-l", "--log_path", help="log file path (rotated hourly)")
    add("-f", "--file_loglevel", default="INFO", help="log file level (default INFO)")
    add("-bc", "--backup_count", type=int, default=24, help="hourly log files to keep (default 24)")
    add(
        "-wt",
        "--service_loop_min_wait_time_s",
        type=float,
        default=0.0,
        help="minimum pause between service loop turns, in seconds (rate limit)",
    )
    add("--traceback", action="store_true", help="show tracebacks for start-up errors")
    return parser  # fmt: skip


def _split(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(framework arguments, ``--key value`` config tokens): the two positionals and the
    flags above go to the parser, everything after a config key is its value."""
    known: list[str] = []
    extra: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        flag, has_equals, _ = token.partition("=")
        if flag in _FROM_TOPOLOGY:
            raise StartupError(
                f"{flag} is not used with a topology: the topology gives {_FROM_TOPOLOGY[flag]}"
            )
        if flag in _FLAGS:
            known.append(token)
            if _FLAGS[flag] and not has_equals and i + 1 < len(argv):
                known.append(argv[i + 1])
                i += 1
        elif token.startswith("-"):
            extra.append(token)
            if not has_equals and i + 1 < len(argv):
                extra.append(argv[i + 1])
                i += 1
        else:
            known.append(token)
        i += 1
    return known, extra


def _fail(message: str, exc: BaseException | None = None, show_traceback: bool = False) -> int:
    if show_traceback and exc is not None:
        traceback.print_exception(exc)
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def environment_strings(spec: ServiceSpec, environ: Mapping[str, str]) -> dict[str, str]:
    """The config pairs the environment gives ``spec`` (its ``env_prefix``), as strings:
    read exactly as ``--env_prefix`` reads them (``config.environment_config``)."""
    if spec.env_prefix is None:
        return {}
    return environment_config(spec.env_prefix, environ)


def main(argv: Sequence[str]) -> int:
    """The ``run`` subcommand (see the module docstring)."""
    try:
        known, extra = _split(list(argv))
    except StartupError as exc:
        return _fail(str(exc))
    args = _parser().parse_args(known)
    show_tb = args.traceback
    try:
        topology = load_topology(args.topology)
        spec = topology.service(args.service)
        cli_pairs = parse_cli_pairs(extra)
    except (TopologyError, ServiceFrameworkError) as exc:
        return _fail(str(exc), exc, show_tb)
    report = check_topology(topology)
    own = report.about(spec.name)
    for finding in report.findings:
        if finding not in own:
            print(f"{PROG}: warning: {finding}", file=sys.stderr)
    if own:
        for finding in own:
            print(f"{PROG}: error: {finding}", file=sys.stderr)
        count = len(own)
        return _fail(
            f"{spec.name}: {count} finding{'s' if count != 1 else ''} about its links "
            f"(see 'service_framework check {args.topology}'); not starting"
        )
    try:
        service = _build(args, spec, report, cli_pairs)
    except ServiceFrameworkError as exc:
        return _fail(str(exc), exc, show_tb)
    try:
        if spec.main:
            return service.run_service_as_main_blocking()
        return service.run_service_blocking()
    except (StartupError, ValueError) as exc:
        return _fail(str(exc), exc, show_tb)


def _build(
    args: argparse.Namespace, spec: ServiceSpec, report: CheckReport, cli_pairs: dict[str, str]
) -> Service:
    topology = report.topology
    addresses = derive_addresses(topology, report.prepared, wiring=report.wiring)[spec.name]
    config = spec.load_config()
    strings = {**environment_strings(spec, os.environ), **cli_pairs}
    config.update(strings)
    return Service(
        spec.file,
        addresses=addresses,
        config=config or None,
        console_loglevel=args.console_loglevel,
        log_path=args.log_path,
        file_loglevel=args.file_loglevel,
        backup_count=args.backup_count,
        service_loop_min_wait_time=args.service_loop_min_wait_time_s,
        curve=spec.curve.load() if spec.curve is not None else None,
        cli_strings=strings,
    )
