"""Many clients, one replyer: aggregate round trips per second, service_framework vs bare
pyzmq + msgpack.

What is measured
    * Framework: one ``services/bench_replyer.py`` (service loop) and ``--n``
      ``services/bench_load_requester.py`` processes (main mode), all started with
      ``python -m service_framework`` on 127.0.0.1, each client making one
      ``to_send('order', ...)`` call after another (validated both ways, with workflow
      ids), as ``reqrep.py`` does with one.
    * Bare baseline, same run: the bare REP server of ``reqrep.py`` and as many bare REQ
      client processes (plain pyzmq and ``msgpack.packb``/``unpackb``).
    * Every process is started once. Then timed windows alternate, framework then bare,
      ``--rounds`` times: the benchmark names a start (a moment just ahead) and a length
      (``--seconds``), every client of that side makes round trips from the start until
      the window ends, and the figure is the sum of the clients' rates - the replyer's
      throughput with all of them at once. The clients of the other side wait, idle.
      The headline is the median of the per-round ratios (each round's pair met the
      same machine conditions). The slowest and the fastest client are shown too (REP
      serves its peers in turn, so they should be close).
    * CPU per round trip: the CPU time (all threads) of the side's server and clients
      over its window (each client times its own), divided by its round trips. On a
      small machine the throughput tracks it, and it is far less disturbed by other
      load than wall time.

Target
    * framework / bare >= 0.9x (aggregate round trips per second, 16 clients)

Diagnostic: ``--bare-framing envelope`` has the bare side send the framework's envelopes
(``{"v", "workflow_id", "args"}``, replies ``{"v", "workflow_id", "return_args"}``): the
framework's bytes on the wire without its checks, workflow scope or counters, so the
ratio shows what the framework's Python costs apart from its frames being larger.

Run: ``python benchmarks/reqrep_clients.py [--n 16] [--seconds 1] [--rounds 7]
[--bare-framing plain|envelope]`` (``--n``: client processes per side).
Every process it starts is stopped on exit. Exits 0 after reporting (numbers are not
asserted); 1 if the benchmark itself could not run (with the failing process's output).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import _harness
from _harness import (
    PYTHON,
    BenchError,
    Proc,
    Procs,
    cli_argv,
    cpu_seconds,
    in_session,
    paired_summary,
    read_result,
)

TARGET_RATIO = 0.9
START_TIMEOUT_S = 60.0  # many processes start at once on a small machine
LEAD_S = 0.2  # a window starts this long after it is announced
POLL_S = 0.01  # how often the benchmark looks for the files the clients write
PAYLOAD = {"order_id": "ORD-000123", "qty": 3, "price": 101.25, "side": "buy"}
EXPECTED = {"order_id": "ORD-000123", "total": 303.75}
REQREP = str(Path(__file__).resolve().parent / "reqrep.py")  # its bare server


# --------------------------------------------------------------------------- bare worker
def bare_client(
    port: str,
    windows_text: str,
    warmup_text: str,
    ready: str,
    go_prefix: str,
    out: str,
    framing: str = "plain",
) -> None:
    """The bare twin of ``services/bench_load_requester.py``: the same protocol.
    ``framing`` ``envelope``: the framework's envelopes, each with its own workflow id."""
    import itertools

    import msgpack
    import zmq

    sock = zmq.Context().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(f"tcp://127.0.0.1:{port}")
    packb, unpackb, recv, send = msgpack.packb, msgpack.unpackb, sock.recv, sock.send
    payload = dict(PAYLOAD)
    ids = map("a1b2c3d4e5f6-".__add__, map(str, itertools.count(1)))  # as the framework's

    def trip() -> object:
        send(packb(payload))
        return unpackb(recv())

    if framing == "envelope":

        def trip() -> object:
            send(packb({"v": 1, "workflow_id": next(ids), "args": payload}))
            return unpackb(recv())["return_args"]

    for _ in range(int(warmup_text)):
        reply = trip()
    _touch(ready)
    now = time.monotonic
    for window in range(1, int(windows_text) + 1):
        start, length = _await_window(f"{go_prefix}{window}")
        time.sleep(max(0.0, start - now()))
        end = start + length
        count, cpu_started = 0, time.process_time()
        while now() < end:
            reply = trip()
            count += 1
        seconds, cpu_s = now() - start, time.process_time() - cpu_started
        if count and reply != EXPECTED:
            raise RuntimeError(f"unexpected reply {reply!r}")
        result = f"{out}{window}.json"
        with open(result + ".tmp", "w") as f:
            json.dump(
                {"count": count, "seconds": seconds, "rate": count / seconds, "cpu_s": cpu_s}, f
            )
        os.replace(result + ".tmp", result)


