"""Hot-path costs of the core, against the budgets of DESIGN.md §4.

Every number is a median over interleaved rounds in one process: a bare baseline round, then the
same loop with cirron, alternately, so machine noise hits both alike. The profiler is active
and the garbage collector on. Costs are reported as (profiled - baseline) per operation.

    .venv/bin/python benchmarks/bench_core.py            # full run (~1 min)
    .venv/bin/python benchmarks/bench_core.py --quick    # a smoke run

Writes benchmarks/results/core.json.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from time import perf_counter_ns

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cirron as ci  # noqa: E402

BUDGETS_NS = {"mark": 300, "scope": 700, "batches": 500}


def interleaved(
    bare: Callable[[int], None], timed: Callable[[int], None], n: int, rounds: int
) -> tuple[float, float]:
    """Median ns per iteration of ``bare`` and ``timed``, measured alternately.

    The flusher sleeps during timed rounds (``HOT_ONLY``) or works every 50 ms (all-in); the
    records of each round are sealed between rounds, untimed, so buffers never overflow.
    """
    b, t = [], []
    for _ in range(rounds):
        for fn, out in ((bare, b), (timed, t)):
            t0 = perf_counter_ns()
            fn(n)
            out.append((perf_counter_ns() - t0) / n)
        ci.flush()
    return statistics.median(b), statistics.median(t)


def seal_cost(make: Callable[[int], None], n: int, rounds: int) -> float:
    """Flusher CPU per record: the time to seal and write ``n`` records, per record."""
    costs = []
    for _ in range(rounds):
        make(n)
        t0 = time.thread_time_ns()
        ci.flush()
        costs.append((time.thread_time_ns() - t0) / n)
    return statistics.median(costs)


def bench_mark(n: int, rounds: int) -> dict[str, float]:
    mark = ci.mark

    def bare(k: int) -> None:
        def f(name: str, value: float, *, kind: str = "point", **attrs: object) -> None:
            pass

        for _ in range(k):
            f("loss", 0.5)

    def timed(k: int) -> None:
        for _ in range(k):
            mark("loss", 0.5)

    base, with_ci = interleaved(bare, timed, n, rounds)
    return {"baseline_ns": base, "total_ns": with_ci, "cost_ns": with_ci - base}


def bench_scope(n: int, rounds: int) -> dict[str, float]:
    scope = ci.scope

    class Null:
        __slots__ = ("name",)

        def __init__(self, name: str, index: int | None = None, **attrs: object) -> None:
            self.name = name

        def __enter__(self) -> Null:
            return self

        def __exit__(self, *a: object) -> None:
            return None

    def bare(k: int) -> None:
        for _ in range(k):
            with Null("step"):
                pass

    def timed(k: int) -> None:
        for _ in range(k):
            with scope("step"):
                pass

    base, with_ci = interleaved(bare, timed, n, rounds)
    # The cost of cirron's scope is everything beyond a plain `for` loop: the baseline here is
    # an empty context manager, reported separately so the total can be judged too.
    loop = _loop_ns(n)
    # A reference, not cirron: the least any span recorder does (see MinimalSpan).
    _, minimal = interleaved(bare, lambda k: _minimal_spans(k), n, rounds)
    return {
        "empty_cm_ns": base - loop,
        "total_ns": with_ci - loop,
        "cost_ns": with_ci - base,
        "minimal_span_ns": minimal - loop,
    }


_MIN_STACK: ContextVar[object] = ContextVar("minimal_span", default=None)
_MIN_IDS = itertools.count(1)
_MIN_RECORDS: deque[tuple[int, object, str, int, int]] = deque(maxlen=65_536)


class MinimalSpan:
    """The least a span recorder can do in a ``with``: an id, the parent, two clock reads, a
    context-variable push and pop, one record. No per-thread buffers, depth limit, drop
    counting, index or attributes: what ``scope`` has over this is what those cost."""

    __slots__ = ("id", "name", "parent", "start")

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> MinimalSpan:
        self.parent = _MIN_STACK.get()
        self.id = next(_MIN_IDS)
        _MIN_STACK.set(self)
        self.start = perf_counter_ns()
        return self

    def __exit__(self, *a: object) -> None:
        end = perf_counter_ns()
        _MIN_STACK.set(self.parent)
        _MIN_RECORDS.append((self.id, self.parent, self.name, self.start, end))


def _minimal_spans(k: int) -> None:
    for _ in range(k):
        with MinimalSpan("step"):
            pass


def _loop_ns(n: int) -> float:
    t0 = perf_counter_ns()
    for _ in range(n):
        pass
    return (perf_counter_ns() - t0) / n


def bench_batches(n: int, rounds: int) -> dict[str, float]:
    data = list(range(n))

    def bare(k: int) -> None:
        for _ in data[:k]:
            pass

    def timed(k: int) -> None:
        for _ in ci.batches(data[:k]):
            pass

    base, with_ci = interleaved(bare, timed, n, rounds)
    return {"baseline_ns": base, "total_ns": with_ci, "cost_ns": with_ci - base}


def bench_import(runs: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRRON_")}
    env["PYTHONPATH"] = str(ROOT)

    def run(code: str) -> float:
        t0 = perf_counter_ns()
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        return (perf_counter_ns() - t0) / 1e6

    bare, with_ci = [], []
    for _ in range(runs):
        bare.append(run("pass"))
        with_ci.append(run("import cirron"))
    code = (
        "import sys, time; t=time.perf_counter(); import cirron; print((time.perf_counter()-t)*1e3)"
    )
    inproc = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
            ).stdout
        )
        for _ in range(runs)
    ]
    return {
        "import_ms_in_process": statistics.median(inproc),
        "process_delta_ms": statistics.median(with_ci) - statistics.median(bare),
    }


def bench_memory(total: int) -> dict[str, float]:
    import psutil

    proc = psutil.Process()
    gc.collect()

    def full_gc_ms() -> float:
        t0 = perf_counter_ns()
        gc.collect()
        return (perf_counter_ns() - t0) / 1e6

    gc_before = statistics.median(full_gc_ms() for _ in range(5))
    objects0 = len(gc.get_objects())
    rss0 = proc.memory_info().rss
    step = total // 10
    rss_series = []
    for i in range(10):
        with ci.scope("chunk", index=i):
            for k in range(step):
                ci.mark("v", k)
        rss_series.append(proc.memory_info().rss - rss0)
    ci.flush()
    gc_after = statistics.median(full_gc_ms() for _ in range(5))
    return {
        "marks": total,
        "gc_tracked_objects_delta": len(gc.get_objects()) - objects0,
        "rss_growth_mb_after_10pct": rss_series[0] / 2**20,
        "rss_growth_mb_at_end": rss_series[-1] / 2**20,
        "full_gc_ms_before": gc_before,
        "full_gc_ms_after": gc_after,
        "mark_drops": ci.health()["drops"]["marks"],
    }


def bench_stall(seconds: float, rate: int) -> dict[str, float]:
    """Largest gap between consecutive 100 µs ticks of a training-like loop marking at
    ``rate`` marks/s, with the flusher working every 50 ms, vs the same loop bare."""
    period_ns = 1_000_000_000 // rate

    def run(profiled: bool) -> list[int]:
        gaps = []
        end = perf_counter_ns() + int(seconds * 1e9)
        last = perf_counter_ns()
        nxt = last
        while last < end:
            nxt += period_ns
            while perf_counter_ns() < nxt:
                pass
            if profiled:
                ci.mark("loss", 0.5, step=1)
            now = perf_counter_ns()
            gaps.append(now - last)
            last = now
        return gaps

    bare_max, prof_max = [], []
    for _ in range(3):
        bare_max.append(max(run(False)) / 1e6)
        prof_max.append(max(run(True)) / 1e6)
    return {
        "rate_marks_per_s": rate,
        "max_gap_ms_bare": statistics.median(bare_max),
        "max_gap_ms_profiled": statistics.median(prof_max),
        "stall_ms": max(0.0, statistics.median(prof_max) - statistics.median(bare_max)),
        "flush_latency_max_ms": ci.health()["flush_latency_max_ns"] / 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, rounds = (20_000, 5) if args.quick else (100_000, 15)
    os.chdir(tempfile.mkdtemp(prefix="cirron-bench-"))
    results: dict[str, object] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    results["import"] = bench_import(5 if args.quick else 15)
    # 1. The hot path alone: the flusher sleeps while a round runs (no wake-ups).
    ci.profile(frameworks=[], flush_interval=3600)
    ci._REC.wake = lambda: None
    hot_n = min(n, 20_000)  # below the 65,536-record buffer: nothing is dropped
    results["mark"] = bench_mark(hot_n, rounds)
    results["scope"] = bench_scope(hot_n, rounds)
    results["batches"] = bench_batches(hot_n, rounds)
    # 2. What sealing costs the process per record (it shares the GIL with the loop).
    mark, scope = ci.mark, ci.scope

    def marks(k: int) -> None:
        with scope("chunk"):
            for _ in range(k):
                mark("loss", 0.5)

    def spans(k: int) -> None:
        for _ in range(k):
            with scope("step"):
                pass

    results["seal_ns_per_mark"] = seal_cost(marks, hot_n, rounds)
    results["seal_ns_per_span"] = seal_cost(spans, hot_n, rounds)
    ci.shutdown()
    # 3. All in: the flusher working every 50 ms while the loop runs.
    ci.profile(frameworks=[], flush_interval=0.05)
    results["mark_all_in"] = bench_mark(n, rounds)
    results["scope_all_in"] = bench_scope(n, rounds)
    results["stall"] = bench_stall(0.5 if args.quick else 2.0, 10_000)
    results["memory"] = bench_memory(200_000 if args.quick else 1_000_000)
    ci.shutdown()
    rows = [
        (
            "import cirron (in process)",
            f"{results['import']['import_ms_in_process']:.1f} ms",
            "≤ 50 ms",
        ),
        (
            "ci.mark (hot path)",
            f"{results['mark']['total_ns']:.0f} ns (an empty call: {results['mark']['baseline_ns']:.0f})",
            "≤ 300 ns",
        ),
        (
            "with ci.scope() (hot path)",
            f"{results['scope']['total_ns']:.0f} ns (an empty `with`: "
            f"{results['scope']['empty_cm_ns']:.0f} ns, a minimal span: "
            f"{results['scope']['minimal_span_ns']:.0f} ns)",
            "≤ 700 ns",
        ),
        ("ci.batches per item (hot path)", f"{results['batches']['cost_ns']:.0f} ns", "≤ 500 ns"),
        (
            "sealing, flusher CPU per record",
            f"mark {results['seal_ns_per_mark']:.0f} ns, span {results['seal_ns_per_span']:.0f} ns",
            "—",
        ),
        (
            "all in (flusher every 50 ms)",
            f"mark {results['mark_all_in']['total_ns']:.0f} ns, scope "
            f"{results['scope_all_in']['total_ns']:.0f} ns",
            "—",
        ),
        (
            "flusher stall at 10k marks/s",
            f"{results['stall']['stall_ms']:.2f} ms "
            f"(max gap {results['stall']['max_gap_ms_profiled']:.2f} vs "
            f"{results['stall']['max_gap_ms_bare']:.2f} ms bare)",
            "≤ 10 ms",
        ),
        (
            "RSS growth, 1M marks",
            f"{results['memory']['rss_growth_mb_at_end']:.1f} MB "
            f"(after 10%: {results['memory']['rss_growth_mb_after_10pct']:.1f} MB)",
            "bounded",
        ),
        (
            "gc-tracked objects after 1M marks",
            f"{results['memory']['gc_tracked_objects_delta']:+d}",
            "no growth",
        ),
        (
            "full gc pass before/after",
            f"{results['memory']['full_gc_ms_before']:.1f} / "
            f"{results['memory']['full_gc_ms_after']:.1f} ms",
            "no growth",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, budget in rows:
        print(f"{name:<{width}}  {value:<55} {budget}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "core.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
