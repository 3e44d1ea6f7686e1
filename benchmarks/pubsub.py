"""Publish/subscribe: messages delivered per second at the subscriber, service_framework
vs bare pyzmq + msgpack.

What is measured
    * Framework: ``services/bench_publisher.py`` (main mode) and
      ``services/bench_subscriber.py`` (service loop), both started with
      ``python -m service_framework`` as separate processes on 127.0.0.1. The publisher
      binds, the subscriber connects. The publisher sends ``warmup`` messages until the
      subscriber's handler has written a ready file, then ``--n`` ``data`` messages as fast
      as ``to_send`` goes, then ``end`` markers until the subscriber reports. The
      subscriber's handler counts ``data`` messages and stamps the first and last one.
    * Bare baseline, same run: a PUB and a SUB process with plain pyzmq and msgpack, the
      same payload and protocol, the SUB side the fastest plain loop (blocking
      ``sock.recv()`` then ``msgpack.unpackb``, no poll per message).
    * Both sides use the same high-water marks (``--hwm``, sndhwm = rcvhwm on every
      socket). PUB drops messages for a subscriber that falls behind, so the figure is
      *delivered* messages per second at the subscriber: (count - 1) / (t_last - t_first).
      The sent rate and the share delivered are shown too, and the CPU time (all
      threads) per message sent by the publisher and per message delivered at the
      subscriber: on a small machine throughput tracks their sum.
    * Framework and bare runs alternate for ``--rounds`` rounds; the headline is the median
      of the per-round ratios (each round's pair met the same machine conditions).

Target
    * framework / bare >= 0.8x (delivered messages per second)

Run: ``python benchmarks/pubsub.py [--n 200000] [--rounds 7] [--hwm 1000]``. Every
process it starts is stopped on exit. Exits 0 after reporting (numbers are not
asserted); 1 if the benchmark itself could not run (with the failing process's output).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import _harness
import msgpack
from _harness import (
    PYTHON,
    BenchError,
    Proc,
    Procs,
    cli_argv,
    in_session,
    paired_summary,
    read_result,
)

TARGET_RATIO = 0.8
START_TIMEOUT_S = 20.0
HANDSHAKE_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------- bare workers
def _touch(path: str) -> None:
    with open(path + ".tmp", "w"):
        pass
    os.replace(path + ".tmp", path)


_packb = msgpack.packb


def framed_packb(message: dict[str, object], seq: int) -> bytes:
    """``message`` in the framework's publish frame, written by hand as a bare publisher
    would: ``["", 1, "bare", message, None, "bare", seq]`` (checked against the codec at
    start-up)."""

    return b"\x97\xa0\x01\xa4bare" + _packb(message) + b"\xc0\xa4bare" + _packb(seq)


def check_framing() -> None:
    """The framed bare publisher must write what the framework's publisher writes."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "services"))
    from bench_models import TICK

    from service_framework.codec import PublishCodec
    from service_framework.validation import Validator, compile_fields

    message = {"seq": 1, "order_id": "O", "qty": 3, "price": 1.5, "side": "buy", "phase": "data"}
    codec = PublishCodec(Validator(compile_fields(TICK, {})), "", publisher="bare")
    if framed_packb(message, 7) != codec.encode(message, "bare", 7):
        raise BenchError("the framed bare publisher no longer writes the framework's layout")


def bare_publisher(
    n_text: str, hwm_text: str, ready: str, done: str, result: str, framing: str = "plain"
) -> None:
    """Publishes the payload as plain msgpack, or (``framing="envelope"``) in the
    framework's frame layout, ``[topic, v, workflow_id, args, meta, publisher, seq]``
    (numbered as the framework numbers them), so that the framework's subscriber can be
    fed by the same bare publisher as a bare one."""
    import zmq

    n, hwm = int(n_text), int(hwm_text)
    sock = zmq.Context().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(f"bare_publisher: ready port={port}", flush=True)
    packb: Callable[[dict[str, object]], bytes] = msgpack.packb
    if framing == "envelope":
        numbers = itertools.count()

        def packb(message: dict[str, object]) -> bytes:
            return framed_packb(message, next(numbers))

    send = sock.send

    def wait_for(path: str, phase: str, pause_s: float) -> None:
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
        frame = packb(
            {
                "seq": -1,
                "order_id": "ORD-000123",
                "qty": 3,
                "price": 101.25,
                "side": "buy",
                "phase": phase,
            }
        )
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not appear (phase {phase})")
            send(frame)
            time.sleep(pause_s)

    wait_for(ready, "warmup", 0.002)
    perf_counter = time.perf_counter
    cpu_started = time.process_time()
    started = perf_counter()
    for seq in range(n):
        send(
            packb(
                {
                    "seq": seq,
                    "order_id": "ORD-000123",
                    "qty": 3,
                    "price": 101.25,
                    "side": "buy",
                    "phase": "data",
                }
            )
        )
    seconds = perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    with open(result, "w") as f:
        json.dump({"sent": n, "seconds": seconds, "rate": n / seconds, "cpu_s": cpu_s}, f)
    wait_for(done, "end", 0.01)
    sock.close()


