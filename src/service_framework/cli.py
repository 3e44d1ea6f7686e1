"""``service_framework`` / ``python -m service_framework``: run one service.

Argument parsing only: every framework flag is listed below; anything else is
``--key value`` (or ``-key value``, ``--key=value``, a bare ``key value``) config.
``--env_prefix P`` adds config from environment variables named ``P<KEY>``. A start-up
error prints one line, ``service_framework: error: ...``, and exits 2 (``--traceback``
shows the trace); ``--version`` prints the version.
``main`` raising exits 1 after logging its traceback; a clean or signalled stop exits 0.

``service_framework keygen DIR NAME`` creates a CURVE key pair (see ``security.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib import import_module
from typing import Any

from . import __version__
from .config import (
    dangling_key_message,
    environment_config,
    flatten_seed_shape,
    load_json,
    parse_cli_pairs,
)
from .errors import AddressError, ConfigError, ServiceFrameworkError, StartupError
from .logs import DEFAULT_LOG_MAX_BYTES
from .probe import PROBE_FILE_ENV, probe_main
from .security import Curve, create_keypair
from .service import Service

__all__ = ["main"]

PROG = "service_framework"

# flag -> takes a value
_FLAGS: dict[str, bool] = {
    "-s": True, "--service_path": True,
    "-a": True, "--addresses_path": True,
    "-c": True, "--config_path": True,
    "-m": False, "--main_mode": False,
    "-wt": True, "--service_loop_min_wait_time_s": True,
    "-cl": True, "--console_loglevel": True,
    "-f": True, "--file_loglevel": True,
    "-bc": True, "--backup_count": True,
    "-l": True, "--log_path": True,
    "--log_max_bytes": True,
    "-h": False, "--help": False,
    "--version": False,
    "--env_prefix": True,
    "--traceback": False,
    "--curve_secret_key": True,
    "--curve_authorized_keys": True,
    "--curve_allow_any": False,
    "--probe_file": True,
}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a service: a Python module declaring config_model and connection_models.",
        epilog="Any other --key value (or bare key value) pair is added to the service's "
        "config. "
        f"'{PROG} keygen DIR NAME' creates a CURVE key pair.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--version", action="version", version=f"%(prog)s {__version__}")
    add("-s", "--service_path", help="path of the service's .py file")
    add("-a", "--addresses_path", help="path of the addresses JSON file")
    add("-c", "--config_path", help="path of the config JSON file")
    add(
        "--env_prefix",
        help="read config from environment variables starting with this prefix "
        "(APP_NUM=3 -> num; precedence: file < environment < command line)",
    )
    add("-m", "--main_mode", action="store_true", help="run the service's main(to_send, config)")
    add(
        "-wt",
        "--service_loop_min_wait_time_s",
        type=float,
        default=0.0,
        help="minimum pause between service loop turns, in seconds (rate limit)",
    )
    add("-cl", "--console_loglevel", default="INFO", help="console log level (default INFO)")
    add("-f", "--file_loglevel", default="INFO", help="log file level (default INFO)")
    add("-bc", "--backup_count", type=int, default=24, help="hourly log files to keep (default 24)")
    add("-l", "--log_path", help="log file path (rotated hourly)")
    add(
        "--log_max_bytes",
        type=int,
        default=DEFAULT_LOG_MAX_BYTES,
        help="also rotate the log file before it grows past this many bytes "
        f"(default {DEFAULT_LOG_MAX_BYTES}; 0: hourly only)",
    )
    add("--traceback", action="store_true", help="show tracebacks for start-up errors")
    add("--curve_secret_key", help="this service's CURVE secret key file (turns CURVE on)")
    add(
        "--curve_authorized_keys",
        help="directory of client public keys allowed to connect (re-read on change; a "
        "service that binds nothing needs neither this nor --curve_allow_any)",
    )
    add(
        "--curve_allow_any",
        action="store_true",
        help="with CURVE on, admit any client that knows the server key",
    )
    add(
        "--probe_file",
        default=os.environ.get(PROBE_FILE_ENV) or None,
        help=f"heartbeat file for '{PROG} probe', kept fresh while the loop turns "
        f"(default: ${PROBE_FILE_ENV})",
    )
    return parser  # fmt: skip


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate framework flags from config pairs (``--key value``, ``-key value``,
    ``--key=value`` or, as 0.0.20 accepted, a bare ``key value``).

    Done by hand rather than with ``parse_known_args``, which would read ``-symbol BTC``
    as ``-s ymbol`` and let ``--con`` abbreviate ``--config_path``. A config key takes
    the next token as its value, unless that is a framework flag: ``num -m`` is a key
    with no value, not ``num = "-m"``. A key with no value raises :class:`ConfigError`.
    """
    known: list[str] = []
    extra: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        flag, has_equals, _ = token.partition("=")
        if flag in _FLAGS:
            known.append(token)
            if _FLAGS[flag] and not has_equals and i + 1 < len(argv):
                known.append(argv[i + 1])
                i += 1
        else:
            extra.append(token)
            if not has_equals and token not in {"-", "--"}:
                if i + 1 >= len(argv) or argv[i + 1].partition("=")[0] in _FLAGS:
                    raise ConfigError(dangling_key_message(token))
                extra.append(argv[i + 1])
                i += 1
        i += 1
    return known, extra


