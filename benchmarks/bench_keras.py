"""Cost of the Keras callback, against the budgets of DESIGN.md §4.

1. Per-batch work: ``on_train_batch_begin`` + ``on_train_batch_end`` (with a two-metric logs
   dict, as Keras passes it) called directly in a loop inside an open epoch, profiler active, GC
   on; the same loop on Keras' no-op base ``Callback`` is the baseline. Budget ≤ 5 µs per batch.
   The batch end is also timed when it runs on another thread (what Keras does with
   ``async_safe`` callbacks on the torch and JAX backends).
2. A whole tiny-model ``fit`` (an MLP, one epoch, numpy data) without the callback and with it,
   interleaved in one process (ABBA order), medians. One session (``frameworks=[]``) stays open
   throughout; "with" passes a default ``CirronCallback()`` (per-batch marks, data_load, weight
   snapshots at epoch end), "without" passes none, so nothing records. Every fit ends with
   ``ci.flush()`` inside its timed region: sealing and writing its records are charged to it.
   TensorFlow (or torch) runs with one thread per pool, as the torch benches do. Budget ≤ 3 %.
   A third arm (not cirron) does trivial work at the same batch hooks: the floor.

    .venv/bin/python benchmarks/bench_keras.py                 # full run (~2 min)
    .venv/bin/python benchmarks/bench_keras.py --quick         # a smoke run (~40 s)
    KERAS_BACKEND=torch .venv/bin/python benchmarks/bench_keras.py --quick

Writes benchmarks/results/keras.json (keras-<backend>.json for a backend other than TensorFlow).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from time import perf_counter_ns
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

if os.environ["KERAS_BACKEND"] == "tensorflow":
    # One intra-op and one inter-op thread, as torch.set_num_threads(1) in the torch benches:
    # with TF's default pools on a 2-core machine, about one fit in six takes ~330 ms instead
    # of ~190 ms, with or without cirron, which made the ratio unmeasurable.
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
elif os.environ["KERAS_BACKEND"] == "torch":
    import torch

    torch.set_num_threads(1)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import cirron as ci  # noqa: E402
from cirron.integrations.keras import CirronCallback  # noqa: E402

BUDGET_BATCH_US = 5.0
BUDGET_FIT_PCT = 3.0


def _model(seed: int = 0) -> Any:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", metrics=["mae"])
    return model


def _hook_loop(cb: Any) -> Callable[[int], None]:
    logs = {"loss": 0.25, "mae": 0.5}

    def run(n: int) -> None:
        begin, end = cb.on_train_batch_begin, cb.on_train_batch_end
        for i in range(n):
            begin(i)
            end(i, logs)

    return run


def _interleaved(
    fns: dict[str, Callable[[int], None]],
    n: int,
    rounds: int,
    between: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Median ns per iteration of each function, measured alternately."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = perf_counter_ns()
            fn(n)
            out[name].append((perf_counter_ns() - t0) / n)
            between()
    return {k: statistics.median(v) for k, v in out.items()}


def bench_hooks(n: int, rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        ci.profile(frameworks=[], path=d)
        model = _model()
        cb = CirronCallback()
        cb.set_model(model)
        cb.set_params({"epochs": 1, "steps": n, "verbose": 0})
        base = keras.callbacks.Callback()
        cb.on_train_begin()
        cb.on_epoch_begin(0)
        med = _interleaved(
            {"bare": _hook_loop(base), "cirron": _hook_loop(cb)}, n, rounds, between=ci.flush
        )
        threaded = _threaded_ends(cb, n, rounds)
        cb.on_epoch_end(0, {"loss": 0.25})
        cb.on_train_end()
        ci.shutdown()
    return {
        "batches_per_round": n,
        "rounds": rounds,
        "baseline_us": med["bare"] / 1e3,
        "total_us": med["cirron"] / 1e3,
        "cost_us": (med["cirron"] - med["bare"]) / 1e3,
        "end_on_worker_thread_us": threaded / 1e3,
    }


def _threaded_ends(cb: Any, n: int, rounds: int) -> float:
    """Batch begins on this thread, their ends timed on a worker thread (ns per end)."""
    logs = {"loss": 0.25, "mae": 0.5}
    times: list[float] = []
    for _ in range(rounds):
        for i in range(n):
            cb.on_train_batch_begin(i)
        result: list[int] = []
        t = threading.Thread(target=_ends, args=(cb, n, logs, result))
        t.start()
        t.join()
        times.append(result[0] / n)
        ci.flush()
    return statistics.median(times)


def _ends(cb: Any, n: int, logs: dict[str, float], result: list[int]) -> None:
    t0 = perf_counter_ns()
    for i in range(n):
        cb.on_train_batch_end(i, logs)
    result.append(perf_counter_ns() - t0)


class FloorCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Not cirron: trivial work at the hooks CirronCallback uses (a clock read per batch begin
    and end, the logs read at the end). What any callback timing batches pays at least."""

    def __init__(self) -> None:
        super().__init__()
        self.t: list[Any] = []

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        self.t.append(perf_counter_ns())

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.t.append(perf_counter_ns())
        self.t.extend((logs or {}).values())