def bare_subscriber(
    port: str, hwm_text: str, ready: str, done: str, result: str, framing: str = "plain"
) -> None:
    import zmq

    hwm = int(hwm_text)
    sock = zmq.Context().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(f"tcp://127.0.0.1:{port}")
    # In the framework's layout the payload is element 3; picked inline (a branch costs
    # the plain loop ~10 ns, a wrapper function would cost the framed one ~80 ns).
    framed = framing == "envelope"
    recv, unpackb, perf_counter = sock.recv, msgpack.unpackb, time.perf_counter
    count, first, last, last_seq, is_ready, cpu_first = 0, 0.0, 0.0, -1, False, 0.0
    while True:
        args = unpackb(recv())
        if framed:
            args = args[3]
        phase = args["phase"]
        if phase == "data":
            now = perf_counter()
            if not count:
                first = now
                cpu_first = time.process_time()
            count += 1
            last = now
            last_seq = args["seq"]
        elif phase == "warmup":
            if not is_ready:
                is_ready = True
                _touch(ready)
        else:
            break
    cpu_s = time.process_time() - cpu_first
    seconds = last - first
    with open(result, "w") as f:
        json.dump(
            {
                "count": count,
                "seconds": seconds,
                "rate": (count - 1) / seconds if seconds > 0 else 0.0,
                "last_seq": last_seq,
                "cpu_s": cpu_s,
            },
            f,
        )
    _touch(done)


# --------------------------------------------------------------------------- benchmark
PUB_READY = r"ready \(.*ticks=tcp://127\.0\.0\.1:(\d+)"
BARE_READY = r"bare_publisher: ready port=(\d+)"


def start_publisher(
    procs: Procs, work: Path, kind: str, i: int, n: int, hwm: int, paths: dict[str, str]
) -> tuple[Proc, str]:
    """The round's publisher (the framework's, started with the CLI, or a bare one) and
    the port it bound."""
    if kind == "framework":
        addresses = work / f"{kind}_{i}_pub_addresses.json"
        addresses.write_text(json.dumps({"in": {}, "out": {"ticks": {"publisher": "127.0.0.1:0"}}}))
        # INFO only for the ready line: the publisher logs nothing per message at INFO.
        pub = procs.start(
            f"framework publisher (round {i})",
            cli_argv(
                "bench_publisher.py",
                addresses,
                "-m",
                "-cl",
                "INFO",
                n=n,
                hwm=hwm,
                ready_path=paths["ready"],
                done_path=paths["done"],
                result_path=paths["pub_result.json"],
                timeout_s=HANDSHAKE_TIMEOUT_S,
            ),
        )
        return pub, pub.wait_for_line(PUB_READY, START_TIMEOUT_S).group(1)
    framing = "envelope" if kind.startswith("sub-") else "plain"
    argv = [PYTHON, __file__, "_bare_publisher", str(n), str(hwm), paths["ready"], paths["done"]]
    argv += [paths["pub_result.json"], framing]
    pub = procs.start(f"bare publisher (round {i}, {kind})", argv)
    return pub, pub.wait_for_line(BARE_READY, START_TIMEOUT_S).group(1)


def start_subscriber(
    procs: Procs, work: Path, kind: str, name: str, port: str, hwm: int, paths: dict[str, str]
) -> Proc:
    """A subscriber ``name`` connected to ``port``, writing ``paths``' ready, done and
    sub_result.json files: the framework's service (started with the CLI) for
    "framework" and "sub-framework", else a bare SUB loop (also pubsub_fanout.py's)."""
    if kind in ("framework", "sub-framework"):
        addresses = work / f"{name}_sub_addresses.json"
        addresses.write_text(
            json.dumps({"in": {"ticks": {"subscriber": f"127.0.0.1:{port}"}}, "out": {}})
        )
        argv = cli_argv(
            "bench_subscriber.py",
            addresses,
            "-cl",
            "WARNING",
            hwm=hwm,
            ready_path=paths["ready"],
            done_path=paths["done"],
            result_path=paths["sub_result.json"],
        )
        return procs.start(f"framework subscriber ({name})", argv, role="client")
    framing = "envelope" if kind.startswith("sub-") else "plain"
    argv = [PYTHON, __file__, "_bare_subscriber", port, str(hwm), paths["ready"], paths["done"]]
    argv += [paths["sub_result.json"], framing]
    return procs.start(f"bare subscriber ({name})", argv, role="client")


