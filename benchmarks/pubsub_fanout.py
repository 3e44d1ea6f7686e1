"""One publisher, several subscribers: messages delivered per second, all subscribers
together, service_framework vs bare pyzmq + msgpack.

What is measured
    * Framework: ``services/bench_publisher.py`` (main mode) and ``--subscribers``
      ``services/bench_subscriber.py`` processes (service loop), all started with
      ``python -m service_framework`` on 127.0.0.1 - the services of ``pubsub.py``.
    * Bare baseline, same run: the bare PUB and as many bare SUB loops of ``pubsub.py``
      (plain pyzmq and msgpack, the same payload, protocol and high-water marks).
    * The protocol of ``pubsub.py``, with this benchmark in the middle: the publisher
      sends ``warmup`` messages until every subscriber has seen one (each writes its
      ready file; then the benchmark writes the publisher's), then ``--n`` ``data``
      messages as fast as it can, then ``end`` markers until every subscriber has
      reported.
    * The figure is the sum of the subscribers' delivered rates, each ``(count - 1) /
      (t_last - t_first)`` at that subscriber: PUB drops messages for a subscriber that
      falls behind, so what counts is what arrives, and the sum is the work the system
      got done. The slowest subscriber's rate and the share delivered are shown too, and
      the CPU time (all threads) per message sent by the publisher and per message
      delivered at a subscriber.
    * Framework and bare runs alternate for ``--rounds`` rounds (fresh processes each);
      the headline is the median of the per-round ratios.

Target
    * framework / bare >= 0.85x (delivered messages per second, all subscribers, 4 of them)

Diagnostic: ``--bare-framing envelope`` has the bare publisher write the framework's frame
layout (``pubsub.py``'s "sub-bare" side), which the bare subscribers unwrap: the
framework's bytes on the wire without its checks, sequence check or counters.

Run: ``python benchmarks/pubsub_fanout.py [--n 1000000] [--rounds 5] [--subscribers 4]
[--hwm 1000] [--bare-framing plain|envelope]``. Every process it starts is stopped on
exit. Exits 0 after reporting (numbers are not asserted); 1 if the benchmark itself could
not run (with the failing process's output).
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import _harness
from _harness import Proc, Procs, in_session, paired_summary, read_result
from pubsub import HANDSHAKE_TIMEOUT_S, START_TIMEOUT_S, _touch, start_publisher, start_subscriber
from reqrep_clients import await_files

TARGET_RATIO = 0.85
KINDS = ("framework", "bare")


Round = tuple[dict[str, float], list[dict[str, float]]]  # publisher's, subscribers' results


def one_round(
    procs: Procs,
    work: Path,
    kind: str,
    i: int,
    n: int,
    subscribers: int,
    hwm: int,
    framing: str = "plain",
) -> Round:
    # The bare side in the framework's frame layout is pubsub.py's "sub-bare".
    launch = "sub-bare" if kind == "bare" and framing == "envelope" else kind
    pub_paths = {key: str(work / f"{kind}_{i}_{key}") for key in ("ready", "done")}
    pub_paths["pub_result.json"] = str(work / f"{kind}_{i}_pub_result.json")
    pub, port = start_publisher(procs, work, launch, i, n, hwm, pub_paths)
    subs: list[Proc] = []
    sub_paths: list[dict[str, str]] = []
    for k in range(subscribers):
        name = f"{kind}_{i}_sub{k}"
        paths = {key: str(work / f"{name}_{key}") for key in ("ready", "done")}
        paths["sub_result.json"] = str(work / f"{name}_result.json")
        sub_paths.append(paths)
        subs.append(start_subscriber(procs, work, launch, name, port, hwm, paths))
    everyone = [pub, *subs]
    # Every subscriber has seen a warm-up message: now the publisher may start.
    await_files([Path(p["ready"]) for p in sub_paths], START_TIMEOUT_S, everyone)
    _touch(pub_paths["ready"])
    # Every subscriber has seen an end marker: now the publisher may stop.
    timeout = HANDSHAKE_TIMEOUT_S + 30.0 + n / 10_000  # generous: even 10k messages/s finishes
    await_files([Path(p["done"]) for p in sub_paths], timeout, everyone)
    _touch(pub_paths["done"])
    pub.wait_exit(30.0, watch=subs)
    for sub in subs:
        if kind == "framework":
            sub.check_alive()
            sub.stop()  # a service loop runs until told to stop
        else:
            sub.wait_exit(10.0)  # the bare loop exits on the end marker
    return (
        read_result(Path(pub_paths["pub_result.json"]), pub.name),
        [
            read_result(Path(p["sub_result.json"]), sub.name)
            for p, sub in zip(sub_paths, subs, strict=True)
        ],
    )


Results = dict[str, list[Round]]


def measure(
    work: Path, procs: Procs, n: int, rounds: int, subscribers: int, hwm: int, framing: str
) -> Results:
    """Every round's results per kind."""
    results: Results = {kind: [] for kind in KINDS}
    for i in range(1, rounds + 1):
        for kind in KINDS:
            results[kind].append(one_round(procs, work, kind, i, n, subscribers, hwm, framing))
        rate = {kind: sum(s["rate"] for s in results[kind][-1][1]) for kind in KINDS}
        print(
            f"  round {i}/{rounds}: framework {rate['framework']:>9,.0f}/s   "
            f"bare {rate['bare']:>9,.0f}/s",
            flush=True,
        )
    return results


