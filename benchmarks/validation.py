"""Per-message cost of validation and the wire path, measured in one run.

Part 1 - wire path vs bare msgpack. Per message, the framework does what a sender and a
receiver do: ``Validator.check(args)`` (the generated in-process fast path), then
``MessageCodec.encode_request(args, workflow_id)``, then ``codec.decode_request(frame)``
(msgspec's typed decode, which validates while decoding, plus the converter back to
plain dicts). The bare baseline is ``msgpack.packb(envelope)`` + ``msgpack.unpackb(frame)``
of the same envelope dict ``{'v': 1, 'workflow_id': ..., 'args': payload}`` with no
validation. The payloads hold no ``Decimal`` (floats only), so both sides encode the
very same envelope. Target: framework/bare <= 1.2x for the flat message.

Part 2 - in-process validation vs service-framework 0.0.20's
``validate_args(new_args, required_args, optional_args)``, timed in a subprocess running
the 0.0.20 release's own Python (``/work/shared/tools/baseline-0.0.20-venv``) with its
logging at WARNING. Both sides use the same spec and value source text and the same
timing code; 3 rounds alternate between this process and the subprocess, so a change in
machine load lands on both sides alike. Targets: the compiled validator is >= 8x faster
(flat) and >= 3x faster (nested).

Method: each measurement is a loop of n calls timed with ``time.perf_counter_ns`` (gc
disabled during the loop, as ``timeit`` does); n is calibrated so one loop takes about
40 ms, which also warms up. Each figure is the MEDIAN of 15 repeats (best also shown);
the cases compared with each other run interleaved, repeat by repeat.
Benchmarks report; they never fail on a missed target (exit status 0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import repeat
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import _specs
import _timing
import msgpack
from _timing import REPEATS, loop1, measure, measure_samples, summary

BASELINE_SOURCE = r"""
import json
import logging
import sys

logging.getLogger().setLevel(logging.WARNING)
import service_framework
from service_framework.utils import validation_utils
from service_framework.utils.validation_utils import validate_args

logging.getLogger('service_framework').setLevel(logging.WARNING)
validation_utils.LOG.setLevel(logging.WARNING)

try:
    from importlib.metadata import version
    sf_version = version('service-framework')
except Exception:
    sf_version = '?'

out = {
    'version': sf_version,
    'file': service_framework.__file__,
    'debug_logging_enabled': validation_utils.LOG.isEnabledFor(logging.DEBUG),
}
repeats = int(sys.argv[1])
cases = {}
for name, (args, required, optional) in CMP_CASES.items():
    validate_args(args, required, optional)  # raises if 0.0.20 rejects the value
    cases[name] = loop3(validate_args, args, required, optional)
