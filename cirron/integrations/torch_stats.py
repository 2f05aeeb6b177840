"""Per-tensor statistics for weight and gradient snapshots, computed where the tensors live.

Two strategies, both returning :class:`cirron.core.snapshots.RawStats` (moments over the finite
values, non-finite count, 16-bucket histogram):

* ``"tensor"`` (CPU): per tensor one ``sum``, one ``dot``, one ``aminmax`` and one ``histc``;
  reading a CPU scalar is free, so this needs nothing more. A tensor whose moments come back
  non-finite (it holds NaN/inf, or overflows float32) is redone in float64 over its finite values.
* ``"segment"`` (accelerators): tensors are concatenated in chunks of whole tensors, the moments
  are segment reductions (``index_add_`` / ``scatter_reduce``) and the histogram one ``bincount``
  of ``segment * 16 + bucket``; every result stays on the device until one copy to the host per
  call. No per-tensor synchronisation, a few kernel launches per chunk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from cirron.core.snapshots import BINS, RawStats, hist_range

__all__ = ["tensor_stats"]

CHUNK = 1 << 24  # elements per concatenated chunk in the segment strategy
HIST_EXACT_MAX = 1 << 18  # larger tensors get a stride-sampled histogram (see _histogram)
_FLOATS = (torch.float32, torch.float64)


def tensor_stats(
    named: Sequence[tuple[str, torch.Tensor]], strategy: str | None = None
) -> list[RawStats]:
    """Statistics for each ``(name, tensor)``, in order. ``strategy``: ``"tensor"``,
    ``"segment"`` or None (by device: CPU → tensor, else segment)."""
    out: list[RawStats | None] = [None] * len(named)
    by_device: dict[Any, list[int]] = {}
    for i, (_, t) in enumerate(named):
        by_device.setdefault(t.device, []).append(i)
    for device, idx in by_device.items():
        strat = strategy or ("tensor" if device.type == "cpu" else "segment")
        group = [named[i] for i in idx]
        stats = _per_tensor(group) if strat == "tensor" else _segmented(group)
        for i, s in zip(idx, stats, strict=True):
            out[i] = s
    return [s for s in out if s is not None]


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _flat(t: torch.Tensor) -> torch.Tensor:
    x = t.detach().reshape(-1)
    return x if x.dtype in _FLOATS else x.float()


def _empty(name: str, t: torch.Tensor, non_finite: int = 0) -> RawStats:
    return RawStats.empty(name, tuple(t.shape), _dtype_name(t), t.numel(), non_finite)


# -- CPU: a few vectorised passes per tensor ------------------------------------------------------


def _per_tensor(group: Sequence[tuple[str, torch.Tensor]]) -> list[RawStats]:
    return [_one(name, t) for name, t in group]


def _one(name: str, t: torch.Tensor) -> RawStats:
    x = _flat(t)
    n = x.numel()
    if n == 0:
        return _empty(name, t)
    mn, mx = torch.aminmax(x)
    total, sumsq, lo, hi = torch.stack([x.sum(), torch.dot(x, x), mn, mx]).tolist()
    if not all(map(math.isfinite, (total, sumsq, lo, hi))):
        return _one_masked(name, t, x)
    var = _var(x, n, total, sumsq)
    counts, attrs = _histogram(x, n, *hist_range(lo, hi))
    return RawStats(
        name,
        tuple(t.shape),
        _dtype_name(t),
        n,
        0,
        total,
        sumsq,
        lo,
        hi,
        counts,
        var=var,
        attrs=attrs,
    )


def _histogram(x: torch.Tensor, n: int, a: float, b: float) -> tuple[list[int], dict[str, Any]]:
    """16 bucket counts over ``[a, b]``. Above :data:`HIST_EXACT_MAX` elements the counts are
    taken over a uniform stride sample and scaled to ``n`` (``attrs.histogram_stride`` says so):
    the histogram is the slowest statistic on a CPU, and its shape needs no exact count. The
    moments, min and max are always exact."""
    if n <= HIST_EXACT_MAX:
        return torch.histc(x, BINS, a, b).to(torch.int64).tolist(), {}
    stride = -(-n // HIST_EXACT_MAX)
    sample = x[::stride]
    raw = torch.histc(sample, BINS, a, b).tolist()
    scale = n / sample.numel()
    counts = [round(c * scale) for c in raw]
    counts[max(range(BINS), key=counts.__getitem__)] += n - sum(counts)  # keep sum == n
    return counts, {"histogram_stride": stride}


def _var(x: torch.Tensor, n: int, total: float, sumsq: float) -> float | None:
    """``sumsq/n - mean²`` loses everything when the mean dominates; redo those two-pass."""
    mean = total / n
    var = sumsq / n - mean * mean
    if var < 1e-3 * mean * mean:
        return float(torch.var(x.double(), correction=0))
    return None


def _one_masked(name: str, t: torch.Tensor, x: torch.Tensor) -> RawStats:
    fin = torch.isfinite(x)
    xf = x[fin].double()
    n = x.numel()
    k = xf.numel()
    if k == 0:
        return _empty(name, t, non_finite=n)
    mn, mx = torch.aminmax(xf)
    total, sumsq, lo, hi = torch.stack([xf.sum(), torch.dot(xf, xf), mn, mx]).tolist()
    a, b = hist_range(lo, hi)
    counts = torch.histc(xf, BINS, a, b).to(torch.int64).tolist()
    var = float(torch.var(xf, correction=0))
    return RawStats(
        name, tuple(t.shape), _dtype_name(t), n, n - k, total, sumsq, lo, hi, counts, var=var
    )


# -- accelerators: segment reductions, one host copy ---------------------------------------------


def _chunks(group: Sequence[tuple[str, torch.Tensor]]) -> list[list[int]]:
    chunks: list[list[int]] = []
    cur: list[int] = []
    size = 0
    for i, (_, t) in enumerate(group):
        n = t.numel()
        if cur and size + n > CHUNK:
            chunks.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += n
    if cur:
        chunks.append(cur)
    return chunks


def _segmented(group: Sequence[tuple[str, torch.Tensor]]) -> list[RawStats]:
    pending = [_segment_chunk([group[i][1] for i in c]) for c in _chunks(group)]
    if not pending:
        return []
    host = torch.cat(pending).cpu().tolist()  # the one device → host copy
    out: list[RawStats] = []
    width = 5 + BINS
    for i, (name, t) in enumerate(group):
        row = host[i * width : (i + 1) * width]
        total, sumsq, nonfin, mn, mx = row[:5]
        k = t.numel() - int(nonfin)
        if k <= 0:
            out.append(_empty(name, t, non_finite=int(nonfin)))
            continue
        out.append(
            RawStats(
                name,
                tuple(t.shape),
                _dtype_name(t),
                t.numel(),
                int(nonfin),
                total,
                sumsq,
                mn,
                mx,
                [int(c) for c in row[5:]],
            )
        )
    return out


def _segment_chunk(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rows of ``[total, sumsq, non_finite, min, max, counts x16]`` per tensor, flattened,
    still on the device."""
    dev = ts[0].device
    g = len(ts)
    flat = torch.cat([t.detach().reshape(-1).to(torch.float32) for t in ts])
    lengths = torch.tensor([t.numel() for t in ts], device=dev)
    seg = torch.repeat_interleave(torch.arange(g, device=dev), lengths)
    fin = torch.isfinite(flat)
    z = torch.where(fin, flat, 0.0).double()
    f64 = torch.float64
    total = torch.zeros(g, dtype=f64, device=dev).index_add_(0, seg, z)
    sumsq = torch.zeros(g, dtype=f64, device=dev).index_add_(0, seg, z * z)
    nonfin = torch.zeros(g, dtype=f64, device=dev).index_add_(0, seg, (~fin).to(f64))
    inf = math.inf
    mn = torch.full((g,), inf, dtype=f64, device=dev).scatter_reduce(
        0, seg, torch.where(fin, z, inf), "amin"
    )
    mx = torch.full((g,), -inf, dtype=f64, device=dev).scatter_reduce(
        0, seg, torch.where(fin, z, -inf), "amax"
    )
    some = torch.isfinite(mn)
    same = mn == mx
    lo = torch.where(some, torch.where(same, mn - 0.5, mn), 0.0)
    hi = torch.where(some, torch.where(same, mx + 0.5, mx), 1.0)
    scale = BINS / (hi - lo)
    bucket = ((z - lo[seg]) * scale[seg]).floor_().clamp_(0, BINS - 1).long()
    idx = torch.where(fin, seg * BINS + bucket, g * BINS)
    counts = torch.bincount(idx, minlength=g * BINS + 1)[: g * BINS].view(g, BINS).to(f64)
    cols = torch.stack(
        [total, sumsq, nonfin, torch.where(some, mn, 0.0), torch.where(some, mx, 0.0)], dim=1
    )
    return torch.cat([cols, counts], dim=1).reshape(-1)
