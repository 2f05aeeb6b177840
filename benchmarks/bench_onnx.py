"""Per-call overhead of ``ci.wrap(session).run`` over a bare ``InferenceSession.run``.

Budget (DESIGN §4, issue 7): at most 5 µs per call on a tiny model, profiling active.

Both loops run in one process on the same underlying session, interleaved round by round (the
order alternates), GC on. Each round times ``--calls`` calls of each; the result is the median
per-call time of each side and the median of the per-round differences. Prints a table and
writes ``benchmarks/results/onnx.json``.

    python benchmarks/bench_onnx.py            # 401 rounds x 250 calls
    python benchmarks/bench_onnx.py --quick    # 101 rounds x 250 calls

Rounds are short (about a millisecond) so that a scheduler hiccup on a busy machine spoils a
few rounds, which the median discards, rather than every round a little.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

import cirron as ci

BUDGET_US = 5.0
RESULTS = Path(__file__).resolve().parent / "results" / "onnx.json"


def tiny_model() -> bytes:
    """y = x + 1 on a (batch, 4) float tensor: the runtime's own cost is a few microseconds."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def time_calls(run: Any, feed: dict[str, np.ndarray], n: int) -> float:
    """Mean µs per call over ``n`` back-to-back calls."""
    t0 = perf_counter_ns()
    for _ in range(n):
        run(None, feed)
    return (perf_counter_ns() - t0) / n / 1e3


def measure(rounds: int, calls: int) -> dict[str, Any]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(tiny_model(), options, providers=["CPUExecutionProvider"])
    wrapped = ci.wrap(session)
    feed = {"x": np.ones((1, 4), dtype=np.float32)}
    for _ in range(5):  # warm up both paths
        time_calls(session.run, feed, calls)
        time_calls(wrapped.run, feed, calls)
    bare_us: list[float] = []
    wrapped_us: list[float] = []
    for r in range(rounds):
        order = [(session.run, bare_us), (wrapped.run, wrapped_us)]
        for run, out in order if r % 2 == 0 else order[::-1]:
            out.append(time_calls(run, feed, calls))
    diffs = [w - b for w, b in zip(wrapped_us, bare_us, strict=True)]
    overhead = statistics.median(diffs)
    return {
        "benchmark": "onnx_run_overhead",
        "model": "Add, input (1, 4) float32, CPUExecutionProvider, 1 intra-op thread",
        "rounds": rounds,
        "calls_per_round": calls,
        "bare_us_median": round(statistics.median(bare_us), 3),
        "wrapped_us_median": round(statistics.median(wrapped_us), 3),
        "overhead_us_median": round(overhead, 3),
        "overhead_us_p90_of_rounds": round(sorted(diffs)[int(0.9 * (len(diffs) - 1))], 3),
        "budget_us": BUDGET_US,
        "within_budget": overhead <= BUDGET_US,
        "health_drops": ci.health().get("drops", {}),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="101 rounds x 250 calls")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--calls", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rounds = args.rounds or (101 if args.quick else 401)
    calls = args.calls or 250
    with tempfile.TemporaryDirectory() as spool:
        ci.profile(frameworks=[], path=spool)
        result = measure(rounds, calls)
        ci.shutdown()
    result["quick"] = args.quick
    print(f"{'':28}{'µs/call (median)':>18}")
    print(f"{'bare session.run':28}{result['bare_us_median']:>18.2f}")
    print(f"{'ci.wrap(session).run':28}{result['wrapped_us_median']:>18.2f}")
    print(
        f"{'overhead (paired median)':28}{result['overhead_us_median']:>18.2f}"
        f"   budget {BUDGET_US:.1f} µs: {'ok' if result['within_budget'] else 'OVER'}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
