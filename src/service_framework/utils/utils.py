"""0.0.20 compatibility: the helpers of ``service_framework.utils.utils``.

Same names, arguments and results as 0.0.20, so a user's tests that load services with
``import_python_file_from_cwd`` and service files that call ``add_sig_handler`` keep
working. New code has better tools: ``Service`` and ``InlineServices`` take paths, and
``sigint_handler``/``sigterm_handler`` hooks receive ``to_send`` and the config.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import Any

from ..loader import load_module

__all__ = [
    "add_sig_handler",
    "convert_path_to_import",
    "get_json_from_rel_path",
    "import_python_file_from_cwd",
    "import_python_file_from_module",
    "snake_case_to_capital_case",
]

SignalFunction = Callable[[int, FrameType | None], Any]


def add_sig_handler(new_handler_func: SignalFunction, is_sigint: bool = True) -> None:
    """Run ``new_handler_func(signum, frame)`` on SIGINT (or SIGTERM with
    ``is_sigint=False``), then whatever handled that signal before.

    Chaining keeps earlier handlers working: with Python's default SIGINT handler the
    process still gets ``KeyboardInterrupt`` after the new function ran. Where the
    previous disposition is not a Python function, the chain ends the way it would have:
    ``SIG_DFL`` is restored and the signal raised again (SIGTERM then ends the process
    as it would have), ``SIG_IGN`` (or a handler not set from Python) does nothing more.
    0.0.20 called the previous handler unconditionally, so there a non-function
    disposition turned into a ``TypeError`` inside the handler.
    """
    signum = signal.SIGINT if is_sigint else signal.SIGTERM
    previous = signal.getsignal(signum)

    def chained(received: int, frame: FrameType | None) -> None:
        new_handler_func(received, frame)
        if callable(previous):
            previous(received, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(received, signal.SIG_DFL)
            os.kill(os.getpid(), received)

    signal.signal(signum, chained)


def convert_path_to_import(path: str) -> str:
    """A relative file path as a dotted import name, as 0.0.20 computed it:
    ``'./folder/file.py'`` -> ``'folder.file'``, ``'../file.py'`` -> ``'..file'``.

    The last three characters (``.py``) are dropped whatever they are.
    """
    if len(path) > 3 and path.startswith("./"):
        path = path[2:]
    # '/../' and a leading '../' both become the '..' of a relative import.
    path = path.replace("/../", "..").replace("../", "..")
    return path[:-3].replace("/", ".")


def get_json_from_rel_path(rel_path: str | os.PathLike[str] | None) -> Any:
    """The JSON document at ``rel_path`` (relative to the working directory), or ``{}``
    when no path is given. Errors are the builtin ones (``FileNotFoundError``,
    ``json.JSONDecodeError``), as in 0.0.20."""
    if not rel_path:
        return {}
    with open(rel_path, encoding="utf-8") as file:
        return json.load(file)


def import_python_file_from_cwd(path: str | os.PathLike[str]) -> ModuleType:
    """Import the ``.py`` file at ``path`` (relative to the working directory).

    The file is imported by its dotted name (``./services/echo.py`` -> ``services.echo``)
    whenever that name leads to it, as in 0.0.20, so a test and the framework share one
    module object; other files (outside the working directory, say) are loaded by
    location rather than failing. A missing file or a failing import raises
    :class:`~service_framework.errors.StartupError` (a ``ValueError``) naming the file.
    """
    return load_module(path)


def import_python_file_from_module(module_path: str) -> ModuleType:
    """Import a module by its dotted name (``'package.folder.file'``)."""
    return importlib.import_module(module_path)


def snake_case_to_capital_case(string: str) -> str:
    """``'this_is_an_example'`` -> ``'ThisIsAnExample'`` (each part ``str.capitalize``d)."""
    return "".join(part.capitalize() for part in string.split("_"))
