"""Weight statistics of a Keras 3 model, for :mod:`cirron.core.snapshots`.

Two ways to measure a weight, picked per model:

* on the CPU, each weight is read once (``keras.ops.convert_to_numpy``, a view for the torch and
  TensorFlow CPU backends) and measured with numpy: cheapest for the small models callbacks see
  most;
* on an accelerator, the raw moments and the 16-bucket histogram are computed with
  ``keras.ops`` on the weight's own device, stacked into one small matrix and brought to the host
  in a single conversion; the weights themselves only move when a blob is written.

>>> import keras, cirron as ci
>>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])  # doctest: +SKIP
>>> [s.name for s in weight_stats(model)]  # doctest: +SKIP
['sequential/dense/kernel', 'sequential/dense/bias']
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from cirron.core.snapshots import BINS, RawStats, SnapshotWriter, hist_range

__all__ = ["snapshot_model", "to_host", "weight_stats"]

_WRITERS: weakref.WeakKeyDictionary[Any, SnapshotWriter] = weakref.WeakKeyDictionary()


def snapshot_model(cirron: Any, model: Any, epoch_scope: Any) -> int:
    """Queue one snapshot record per weight of ``model`` for ``epoch_scope``; return the count.

    The session's mode decides whether ``weights.safetensors`` is written this epoch.
    """
    p = cirron.profiler
    span_id = epoch_scope.span_id
    if p is None or span_id is None or not model.weights:
        return 0
    writer = _writer(cirron, p)
    named = _named(model.weights)
    arrays: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None
    if writer.wants_blobs():
        arrays = ({n: np.ascontiguousarray(_to_numpy(w)) for n, w in named}, {})
    stats = weight_stats(model, named=named, arrays=arrays[0] if arrays else None)
    return writer.write(span_id, stats, (), arrays)


def _writer(cirron: Any, p: Any) -> SnapshotWriter:
    w = _WRITERS.get(p)
    if w is None:
        s = p.settings
        w = SnapshotWriter(
            mode=getattr(s, "snapshots", "stats"),
            sample_rate=getattr(s, "sample_rate", 0.0),
            queue=cirron._rec.snapshots,
            new_id=cirron._rec.new_id,
            spool=p.spool,
            transport=p.transport,
        )
        _WRITERS[p] = w
    return w


def weight_stats(
    model: Any,
    *,
    named: Sequence[tuple[str, Any]] | None = None,
    arrays: dict[str, np.ndarray] | None = None,
    on_device: bool | None = None,
) -> list[RawStats]:
    """:class:`RawStats` for every numeric weight of ``model`` (``on_device`` forces a path)."""
    named = list(named if named is not None else _named(model.weights))
    named = [(n, w) for n, w in named if _numeric(w)]
    if on_device is None:
        on_device = arrays is None and not all(_on_cpu(w) for _, w in named)
    if on_device:
        return _device_stats(named)
    out = []
    for name, w in named:
        arr = arrays[name] if arrays is not None and name in arrays else _to_numpy(w)
        out.append(numpy_stats(name, arr, _attrs(w)))
    return out


def _named(weights: Sequence[Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for w in weights:
        name = getattr(w, "path", None) or w.name
        base, i = name, 1
        while name in seen:
            name, i = f"{base}_{i}", i + 1
        seen.add(name)
        out.append((name, w))
    return out


def _numeric(w: Any) -> bool:
    try:
        return np.dtype(keras.backend.standardize_dtype(w.dtype)).kind in "fiu"
    except TypeError:  # bfloat16 and friends numpy does not name
        return "float" in str(w.dtype)


def _attrs(w: Any) -> dict[str, Any]:
    return {"trainable": bool(getattr(w, "trainable", True))}


def _to_numpy(w: Any) -> np.ndarray:
    return to_host(w.value)


def to_host(t: Any) -> np.ndarray:
    """One tensor or variable to numpy through its backend. TensorFlow's own ``.numpy()``
    avoids a NumPy 2 deprecation that ``convert_to_numpy`` triggers on TensorFlow objects."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            return np.asarray(t.numpy())
        if backend == "torch":
            return np.asarray(t.detach().cpu().numpy())
    except (AttributeError, TypeError):  # e.g. bfloat16, which torch cannot hand to numpy
        pass
    return np.asarray(keras.ops.convert_to_numpy(t))


