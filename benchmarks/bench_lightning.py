"""Cost of the Lightning callback, against the budgets of DESIGN.md §4.

1. Per-batch work: the callback's training-batch hooks (batch start, before/after backward,
   before optimizer step, the post-step hook, batch end with a tensor loss mark) called directly
   in a loop inside an open epoch, profiler active, GC on; the same loop calling no-op methods is
   the baseline. Budget ≤ 5 µs per batch. An evaluation batch (start + end) is shown too.
2. A whole tiny-model fit (an MLP on CPU, one epoch), without the callback and with it,
   interleaved in one process, medians. Two "with" variants: the callback alone (a session
   started with ``frameworks=[]``) and the zero-config default (``CirronCallback()`` starting
   the session itself: torch hooks and per-epoch snapshots included). Each "with" round shuts
   the session down afterwards, so the bare rounds run without any cirron hook. Reported as the
   whole ``fit()`` wall time (ending with ``ci.flush()``: sealing and writing the fit's records
   count) and the steady-state time per training step. Budget ≤ 3 %. A "floor" variant (not
   cirron) does trivial work at the same hooks: what timing these points costs at least.

    .venv/bin/python benchmarks/bench_lightning.py            # full run (~4 min)
    .venv/bin/python benchmarks/bench_lightning.py --quick    # a smoke run (~1 min)

Fits run with ``torch.set_num_threads(1)``. Besides wall time, the steady-state step is also
measured as CPU time of the training thread, which load from other processes barely moves; a
no-op ``L.Callback()`` variant shows what Lightning itself charges per extra callback (every
hook is dispatched to every callback through a profiler context manager).

Writes benchmarks/results/lightning.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from time import perf_counter_ns, thread_time_ns
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning.pytorch as L  # noqa: E402
import torch  # noqa: E402

import cirron as ci  # noqa: E402
from cirron.integrations.lightning import CirronCallback  # noqa: E402

PER_BATCH_BUDGET_US = 5.0
FIT_BUDGET_PCT = 3.0

warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("lightning").setLevel(logging.ERROR)


# -- 1. per-batch hook cost --------------------------------------------------------------------


class _NoHooks:
    """The baseline: the same calls into methods that do nothing."""

    def on_train_batch_start(self, *a: Any) -> None: ...
    def on_before_backward(self, *a: Any) -> None: ...
    def on_after_backward(self, *a: Any) -> None: ...
    def on_before_optimizer_step(self, *a: Any) -> None: ...
    def _after_step(self, *a: Any) -> None: ...
    def on_train_batch_end(self, *a: Any) -> None: ...
    def on_validation_batch_start(self, *a: Any) -> None: ...
    def on_validation_batch_end(self, *a: Any) -> None: ...


def _train_loop(
    cb: Any, trainer: Any, module: Any, batch: Any, out: Any, opt: Any
) -> Callable[[int], None]:
    def run(n: int) -> None:
        for i in range(n):
            cb.on_train_batch_start(trainer, module, batch, i)
            cb.on_before_backward(trainer, module, out["loss"])
            cb.on_after_backward(trainer, module)
            cb.on_before_optimizer_step(trainer, module, opt)
            cb._after_step(opt, (), {})
            cb.on_train_batch_end(trainer, module, out, batch, i)

    return run


def _eval_loop(cb: Any, trainer: Any, module: Any, batch: Any) -> Callable[[int], None]:
    def run(n: int) -> None:
        for i in range(n):
            cb.on_validation_batch_start(trainer, module, batch, i)
            cb.on_validation_batch_end(trainer, module, None, batch, i)

    return run


def bench_hooks(n: int, rounds: int) -> dict[str, float]:
    tmp = tempfile.mkdtemp(prefix="cirron-bench-lightning-")
    c = ci.Cirron(output_dir=tmp)
    c.profile(frameworks=[])
    cb = CirronCallback(cirron=c, snapshots=False)
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    trainer = SimpleNamespace(
        current_epoch=0,
        world_size=1,
        global_rank=0,
        local_rank=0,
        callbacks=[cb],
        optimizers=[opt],
        accumulate_grad_batches=1,
        sanity_checking=False,
        callback_metrics={},
        should_stop=False,
    )
    module = SimpleNamespace(automatic_optimization=True)
    batch = (torch.zeros(32, 8), torch.zeros(32, 1))
    out = {"loss": torch.tensor(0.5)}
    cb.setup(trainer, None, "fit")
    cb.on_train_start(trainer, module)
    cb.on_train_epoch_start(trainer, module)
    base = _NoHooks()
    loops = {
        "train": (
            _train_loop(base, trainer, module, batch, out, opt),
            _train_loop(cb, trainer, module, batch, out, opt),
        ),
    }
    results: dict[str, float] = {}
    for name, (bare, timed) in loops.items():
        _record(results, name, _interleaved(bare, timed, n, rounds, c))
    cb.on_train_epoch_end(trainer, module)
    cb.on_validation_start(trainer, module)
    _record(
        results,
        "eval",
        _interleaved(
            _eval_loop(base, trainer, module, batch),
            _eval_loop(cb, trainer, module, batch),
            n,
            rounds,
            c,
        ),
    )
    cb.on_validation_end(trainer, module)
    cb.teardown(trainer, module, "fit")
    c.shutdown()
    return results


def _record(results: dict[str, float], name: str, m: tuple[float, float, float, float]) -> None:
    bw, tw, bc, tc = m
    results.update(
        {
            f"{name}_baseline_us": bw,
            f"{name}_total_us": tw,
            f"{name}_cost_us": tw - bw,
            f"{name}_cpu_baseline_us": bc,
            f"{name}_cpu_total_us": tc,
            f"{name}_cpu_cost_us": tc - bc,
        }
    )


def _interleaved(
    bare: Callable[[int], None], timed: Callable[[int], None], n: int, rounds: int, c: Any
) -> tuple[float, float, float, float]:
    """Median µs per batch of ``bare`` and ``timed``, measured alternately: wall time, and CPU
    time of this thread (one clock read per round, so its cost does not count)."""
    bw, tw, bc, tc = [], [], [], []
    for _ in range(rounds):
        for fn, wall, cpu in ((bare, bw, bc), (timed, tw, tc)):
            c0, t0 = thread_time_ns(), perf_counter_ns()
            fn(n)
            wall.append((perf_counter_ns() - t0) / n / 1e3)
            cpu.append((thread_time_ns() - c0) / n / 1e3)
        c.flush()  # drain outside the timed region, as the flusher thread would
    med = statistics.median
    return med(bw), med(tw), med(bc), med(tc)


# -- 2. whole fits -----------------------------------------------------------------------------


class Mlp(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)
        )

    def forward(self, x: Any) -> Any:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class StepClock(L.Callback):
    """Steady state per step, from the start of batch ``warmup`` to the end of the last one:
    wall time, and CPU time of the training thread (which other processes' load barely moves)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.w0 = self.w1 = self.c0 = self.c1 = 0
        self.n = 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, i: int) -> None:
        if i == self.warmup:
            self.w0, self.c0 = perf_counter_ns(), thread_time_ns()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, o: Any, b: Any, i: int) -> None:
        self.w1, self.c1 = perf_counter_ns(), thread_time_ns()
        self.n = i - self.warmup + 1

    def per_step_us(self) -> tuple[float, float]:
        return (self.w1 - self.w0) / self.n / 1e3, (self.c1 - self.c0) / self.n / 1e3


