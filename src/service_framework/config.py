"""Config and addresses: files, command-line pairs, conversion of strings.

Config sources, lowest precedence first: the config JSON file (``-c``), then the
environment (variables with the ``--env_prefix`` prefix), then extra command-line pairs
(``--key value``, ``-key value``, ``--key=value`` or a bare ``key value``), then the
``config=`` argument of the object API. A file in the seed's
``{"required": {...}, "optional": {...}}`` shape is flattened into one dict.

Command-line and environment values arrive as strings. Where ``config_model`` declares a non-string
type, the string is converted: ``int``, ``float``, ``Decimal``, ``UUID``, ``bool``
(``true/false/yes/no/on/off/1/0``), ``None`` for optional types (``none``/``null``), and
JSON for lists, tuples, sets and dicts. A value that a ``setup_config`` hook already
converted is left alone.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from .errors import AddressError, ConfigError
from .validation import (
    AnyNode,
    DictNode,
    FieldsNode,
    ListNode,
    LiteralNode,
    Node,
    NoneNode,
    SetNode,
    TupleNode,
    TypeNode,
    UnionNode,
    VarTupleNode,
)

__all__ = [
    "coerce_strings",
    "dangling_key_message",
    "environment_config",
    "flatten_seed_shape",
    "load_json",
    "parse_cli_pairs",
    "validate_addresses_shape",
]


def read_text_file(path: str | Path, what: str, error: type[Exception] = ConfigError) -> str:
    """The UTF-8 text of the ``what`` file at ``path``; every failure is one clear
    ``error`` naming the file."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{what} path is a directory, not a file: {path}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} file {path} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise error(f"cannot read {what} file {path}: {exc.strerror}") from None