def _on_cpu(w: Any) -> bool:
    v = w.value
    dev = getattr(v, "device", None)
    if callable(dev):  # jax.Array.device() in older JAX
        try:
            dev = dev()
        except Exception:
            dev = None
    return dev is None or "cpu" in str(dev).lower()


def numpy_stats(name: str, arr: np.ndarray, attrs: dict[str, Any] | None = None) -> RawStats:
    """Raw moments and histogram of one host array (finite values only)."""
    x = np.asarray(arr).reshape(-1)
    numel = int(x.size)
    if x.dtype.kind != "f" or x.dtype.itemsize < 4:
        x = x.astype(np.float32)
    non_finite = 0
    finite = np.isfinite(x)
    if not finite.all():
        non_finite = numel - int(np.count_nonzero(finite))
        x = x[finite]
    shape = tuple(int(d) for d in np.shape(arr))
    dtype = str(np.asarray(arr).dtype)
    if x.size == 0:
        return RawStats.empty(name, shape, dtype, numel, non_finite, attrs)
    total = float(np.add.reduce(x, dtype=np.float64))
    mean = total / x.size
    d = x.astype(np.float64) - mean
    var = float(np.dot(d, d)) / x.size
    sumsq = var * x.size + total * mean  # = sum(x**2), without a second rounding-prone pass
    lo, hi = float(x.min()), float(x.max())
    counts, _ = np.histogram(x, bins=BINS, range=hist_range(lo, hi))
    return RawStats(
        name,
        shape,
        dtype,
        numel,
        non_finite,
        total,
        sumsq,
        lo,
        hi,
        [int(c) for c in counts],
        var=var,
        attrs=dict(attrs or {}),
    )


# Column layout of the per-weight row computed on device.
_N_FIXED = 6  # non_finite, total, sumsq, min, max, var


def _device_stats(named: Sequence[tuple[str, Any]]) -> list[RawStats]:
    """Measure every weight with ``keras.ops`` where it lives; one host conversion in all."""
    if not named:
        return []
    ops = keras.ops
    rows = [_device_row(ops, w.value) for _, w in named]
    table = to_host(ops.stack(rows)).astype(np.float64)
    out = []
    for (name, w), row in zip(named, table, strict=True):
        shape = tuple(int(d) for d in w.shape)
        numel = int(np.prod(shape)) if shape else 1
        non_finite = int(np.rint(row[0]))
        ok = numel > non_finite
        out.append(
            RawStats(
                name,
                shape,
                keras.backend.standardize_dtype(w.dtype),
                numel,
                non_finite,
                float(row[1]),
                float(row[2]),
                float(row[3]) if ok else None,
                float(row[4]) if ok else None,
                [int(np.rint(c)) for c in row[_N_FIXED:]],
                var=float(row[5]) if ok else None,
                attrs=_attrs(w),
            )
        )
    return out


def _device_row(ops: Any, v: Any) -> Any:
    x = ops.reshape(ops.cast(v, "float32"), (-1,))
    finite = ops.isfinite(x)
    w = ops.cast(finite, "float32")
    n = ops.sum(w)
    zero = ops.zeros_like(x)
    xf = ops.where(finite, x, zero)
    total = ops.sum(xf)
    mean = total / ops.maximum(n, 1.0)
    dev = ops.where(finite, x - mean, zero)
    var = ops.sum(dev * dev) / ops.maximum(n, 1.0)
    sumsq = ops.sum(xf * xf)
    inf = ops.full_like(x, np.inf)
    mn = ops.min(ops.where(finite, x, inf))
    mx = ops.max(ops.where(finite, x, -inf))
    same = ops.equal(mn, mx)
    lo = ops.where(same, mn - 0.5, mn)
    hi = ops.where(same, mx + 0.5, mx)
    scaled = (ops.where(finite, x, ops.full_like(x, 0.0) + lo) - lo) / ops.maximum(hi - lo, 1e-30)
    idx = ops.cast(ops.clip(ops.floor(scaled * BINS), 0, BINS - 1), "int32")
    counts = ops.cast(ops.bincount(idx, weights=w, minlength=BINS), "float32")[:BINS]
    size = ops.cast(ops.size(x), "float32")
    fixed = ops.stack([size - n, total, sumsq, mn, mx, var])
    return ops.concatenate([ops.cast(fixed, "float32"), counts])
