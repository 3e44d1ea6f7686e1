"""What one request/reply round trip fetches cache-cold in the caller: cache lines per
trip, service_framework vs bare pyzmq + msgpack, counted by valgrind (deterministic).

Why
    With 16 client processes on two cores (``reqrep_clients.py``) each client blocks
    after every request, so its next trip runs after other processes have filled the
    caches: a client pays for every distinct cache line of code and data its trip
    touches. ``reqrep_clients.py`` shows the clients' CPU per trip, not where it goes,
    and it swings by 10% and more between runs; this count does not, so it shows a
    change to the caller's path of a few dozen lines, and (with ``--show``) which C
    functions they are in.

What is measured
    * A framework requester's ``to_send('order', ...)`` (``services/bench_load_requester.py``)
      and a bare REQ socket (pyzmq and ``msgpack.packb``/``unpackb``), each run alone
      under ``valgrind --tool=cachegrind --cache-sim=yes`` against a server in another
      process (not counted): the framework's replyer (``services/bench_replyer.py``) or
      a bare REP loop, the same payload and reply.
    * Before every trip a buffer (``--flush-mib``, larger than the simulated 1 MiB last
      level cache) is written, one byte per line; a third run does only that, and its
      counts are taken off the other two. Each side runs ``--n`` and ``3 x --n`` trips and
      the difference is divided by ``2 x --n``, which takes start-up off too.
    * Printed per trip: instructions, and last-level misses of instructions, data reads
      and data writes (the lines fetched from memory), for bare and framework.

No target: it explains ``reqrep_clients.py``. Needs ``valgrind``. Run: ``python
benchmarks/coldlines.py [--n 500] [--flush-mib 2] [--show 25]``; ``--show K`` lists the
K functions whose misses differ most between the two sides. Exits 0 after reporting; 1
if it could not run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

PAYLOAD = {"order_id": "ORD-000123", "qty": 3, "price": 101.25, "side": "buy"}
EXPECTED = {"order_id": "ORD-000123", "total": 303.75}
WARMUP = 200
CACHES = ["--I1=32768,8,64", "--D1=32768,8,64", "--LL=1048576,16,64"]
EVENTS = ("Ir", "ILmr", "DLmr", "DLmw")
KINDS = ("flush", "bare", "framework")


def servers() -> None:
    """Both servers, in this process; prints their ports, then serves until killed."""
    import zmq
    from coldpath import bare_server, serve_replyer

    _, _, endpoint = serve_replyer()
    port: list[int] = []
    bound = threading.Event()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    threading.Thread(target=bare_server, args=(ctx, port, bound), daemon=True).start()
    if not bound.wait(10):
        raise RuntimeError("the bare server did not bind")
    print(f"ready {endpoint} 127.0.0.1:{port[0]}", flush=True)
    threading.Event().wait()


def client(kind: str, endpoint: str, n: int, flush_bytes: int) -> None:
    """``n`` trips of one side, after a warm-up, each after the flush (run under valgrind)."""
    import msgpack
    import zmq

    if kind == "framework":
        from coldpath import start_requester

        to_send = start_requester(endpoint).to_send
        assert to_send is not None

        def trip() -> object:
            return to_send("order", PAYLOAD)

    elif kind == "bare":
        sock = zmq.Context().socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.connect(f"tcp://{endpoint}")
        packb, unpackb, send, recv = msgpack.packb, msgpack.unpackb, sock.send, sock.recv

        def trip() -> object:
            send(packb(PAYLOAD))
            return unpackb(recv())

    else:

        def trip() -> object:
            return EXPECTED

    for _ in range(WARMUP):
        trip()
    if trip() != EXPECTED:
        raise RuntimeError(f"{kind}: unexpected reply")
    flush = bytearray(flush_bytes)
    for _ in range(n):
        flush[::64] = flush[::64]  # every line, written back
        trip()
    os._exit(0)  # no teardown counted


def _totals(path: Path) -> dict[str, int]:
    events: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("summary:"):
            return dict(zip(events, map(int, line.split()[1:]), strict=True))
    raise RuntimeError(f"{path}: no summary line")


def _count(kind: str, endpoint: str, n: int, flush_bytes: int, work: Path) -> tuple[Path, ...]:
    outs = []
    for trips in (n, 3 * n):
        out = work / f"{kind}.{trips}.cg"
        argv = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", *CACHES]
        argv += [f"--cachegrind-out-file={out}", sys.executable, __file__, "_client"]
        argv += [kind, endpoint, str(trips), str(flush_bytes)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"{kind} under valgrind failed:\n{done.stderr[-2000:]}")
        outs.append(out)
    return tuple(outs)


def _per_trip(outs: tuple[Path, ...], n: int) -> dict[str, float]:
    few, many = (_totals(out) for out in outs)
    return {e: (many[e] - few[e]) / (2 * n) for e in EVENTS}


def _show(runs: dict[str, tuple[Path, ...]], n: int, top: int, work: Path) -> None:
    """The functions whose last-level misses differ most, framework minus bare."""
    misses: dict[str, dict[str, float]] = {}
    for kind in ("bare", "framework"):
        diff = work / f"{kind}.diff"
        with diff.open("w") as f:
            subprocess.run(["cg_diff", *map(str, runs[kind])], stdout=f, check=True)
        shown = subprocess.run(
            ["cg_annotate", "--show=ILmr,DLmr,DLmw", "--threshold=0", str(diff)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        per: dict[str, float] = {}
        for line in shown.splitlines():
            parts = re.sub(r"\(\s*-?[\d.]+%\)", "", line).split()
            if len(parts) != 4 or ":" not in parts[3] or parts[3].endswith("TOTALS"):
                continue
            try:
                numbers = [int(p.replace(",", "")) for p in parts[:3]]
            except ValueError:
                continue
            name = parts[3].rsplit("/", 1)[-1]
            per[name] = per.get(name, 0.0) + sum(numbers) / (2 * n)
        misses[kind] = per
    # The flush's own misses are the same on both sides and cancel in the difference.
    names = set(misses["bare"]) | set(misses["framework"])
    delta = {k: misses["framework"].get(k, 0.0) - misses["bare"].get(k, 0.0) for k in names}
    print(f"\nlines per trip by function (top {top} differences), framework / bare / difference:")
    for name in sorted(delta, key=lambda k: -abs(delta[k]))[:top]:
        fw, bare = misses["framework"].get(name, 0.0), misses["bare"].get(name, 0.0)
        print(f"  {fw:8.1f} {bare:8.1f} {delta[name]:+8.1f}  {name}")


def run(n: int, flush_mib: float, top: int) -> int:
    if shutil.which("valgrind") is None:
        print("coldlines.py needs valgrind (apt install valgrind)", file=sys.stderr)
        return 1
    flush_bytes = int(flush_mib * 2**20)
    serving = subprocess.Popen(
        [sys.executable, __file__, "_servers"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert serving.stdout is not None
        line = serving.stdout.readline().split()
        if not line or line[0] != "ready":
            raise RuntimeError("the servers did not start")
        endpoints = {"framework": line[1], "bare": line[2], "flush": line[2]}
        with tempfile.TemporaryDirectory(prefix="coldlines-") as tmp:
            work = Path(tmp)
            runs = {k: _count(k, endpoints[k], n, flush_bytes, work) for k in KINDS}
            per = {k: _per_trip(outs, n) for k, outs in runs.items()}
            if top:
                _show(runs, n, top, work)
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"coldlines.py could not run: {exc}", file=sys.stderr)
        return 1
    finally:
        serving.kill()
        serving.wait(10)
    print(
        f"\none round trip in the caller, caches flushed before each ({flush_mib:g} MiB), "
        f"per trip ({n} and {3 * n} trips, the flush's own counts taken off)"
    )
    print(f"  {'':<12}{'instructions':>14}{'lines: code':>13}{'data read':>11}{'written':>9}")
    lines: dict[str, float] = {}
    for kind in ("bare", "framework"):
        v = {e: per[kind][e] - per["flush"][e] for e in EVENTS}
        lines[kind] = v["ILmr"] + v["DLmr"] + v["DLmw"]
        print(
            f"  {kind:<12}{v['Ir']:>14,.0f}{v['ILmr']:>13,.0f}{v['DLmr']:>11,.0f}{v['DLmw']:>9,.0f}"
        )
    extra = lines["framework"] - lines["bare"]
    print(
        f"lines fetched per trip: framework {lines['framework']:,.0f}, bare "
        f"{lines['bare']:,.0f}, {extra:+,.0f} (no target)"
    )
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_servers":
        servers()
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="trips of the shorter run")
    parser.add_argument("--flush-mib", type=float, default=2.0, help="buffer written per trip")
    parser.add_argument("--show", type=int, default=0, help="list the top K functions")
    args = parser.parse_args()
    if args.n < 1 or args.flush_mib <= 0 or args.show < 0:
        parser.error("--n must be >= 1, --flush-mib > 0, --show >= 0")
    return run(args.n, args.flush_mib, args.show)


if __name__ == "__main__":
    sys.exit(main())
