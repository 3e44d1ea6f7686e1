"""``external_target``: a plain Python call with validated arguments and return.

``target`` is a callable, or a dotted name resolved first in the service module's own
namespace (``'CbproClient.cancel_order'`` names a client the service imported) and
otherwise as an importable path (``'package.module.attr'``, attribute chains allowed).
It is called as ``target(**args)``; its return is validated against the return model
(``None`` models mean "not checked"). ``func_to_call`` and the type name
``external_request`` are accepted from 0.0.20.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ValidationError
from .base import ConnectionEnv, OutboundConnection

__all__ = ["ExternalTarget", "resolve_target"]


def resolve_target(name: str, namespace: Mapping[str, Any]) -> Callable[..., Any]:
    """Resolve a dotted name; raises ``ValueError`` saying what could not be found."""
    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        raise ValueError(f"target {name!r} is not a dotted name")
    obj: Any
    if parts[0] in namespace:
        obj, rest = namespace[parts[0]], parts[1:]
    else:
        obj, rest = None, parts
        for cut in range(len(parts), 0, -1):
            module_name = ".".join(parts[:cut])
            try:
                obj = importlib.import_module(module_name)
            except ImportError:
                continue
            except Exception as exc:
                raise ValueError(
                    f"importing {module_name!r} for target {name!r} failed: {exc}"
                ) from exc
            rest = parts[cut:]
            break
        if obj is None:
            raise ValueError(
                f"target {name!r} is neither a name in the service module nor importable"
            )
    for i, attr in enumerate(rest):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            found = ".".join(parts[: len(parts) - len(rest) + i])
            raise ValueError(f"target {name!r}: {found!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ValueError(
            f"target {name!r} resolved to a {type(obj).__name__}, which is not callable"
        )
    return obj  # type: ignore[no-any-return]


class ExternalTarget(OutboundConnection):
    type_name = "external_target"
    type_aliases = ("external_request",)
    has_reply = True
    required_creation_arguments = {"target": Callable | str}
    creation_argument_aliases = {"func_to_call": "target"}

    def __init__(self, model: Any, env: ConnectionEnv) -> None:
        super().__init__(model, env)
        self.target: Callable[..., Any] = model.creation_arguments["target"]
        assert model.returns is not None
        self._check_args = model.args.check
        self._args_error = model.args.error
        self._check_return = model.returns.check
        self._return_error = model.returns.error
        # A target may return None when its return model has no required keys.
        self._none_ok = model.returns.check({})

    @classmethod
    def prepare(
        cls, creation_arguments: dict[str, Any], namespace: Mapping[str, Any]
    ) -> dict[str, Any]:
        target = creation_arguments["target"]
        if isinstance(target, str):
            creation_arguments = {**creation_arguments, "target": resolve_target(target, namespace)}
        return super().prepare(creation_arguments, namespace)

    def send(self, args: Any, workflow_id: str) -> Any:
        return call_target(self, args)


def call_target(conn: ExternalTarget, args: Any) -> Any:
    """Validate, call, validate the return. Shared by the socket runtime and inline."""
    if not conn._check_args(args):
        raise conn._args_error(args)
    conn.stats.received += 1
    if type(args) is not dict:
        raise ValidationError(
            "external targets are called as target(**args); args must be a dict",
            service=conn.env.service,
            connection=conn.name,
            direction="args",
        )
    try:
        result = conn.target(**args)
    except Exception:
        conn.stats.failed += 1
        raise
    if not conn._check_return(result) and not (result is None and conn._none_ok):
        conn.stats.failed += 1
        raise conn._return_error(result)
    conn.stats.handled += 1
    return result