def _loader(batches: int) -> Any:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(batches * 32, 32, generator=g), torch.randn(batches * 32, 1, generator=g)
    )
    return torch.utils.data.DataLoader(data, batch_size=32)


class FloorCallback(L.Callback):  # type: ignore[misc]
    """Not cirron: trivial work at the hooks CirronCallback uses (a clock read appended per
    hook, the optimizer's post-step hook too, the loss read per batch). What any callback that
    times these points pays at least."""

    def __init__(self) -> None:
        self.t: list[Any] = []
        self.handles: list[Any] = []

    def _tick(self, *args: Any, **kwargs: Any) -> None:
        self.t.append(perf_counter_ns())

    on_train_batch_start = on_before_backward = on_after_backward = _tick
    on_before_optimizer_step = _tick

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.handles = [opt.register_step_post_hook(self._tick) for opt in trainer.optimizers]

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        for h in self.handles:
            h.remove()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.t.append(perf_counter_ns())
        self.t.append(outputs["loss"].item())


VARIANTS = {
    "bare": "no callback",
    "noop": "a no-op L.Callback (Lightning's own per-callback dispatch)",
    "floor": "FloorCallback: trivial work at the same hooks (not cirron)",
    "callback": "CirronCallback, session started with frameworks=[] (the callback alone)",
    "zero_config": "CirronCallback() starting the session itself (torch hooks, snapshots)",
}


def _fit(variant: str, loader: Any, workdir: Path) -> tuple[float, float, float]:
    torch.manual_seed(0)
    clock = StepClock(warmup=10)
    callbacks: list[Any] = [clock]
    if variant == "noop":
        callbacks.append(L.Callback())
    elif variant == "floor":
        callbacks.append(FloorCallback())
    elif variant == "callback":
        ci.profile(frameworks=[], path=str(workdir / ".cirron"))
        callbacks.append(CirronCallback(snapshots=False))
    elif variant == "zero_config":
        callbacks.append(CirronCallback())
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
    )
    model = Mlp()
    t0 = perf_counter_ns()
    trainer.fit(model, loader)
    ci.flush()  # sealing and writing the fit's records count in its time (nothing, without)
    fit_ms = (perf_counter_ns() - t0) / 1e6
    ci.shutdown()  # the next bare round runs with no cirron hook installed
    wall_us, cpu_us = clock.per_step_us()
    return fit_ms, wall_us, cpu_us