def run(n: int, rounds: int, subscribers: int, hwm: int, framing: str = "plain") -> int:
    load_before = os.getloadavg()[0]
    results = in_session(
        "pubsub_fanout",
        lambda work, procs: measure(work, procs, n, rounds, subscribers, hwm, framing),
    )
    if results is None:
        return 1
    print()
    print(
        f"pub/sub, one publisher and {subscribers} subscribers: messages delivered per "
        f"second, all subscribers together (N={n:,} sent, sndhwm=rcvhwm={hwm:,}, "
        f"{rounds} rounds)"
    )
    print(
        f"  {'':<34}{'delivered/s':>12}{'slowest/s':>11}{'sent/s':>10}{'delivered':>10}"
        f"{'pub CPU':>10}{'sub CPU':>10}"
    )
    labels = {"framework": "framework publisher, subscribers", "bare": "bare PUB, SUB loops"}
    totals = {
        kind: [sum(s["rate"] for s in subs) for _, subs in runs] for kind, runs in results.items()
    }
    slowest = {
        kind: [min(s["rate"] for s in subs) for _, subs in runs] for kind, runs in results.items()
    }
    for kind, runs in results.items():
        sent = statistics.median(pub["rate"] for pub, _ in runs)
        share = statistics.median(
            100.0 * sum(s["count"] for s in subs) / (pub["sent"] * len(subs)) for pub, subs in runs
        )
        pub_us = statistics.median(1e6 * pub["cpu_s"] / pub["sent"] for pub, _ in runs)
        sub_us = statistics.median(
            1e6 * sum(s["cpu_s"] for s in subs) / max(1, sum(s["count"] for s in subs))
            for _, subs in runs
        )
        print(
            f"  {labels[kind]:<34}{statistics.median(totals[kind]):>12,.0f}"
            f"{statistics.median(slowest[kind]):>11,.0f}{sent:>10,.0f}{share:>9.1f}%"
            f"{pub_us:>7.2f} us{sub_us:>7.2f} us"
        )
    print("  (delivered: the share of the messages sent that reached a subscriber; CPU: per")
    print("   message sent (pub) / delivered (sub), all threads; medians)")
    print(f"  load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    slow_ratio, slow_line = paired_summary(slowest["framework"], slowest["bare"])
    print("slowest subscriber:")
    print(slow_line)
    print(f"  slowest subscriber ratio framework/bare: {slow_ratio:.2f}x")
    ratio, rounds_line = paired_summary(totals["framework"], totals["bare"])
    print("all subscribers together:")
    print(rounds_line)
    if framing == "envelope":
        print(f"vs bare sending the framework's frames: {ratio:.2f}x (a diagnostic, no target)")
    else:
        _harness.print_verdict(ratio, TARGET_RATIO, "delivered, all subscribers")
    return 0


def main() -> int:
    # A million messages: a round of 100,000 lasted a quarter of a second, short enough
    # for one scheduling hiccup of six processes on two cores to move it by 0.3x.
    parser = _harness.parser(__doc__, 1_000_000, "data messages sent per run")
    parser.set_defaults(rounds=5)
    parser.add_argument("--subscribers", type=int, default=4, help="subscriber processes")
    parser.add_argument(
        "--hwm", type=int, default=1000, help="sndhwm and rcvhwm of every socket, both sides"
    )
    parser.add_argument(
        "--bare-framing",
        choices=("plain", "envelope"),
        default="plain",
        help="envelope: the bare side sends the framework's frames (its bytes on the wire, "
        "none of its work) - a diagnostic; the target is against plain",
    )
    args = parser.parse_args()
    _harness.PIN = args.pin
    if args.n < 2 or args.rounds < 1 or args.subscribers < 1 or args.hwm < 1:
        parser.error("--n must be >= 2, --rounds, --subscribers and --hwm >= 1")
    return run(args.n, args.rounds, args.subscribers, args.hwm, args.bare_framing)


if __name__ == "__main__":
    sys.exit(main())
