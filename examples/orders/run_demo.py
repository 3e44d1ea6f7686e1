"""Run the order-flow example: each service is its own process, started with the CLI.

    pricing  (replyer)               quotes prices
    router   (replyer, publisher,    executes orders on a simulated exchange (an
              external target)       external target) and publishes every fill
    ledger   (subscriber, replyer)   books fills into positions, answers queries
    trader   (main mode)             quotes and places orders, then checks the ledger

The services and their addresses files are in ``services/`` and ``addresses/``; to run
one by hand: ``python -m service_framework -s services/pricing.py -a addresses/pricing.json``.
This script starts them, drives the trader, prints what happened, and stops everything.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        # As libzmq binds: a port held only by TIME_WAIT connections (a previous run) is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def addresses_dir(workdir: Path) -> Path:
    """The addresses files, with every port moved to a free one if any is taken."""
    texts = {path.name: path.read_text() for path in (HERE / "addresses").glob("*.json")}
    ports = sorted({int(p) for text in texts.values() for p in re.findall(r":(\d+)\"", text)})
    if all(port_is_free(port) for port in ports):
        return HERE / "addresses"
    moved = {port: free_port() for port in ports}
    print(f"(some example ports are busy; using {sorted(moved.values())} instead)")
    for name, text in texts.items():
        for old, new in moved.items():
            text = text.replace(f':{old}"', f':{new}"')
        (workdir / name).write_text(text)
    return workdir


class ServiceProcess:
    def __init__(self, name: str, addresses: Path, *extra: str) -> None:
        self.name = name
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        self.popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service_framework",
                "-s",
                str(HERE / "services" / f"{name}.py"),
                "-a",
                str(addresses / f"{name}.json"),
                "-cl",
                "INFO",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.put(line.rstrip())
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> None:
        """Wait for a log line matching ``pattern`` (lines already seen count too)."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        if any(regex.search(line) for line in self.log):
            return
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(
                    f"{self.name} exited before {pattern!r}:\n" + "\n".join(self.log)
                )
            self.log.append(line)
            if regex.search(line):
                return
        raise RuntimeError(
            f"{self.name}: no {pattern!r} within {timeout}s:\n" + "\n".join(self.log)
        )

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(5)


def main() -> int:
    started: list[ServiceProcess] = []
    with tempfile.TemporaryDirectory() as tmp:
        addresses = addresses_dir(Path(tmp))
        try:
            for name in ("pricing", "router", "ledger"):
                process = ServiceProcess(name, addresses)
                started.append(process)
                process.wait_for(rf"{name}: ready")
            # The ledger hears fills only once its subscription reaches the router.
            started[-1].wait_for(r"ledger: connection 'fills' peer connected")
            print("pricing, router and ledger are up; running the trader (main mode)\n")
            trader = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "service_framework",
                    "-s",
                    str(HERE / "services" / "trader.py"),
                    "-a",
                    str(addresses / "trader.json"),
                    "-m",
                    "-cl",
                    "WARNING",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            print(trader.stdout, end="")
            if trader.returncode != 0:
                print(trader.stderr, file=sys.stderr)
                print(f"\ntrader exited with {trader.returncode}", file=sys.stderr)
                return 1
        finally:
            codes = {process.name: process.stop() for process in started}
    print(f"\nstopped with SIGTERM: {json.dumps(codes)}")
    if any(codes.values()):
        for process in started:
            print(f"--- {process.name} log ---\n" + "\n".join(process.log), file=sys.stderr)
        return 1
    print("demo finished: every service exited cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