def one_round(
    procs: Procs, work: Path, kind: str, i: int, n: int, hwm: int
) -> tuple[dict[str, float], dict[str, float]]:
    """One publisher/subscriber pair; returns (publisher result, subscriber result)."""
    paths = {
        key: str(work / f"{kind}_{i}_{key}")
        for key in ("ready", "done", "pub_result.json", "sub_result.json")
    }
    timeout = HANDSHAKE_TIMEOUT_S + 30.0 + n / 10_000  # generous: even 10k messages/s finishes
    pub, port = start_publisher(procs, work, kind, i, n, hwm, paths)
    sub = start_subscriber(procs, work, kind, f"{kind}_{i}", port, hwm, paths)
    pub.wait_exit(timeout, watch=[sub])
    if kind in ("framework", "sub-framework"):
        sub.check_alive()
        sub.stop()  # a service loop runs until told to stop
    else:
        sub.wait_exit(10.0)  # the bare loop exits on the end marker
    return (
        read_result(Path(paths["pub_result.json"]), pub.name),
        read_result(Path(paths["sub_result.json"]), sub.name),
    )


KINDS = ("framework", "bare", "sub-framework", "sub-bare")
Results = dict[str, list[tuple[dict[str, float], dict[str, float]]]]


def measure(work: Path, procs: Procs, n: int, rounds: int, hwm: int) -> Results:
    """Every round's (publisher, subscriber) results per kind."""
    results: Results = {kind: [] for kind in KINDS}
    check_framing()
    for i in range(1, rounds + 1):
        for kind in KINDS:
            results[kind].append(one_round(procs, work, kind, i, n, hwm))
        rate = {kind: results[kind][-1][1]["rate"] for kind in KINDS}
        print(
            f"  round {i}/{rounds}: framework {rate['framework']:>9,.0f}/s   "
            f"bare {rate['bare']:>9,.0f}/s   |   same bare publisher -> framework "
            f"subscriber {rate['sub-framework']:>9,.0f}/s, bare subscriber "
            f"{rate['sub-bare']:>9,.0f}/s",
            flush=True,
        )
    return results


def run(n: int, rounds: int, hwm: int) -> int:
    load_before = os.getloadavg()[0]
    results = in_session("pubsub", lambda work, procs: measure(work, procs, n, rounds, hwm))
    if results is None:
        return 1
    print()
    print(
        f"pub/sub messages delivered per second at the subscriber "
        f"(N={n:,} sent, sndhwm=rcvhwm={hwm:,}, {rounds} rounds)"
    )
    print(
        f"  {'':<44}{'delivered/s':>12}{'sent/s':>10}{'delivered':>10}"
        f"{'pub CPU':>10}{'sub CPU':>10}"
    )
    labels = {
        "framework": "framework publisher -> framework subscriber",
        "bare": "bare publisher -> bare subscriber",
        "sub-framework": "bare publisher (framed) -> framework sub.",
        "sub-bare": "bare publisher (framed) -> bare subscriber",
    }
    for kind, runs in results.items():
        delivered = statistics.median(sub["rate"] for _, sub in runs)
        sent = statistics.median(pub["rate"] for pub, _ in runs)
        share = statistics.median(100.0 * sub["count"] / pub["sent"] for pub, sub in runs)
        pub_us = statistics.median(1e6 * pub["cpu_s"] / pub["sent"] for pub, _ in runs)
        sub_us = statistics.median(1e6 * sub["cpu_s"] / max(1, sub["count"]) for _, sub in runs)
        print(
            f"  {labels[kind]:<44}{delivered:>12,.0f}{sent:>10,.0f}{share:>9.1f}%"
            f"{pub_us:>7.2f} us{sub_us:>7.2f} us"
        )
    print("  (CPU: process CPU time per message sent (pub) / delivered (sub), all threads, median)")
    print(f"  load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    sub_ratio, sub_line = paired_summary(
        [sub["rate"] for _, sub in results["sub-framework"]],
        [sub["rate"] for _, sub in results["sub-bare"]],
    )
    print("subscriber loop alone (both fed by the same bare publisher):")
    print(sub_line)
    print(f"  subscriber ratio framework/bare: {sub_ratio:.2f}x")
    ratio, rounds_line = paired_summary(
        [sub["rate"] for _, sub in results["framework"]],
        [sub["rate"] for _, sub in results["bare"]],
    )
    print("end to end (framework publisher and subscriber vs bare ones):")
    print(rounds_line)
    _harness.print_verdict(ratio, TARGET_RATIO, "end to end")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_bare_publisher":
        bare_publisher(*sys.argv[2:8])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_bare_subscriber":
        bare_subscriber(*sys.argv[2:8])
        return 0
    parser = _harness.parser(__doc__, 200_000, "data messages sent per run")
    parser.add_argument(
        "--hwm", type=int, default=1000, help="sndhwm and rcvhwm of every socket, both sides"
    )
    args = parser.parse_args()
    _harness.PIN = args.pin
    if args.n < 2 or args.rounds < 1 or args.hwm < 1:
        parser.error("--n must be >= 2, --rounds and --hwm >= 1")
    return run(args.n, args.rounds, args.hwm)


if __name__ == "__main__":
    sys.exit(main())
