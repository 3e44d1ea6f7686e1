"""The example system runs end to end (what `make demo` does)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_order_flow_demo_runs_and_every_service_exits_cleanly() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "orders" / "run_demo.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count(" filled at ") == 5
    assert "refused locally: trader: place.args: expected one of {'buy', 'sell'}" in out
    assert "pricing answered with an error: KeyError 'DOGE-USD'" in out
    assert "ledger: 5 fills" in out
    assert '"pricing": 0, "router": 0, "ledger": 0' in out
