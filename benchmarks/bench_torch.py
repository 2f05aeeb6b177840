"""Overhead of the torch integration, as ratios against a bare loop in the same process.

Each configuration alternates bare and profiled rounds (order flipped every round, GC on); a
round is one epoch over a DataLoader and is timed as a whole. A profiled round's time includes
its epoch-end snapshot and ends with ``ci.flush()``, so sealing and writing all of its records
is charged to it too (the flusher shares the GIL with the loop: its CPU is overhead the user
pays). We report medians of the per-step times and their ratio. ``torch.set_num_threads(1)`` keeps a 2-core machine's numbers
steady. The snapshot benchmark times the statistics of a 25M-parameter model directly.

``mlp_floor`` is a reference, not cirron: the same MLP loop with trivial hooks at the very
points cirron hooks (forward pre/post hooks on the model, ``torch.autograd.backward``, the
optimizer's step pre/post hooks, ``DataLoader`` iterators' ``__next__``), each appending one
clock read to a list, and ``loss.item()`` per step. It is what any profiler built on these
hooks pays at least on this machine, before recording anything.

    python benchmarks/bench_torch.py [--quick]     # writes benchmarks/results/torch.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

import cirron as ci

BUDGETS = {"mlp_hooks": 1.03, "cnn_hooks": 1.01, "mlp_epochs_batches": 1.03}


class Batches(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Whole batches by index list: the DataLoader costs a few µs per batch, not a collate."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.x[idx], self.y[idx]


def loader(x: torch.Tensor, y: torch.Tensor, batch: int) -> DataLoader[Any]:
    sampler = BatchSampler(SequentialSampler(range(len(x))), batch, drop_last=True)
    return DataLoader(Batches(x, y), sampler=sampler, batch_size=None)


def mlp() -> tuple[nn.Module, DataLoader[Any]]:
    model = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    return model, loader(torch.randn(64 * 200, 32), torch.randint(0, 10, (64 * 200,)), 64)


def cnn() -> tuple[nn.Module, DataLoader[Any]]:
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    return model, loader(torch.randn(32 * 60, 3, 32, 32), torch.randint(0, 10, (32 * 60,)), 32)


def epoch_bare(model: nn.Module, opt: Any, data: DataLoader[Any]) -> int:
    n = 0
    for x, y in data:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += 1
    return n


def epoch_hooks(model: nn.Module, opt: Any, data: DataLoader[Any]) -> int:
    n = 0
    for x, y in data:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ci.mark("loss", loss)
        n += 1
    return n


def epoch_explicit(model: nn.Module, opt: Any, data: DataLoader[Any]) -> int:
    n = 0
    for _ in ci.epochs(range(1)):
        for x, y in ci.batches(data):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ci.mark("loss", loss)
            n += 1
    return n


def epoch_floor(model: nn.Module, opt: Any, data: DataLoader[Any]) -> int:
    n = 0
    sink = _FLOOR_TIMES.append
    for x, y in data:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sink(loss.item())
        n += 1
    return n


_FLOOR_TIMES: list[Any] = []


def trivial_hooks(model: nn.Module) -> Callable[[], None]:
    """Install the floor's hooks (see the module docstring); returns their removal."""
    from time import perf_counter_ns as clock

    import torch.optim.optimizer as optim_mod
    from torch.utils.data import dataloader as dl_mod

    add = _FLOOR_TIMES.append
    it_cls = dl_mod._BaseDataLoaderIter
    orig_next = it_cls.__dict__["__next__"]
    orig_backward = torch.autograd.backward

    def __next__(self: Any) -> Any:
        add(clock())
        item = orig_next(self)
        add(clock())
        return item

    def backward(*args: Any, **kwargs: Any) -> Any:
        add(clock())
        try:
            return orig_backward(*args, **kwargs)
        finally:
            add(clock())

    handles = [
        model.register_forward_pre_hook(lambda m, a: add(clock())),
        model.register_forward_hook(lambda m, a, o: add(clock()), always_call=True),
        optim_mod.register_optimizer_step_pre_hook(lambda o, a, k: add(clock())),
        optim_mod.register_optimizer_step_post_hook(lambda o, a, k: add(clock())),
    ]
    it_cls.__next__ = __next__  # type: ignore[method-assign,assignment]
    torch.autograd.backward = backward

    def remove() -> None:
        for h in handles:
            h.remove()
        it_cls.__next__ = orig_next  # type: ignore[method-assign]
        torch.autograd.backward = orig_backward
        _FLOOR_TIMES.clear()

    return remove


