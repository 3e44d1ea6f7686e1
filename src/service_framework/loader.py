"""Load a service module and run its start-up hooks.

Shared by the socket runtime and :class:`~service_framework.InlineServices`, so a
service is configured, validated and modelled the same way however it runs.

Hook pipeline (SPEC section 1): ``setup_config`` -> config conversion and validation ->
``setup_connection_models`` -> ``setup_connections`` -> model parsing. The runtime then
adds ``setup_addresses``, connections, signal handlers, ``init_function`` and the loop.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .config import coerce_strings, flatten_seed_shape
from .errors import HookError, StartupError
from .models import ServiceModels, parse_config_model, parse_connection_models

__all__ = ["PreparedService", "call_hook", "load_module", "prepare_service", "service_name"]


def load_module(source: str | os.PathLike[str] | ModuleType) -> ModuleType:
    """The service module for a ``.py`` path (relative to the working directory) or a
    module object.

    Like 0.0.20, a file under the working directory is imported by its dotted name
    (``./services/pricing.py`` -> ``services.pricing``) when that name leads to the same
    file, so the service, its tests and its siblings share one module object. Other
    files are loaded by location. The working directory and the file's own directory
    are on ``sys.path`` so the service can import its neighbours.
    """
    if isinstance(source, ModuleType):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise StartupError(
            f"a service is a .py path or a module, got {type(source).__name__}: {source!r}"
        )
    path = Path(source)
    if not path.is_file():
        raise StartupError(f"service file not found: {os.fspath(source)}")
    if path.suffix != ".py":
        raise StartupError(f"service file must be a .py file: {os.fspath(source)}")
    path = path.resolve()
    for entry in (os.getcwd(), str(path.parent)):
        if entry not in sys.path:
            sys.path.append(entry)
    try:
        dotted = _dotted_name(path)
        if dotted is not None:
            return importlib.import_module(dotted)
        return _load_by_location(path)
    except StartupError:
        raise
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise StartupError(
            f"cannot import service file {os.fspath(source)}: {type(exc).__name__}: {exc}"
            f"{_install_hint(exc)}"
        ) from exc


# Optional extras a service module may need, by the top-level module it imports.
_EXTRAS = {"numpy": "numpy"}


def _install_hint(exc: BaseException) -> str:
    """How to install what a failed import was missing, when it is one of our extras."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return ""
    extra = _EXTRAS.get(exc.name.partition(".")[0])
    if extra is None:
        return ""
    return f" (install it with: pip install 'service-framework[{extra}]')"


def _dotted_name(path: Path) -> str | None:
    """The dotted import name leading to ``path`` from the working directory, if any."""
    try:
        relative = path.relative_to(Path.cwd().resolve())
    except ValueError:
        return None
    parts = [*relative.parent.parts, relative.stem]
    if not all(part.isidentifier() for part in parts):
        return None
    dotted = ".".join(parts)
    existing = sys.modules.get(dotted)
    if existing is not None:
        return dotted if _same_file(existing, path) else None
    try:
        spec = importlib.util.find_spec(dotted)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not _same_path(spec.origin, path):
        return None
    return dotted


def _same_file(module: ModuleType, path: Path) -> bool:
    origin = getattr(module, "__file__", None)
    return origin is not None and _same_path(origin, path)


def _same_path(a: str, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _load_by_location(path: Path) -> ModuleType:
    name = path.stem if path.stem.isidentifier() else "service"
    base, n = name, 1
    while name in sys.modules and not _same_file(sys.modules[name], path):
        n += 1
        name = f"{base}_{n}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise StartupError(f"cannot load service file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def service_name(module: ModuleType) -> str:
    """A service's name in logs and errors: its file's name without ``.py`` (or, for a
    module without a file, the last part of its dotted name)."""
    file = getattr(module, "__file__", None)
    if file:
        return Path(file).stem
    return module.__name__.rsplit(".", 1)[-1]


def call_hook(service: str, module: ModuleType, hook: str, *args: Any) -> Any:
    """Call ``module.<hook>(*args)``; an exception becomes a :class:`HookError`."""
    try:
        return getattr(module, hook)(*args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except StartupError:
        raise
    except Exception as exc:
        raise HookError(f"{service}: {hook} raised {type(exc).__name__}: {exc}") from exc


def _expect_mapping(service: str, hook: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise HookError(
            f"{service}: {hook} must return a dict, but returned {type(value).__name__}: "
            f"{value!r:.200}"
        )
    return value


@dataclass(frozen=True, eq=False)
class PreparedService:
    """A loaded service whose config is validated and whose models are parsed."""

    name: str
    module: ModuleType
    config: dict[str, Any]
    models: ServiceModels

    def __repr__(self) -> str:
        models = self.models
        return (
            f"<PreparedService {self.name} in={list(models.inbound)} out={list(models.outbound)}>"
        )


def prepare_service(
    module: ModuleType,
    *,
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    cli_strings: Mapping[str, str] | None = None,
    for_wire: bool = True,
) -> PreparedService:
    """Run the config and model hooks and parse everything.

    ``setup_config`` runs first when the module defines it. With a ``config_model`` the
    result is converted and validated; without one it is passed through unvalidated.
    ``cli_strings`` are the config values that came from the command line or the
    environment as strings (converted where ``config_model`` declares another type).
    """
    service = name or service_name(module)
    merged = flatten_seed_shape(config or {})
    validator = None
    if hasattr(module, "config_model"):
        validator = parse_config_model(service, module.config_model)
    # setup_config runs whenever the module defines it, config_model or not (SPEC 5;
    # 0.0.20 ran it only with a config_model, and its own inline example relied on more).
    if hasattr(module, "setup_config"):
        result = _expect_mapping(
            service, "setup_config", call_hook(service, module, "setup_config", merged)
        )
        merged = {**merged, **flatten_seed_shape(result)}
    if validator is not None:
        if cli_strings:
            merged = coerce_strings(service, merged, cli_strings, validator.node)
        validator(merged)
    # Without a config_model the config is the service's own business: passed through
    # unvalidated, command-line strings left as strings.
    models_source: Any = getattr(module, "connection_models", {})
    if hasattr(module, "setup_connection_models"):
        models_source = _expect_mapping(
            service,
            "setup_connection_models",
            call_hook(service, module, "setup_connection_models", models_source, merged),
        )
    extra: Mapping[str, Any] = {}
    if hasattr(module, "setup_connections"):
        extra = _expect_mapping(
            service, "setup_connections", call_hook(service, module, "setup_connections", merged)
        )
    models = parse_connection_models(
        service,
        models_source,
        extra_creation_arguments=extra,
        namespace=vars(module),
        for_wire=for_wire,
    )
    return PreparedService(service, module, merged, dataclasses.replace(models, config=validator))
