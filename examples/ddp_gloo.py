"""Two-rank DistributedDataParallel on CPU (gloo), profiled by cirron on every rank.

Each rank calls ``ci.profile()`` and trains a tiny model; the torch hooks pick up the rank and
world size when ``init_process_group`` returns and agree on one run id through the process
group's store (no collective on the training path). Both ranks write to the same ``./.cirron``
spool (file names are unique), and ``cirron traces list`` shows one run with two ranks.

    python examples/ddp_gloo.py            # then: cirron traces list
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import cirron as ci


def train(rank: int, world_size: int, epochs: int) -> None:
    torch.set_num_threads(1)
    ci.profile()
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = DDP(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2)))
    ci.watch(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ds = TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,)))
    sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, seed=0)
    loader = DataLoader(ds, batch_size=8, sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ci.mark("loss", loss)
    ci.shutdown()
    leave_together(world_size)
    dist.destroy_process_group()


def leave_together(world_size: int) -> None:
    """Tear gloo down only once every rank is done with it: a rank that closes its
    connections while a peer's gloo thread still uses them can make that peer abort
    (std::terminate in gloo's I/O thread). A collective barrier alone is not enough (its last
    message may still be in flight when the first rank returns), so the ranks also meet in
    the process group's key-value store, which is no gloo connection."""
    dist.barrier()
    store = dist.distributed_c10d._get_default_store()
    store.add("example/left", 1)
    while store.add("example/left", 0) < world_size:
        time.sleep(0.005)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def report() -> None:
    """Per-rank mean step time and final loss, side by side."""
    from pathlib import Path

    from cirron.core import trace

    data = trace.load_dir(Path(".cirron") / "spool")
    for group in trace.group_runs(trace.sessions(data)):
        print(f"run {group[0].run_id}: {len(group)} rank(s)")
        for info in group:
            steps = [
                s["end_ns"] - s["start_ns"]
                for s in data.spans.values()
                if s["name"] == "batch" and s.get("session_id") == info.id
            ]
            mean_ms = statistics.fmean(steps) / 1e6 if steps else float("nan")
            print(f"  rank {info.rank}: {len(steps)} steps, mean step {mean_ms:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    mp.spawn(train, args=(args.world_size, args.epochs), nprocs=args.world_size, join=True)
    if not args.quiet:
        report()


if __name__ == "__main__":
    main()
