"""Watched torch models and their snapshots at epoch boundaries.

Each watched model contributes one record per parameter and one per existing gradient
(``<name>.grad``). With one watched model the names are ``model.named_parameters()``'s own; with
several (a GAN's generator and discriminator), each name is prefixed by the model's class name
(``Generator.fc.weight``), plus ``_<n>`` when two watched models share a class name, so every
tensor name in a snapshot is unique.
"""

from __future__ import annotations

from typing import Any

import torch

from cirron.core.snapshots import RawStats, SnapshotWriter
from cirron.integrations.torch_stats import tensor_stats

__all__ = ["Watched"]


class Watched:
    """The models one profiling session snapshots, and the capture itself."""

    def __init__(self, writer: SnapshotWriter) -> None:
        self.writer = writer
        self.models: list[torch.nn.Module] = []
        self.strategy: str | None = None  # None: by device

    def add(self, model: torch.nn.Module) -> bool:
        if any(m is model for m in self.models):
            return False
        self.models.append(model)
        return True

    def prefixes(self) -> list[str]:
        if len(self.models) == 1:
            return [""]
        names = [type(m).__name__ for m in self.models]
        out = []
        for i, n in enumerate(names):
            dup = names.count(n) > 1
            out.append(f"{n}_{names[:i].count(n)}." if dup else f"{n}.")
        return out

    def tensors(self) -> tuple[list[tuple[str, torch.Tensor]], list[tuple[str, torch.Tensor]]]:
        weights: list[tuple[str, torch.Tensor]] = []
        grads: list[tuple[str, torch.Tensor]] = []
        for prefix, model in zip(self.prefixes(), self.models, strict=True):
            for name, p in model.named_parameters():
                if not p.is_floating_point():
                    continue
                weights.append((prefix + name, p.detach()))
                g = p.grad
                if g is not None and not g.is_sparse:
                    grads.append((prefix + name + ".grad", g.detach()))
        return weights, grads

    def capture(self, span_id: str) -> int:
        """Statistics (and, when drawn, raw tensors) of every watched model; returns the number
        of records queued."""
        if not self.models:
            return 0
        weights, grads = self.tensors()
        with torch.no_grad():
            w_stats = _tag(tensor_stats(weights, self.strategy), "weight")
            g_stats = _tag(tensor_stats(grads, self.strategy), "gradient")
        arrays = None
        if self.writer.wants_blobs():
            arrays = (_arrays(weights), _arrays(grads))
        return self.writer.write(span_id, w_stats, g_stats, arrays)


def _tag(stats: list[RawStats], kind: str) -> list[RawStats]:
    for s in stats:
        s.attrs["kind"] = kind
    return stats


def _arrays(named: list[tuple[str, torch.Tensor]]) -> dict[str, Any]:
    out = {}
    for name, t in named:
        x = t.detach()
        if x.dtype not in (torch.float16, torch.float32, torch.float64):
            x = x.float()  # numpy has no bfloat16
        out[name] = x.cpu().contiguous().numpy()
    return out
