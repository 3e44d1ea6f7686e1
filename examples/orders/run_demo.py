"""Run the order-flow example: each service is its own process, started with the CLI.

    pricing  (replyer)               quotes prices
    router   (replyer, publisher,    executes orders on a simulated exchange (an
              external target)       external target) and publishes every fill
    ledger   (subscriber, replyer)   books fills into positions, answers queries
    trader   (main mode)             quotes and places orders, then checks the ledger

The services and their addresses files are in ``services/`` and ``addresses/``; to run
one by hand: ``python -m service_framework -s services/pricing.py -a addresses/pricing.json``.
This script starts them - on free ports rather than the files' fixed ones, so a run
never collides with anything - drives the trader, prints what happened, and stops
everything.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
READY = re.compile(r": ready \((?P<endpoints>.*)\)$")


def cli(name: str, addresses: Path, *flags: str) -> list[str]:
    """The command line that runs one of the example's services."""
    return [
        sys.executable,
        "-m",
        "service_framework",
        "-s",
        str(HERE / "services" / f"{name}.py"),
        "-a",
        str(addresses / f"{name}.json"),
        *flags,
    ]


class Addresses:
    """The addresses files, with the example's fixed ports replaced by free ones: each
    service that binds a port binds port 0 instead, and once it reports the port it got,
    the services that connect to it are given that one. Nothing can take a port between
    choosing it and binding it, and a run never depends on which ports are free."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.actual: dict[str, str] = {}  # example port -> the port bound in this run

    def write(self, name: str) -> None:
        text = (HERE / "addresses" / f"{name}.json").read_text()
        text = re.sub(r':(\d+)"', lambda m: f':{self.actual.get(m.group(1), "0")}"', text)
        (self.workdir / f"{name}.json").write_text(text)

    def learn(self, name: str, ready_line: str) -> None:
        """Read the ports ``name`` bound from its ``ready (conn=tcp://host:port; ...)``."""
        shipped = json.loads((HERE / "addresses" / f"{name}.json").read_text())
        found = READY.search(ready_line)
        assert found is not None, ready_line
        for part in found.group("endpoints").split("; "):
            connection, url = part.split("=", 1)
            for side in shipped.values():
                for key_address in side.get(connection, {}).values():
                    example_port = str(key_address).rsplit(":", 1)[1]
                    self.actual.setdefault(example_port, url.rsplit(":", 1)[1])


class ServiceProcess:
    """One service run with the CLI; its log lines are kept as they come."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.popen = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.log.append(line.rstrip())
            self._lines.put(line.rstrip())
        self._lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        """The first log line matching ``pattern`` (lines already seen count too)."""
        regex = re.compile(pattern)
        for line in list(self.log):
            if regex.search(line):
                return line
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(
                    f"{self.name}: no {pattern!r} within {timeout}s:\n" + "\n".join(self.log)
                ) from None
            if line is None:
                raise RuntimeError(
                    f"{self.name} exited before {pattern!r}:\n" + "\n".join(self.log)
                )
            if regex.search(line):
                return line

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
        addresses = Addresses(Path(tmp))
        try:
            for name in ("pricing", "router", "ledger"):
                addresses.write(name)
                process = ServiceProcess(name, cli(name, addresses.workdir, "-cl", "INFO"))
                started.append(process)
                addresses.learn(name, process.wait_for(rf"{name}: ready"))
            ledger = started[-1]
            # The ledger hears fills only once its subscription reaches the router.
            ledger.wait_for(r"ledger: connection 'fills' peer connected")
            print("pricing, router and ledger are up; running the trader (main mode)\n")
            addresses.write("trader")
            trader = subprocess.run(
                cli("trader", addresses.workdir, "-m", "-cl", "WARNING"),
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
