"""Request/reply round trips per second: service_framework vs bare pyzmq + msgpack.

What is measured
    * Framework: ``services/bench_replyer.py`` (service loop) and
      ``services/bench_requester.py`` (main mode), both started with
      ``python -m service_framework`` as separate processes on 127.0.0.1. The requester
      does ``--warmup`` untimed round trips, then times ``--n`` calls of
      ``to_send('order', {'order_id', 'qty', 'price', 'side'})``, each answered with
      ``{'order_id', 'total'}`` - validated both ways, with workflow ids, as in production.
    * Bare baseline, same run, same payload, same N: a REQ and a REP process using plain
      pyzmq and ``msgpack.packb``/``unpackb`` (server: recv, unpackb, build the reply
      dict, packb, send; client: packb, send, recv, unpackb).
    * Framework and bare runs alternate for ``--rounds`` rounds; the headline is the median
      of the per-round ratios (each round's pair met the same machine conditions).
    * CPU per round trip of client and server (process CPU time, all threads, libzmq's
      I/O thread included). On a small machine throughput tracks the total, and CPU time
      is far less disturbed by other load than wall time, so it shows where cost goes.
    * Idle CPU of the replyer: CPU time it uses over ~2 s while up and idle.

Targets
    * framework / bare >= 0.9x (0.0.20 reached 0.35x)
    * idle replyer CPU ~0 %

Run: ``python benchmarks/reqrep.py [--n 10000] [--rounds 7] [--warmup 1000]``. Every
process it starts is stopped on exit. Exits 0 after reporting (numbers are not
asserted); 1 if the benchmark itself could not run (with the failing process's output).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import _harness
from _harness import (
    PYTHON,
    Proc,
    Procs,
    cli_argv,
    cpu_seconds,
    in_session,
    paired_summary,
    read_result,
)

TARGET_RATIO = 0.9
PAYLOAD = {"order_id": "ORD-000123", "qty": 3, "price": 101.25, "side": "buy"}
START_TIMEOUT_S = 20.0


def idle_cpu_percent(proc: Proc, seconds: float = 2.0) -> float:
    proc.check_alive()
    cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
    time.sleep(seconds)  # the measurement window itself, not a readiness guess
    cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
    proc.check_alive()
    return 100.0 * (cpu1 - cpu0) / (t1 - t0)


# --------------------------------------------------------------------------- bare workers
def bare_server(framing: str = "plain") -> None:
    """``framing`` ``envelope``: requests and replies in the framework's envelopes (the
    same bytes on the wire as the framework's, without its checks), as
    ``reqrep_clients.py --bare-framing envelope`` sends them."""
    import msgpack
    import zmq

    sock = zmq.Context().socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(f"bare_server: ready port={port}", flush=True)
    packb, unpackb, recv, send = msgpack.packb, msgpack.unpackb, sock.recv, sock.send
    if framing == "envelope":
        while True:
            request = unpackb(recv())
            args = request["args"]
            reply = {"order_id": args["order_id"], "total": args["qty"] * args["price"]}
            send(packb({"v": 1, "workflow_id": request["workflow_id"], "return_args": reply}))
    while True:
        args = unpackb(recv())
        send(packb({"order_id": args["order_id"], "total": args["qty"] * args["price"]}))


def bare_client(port: str, n_text: str, warmup_text: str, result_path: str) -> None:
    import msgpack
    import zmq

    n, warmup = int(n_text), int(warmup_text)
    sock = zmq.Context().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(f"tcp://127.0.0.1:{port}")
    packb, unpackb, recv, send = msgpack.packb, msgpack.unpackb, sock.recv, sock.send
    payload = dict(PAYLOAD)
    for _ in range(warmup):
        send(packb(payload))
        unpackb(recv())
    perf_counter = time.perf_counter
    cpu_started = time.process_time()
    started = perf_counter()
    for _ in range(n):
        send(packb(payload))
        reply = unpackb(recv())
    seconds = perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    if reply != {"order_id": "ORD-000123", "total": 303.75}:
        raise RuntimeError(f"unexpected reply {reply!r}")
    with open(result_path, "w") as f:
        json.dump({"n": n, "seconds": seconds, "rate": n / seconds, "cpu_s": cpu_s}, f)


# --------------------------------------------------------------------------- benchmark
READY = r"ready \(.*order=tcp://127\.0\.0\.1:(\d+)"
BARE_READY = r"bare_server: ready port=(\d+)"


Results = dict[str, list[dict[str, float]]]


def measure(work: Path, procs: Procs, n: int, rounds: int, warmup: int) -> tuple[Results, float]:
    """Every round's results per kind, and the idle replyer's CPU share."""
    client_timeout = 30.0 + n / 500  # generous: even 500 round trips/s finishes
    results: Results = {"framework": [], "bare": []}
    replyer_addresses = work / "replyer_addresses.json"
    replyer_addresses.write_text(
        json.dumps({"in": {"order": {"replyer": "127.0.0.1:0"}}, "out": {}})
    )
    # INFO only for the ready line: the replyer logs nothing per message at INFO.
    replyer = procs.start(
        "framework replyer", cli_argv("bench_replyer.py", replyer_addresses, "-cl", "INFO")
    )
    port = replyer.wait_for_line(READY, START_TIMEOUT_S).group(1)
    requester_addresses = work / "requester_addresses.json"
    requester_addresses.write_text(
        json.dumps({"in": {}, "out": {"order": {"requester": f"127.0.0.1:{port}"}}})
    )
    bare_server_proc = procs.start("bare server", [PYTHON, __file__, "_bare_server"])
    bare_port = bare_server_proc.wait_for_line(BARE_READY, START_TIMEOUT_S).group(1)

    idle = idle_cpu_percent(replyer)

    for i in range(1, rounds + 1):
        for kind in ("framework", "bare"):
            result = work / f"{kind}_{i}.json"
            if kind == "framework":
                server = replyer
                name = f"framework requester (round {i})"
                argv = cli_argv(
                    "bench_requester.py",
                    requester_addresses,
                    "-m",
                    "-cl",
                    "WARNING",
                    n=n,
                    warmup=warmup,
                    result_path=result,
                )
            else:
                server = bare_server_proc
                name = f"bare client (round {i})"
                argv = [PYTHON, __file__, "_bare_client", bare_port, str(n), str(warmup)]
                argv += [str(result)]
            server_cpu = cpu_seconds(server.pid)
            client = procs.start(name, argv, role="client")
            client.wait_exit(client_timeout, watch=[server])
            server.check_alive()
            server_cpu = cpu_seconds(server.pid) - server_cpu
            data = read_result(result, name)
            data["server_cpu_s"] = server_cpu
            results[kind].append(data)
        print(
            f"  round {i}/{rounds}: framework {results['framework'][-1]['rate']:>9,.0f}/s   "
            f"bare {results['bare'][-1]['rate']:>9,.0f}/s",
            flush=True,
        )
    return results, idle


def run(n: int, rounds: int, warmup: int) -> int:
    load_before = os.getloadavg()[0]
    measured = in_session("reqrep", lambda work, procs: measure(work, procs, n, rounds, warmup))
    if measured is None:
        return 1
    results, idle = measured
    medians = {k: statistics.median(r["rate"] for r in runs) for k, runs in results.items()}
    print()
    print(f"request/reply round trips per second (N={n:,}, warmup {warmup:,}, {rounds} rounds)")
    print(
        f"  {'':<26}{'median/s':>10}{'min/s':>10}{'max/s':>10}{'us/trip':>9}"
        f"{'client CPU':>12}{'server CPU':>12}"
    )
    labels = {"framework": "framework (CLI processes)", "bare": "bare pyzmq + msgpack"}
    for kind, runs in results.items():
        rates = [r["rate"] for r in runs]
        client_us = statistics.median(1e6 * r["cpu_s"] / n for r in runs)
        # The server's CPU is sampled around the whole client run, warm-up included.
        server_us = statistics.median(1e6 * r["server_cpu_s"] / (n + warmup) for r in runs)
        print(
            f"  {labels[kind]:<26}{medians[kind]:>10,.0f}{min(rates):>10,.0f}{max(rates):>10,.0f}"
            f"{1e6 / medians[kind]:>9.1f}{client_us:>9.1f} us{server_us:>9.1f} us"
        )
    print("  (client/server CPU: process CPU time per round trip, all threads, median)")
    print(f"  idle replyer CPU over 2 s: {idle:.2f} %  (target ~0 %)")
    print(f"  load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    ratio, rounds_line = paired_summary(
        [r["rate"] for r in results["framework"]], [r["rate"] for r in results["bare"]]
    )
    print(rounds_line)
    _harness.print_verdict(ratio, TARGET_RATIO, note="0.0.20 reached 0.35x")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_bare_server":
        bare_server(*sys.argv[2:3])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_bare_client":
        bare_client(*sys.argv[2:6])
        return 0
    parser = _harness.parser(__doc__, 10_000, "timed round trips per run")
    parser.add_argument("--warmup", type=int, default=1_000, help="untimed round trips first")
    args = parser.parse_args()
    _harness.PIN = args.pin
    if args.n < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--n and --rounds must be >= 1, --warmup >= 0")
    return run(args.n, args.rounds, args.warmup)


if __name__ == "__main__":
    sys.exit(main())
