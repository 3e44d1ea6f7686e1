"""Request/reply with the CPU caches cold: round trip time, service_framework vs bare
pyzmq + msgpack, paired trip by trip in one process.

Why
    With 16 client processes on two cores (``reqrep_clients.py``) every process runs
    after others have filled the caches, so each message's code and data are fetched
    cache-cold: the framework's extra Python work per message (calls, closures, checks,
    the typed decode) costs several times what it costs warm, and more than the
    end-to-end benchmarks can resolve against their noise. This one holds the
    conditions fixed and pairs every sample, so a change of a few percent shows.

What is measured
    * Framework: a requester's ``to_send('order', ...)`` (``services/bench_load_requester.py``)
      to a replyer (``services/bench_replyer.py``) whose service loop runs in a thread of
      this process, over TCP on 127.0.0.1: validated both ways, with workflow ids.
    * Bare, same run: a REQ socket to a bare REP loop in another thread (plain pyzmq and
      ``msgpack.packb``/``unpackb``), the same payload and reply; each side has its own
      zmq context, as each service does.
    * Before every round trip a buffer (``--flush-mib``, larger than the L2 cache) is
      walked, one byte per cache line. Then one framework trip and one bare trip are
      timed, in alternating order, ``--n`` times; the figure is the ratio of the median
      bare trip to the median framework trip, and the median per-trip extra in
      microseconds. ``--flush-mib 0`` gives the same measure warm.

There is no target: it explains ``reqrep_clients.py``'s, and measures changes to the
per-message path. Run: ``python benchmarks/coldpath.py [--n 4000] [--rounds 3]
[--flush-mib 8]``. Exits 0 after reporting (numbers are not asserted).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import msgpack
import zmq

HERE = Path(__file__).resolve().parent
SERVICES = HERE / "services"
try:
    import service_framework  # noqa: F401
except ImportError:  # not installed: run against the source tree
    sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(SERVICES))  # the services import bench_models

from service_framework.runtime import RunOptions, ServiceRuntime  # noqa: E402

PAYLOAD = {"order_id": "ORD-000123", "qty": 3, "price": 101.25, "side": "buy"}
EXPECTED = {"order_id": "ORD-000123", "total": 303.75}
WARMUP = 2_000
RECV_TIMEOUT_MS = 10_000


def bare_server(
    ctx: zmq.Context[zmq.Socket[bytes]], port: list[int], ready: threading.Event
) -> None:
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    port.append(sock.bind_to_random_port("tcp://127.0.0.1"))
    ready.set()
    packb, unpackb, recv, send = msgpack.packb, msgpack.unpackb, sock.recv, sock.send
    try:
        while True:
            args = unpackb(recv())
            send(packb({"order_id": args["order_id"], "total": args["qty"] * args["price"]}))
    except zmq.ContextTerminated:
        sock.close(linger=0)


def serve_replyer() -> tuple[ServiceRuntime, threading.Thread, str]:
    """The framework's replyer, its loop in a daemon thread of this process: the
    runtime, the thread and its ``host:port``."""
    replyer = ServiceRuntime(
        SERVICES / "bench_replyer.py",
        addresses={"in": {"order": {"replyer": "127.0.0.1:0"}}, "out": {}},
        options=RunOptions(install_signals=False, stop_timeout_s=1.0),
    )
    replyer.start()
    serving = threading.Thread(target=replyer.run, daemon=True)
    serving.start()
    return replyer, serving, replyer.endpoints()["in"]["order"][0].removeprefix("tcp://")


def start_requester(endpoint: str) -> ServiceRuntime:
    """A started framework requester of the replyer at ``endpoint``."""
    requester = ServiceRuntime(
        SERVICES / "bench_load_requester.py",
        config={"windows": 0, "ready_path": "-", "go_prefix": "-", "result_prefix": "-"},
        addresses={"in": {}, "out": {"order": {"requester": endpoint}}},
        options=RunOptions(install_signals=False),
    )
    requester.start()
    return requester


def measure(n: int, rounds: int, flush_bytes: int) -> list[tuple[float, float]]:
    replyer, serving, endpoint = serve_replyer()
    requester = start_requester(endpoint)
    to_send = requester.to_send
    assert to_send is not None

    # Each side its own context, as each service has: one I/O thread per side.
    server_ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    port: list[int] = []
    bound = threading.Event()
    bare = threading.Thread(target=bare_server, args=(server_ctx, port, bound), daemon=True)
    bare.start()
    if not bound.wait(10):
        raise RuntimeError("the bare server did not bind")
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
    sock.connect(f"tcp://127.0.0.1:{port[0]}")
    packb, unpackb, recv, send = msgpack.packb, msgpack.unpackb, sock.recv, sock.send

    def framework_trip() -> object:
        return to_send("order", PAYLOAD)

    def bare_trip() -> object:
        send(packb(PAYLOAD))
        return unpackb(recv())

    flush = bytearray(flush_bytes)
    now = time.perf_counter_ns
    results: list[tuple[float, float]] = []
    try:
        for _ in range(WARMUP):
            framework_trip()
            bare_trip()
        if framework_trip() != EXPECTED or bare_trip() != EXPECTED:
            raise RuntimeError("unexpected reply")
        for r in range(1, rounds + 1):
            fw_ns: list[int] = []
            bare_ns: list[int] = []
            for i in range(n):
                pair = (
                    ((framework_trip, fw_ns), (bare_trip, bare_ns))
                    if i & 1
                    else ((bare_trip, bare_ns), (framework_trip, fw_ns))
                )
                for trip, into in pair:
                    if flush_bytes:
                        flush[::64] = flush[::64]  # every cache line, written back
                    started = now()
                    trip()
                    into.append(now() - started)
            fw, b = statistics.median(fw_ns) / 1e3, statistics.median(bare_ns) / 1e3
            results.append((fw, b))
            print(
                f"  round {r}/{rounds}: framework {fw:7.1f} us   bare {b:7.1f} us   "
                f"ratio {b / fw:.3f}",
                flush=True,
            )
    finally:
        sock.close(linger=0)
        requester.close()
        replyer.stop()
        serving.join(10)
        ctx.term()
        server_ctx.term()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4_000, help="paired round trips per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each: --n pairs)")
    parser.add_argument("--flush-mib", type=float, default=8.0, help="buffer walked per trip")
    args = parser.parse_args()
    if args.n < 1 or args.rounds < 1 or args.flush_mib < 0:
        parser.error("--n and --rounds must be >= 1, --flush-mib >= 0")
    flush = int(args.flush_mib * 1024 * 1024)
    state = f"caches flushed ({args.flush_mib:g} MiB walked) before each" if flush else "warm"
    print(f"request/reply in one process, {state} round trip ({args.n:,} pairs per round)")
    results = measure(args.n, args.rounds, flush)
    fw = statistics.median(f for f, _ in results)
    bare = statistics.median(b for _, b in results)
    ratios = [b / f for f, b in results]
    print(
        f"median round trip: framework {fw:.1f} us, bare {bare:.1f} us, "
        f"framework extra {fw - bare:.1f} us"
    )
    print(
        f"ratio bare/framework: {statistics.median(ratios):.3f}x "
        f"(median of rounds; {min(ratios):.3f}-{max(ratios):.3f}; no target)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
