"""The example system runs end to end through ``service_framework up`` (what `make demo`
does)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys

import pytest

from conftest import REPO

pytest.importorskip("honcho")

# The Makefile's demo target, run by the tests' interpreter.
DEMO = [
    "up",
    "--free_ports",
    "-cl",
    "WARNING",
    "--no_colour",
    str(REPO / "examples" / "orders" / "system.toml"),
]
STARTED = re.compile(r"system\s+\| (?P<name>\S+) started \(pid=(?P<pid>\d+)\)")


def test_makefile_demo_is_up_on_the_example_topology() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "service_framework up --free_ports -cl WARNING examples/orders/system.toml" in makefile


def test_order_flow_demo_runs_and_every_service_exits_cleanly() -> None:
    # A session of its own, so that on a timeout the demo's services go down with it.
    demo = subprocess.Popen(
        [sys.executable, "-m", "service_framework", *DEMO],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = demo.communicate(timeout=45)  # within the suite's 60 s per test
    finally:
        # Whatever is left of the group (nothing, after a clean run) is stopped.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signal.SIGKILL)
        if demo.poll() is None:
            demo.communicate()
    assert demo.returncode == 0, out
    trader = "\n".join(line for line in out.splitlines() if re.match(r"\S+ trader\s+\| ", line))
    assert trader.count(" filled at ") == 5, out
    assert "refused locally: trader: place.args: expected one of {'buy', 'sell'}" in trader
    assert "pricing answered with an error: KeyError 'DOGE-USD'" in trader
    assert "ledger: 5 fills" in trader
    # The trader waited for the binders it needs, the ledger for the router's publisher.
    assert re.search(r"trader\s+\| waiting for pricing, router, ledger$", out, re.M)
    assert re.search(r"ledger\s+\| waiting for router$", out, re.M)
    assert "up: the system stopped; exit codes: pricing 0, router 0, ledger 0, trader 0" in out
    # Every service's process is gone (each ran in a session of its own).
    for found in STARTED.finditer(out):
        with pytest.raises(ProcessLookupError):
            os.kill(int(found["pid"]), 0)
