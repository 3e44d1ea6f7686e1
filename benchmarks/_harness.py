"""Shared by the benchmarks: child processes that never outlive the run, CPU pinning,
result files, and the paired-ratio summary.

With ``PIN`` set (``--pin``) and two or more cores, processes are pinned: servers
(replyer, publisher) on one core, clients (requester, subscriber) on the other - the
same for the framework and the bare baseline. Off by default: pinning also puts each
process's zmq I/O thread on the same core as its Python thread, which changes what a
throughput benchmark measures.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
SERVICES = HERE / "services"
# The processes a benchmark starts run the interpreter it runs under, so they run the
# same installed code (a benchmark run from another checkout's venv, to compare two
# versions, measures that version on both sides).
PYTHON = sys.executable


# --------------------------------------------------------------------------- processes
class BenchError(Exception):
    """The benchmark could not run (a process died, timed out, or wrote no result)."""


def _load_prctl() -> Callable[..., int] | None:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl  # type: ignore[no-any-return]
    except (ImportError, OSError, AttributeError):
        return None


# Looked up here, in the parent: between fork and exec the child (of a process with
# threads) should do as little as possible - one foreign call, no import.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


PIN = False  # set by the benchmarks' --pin flag


def _cpu_for(role: str) -> int | None:
    if not PIN:
        return None
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) < 2:
        return None
    return cores[0] if role == "client" else cores[1]


class Proc:
    """A child process whose merged stdout/stderr is read line by line in a thread."""

    def __init__(self, name: str, argv: list[str], cwd: str, cpu: int | None = None) -> None:
        self.name = name
        self.lines: collections.deque[str] = collections.deque(maxlen=40)
        self._queue: queue.Queue[str | None] = queue.Queue()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            preexec_fn=_die_with_parent,
        )
        self.pid = self.popen.pid
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            # Servers on one core, clients on the other, the same for framework and bare.
            # Set from here, before the child starts any thread (they inherit it).
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.pid, {cpu})
        self._reader = threading.Thread(target=self._read, name=f"{name}-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_line(self, pattern: str, timeout_s: float) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{self.name}: no line matching {pattern!r} within {timeout_s}s")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                rc = self.popen.wait()
                raise BenchError(f"{self.name} exited (code {rc}) before printing {pattern!r}")
            match = regex.search(line)
            if match:
                return match

    def wait_exit(self, timeout_s: float, watch: Sequence[Proc] = ()) -> None:
        """Wait for a clean exit; fail at once if a ``watch``-ed peer process fails (a
        peer that finishes cleanly, like the bare subscriber, is fine)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                rc = self.popen.wait(0.05)
                break
            except subprocess.TimeoutExpired:
                for other in watch:
                    other_rc = other.popen.poll()
                    if other_rc not in (None, 0):
                        raise BenchError(f"{other.name} died (exit code {other_rc})") from None
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.name} did not finish within {timeout_s}s") from None
        if rc != 0:
            raise BenchError(f"{self.name} exited with code {rc}")

    def check_alive(self) -> None:
        rc = self.popen.poll()
        if rc is not None:
            raise BenchError(f"{self.name} died (exit code {rc})")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._reader.join(2)

    def tail(self) -> str:
        return "\n".join(f"    | {line}" for line in self.lines) or "    | (no output)"


class Procs:
    """Every process started; ``stop_all`` ends them (terminate, then kill)."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.all: list[Proc] = []

    def start(self, name: str, argv: list[str], role: str = "server") -> Proc:
        proc = Proc(name, argv, self.workdir, _cpu_for(role))
        self.all.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.all):
            with contextlib.suppress(Exception):
                proc.stop()

    def report_failure(self) -> None:
        for proc in self.all:
            rc = proc.popen.poll()
            state = "running" if rc is None else f"exit code {rc}"
            print(f"  -- {proc.name} (pid {proc.pid}, {state}) output tail:", file=sys.stderr)
            print(proc.tail(), file=sys.stderr)


def in_session(what: str, body: Callable[[Path, Procs], T]) -> T | None:
    """``body(workdir, procs)`` in a fresh work directory. Every process it starts is
    stopped and the directory removed afterwards; a :class:`BenchError` is reported,
    with each process's output tail, and gives ``None``."""
    with tempfile.TemporaryDirectory(prefix=f"bench_{what}_") as tmp:
        procs = Procs(tmp)
        try:
            return body(Path(tmp), procs)
        except BenchError as exc:
            print(f"{what} benchmark failed: {exc}", file=sys.stderr)
            procs.report_failure()
            return None
        finally:
            procs.stop_all()


def parser(doc: str, n_default: int, n_help: str) -> argparse.ArgumentParser:
    """The options every socket benchmark takes: ``--n``, ``--rounds``, ``--pin``."""
    made = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    made.add_argument("--n", type=int, default=n_default, help=n_help)
    made.add_argument("--rounds", type=int, default=7, help="framework/bare run pairs")
    made.add_argument(
        "--pin", action="store_true", help="pin servers and clients to separate cores"
    )
    return made


def cpu_seconds(pid: int) -> float:
    """CPU time used by every thread of ``pid`` (ns-precise schedstat, else utime+stime)."""
    try:
        total_ns = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total_ns += int(f.read().split()[0])
        return total_ns / 1e9
    except (OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_result(path: Path, who: str) -> dict[str, float]:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError) as exc:
        raise BenchError(f"{who} wrote no readable result at {path}: {exc}") from None


def cli_argv(service: str, addresses: Path, *flags: str, **config: object) -> list[str]:
    """``python -m service_framework`` for ``services/<service>``, plus ``--key value``
    config pairs."""
    argv = [PYTHON, "-m", "service_framework", "-s", str(SERVICES / service)]
    argv += ["-a", str(addresses), *flags]
    for key, value in config.items():
        argv += [f"--{key}", str(value)]
    return argv


# --------------------------------------------------------------------------- summary
def print_verdict(ratio: float, target: float, what: str = "", note: str = "") -> None:
    """The headline every benchmark ends with: ``ratio framework/bare: 0.93x ...``, the
    median of the per-round ratios against its target (``what``: what was counted, e.g.
    "end to end"; ``note``: appended after the verdict)."""
    verdict = "meets" if ratio >= target else "MISSES"
    counted = f" {what}" if what else ""
    extra = f"; {note}" if note else ""
    print(
        f"ratio framework/bare: {ratio:.2f}x{counted} (median of per-round ratios; "
        f"target >= {target}x, {verdict} it{extra})"
    )


def paired_summary(framework: Sequence[float], bare: Sequence[float]) -> tuple[float, str]:
    """The headline ratio and a line showing each round's.

    Framework and bare runs alternate, so round i of each met the same conditions; the
    median of the per-round ratios is robust to the machine speeding up or slowing down
    between rounds (a shared VM does), where a ratio of overall medians is not.
    """
    paired = [f / b for f, b in zip(framework, bare, strict=True)]
    headline = statistics.median(paired)
    of_medians = statistics.median(framework) / statistics.median(bare)
    line = (
        "  per-round ratios: "
        + " ".join(f"{p:.2f}" for p in paired)
        + f"  (ratio of the medians: {of_medians:.2f})"
    )
    return headline, line