def _fail(message: str, exc: BaseException | None, show_traceback: bool) -> int:
    if show_traceback and exc is not None:
        traceback.print_exception(exc)
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = SUBCOMMANDS.get(args_list[0]) if args_list else None
    if command is not None:
        return command(args_list[1:])
    try:
        known, extra = split_arguments(args_list)
    except ConfigError as exc:
        return _fail(str(exc), exc, "--traceback" in args_list)
    parser = _parser()
    args = parser.parse_args(known)
    show_tb = args.traceback
    try:
        service = _build(args, extra)
    except ServiceFrameworkError as exc:
        return _fail(str(exc), exc, show_tb)
    try:
        if args.main_mode:
            return service.run_service_as_main_blocking()
        return service.run_service_blocking()
    except (StartupError, ValueError) as exc:  # ValidationError of the config is a ValueError
        return _fail(str(exc), exc, show_tb)


def _build(args: argparse.Namespace, extra: list[str]) -> Service:
    if not args.service_path:
        raise StartupError("no service given: use -s/--service_path PATH")
    config: dict[str, Any] = {}
    if args.config_path:
        config = flatten_seed_shape(load_json(args.config_path, "config"))
    # Lowest precedence first: file < environment < command line. Strings from the
    # environment and the command line are both converted by the config_model.
    strings: dict[str, str] = {}
    if args.env_prefix is not None:
        strings.update(environment_config(args.env_prefix, os.environ))
    strings.update(parse_cli_pairs(extra))
    config.update(strings)
    addresses = None
    if args.addresses_path:
        addresses = load_json(args.addresses_path, "addresses", AddressError)
    curve = None
    if args.curve_secret_key:
        curve = Curve.from_files(
            args.curve_secret_key, args.curve_authorized_keys, allow_any=args.curve_allow_any
        )
    elif args.curve_authorized_keys or args.curve_allow_any:
        raise StartupError("--curve_authorized_keys/--curve_allow_any need --curve_secret_key")
    return Service(
        args.service_path,
        addresses=addresses,
        config=config or None,
        console_loglevel=args.console_loglevel,
        log_path=args.log_path,
        file_loglevel=args.file_loglevel,
        backup_count=args.backup_count,
        log_max_bytes=args.log_max_bytes,
        service_loop_min_wait_time=args.service_loop_min_wait_time_s,
        curve=curve,
        cli_strings=strings,
        probe_file=args.probe_file,
    )


def _keygen(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} keygen",
        description="Create a CURVE key pair: DIR/NAME.key (public) and "
        "DIR/NAME.key_secret (mode 0600).",
    )
    parser.add_argument("directory")
    parser.add_argument("name")
    args = parser.parse_args(argv)
    try:
        public, secret = create_keypair(args.directory, args.name)
    except ServiceFrameworkError as exc:
        return _fail(str(exc), exc, False)
    print(f"public key: {public}")
    print(f"secret key: {secret} (mode 0600; never share it)")
    return 0


def _lazy(module: str, name: str) -> Callable[[list[str]], int]:
    """The command ``name`` of ``module`` (relative to this package), imported when it
    runs: starting a service loads none of the topology, export or graph machinery."""

    def command(argv: list[str]) -> int:
        main: Callable[[list[str]], int] = getattr(import_module(module, __package__), name)
        return main(argv)

    command.__qualname__ = f"{module.lstrip('.')}.{name}"
    return command


# ``service_framework NAME ARGS...`` runs ``SUBCOMMANDS[NAME](ARGS)`` and exits with what
# it returns; anything else runs a service. Each command parses its own arguments.
SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "keygen": _keygen,
    "check": _lazy(".check", "main"),
    "run": _lazy(".topology_run", "main"),
    "asyncapi": _lazy(".asyncapi", "main"),
    "graph": _lazy(".graph", "main"),
    "probe": probe_main,
    "export": _lazy(".export", "export_main"),
    "up": _lazy(".up", "up_main"),
}