def load_json(path: str | Path, what: str, error: type[Exception] = ConfigError) -> dict[str, Any]:
    """Read a JSON object from ``path``; every failure is one clear ``error``."""
    text = read_text_file(path, what, error)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(
            f"{what} file {path} is not valid JSON: {exc.msg} "
            f"(line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(data, dict):
        raise error(f"{what} file {path} must hold a JSON object, not {type(data).__name__}")
    return data


def flatten_seed_shape(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"required": {...}, "optional": {...}}`` -> one dict; anything else unchanged."""
    if (
        config
        and set(config) <= {"required", "optional"}
        and all(isinstance(v, Mapping) for v in config.values())
    ):
        return {**config.get("optional", {}), **config.get("required", {})}
    return dict(config)


def parse_cli_pairs(tokens: Iterable[str]) -> dict[str, str]:
    """Config pairs from the command line -> ``{key: value}`` (values stay strings).

    ``['--symbol', 'BTC', '-qty', '3', '--side=buy', 'venue', 'X']`` ->
    ``{'symbol': 'BTC', 'qty': '3', 'side': 'buy', 'venue': 'X'}``. A key may be written
    ``--key``, ``-key`` or, as 0.0.20 accepted, bare; ``key=value`` works in each form.
    The token after a key is its value whatever it looks like (``--offset -5``).
    """
    config: dict[str, str] = {}
    items = list(tokens)
    i = 0
    while i < len(items):
        token = items[i]
        if token in {"-", "--"}:
            raise ConfigError(f"unexpected argument {token!r}: config is given as --key value")
        key = token.lstrip("-")
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(items):
                raise ConfigError(dangling_key_message(token))
            value = items[i + 1]
            i += 2
        if not key:
            raise ConfigError(f"empty config key in {token!r}")
        config[key] = value
    return config


def dangling_key_message(token: str) -> str:
    """The error for a config key given without a value."""
    key = token.lstrip("-")
    return f"config key {key!r} has no value (expected {token} VALUE)"


def environment_config(prefix: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The config keys that environment variables starting with ``prefix`` give.

    ``environment_config('APP_', {'APP_NUM_REQ_TO_SEND': '10', 'HOME': '/root'})`` ->
    ``{'num_req_to_send': '10'}``: the prefix is matched exactly (case-sensitive, as
    POSIX variable names are), stripped, and the rest lowercased, because config keys
    are snake_case while variables are conventionally upper case. The values stay
    strings; like command-line values, they are converted where ``config_model``
    declares another type (pass them as ``cli_strings``). An empty prefix would turn
    the whole environment into config, so it is refused, as is a variable that is the
    prefix alone and two variables that name the same key.
    """
    if not prefix:
        raise ConfigError("env_prefix must not be empty (it would read every variable)")
    config: dict[str, str] = {}
    names: dict[str, str] = {}
    for name in sorted(environ):
        if not name.startswith(prefix):
            continue
        key = name[len(prefix) :].lower()
        if not key:
            raise ConfigError(f"environment variable {name!r} is the prefix alone: no config key")
        if key in names:
            raise ConfigError(
                f"environment variables {names[key]!r} and {name!r} both give config key {key!r}"
            )
        names[key] = name
        config[key] = environ[name]
    return config


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null"}


def _convert(text: str, node: Node) -> Any:
    """Convert one command-line string for ``node``; raises ``ValueError`` saying why."""
    if isinstance(node, UnionNode):
        errors = []
        # str first: a string that is allowed as a string stays a string.
        members = sorted(node.members, key=lambda m: not (isinstance(m, TypeNode) and m.cls is str))
        for member in members:
            try:
                return _convert(text, member)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(" / ".join(errors))
    if isinstance(node, NoneNode):
        if text.lower() in _NONE:
            return None
        raise ValueError("not none/null")
    if isinstance(node, AnyNode):
        return text
    if isinstance(node, LiteralNode):
        for value in node.values:
            if value == text or (not isinstance(value, str) and str(value) == text):
                return value
        raise ValueError(f"not one of {node.describe()[7:]}")
    if isinstance(node, TypeNode):
        cls = node.cls
        if issubclass(cls, str):
            return text
        if cls is bool:
            lowered = text.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError("not a bool (true/false, yes/no, on/off, 1/0)")
        if cls is int:
            return int(text)
        if cls is float:
            return float(text)
        if cls is Decimal:
            try:
                return Decimal(text)
            except InvalidOperation:
                raise ValueError("not a decimal number") from None
        if cls is uuid.UUID:
            return uuid.UUID(text)
        if cls in (list, dict, tuple, set, frozenset):
            return _from_json(text, node)
        raise ValueError(f"no conversion from a string to {cls.__name__}")
    if isinstance(node, (ListNode, DictNode, FieldsNode, TupleNode, VarTupleNode, SetNode)):
        return _from_json(text, node)
    raise ValueError(f"no conversion from a string to {node.describe()}")


def _from_json(text: str, node: Node) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if isinstance(node, (TupleNode, VarTupleNode)) and isinstance(value, list):
        return tuple(value)
    if isinstance(node, SetNode) or (isinstance(node, TypeNode) and node.cls in (set, frozenset)):
        return set(value) if isinstance(value, list) else value
    return value


def coerce_strings(
    service: str, config: dict[str, Any], originals: Mapping[str, str], model: Node
) -> dict[str, Any]:
    """Convert the command-line strings in ``config`` that the model declares otherwise.

    ``originals`` are the values as they came from the command line; a key whose value
    is no longer that same string (a ``setup_config`` hook converted it) is left alone.
    """
    if not isinstance(model, FieldsNode):
        return config
    out = dict(config)
    for key, text in originals.items():
        if out.get(key) is not text:
            continue
        node = model.required.get(key) or model.optional.get(key)
        if node is None or _accepts_str(node):
            continue
        try:
            out[key] = _convert(text, node)
        except ValueError as exc:
            raise ConfigError(
                f"{service}: config key {key!r} has value {text!r}, which is not a valid "
                f"{node.describe()}: {exc}"
            ) from None
    return out


def _accepts_str(node: Node) -> bool:
    if isinstance(node, TypeNode):
        return issubclass(str, node.cls)
    if isinstance(node, AnyNode):
        return True
    if isinstance(node, UnionNode):
        return any(_accepts_str(m) for m in node.members)
    return False  # literals and containers are converted


def validate_addresses_shape(service: str, addresses: object) -> dict[str, dict[str, Any]]:
    """Check the addresses document's outer shape: ``{"in": {conn: {key: addr}}, "out": ...}``."""
    if addresses is None:
        return {"in": {}, "out": {}}
    if not isinstance(addresses, Mapping):
        raise AddressError(
            f"{service}: addresses must be a dict with 'in' and/or 'out', "
            f"got {type(addresses).__name__}"
        )
    result: dict[str, dict[str, Any]] = {"in": {}, "out": {}}
    for side, entries in addresses.items():
        if side not in result:
            raise AddressError(
                f"{service}: addresses have unknown side {side!r} (allowed: 'in', 'out')"
            )
        if entries is None:
            continue
        if not isinstance(entries, Mapping):
            raise AddressError(
                f"{service}: addresses['{side}'] must be a dict of connection: addresses"
            )
        for name, entry in entries.items():
            if not isinstance(entry, Mapping):
                raise AddressError(
                    f"{service}: addresses['{side}']['{name}'] must be a dict of "
                    f"socket key: 'host:port', got {type(entry).__name__}"
                )
            result[side][name] = dict(entry)
    return result
