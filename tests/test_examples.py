"""The example system runs end to end (what `make demo` does)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

from conftest import REPO


def test_order_flow_demo_runs_and_every_service_exits_cleanly() -> None:
    # A session of its own, so that on a timeout the demo's services go down with it.
    demo = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "orders" / "run_demo.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = demo.communicate(timeout=45)  # within the suite's 60 s per test
    finally:
        # Whatever is left of the group (nothing, after a clean run) is stopped.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signal.SIGKILL)
        if demo.poll() is None:
            demo.communicate()
    assert demo.returncode == 0, out + err
    assert out.count(" filled at ") == 5
    assert "refused locally: trader: place.args: expected one of {'buy', 'sell'}" in out
    assert "pricing answered with an error: KeyError 'DOGE-USD'" in out
    assert "ledger: 5 fills" in out
    assert '"pricing": 0, "router": 0, "ledger": 0' in out
