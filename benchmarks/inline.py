"""InlineServices request/reply calls per second vs calling the handler directly.

Two service modules in ``services/``: ``inline_requester`` (main mode; an out
connection ``request`` of type requester) and ``inline_replyer`` (an in connection
``reply`` of type replyer whose handler is ``on_request``). Both declare
``required_arguments {'order_id': str, 'qty': int, 'price': float}`` and
``required_return_arguments {'order_id': str, 'total': float}``. Each inline call checks
the arguments against the sender's and the receiver's model and the reply against both,
as over the wire; here both sides declare the same specs, so they share one compiled
check per direction and each runs once.

* inline: the requester's ``main`` loops ``to_send('request', ARGS)`` N times and returns
  the elapsed ``perf_counter_ns``; ``InlineServices.start()`` hands that back.
* direct: the same handler, ``on_request(ARGS, None, config)``, N times in a loop of the
  same shape, same process, same args.
* floor (for reference): the direct call plus the two compiled checks the call makes
  (``Validator.check`` of the args and of the reply) - what validation alone costs,
  without the inline plumbing.

Method: gc disabled in each timed loop, N calibrated per case to ~40 ms (which warms
up), then MEDIAN of 15 interleaved repeats (best also shown). Target: inline/direct
>= 0.2x. Benchmarks report; they never fail on a missed target (exit status 0).
"""

from __future__ import annotations

import sys
from pathlib import Path
from time import perf_counter_ns

from _timing import REPEATS, measure

HERE = Path(__file__).resolve().parent
SERVICES = HERE / "services"
try:
    import service_framework  # noqa: F401
except ImportError:  # not installed: run against the source tree
    sys.path.insert(0, str(HERE.parent / "src"))

from service_framework import InlineServices  # noqa: E402
from service_framework.validation import Validator, compile_fields  # noqa: E402


def build() -> InlineServices:
    services = InlineServices(console_loglevel="WARNING")
    services.set_main_service("requester", str(SERVICES / "inline_requester.py"))
    services.add_service("replyer", str(SERVICES / "inline_replyer.py"))
    services.add_relation("requester", "request", "replyer", "reply")
    return services


def main() -> int:
    services = build()
    requester = services.get_service_module("requester")
    replyer = services.get_service_module("replyer")
    handler = replyer.on_request
    config = services.get_service_config("replyer")
    args = requester.ARGS

    # Sanity: the inline call returns what the handler returns.
    requester.N_CALLS = 1
    services.start()
    expected = handler(args, None, config)
    got = requester.LAST_REPLY
    if got != expected:
        print(f"BENCHMARK INVALID: inline reply {got!r} != {expected!r}")
        return 1

    def inline(n: int) -> int:
        requester.N_CALLS = n
        return services.start()  # type: ignore[no-any-return]

    def direct(n: int) -> int:
        t0 = perf_counter_ns()
        for _ in range(n):
            handler(args, None, config)
        return perf_counter_ns() - t0

    model = replyer.connection_models["in"]["reply"]
    check_args = Validator(compile_fields(model["required_arguments"], {})).check
    check_reply = Validator(compile_fields(model["required_return_arguments"], {})).check

    def floor(n: int) -> int:
        t0 = perf_counter_ns()
        for _ in range(n):
            check_args(args)
            reply = handler(args, None, config)
            check_reply(reply)
        return perf_counter_ns() - t0

    results = measure({"inline to_send": inline, "direct handler call": direct, "floor": floor})

    print(f"python {sys.version.split()[0]}")
    print(
        "method: perf_counter_ns loops of ~40 ms, gc off in the loop, calibrated and warmed "
        f"up, median of {REPEATS} interleaved repeats"
    )
    print()
    print(f"{'case':<44} {'calls/s (median)':>17} {'ns/call':>9} {'best ns':>9}")
    labels = {
        "inline to_send": "InlineServices to_send (validated both ways)",
        "direct handler call": "direct handler(args, None, config)",
        "floor": "direct + 2 compiled checks (reference)",
    }
    for name, (median, best) in results.items():
        print(f"{labels[name]:<44} {1e9 / median:>17,.0f} {median:>9.0f} {best:>9.0f}")
    inline_ns = results["inline to_send"][0]
    direct_ns = results["direct handler call"][0]
    floor_ns = results["floor"][0]
    ratio = direct_ns / inline_ns
    print()
    print(
        f"inline overhead per call: {inline_ns - direct_ns:.0f} ns, of which the checks "
        f"~{floor_ns - direct_ns:.0f} ns"
    )
    print(
        f"RATIO inline/direct calls per second = {ratio:.3f}x  "
        f"(target >= 0.2x: {'met' if ratio >= 0.2 else 'MISSED'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