def _touch(path: str, text: str = "") -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _await_window(go_path: str) -> tuple[float, float]:
    deadline = time.monotonic() + 600.0
    while not os.path.exists(go_path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{go_path} did not appear")
        time.sleep(POLL_S)
    with open(go_path) as f:
        start, length = map(float, f.read().split())
    return start, length


# --------------------------------------------------------------------------- benchmark
READY = r"ready \(.*order=tcp://127\.0\.0\.1:(\d+)"
BARE_READY = r"bare_server: ready port=(\d+)"
KINDS = ("framework", "bare")


def await_files(paths: Sequence[Path], timeout_s: float, watch: Sequence[Proc]) -> None:
    """Until every one of ``paths`` exists; fails at once if a ``watch``-ed process fails
    (one that finishes cleanly, like a bare subscriber at its end marker, is fine)."""
    deadline = time.monotonic() + timeout_s
    while not all(path.exists() for path in paths):
        for proc in watch:
            rc = proc.popen.poll()
            if rc not in (None, 0):
                raise BenchError(f"{proc.name} died (exit code {rc})")
        if time.monotonic() > deadline:
            missing = [path.name for path in paths if not path.exists()]
            raise BenchError(f"no {', '.join(missing)} within {timeout_s:g}s")
        time.sleep(POLL_S)


# kind -> rounds -> (the clients' results, the server's and the clients' CPU seconds over the
# window)
Results = dict[str, list[tuple[list[dict[str, float]], float, float]]]


def measure(
    work: Path,
    procs: Procs,
    clients: int,
    seconds: float,
    rounds: int,
    warmup: int,
    framing: str,
) -> Results:
    replyer_addresses = work / "replyer_addresses.json"
    replyer_addresses.write_text(
        json.dumps({"in": {"order": {"replyer": "127.0.0.1:0"}}, "out": {}})
    )
    # INFO only for the ready line: the replyer logs nothing per message at INFO.
    replyer = procs.start(
        "framework replyer", cli_argv("bench_replyer.py", replyer_addresses, "-cl", "INFO")
    )
    port = replyer.wait_for_line(READY, START_TIMEOUT_S).group(1)
    bare_server = procs.start("bare server", [PYTHON, REQREP, "_bare_server", framing])
    bare_port = bare_server.wait_for_line(BARE_READY, START_TIMEOUT_S).group(1)
    requester_addresses = work / "requester_addresses.json"
    requester_addresses.write_text(
        json.dumps({"in": {}, "out": {"order": {"requester": f"127.0.0.1:{port}"}}})
    )
    started: dict[str, list[Proc]] = {kind: [] for kind in KINDS}
    ready: list[Path] = []
    for kind in KINDS:
        for k in range(clients):
            ready_path = work / f"{kind}_{k}_ready"
            go, out = str(work / f"{kind}_go_"), str(work / f"{kind}_{k}_result_")
            if kind == "framework":
                argv = cli_argv(
                    "bench_load_requester.py",
                    requester_addresses,
                    "-m",
                    "-cl",
                    "WARNING",
                    windows=rounds,
                    warmup=warmup,
                    ready_path=ready_path,
                    go_prefix=go,
                    result_prefix=out,
                )
            else:
                argv = [PYTHON, __file__, "_bare_client", bare_port, str(rounds), str(warmup)]
                argv += [str(ready_path), go, out, framing]
            started[kind].append(procs.start(f"{kind} client {k}", argv, role="client"))
            ready.append(ready_path)
    servers = [replyer, bare_server]
    everyone = servers + started["framework"] + started["bare"]
    await_files(ready, START_TIMEOUT_S, everyone)

    results: Results = {kind: [] for kind in KINDS}
    for i in range(1, rounds + 1):
        for kind, server in zip(KINDS, servers, strict=True):
            server_cpu = cpu_seconds(server.pid)
            _touch(str(work / f"{kind}_go_{i}"), f"{time.monotonic() + LEAD_S!r} {seconds!r}")
            outs = [work / f"{kind}_{k}_result_{i}.json" for k in range(clients)]
            await_files(outs, LEAD_S + seconds + 30.0, servers + started[kind])
            server_cpu = cpu_seconds(server.pid) - server_cpu
            one = [read_result(path, f"{kind} client") for path in outs]
            # The clients time their own CPU (a client may exit right after its last window).
            results[kind].append((one, server_cpu, sum(r["cpu_s"] for r in one)))
        rate = {kind: sum(r["rate"] for r in results[kind][-1][0]) for kind in KINDS}
        print(
            f"  round {i}/{rounds}: framework {rate['framework']:>9,.0f}/s   "
            f"bare {rate['bare']:>9,.0f}/s",
            flush=True,
        )
    for proc in started["framework"] + started["bare"]:
        proc.wait_exit(30.0, watch=servers)
    return results


def run(clients: int, seconds: float, rounds: int, warmup: int, framing: str = "plain") -> int:
    load_before = os.getloadavg()[0]
    results = in_session(
        "reqrep_clients",
        lambda work, procs: measure(work, procs, clients, seconds, rounds, warmup, framing),
    )
    if results is None:
        return 1
    totals = {
        kind: [sum(r["rate"] for r in one) for one, _, _ in runs] for kind, runs in results.items()
    }
    # CPU per round trip, us: the side's processes over the window (all, the server alone,
    # the clients together).
    parts = {
        kind: [
            (1e6 * server / trips, 1e6 * clients / trips)
            for one, server, clients in runs
            for trips in [sum(r["count"] for r in one)]
        ]
        for kind, runs in results.items()
    }
    cpu_us = {kind: [s + c for s, c in split] for kind, split in parts.items()}
    print()
    print(
        f"request/reply, {clients} client processes against one replyer: round trips per "
        f"second, all clients together ({rounds} windows of {seconds:g}s per side)"
    )
    print(
        f"  {'':<26}{'median/s':>10}{'min/s':>10}{'max/s':>10}{'slowest':>10}{'fastest':>10}"
        f"{'CPU/trip':>11}{'server':>9}{'clients':>9}"
    )
    bare_label = "bare, framework frames" if framing == "envelope" else "bare pyzmq + msgpack"
    labels = {"framework": "framework (CLI processes)", "bare": bare_label}
    for kind, rates in totals.items():
        slowest = statistics.median(min(r["rate"] for r in one) for one, _, _ in results[kind])
        fastest = statistics.median(max(r["rate"] for r in one) for one, _, _ in results[kind])
        server_us = statistics.median(s for s, _ in parts[kind])
        clients_us = statistics.median(c for _, c in parts[kind])
        print(
            f"  {labels[kind]:<26}{statistics.median(rates):>10,.0f}{min(rates):>10,.0f}"
            f"{max(rates):>10,.0f}{slowest:>10,.0f}{fastest:>10,.0f}"
            f"{statistics.median(cpu_us[kind]):>8.1f} us{server_us:>9.1f}{clients_us:>9.1f}"
        )
    print("  (slowest/fastest: one client's round trips per second, median over the windows;")
    print("   CPU/trip: CPU time of the server and every client per round trip, all threads;")
    print("   server, clients: the same split, us, medians over the windows)")
    print(f"  load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    cpu_ratio, cpu_line = paired_summary(cpu_us["bare"], cpu_us["framework"])
    print("CPU per round trip, bare / framework (1.0: the framework costs what bare does):")
    print(cpu_line)
    print(f"  CPU ratio bare/framework: {cpu_ratio:.2f}x")
    ratio, rounds_line = paired_summary(totals["framework"], totals["bare"])
    print("round trips per second, all clients together:")
    print(rounds_line)
    if framing == "envelope":
        print(f"vs bare sending the framework's frames: {ratio:.2f}x (a diagnostic, no target)")
    else:
        _harness.print_verdict(ratio, TARGET_RATIO)
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_bare_client":
        bare_client(*sys.argv[2:9])
        return 0
    parser = _harness.parser(__doc__, 16, "client processes per side")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each window")
    parser.add_argument("--warmup", type=int, default=200, help="untimed round trips first")
    parser.add_argument(
        "--bare-framing",
        choices=("plain", "envelope"),
        default="plain",
        help="envelope: the bare side sends the framework's envelopes (its bytes on the "
        "wire, none of its checks) - a diagnostic; the target is against plain",
    )
    args = parser.parse_args()
    _harness.PIN = args.pin
    if args.n < 1 or args.rounds < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--n and --rounds must be >= 1, --seconds > 0, --warmup >= 0")
    return run(args.n, args.seconds, args.rounds, args.warmup, args.bare_framing)


if __name__ == "__main__":
    sys.exit(main())