out['samples'] = measure_samples(cases, repeats)
print(json.dumps(out))
"""

BASELINE_TOOL = "/work/shared/tools/baseline-0.0.20-venv"

ROUNDS = 3  # 0.0.20 comparison: REPEATS // ROUNDS repeats per round

HERE = Path(__file__).resolve().parent
try:
    import service_framework  # noqa: F401
except ImportError:  # not installed: run against the source tree
    sys.path.insert(0, str(HERE.parent / "src"))

from service_framework.codec import MessageCodec  # noqa: E402
from service_framework.validation import Validator, compile_fields  # noqa: E402

WORKFLOW_ID = "3f9a1c2b7d4e-1024_1"


def validator(required: dict[str, Any], optional: dict[str, Any], direction: str) -> Validator:
    return Validator(
        compile_fields(required, optional), service="bench", connection="order", direction=direction
    )


def fail(message: str) -> None:
    print(f"BENCHMARK INVALID: {message}", file=sys.stderr)
    sys.exit(1)


def wire_cases(args: dict[str, Any], check: Validator, codec: MessageCodec) -> dict[str, Any]:
    """Loops for one payload: the framework path, its parts, and the bare baseline."""
    chk = check.check
    enc = codec.encode_request
    dec = codec.decode_request
    packb = msgpack.packb
    unpackb = msgpack.unpackb
    wid = WORKFLOW_ID
    frame = enc(args, wid)
    bare_frame = packb({"v": 1, "workflow_id": wid, "args": args})
    perf = perf_counter_ns
    rep = repeat

    def framework(n: int) -> int:
        t0 = perf()
        for _ in rep(None, n):
            if not chk(args):
                raise check.error(args)
            f = enc(args, wid)
            dec(f)
        return perf() - t0

    def encode_only(n: int) -> int:
        t0 = perf()
        for _ in rep(None, n):
            enc(args, wid)
        return perf() - t0

    def bare(n: int) -> int:
        t0 = perf()
        for _ in rep(None, n):
            f = packb({"v": 1, "workflow_id": wid, "args": args})
            unpackb(f)
        return perf() - t0

    def pack_only(n: int) -> int:
        t0 = perf()
        for _ in rep(None, n):
            packb({"v": 1, "workflow_id": wid, "args": args})
        return perf() - t0

    return {
        "framework: check+encode+decode": framework,
        "  check()": loop1(chk, args),
        "  encode_request()": encode_only,
        "  decode_request()": loop1(dec, frame),
        "bare: packb+unpackb": bare,
        "  packb(envelope)": pack_only,
        "  unpackb(frame)": loop1(unpackb, bare_frame),
    }


def sanity(name: str, args: dict[str, Any], check: Validator, codec: MessageCodec) -> None:
    if not check.check(args):
        fail(f"{name}: the validator rejects the payload: {check.error(args)}")
    got = codec.decode_request(codec.encode_request(args, WORKFLOW_ID))
    if got.args != args or got.workflow_id != WORKFLOW_ID:
        fail(f"{name}: decode_request did not round-trip: {got!r}")
    bare = msgpack.unpackb(msgpack.packb({"v": 1, "workflow_id": WORKFLOW_ID, "args": args}))
    if bare["args"] != args:
        fail(f"{name}: bare msgpack did not round-trip")


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def part_wire() -> None:
    print(f"== wire path vs bare msgpack (ns per message; median and best of {REPEATS})")
    print(f"{'payload':<8} {'path':<34} {'median':>9} {'best':>9}")
    ratios = {}
    for name, req, opt, args in (
        ("flat", _specs.FLAT_REQUIRED, _specs.FLAT_OPTIONAL, _specs.FLAT_ARGS),
        ("nested", _specs.NESTED_REQUIRED, _specs.NESTED_OPTIONAL, _specs.NESTED_ARGS),
    ):
        check = validator(req, opt, "args")
        codec = MessageCodec(check, validator({"ok": bool}, {}, "return_args"))
        sanity(name, args, check, codec)
        results = measure(wire_cases(args, check, codec))
        for label, (median, best) in results.items():
            print(f"{name:<8} {label:<34} {median:>9.0f} {best:>9.0f}")
        fw = results["framework: check+encode+decode"][0]
        bare = results["bare: packb+unpackb"][0]
        ratios[name] = fw / bare
        size = len(codec.encode_request(args, WORKFLOW_ID))
        bare_size = len(msgpack.packb({"v": 1, "workflow_id": WORKFLOW_ID, "args": args}))
        print(f"{name:<8} frame bytes: framework {size}, bare {bare_size}")
    print()
    print(
        f"RATIO wire flat   framework/bare = {ratios['flat']:.2f}x  (target <= 1.2x: "
        f"{verdict(ratios['flat'] <= 1.2)})"
    )
    print(f"RATIO wire nested framework/bare = {ratios['nested']:.2f}x  (no target; for reference)")


def baseline_python() -> tuple[str | None, str]:
    """The 0.0.20 venv's python (created once by the shared tool); (path, reason if not)."""
    try:
        made = subprocess.run(
            ["bash", BASELINE_TOOL], capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"cannot run {BASELINE_TOOL}: {exc}"
    python = made.stdout.strip().splitlines()[-1] if made.stdout.strip() else ""
    if made.returncode != 0 or not os.access(python, os.X_OK):
        detail = (made.stderr or made.stdout).strip()[-300:]
        return None, f"{BASELINE_TOOL} failed (exit {made.returncode}): {detail}"
    return python, ""


def run_baseline(python: str, repeats: int) -> tuple[dict[str, Any] | None, str]:
    """Time 0.0.20's validate_args in its own interpreter; (results, reason if failed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    # The same timing code and specs as this process uses, run as source text there.
    code = "\n".join(Path(m.__file__).read_text() for m in (_timing, _specs)) + BASELINE_SOURCE
    try:
        proc = subprocess.run(
            [python, "-I", "-c", code, str(repeats)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=os.path.dirname(python),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"0.0.20 timing subprocess failed: {exc}"
    if proc.returncode != 0:
        return None, f"0.0.20 timing subprocess exited {proc.returncode}: {proc.stderr[-500:]}"
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1]), ""
    except (ValueError, IndexError):
        return None, f"0.0.20 timing subprocess printed no result: {proc.stdout[-300:]!r}"


def part_baseline() -> None:
    print()
    print(
        f"== in-process validation vs 0.0.20 validate_args (ns per call; median/best of {REPEATS})"
    )
    validators = {}
    for name, (args, req, opt) in _specs.CMP_CASES.items():
        v = validator(req, opt, "args")
        if not v.check(args):
            fail(f"comparison {name}: the validator rejects the payload: {v.error(args)}")
        validators[name] = (v, args)
    python, reason = baseline_python()
    # Rounds alternate between this process and the 0.0.20 subprocess, so load changes
    # on the machine land on both sides alike.
    ours: dict[str, dict[str, list[float]]] = {
        name: {"check()": [], "Validator() (raises)": []} for name in validators
    }
    old_samples: dict[str, list[float]] = {name: [] for name in validators}
    old: dict[str, Any] | None = None
    for _ in range(ROUNDS):
        for name, (v, args) in validators.items():
            got = measure_samples(
                {"check()": loop1(v.check, args), "Validator() (raises)": loop1(v, args)},
                REPEATS // ROUNDS,
            )
            for label, samples in got.items():
                ours[name][label].extend(samples)
        if python is not None:
            old, reason = run_baseline(python, REPEATS // ROUNDS)
            if old is None:
                python = None
            else:
                for name, samples in old["samples"].items():
                    old_samples[name].extend(samples)
    print(f"{'payload':<8} {'validator':<34} {'median':>9} {'best':>9}")
    for name, results in ours.items():
        for label, samples in results.items():
            median, best = summary(samples)
            print(f"{name:<8} {'compiled ' + label:<34} {median:>9.0f} {best:>9.0f}")
        if old is not None:
            median, best = summary(old_samples[name])
            print(f"{name:<8} {'0.0.20 validate_args()':<34} {median:>9.0f} {best:>9.0f}")
    print()
    if old is None:  # no 0.0.20 interpreter, or a run of it failed
        print(f"SKIPPED 0.0.20 comparison: {reason}")
        return
    print(
        f"(0.0.20 = service-framework {old['version']} at {old['file']}; "
        f"its DEBUG logging enabled: {old['debug_logging_enabled']}; "
        f"{ROUNDS} rounds alternating with this process)"
    )
    for name, target in (("flat", 8.0), ("nested", 3.0)):
        old_median = summary(old_samples[name])[0]
        speedup = old_median / summary(ours[name]["check()"])[0]
        via_call = old_median / summary(ours[name]["Validator() (raises)"])[0]
        print(
            f"RATIO validation {name:<6} compiled check() is {speedup:.1f}x faster than 0.0.20 "
            f"(target >= {target:g}x: {verdict(speedup >= target)}; via Validator(): "
            f"{via_call:.1f}x)"
        )


def main() -> int:
    print(f"python {sys.version.split()[0]}, msgpack {'.'.join(map(str, msgpack.version))}")
    print(
        "method: perf_counter_ns loops of ~40 ms, gc off in the loop, calibrated and warmed "
        f"up, median of {REPEATS} interleaved repeats"
    )
    print()
    part_wire()
    part_baseline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