def bench_fit(batches: int, rounds: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="cirron-bench-fit-"))
    os.chdir(workdir)  # the zero-config session writes ./.cirron here
    loader = _loader(batches)
    names = list(VARIANTS)
    for v in names:  # warm up imports, allocator, Lightning's first-fit work
        _fit(v, loader, workdir)
    runs: dict[str, list[tuple[float, float, float]]] = {v: [] for v in names}
    for r in range(rounds):
        for v in names if r % 2 == 0 else names[::-1]:
            runs[v].append(_fit(v, loader, workdir))
    out: dict[str, Any] = {
        "batches_per_fit": batches,
        "rounds": rounds,
        "torch_threads": torch.get_num_threads(),
        "variants": VARIANTS,
    }
    for v in names:
        cols = list(zip(*runs[v], strict=True))
        out[v] = {
            k: statistics.median(c)
            for k, c in zip(("fit_ms", "step_us", "step_cpu_us"), cols, strict=True)
        }
        if v == "bare":
            continue
        for ref in ("bare", "noop") if v != "noop" else ("bare",):
            for i, k in enumerate(("fit", "step", "step_cpu")):
                # Median of per-round ratios: each pair ran back to back, so drift cancels.
                ratios = [a[i] / b[i] for a, b in zip(runs[v], runs[ref], strict=True)]
                out[v][f"{k}_vs_{ref}_pct"] = (statistics.median(ratios) - 1) * 100
    return out


# -- report ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer rounds: a smoke run")
    args = ap.parse_args()
    n, hook_rounds = (2_000, 21) if args.quick else (5_000, 61)
    batches, fit_rounds = (100, 11) if args.quick else (200, 41)
    torch.set_num_threads(1)  # intra-op threads would fight the other processes for the cores
    results: dict[str, Any] = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "quick": args.quick,
    }
    results["hooks"] = bench_hooks(n, hook_rounds)
    results["fit"] = bench_fit(batches, fit_rounds)
    _print(results)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "lightning.json").write_text(json.dumps(results, indent=2) + "\n")


def _print(r: dict[str, Any]) -> None:
    h, f = r["hooks"], r["fit"]
    rows = [
        (
            "callback work per training batch",
            f"{h['train_cpu_cost_us']:.2f} µs CPU, "
            f"{h['train_cost_us']:.2f} µs wall (the calls alone: {h['train_cpu_baseline_us']:.2f})",
            f"≤ {PER_BATCH_BUDGET_US:g} µs",
        ),
        (
            "callback work per validation batch",
            f"{h['eval_cpu_cost_us']:.2f} µs CPU, {h['eval_cost_us']:.2f} µs wall",
            "",
        ),
        (
            "fit, no callback",
            f"{f['bare']['fit_ms']:.0f} ms; per step {f['bare']['step_us']:.0f} µs"
            f" wall, {f['bare']['step_cpu_us']:.0f} µs CPU",
            "",
        ),
    ]
    for v, label in (
        ("noop", "no-op L.Callback"),
        ("floor", "trivial timing callback (floor)"),
        ("callback", "CirronCallback alone"),
        ("zero_config", "CirronCallback zero-config"),
    ):
        d = f[v]
        rows.append(
            (
                f"fit, {label}",
                f"fit {d['fit_vs_bare_pct']:+.1f} %; per step "
                f"{d['step_vs_bare_pct']:+.1f} % wall, {d['step_cpu_vs_bare_pct']:+.1f} % CPU",
                f"≤ {FIT_BUDGET_PCT:g} %" if v not in ("noop", "floor") else "",
            )
        )
        if v not in ("noop", "floor"):
            rows.append(
                (
                    "   same, vs the no-op callback",
                    f"fit {d['fit_vs_noop_pct']:+.1f} %; "
                    f"per step {d['step_vs_noop_pct']:+.1f} % wall, "
                    f"{d['step_cpu_vs_noop_pct']:+.1f} % CPU",
                    "",
                )
            )
    width = max(len(name) for name, _, _ in rows)
    print(f"{'measure':<{width}}  {'result (medians of interleaved rounds)':<58} budget")
    for name, value, budget in rows:
        print(f"{name:<{width}}  {value:<58} {budget}")


if __name__ == "__main__":
    main()