def bench_fit(batches: int, rounds: int) -> dict[str, Any]:
    x = np.random.default_rng(0).normal(size=(batches * 32, 16)).astype("float32")
    y = x[:, :1] * 0.5
    model = _model()

    def fit(callbacks: list[Any] | None) -> float:
        gc.collect()
        t0 = perf_counter_ns()
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
        ci.flush()  # sealing and writing the fit's records count too (nothing, without)
        return (perf_counter_ns() - t0) / 1e6

    arms: dict[str, Callable[[], list[Any] | None]] = {
        "bare": lambda: None,
        "floor": lambda: [FloorCallback()],
        "cirron": lambda: [CirronCallback()],
    }
    times: dict[str, list[float]] = {k: [] for k in arms}
    with tempfile.TemporaryDirectory() as d:
        # One session for every round: the bare rounds pass no callback, so nothing records
        # there (frameworks=[]: no torch hooks), and no start/stop churn sits between rounds.
        ci.profile(frameworks=[], path=d)
        for make in arms.values():  # warm up: build, trace, compile
            fit(make())
        names = list(arms)
        for r in range(rounds):  # the order reverses every round, so drift hits all alike
            for name in names if r % 2 == 0 else names[::-1]:
                times[name].append(fit(arms[name]()))
        ci.shutdown()
    b, w, fl = times["bare"], times["cirron"], times["floor"]
    ratios = sorted(wi / bi for wi, bi in zip(w, b, strict=True))
    floor_ratios = sorted(fi / bi for fi, bi in zip(fl, b, strict=True))
    return {
        "batches_per_fit": batches,
        "rounds": rounds,
        "bare_fit_ms": statistics.median(b),
        "callback_fit_ms": statistics.median(w),
        "bare_step_us": statistics.median(b) * 1e3 / batches,
        "overhead_pct": (statistics.median(w) / statistics.median(b) - 1) * 100,
        "overhead_pct_median_of_paired_ratios": (statistics.median(ratios) - 1) * 100,
        "floor_fit_ms": statistics.median(fl),
        "floor_pct_median_of_paired_ratios": (statistics.median(floor_ratios) - 1) * 100,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds: a smoke run")
    args = ap.parse_args()
    n, rounds = (500, 41) if args.quick else (500, 151)
    batches, fit_rounds = (200, 10) if args.quick else (400, 30)
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "quick": args.quick,
        "hooks": bench_hooks(n, rounds),
        "fit": bench_fit(batches, fit_rounds),
    }
    _print(results)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    backend = results["backend"]
    name = "keras.json" if backend == "tensorflow" else f"keras-{backend}.json"
    (out / name).write_text(json.dumps(results, indent=2) + "\n")


def _print(r: dict[str, Any]) -> None:
    h, f = r["hooks"], r["fit"]
    rows = [
        (
            "per-batch callback work (begin+end)",
            f"{h['cost_us']:.2f} µs  (total {h['total_us']:.2f}, no-op base {h['baseline_us']:.2f})",
            f"≤ {BUDGET_BATCH_US:g} µs",
        ),
        ("batch end on a worker thread", f"{h['end_on_worker_thread_us']:.2f} µs", "—"),
        (
            f"tiny fit, {f['batches_per_fit']} batches ({f['bare_step_us']:.0f} µs/step)",
            f"{f['bare_fit_ms']:.1f} ms → {f['callback_fit_ms']:.1f} ms: "
            f"{f['overhead_pct']:+.2f} % (paired {f['overhead_pct_median_of_paired_ratios']:+.2f} %)",
            f"≤ {BUDGET_FIT_PCT:g} %",
        ),
        (
            "same fit, trivial timing callback",
            f"{f['floor_fit_ms']:.1f} ms: paired {f['floor_pct_median_of_paired_ratios']:+.2f} %"
            " (the floor: not cirron)",
            "",
        ),
    ]
    width = max(len(a) for a, _, _ in rows)
    print(
        f"Keras {r['keras']} on {r['backend']}, Python {r['python']}, {r['cpus']} CPUs"
        f"{' (quick)' if r['quick'] else ''}"
    )
    print(f"{'measure':<{width}}  {'result':<64} budget")
    for name, value, budget in rows:
        print(f"{name:<{width}}  {value:<64} {budget}")


if __name__ == "__main__":
    main()
