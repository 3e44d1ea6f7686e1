"""numpy array round trips per second: service_framework vs bare pyzmq sending the buffer.

What is measured
    * Framework: ``services/bench_array_replyer.py`` (service loop) and
      ``services/bench_array_requester.py`` (main mode), both started with
      ``python -m service_framework`` on 127.0.0.1. The requester times ``--n`` calls of
      ``to_send('array', {'data': <float64 array of --size bytes>})``; the replyer sends
      the array back. Both directions are validated, carry workflow ids, and travel as
      the framework's array extension type (dtype, shape, bytes); each side receives a
      writable array of its own.
    * Bare baseline, same run, same array, same N: a REQ and a REP process using plain
      pyzmq: the client sends the array's buffer, the server sends back the bytes it got,
      the client views them with ``numpy.frombuffer`` (no dtype or shape travels, no
      validation, a read-only view).
    * Framework and bare runs alternate for ``--rounds`` rounds; the headline is the
      median of the per-round ratios.

Target: framework / bare >= 0.7x.

Run: ``python benchmarks/ndarray.py [--n 300] [--rounds 5] [--size 1048576]``. Every
process it starts is stopped on exit. Exits 0 after reporting (numbers are not asserted);
1 if the benchmark itself could not run.
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
    Procs,
    cli_argv,
    cpu_seconds,
    in_session,
    paired_summary,
    read_result,
)

TARGET_RATIO = 0.7
START_TIMEOUT_S = 20.0


# --------------------------------------------------------------------------- bare workers
def bare_server() -> None:
    import zmq

    sock = zmq.Context().socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(f"bare_server: ready port={port}", flush=True)
    recv, send = sock.recv, sock.send
    while True:
        send(recv())


def bare_client(port: str, n_text: str, warmup_text: str, size_text: str, result: str) -> None:
    import numpy as np
    import zmq

    n, warmup = int(n_text), int(warmup_text)
    sock = zmq.Context().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(f"tcp://127.0.0.1:{port}")
    array = np.random.default_rng(1).random(int(size_text) // 8)
    recv, send, frombuffer = sock.recv, sock.send, np.frombuffer
    for _ in range(warmup):
        send(array)
        frombuffer(recv(), np.float64)
    perf_counter = time.perf_counter
    cpu_started = time.process_time()
    started = perf_counter()
    for _ in range(n):
        send(array)
        reply = frombuffer(recv(), np.float64)
    seconds = perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    if not np.array_equal(reply, array):
        raise RuntimeError("the array came back changed")
    with open(result, "w") as f:
        json.dump({"n": n, "seconds": seconds, "rate": n / seconds, "cpu_s": cpu_s}, f)


# --------------------------------------------------------------------------- benchmark
READY = r"ready \(.*array=tcp://127\.0\.0\.1:(\d+)"
BARE_READY = r"bare_server: ready port=(\d+)"


def measure(
    work: Path, procs: Procs, n: int, rounds: int, warmup: int, size: int
) -> dict[str, list[dict[str, float]]]:
    client_timeout = 60.0 + n / 20  # generous: even 20 round trips/s finishes
    results: dict[str, list[dict[str, float]]] = {"framework": [], "bare": []}
    replyer_addresses = work / "replyer_addresses.json"
    replyer_addresses.write_text(
        json.dumps({"in": {"array": {"replyer": "127.0.0.1:0"}}, "out": {}})
    )
    replyer = procs.start(
        "framework replyer",
        cli_argv("bench_array_replyer.py", replyer_addresses, "-cl", "INFO"),
    )
    port = replyer.wait_for_line(READY, START_TIMEOUT_S).group(1)
    requester_addresses = work / "requester_addresses.json"
    requester_addresses.write_text(
        json.dumps({"in": {}, "out": {"array": {"requester": f"127.0.0.1:{port}"}}})
    )
    bare_server_proc = procs.start("bare server", [PYTHON, __file__, "_bare_server"])
    bare_port = bare_server_proc.wait_for_line(BARE_READY, START_TIMEOUT_S).group(1)
    for i in range(1, rounds + 1):
        for kind in ("framework", "bare"):
            result = work / f"{kind}_{i}.json"
            if kind == "framework":
                server, name = replyer, f"framework requester (round {i})"
                argv = cli_argv(
                    "bench_array_requester.py",
                    requester_addresses,
                    "-m",
                    "-cl",
                    "WARNING",
                    n=n,
                    warmup=warmup,
                    size_bytes=size,
                    result_path=result,
                )
            else:
                server, name = bare_server_proc, f"bare client (round {i})"
                argv = [PYTHON, __file__, "_bare_client", bare_port, str(n), str(warmup)]
                argv += [str(size), str(result)]
            server_cpu = cpu_seconds(server.pid)
            client = procs.start(name, argv, role="client")
            client.wait_exit(client_timeout, watch=[server])
            server.check_alive()
            data = read_result(result, name)
            data["server_cpu_s"] = cpu_seconds(server.pid) - server_cpu
            results[kind].append(data)
        print(
            f"  round {i}/{rounds}: framework {results['framework'][-1]['rate']:>8,.0f}/s   "
            f"bare {results['bare'][-1]['rate']:>8,.0f}/s",
            flush=True,
        )
    return results


def cpu_per_trip(result: dict[str, float], n: int, warmup: int) -> float:
    """Client CPU (timed loop) plus server CPU (sampled around the whole client run, so
    per round trip of warm-up and timed ones alike), in microseconds."""
    return 1e6 * (result["cpu_s"] / n + result["server_cpu_s"] / (n + warmup))


def run(n: int, rounds: int, warmup: int, size: int) -> int:
    load_before = os.getloadavg()[0]
    results = in_session(
        "ndarray", lambda work, procs: measure(work, procs, n, rounds, warmup, size)
    )
    if results is None:
        return 1
    print()
    print(
        f"float64 array round trips per second ({size:,} bytes each way, N={n:,}, "
        f"warmup {warmup:,}, {rounds} rounds)"
    )
    print(
        f"  {'':<30}{'median/s':>10}{'min/s':>10}{'max/s':>10}{'us/trip':>10}{'MB/s':>9}"
        f"{'CPU/trip':>11}"
    )
    labels = {"framework": "framework (CLI processes)", "bare": "bare pyzmq, raw buffer"}
    for kind, runs in results.items():
        rates = [r["rate"] for r in runs]
        median = statistics.median(rates)
        cpu_us = statistics.median(cpu_per_trip(r, n, warmup) for r in runs)
        print(
            f"  {labels[kind]:<30}{median:>10,.0f}{min(rates):>10,.0f}{max(rates):>10,.0f}"
            f"{1e6 / median:>10.0f}{2 * size * median / 1e6:>9,.0f}{cpu_us:>8,.0f} us"
        )
    print(
        "  (CPU/trip: client and server process CPU time per round trip, all threads; far "
        "less disturbed by other load than wall time)"
    )
    print(f"  load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    ratio, rounds_line = paired_summary(
        [r["rate"] for r in results["framework"]], [r["rate"] for r in results["bare"]]
    )
    print(rounds_line)
    _harness.print_verdict(ratio, TARGET_RATIO)
    cpu_ratio, cpu_line = paired_summary(
        [1 / cpu_per_trip(r, n, warmup) for r in results["framework"]],
        [1 / cpu_per_trip(r, n, warmup) for r in results["bare"]],
    )
    print(cpu_line)
    print(f"CPU ratio bare/framework: {cpu_ratio:.2f}x (round trips per CPU second)")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_bare_server":
        bare_server()
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_bare_client":
        bare_client(*sys.argv[2:7])
        return 0
    parser = _harness.parser(__doc__, 300, "timed round trips per run")
    parser.add_argument("--warmup", type=int, default=30, help="untimed round trips first")
    parser.add_argument("--size", type=int, default=1 << 20, help="array bytes (float64)")
    args = parser.parse_args()
    _harness.PIN = args.pin
    if args.n < 1 or args.rounds < 1 or args.warmup < 0 or args.size < 8:
        parser.error("--n and --rounds must be >= 1, --warmup >= 0, --size >= 8")
    return run(args.n, args.rounds, args.warmup, args.size)


if __name__ == "__main__":
    sys.exit(main())
