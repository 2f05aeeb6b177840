"""The bare PyTorch loop, profiled end to end: a tiny MLP on synthetic data, a few seconds on CPU.

``ci.profile()`` installs the torch hooks and ``ci.watch(model)`` adds forward timing and
per-epoch weight/gradient statistics. The loop itself is untouched apart from one
``ci.mark("loss", loss)`` (a tensor: no ``.item()``, no sync). At the end it prints the trace
tree and a one-line summary (epochs, mean step time, data stall share, final loss).

    python examples/train_torch.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import cirron as ci


def main(epochs: int = 3) -> None:
    profiler = ci.profile()
    torch.manual_seed(0)
    x = torch.randn(2048, 20)
    y = (x[:, :10].sum(dim=1) > x[:, 10:].sum(dim=1)).long()  # a learnable rule
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2))
    ci.watch(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()

    for _ in range(epochs):
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ci.mark("loss", loss)

    session_id = profiler.session_id
    ci.shutdown()  # optional (atexit does it); here it closes the session before reading it
    print(ci.trace())
    from cirron.core import trace

    data = trace.load_dir(Path(ci._get().settings.output_dir) / "spool")
    print(trace.summary(data, session_id))


if __name__ == "__main__":
    main()