def per_step(run: Callable[[], int], *, flush: bool = False) -> float:
    t0 = time.perf_counter_ns()
    n = run()
    if flush:
        ci.flush()  # seal and write the round's records inside the timed region
    return (time.perf_counter_ns() - t0) / n / 1e3


def compare(
    make: Callable[[], tuple[nn.Module, DataLoader[Any]]],
    profiled: Callable[..., int],
    rounds: int,
    spool: Path,
    *,
    floor: bool = False,
) -> dict[str, Any]:
    torch.manual_seed(0)
    model, data = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        epoch_bare(model, opt, data)  # warm-up
    bare: list[float] = []
    prof: list[float] = []
    for r in range(rounds):
        for which in (0, 1) if r % 2 == 0 else (1, 0):
            if which == 0:
                bare.append(per_step(lambda: epoch_bare(model, opt, data)))
            elif floor:
                remove = trivial_hooks(model)
                prof.append(per_step(lambda: profiled(model, opt, data)))
                remove()
            else:
                ci.profile(path=spool)
                ci.watch(model)
                prof.append(per_step(lambda: profiled(model, opt, data), flush=True))
                ci.shutdown()
    b, p = statistics.median(bare), statistics.median(prof)
    return {
        "bare_us_per_step": round(b, 2),
        "profiled_us_per_step": round(p, 2),
        "overhead_us_per_step": round(p - b, 2),
        "ratio": round(p / b, 4),
        "ratio_of_minimums": round(min(prof) / min(bare), 4),
        "rounds": rounds,
    }


def snapshot_25m(repeats: int) -> dict[str, Any]:
    from cirron.core.snapshots import SnapshotWriter
    from cirron.integrations.torch_watch import Watched

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(6)])
    params = sum(p.numel() for p in model.parameters())
    queue: list[dict[str, Any]] = []
    w = Watched(SnapshotWriter(mode="stats", sample_rate=0.0, queue=queue, new_id=lambda: "0" * 32))
    w.add(model)
    weights_ms = [_timed(lambda: w.capture("1" * 32)) for _ in range(repeats)]
    model(torch.randn(4, 2048)).sum().backward()
    both_ms = [_timed(lambda: w.capture("1" * 32)) for _ in range(repeats)]
    return {
        "parameters": params,
        "weights_ms": round(statistics.median(weights_ms), 1),
        "weights_and_gradients_ms": round(statistics.median(both_ms), 1),
        "budget_ms": 100,
        "repeats": repeats,
    }


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer rounds (a rough number)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "torch.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rounds = 7 if args.quick else 25
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        spool = Path(tmp) / ".cirron"
        results["mlp_hooks"] = compare(mlp, epoch_hooks, rounds, spool)
        results["mlp_floor"] = compare(mlp, epoch_floor, rounds, spool, floor=True)
        results["cnn_hooks"] = compare(cnn, epoch_hooks, rounds, spool)
        results["mlp_epochs_batches"] = compare(mlp, epoch_explicit, rounds, spool)
    results["snapshot_25m_cpu"] = snapshot_25m(3 if args.quick else 7)
    print(
        f"{'benchmark':<22}{'bare µs/step':>14}{'cirron µs/step':>16}{'ratio':>9}"
        f"{'min ratio':>11}{'budget':>9}"
    )
    for name, budget in BUDGETS.items():
        r = results[name]
        print(
            f"{name:<22}{r['bare_us_per_step']:>14}{r['profiled_us_per_step']:>16}"
            f"{r['ratio']:>9.3f}{r['ratio_of_minimums']:>11.3f}{budget:>9.2f}"
        )
    r = results["mlp_floor"]
    print(
        f"{'mlp_floor (no cirron)':<22}{r['bare_us_per_step']:>14}{r['profiled_us_per_step']:>16}"
        f"{r['ratio']:>9.3f}{r['ratio_of_minimums']:>11.3f}{'-':>9}"
    )
    s = results["snapshot_25m_cpu"]
    print(
        f"snapshot stats, {s['parameters']:,} params: weights {s['weights_ms']} ms, "
        f"weights+gradients {s['weights_and_gradients_ms']} ms (budget {s['budget_ms']} ms)"
    )
    results["meta"] = {
        "quick": args.quick,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
