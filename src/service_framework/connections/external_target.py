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
from ..pipeline import Receiver, compile_delivery
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
        self.call = self._compile()  # args -> the checked return

    @classmethod
    def prepare(
        cls, creation_arguments: dict[str, Any], namespace: Mapping[str, Any]
    ) -> dict[str, Any]:
        target = creation_arguments["target"]
        if isinstance(target, str):
            creation_arguments = {**creation_arguments, "target": resolve_target(target, namespace)}
        return super().prepare(creation_arguments, namespace)

    def send(self, args: Any, workflow_id: str) -> Any:
        return self.call(args)

    def sender(self) -> Callable[[Any, str], Any]:
        call = self.call

        def call_target(args: Any, workflow_id: str) -> Any:
            return call(args)

        return call_target

    def _compile(self) -> Callable[[Any], Any]:
        """The call through the message pipeline: the args checked, ``target(**args)``,
        the return checked, counted. Errors are the caller's, raised as they are (the
        target's own exception, or the ``ValidationError``), and not logged here: the
        caller decides. The target runs in the caller's flow (it is a plain call)."""
        target, args_model, env = self.target, self.model.args, self.env
        check_args, args_error = args_model.check, args_model.error

        def check(args: Any) -> Any:
            if not check_args(args):
                raise args_error(args)
            if type(args) is not dict:
                raise ValidationError(
                    "external targets are called as target(**args); args must be a dict",
                    service=env.service,
                    connection=self.name,
                    direction="args",
                )
            return args

        def handler(args: Any, to_send: Any, config: Any) -> Any:
            return target(**args)

        def refuse(error: BaseException, text: str, workflow_id: str) -> Any:
            raise error

        receiver = Receiver(
            service=env.service,
            connection=self.name,
            handler=handler,
            to_send=env.to_send,
            config=env.config,
            observer=self.observer,
            log=env.log,
            returns=self.model.returns,
            logs=False,
            time_every=1 if env.timed else 0,
        )
        deliver = compile_delivery(
            receiver, answer=None, refuse=refuse, scope=None, check=check
        ).deliver

        def call(args: Any) -> Any:
            return deliver(args, None)

        return call
