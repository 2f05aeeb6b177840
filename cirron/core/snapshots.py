"""Weight and gradient snapshots: statistics records and safetensors blobs. Framework-free.

An adapter computes, per tensor, a handful of raw moments on the tensor's own device (see
:class:`RawStats`) and hands them here. This module turns them into schema-v1 snapshot records
(``mean``, ``std``, ``min``, ``max``, ``norm`` and a 16-bucket histogram with 17 edges, all
taken over the *finite* values; the number of non-finite values goes to ``attrs.non_finite``),
decides per epoch boundary whether raw tensors are serialised (``"sampled"``: a
``sample_rate`` draw; ``"full"``: always), and writes ``weights.safetensors`` /
``gradients.safetensors`` under ``snapshots/<epoch span id>/``.

>>> s = RawStats("fc.weight", (2,), "float32", numel=2, non_finite=0, total=3.0, sumsq=5.0,
...              min=1.0, max=2.0, counts=[1] + [0] * 14 + [1])
>>> r = snapshot_record(s, record_id="0" * 32, span_id="1" * 32, ts_ns=1)
>>> r["stats"]["mean"], r["stats"]["norm"] ** 2, r["stats"]["histogram"]["bins"][0]
(1.5, 5.000000000000001, 1.0)
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import time_ns
from typing import Any

from cirron.core.errors import CirronWarning

__all__ = [
    "BINS",
    "MODES",
    "WARN_BYTES",
    "RawStats",
    "SnapshotWriter",
    "hist_range",
    "snapshot_record",
]

BINS = 16
"""Histogram buckets (17 edges)."""
MODES = ("stats", "sampled", "full")
WARN_BYTES = 100 * 1000 * 1000
"""One epoch's raw tensors above this size log a warning (not a cap)."""


@dataclass(slots=True)
class RawStats:
    """What an adapter measures for one tensor; every float is over the finite values only.

    ``total`` and ``sumsq`` are the sum and the sum of squares; ``min``/``max`` are None when no
    value is finite. ``counts`` has :data:`BINS` entries over :func:`hist_range` of min/max.
    ``var`` may carry a better-conditioned variance than ``sumsq`` gives (two-pass).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    non_finite: int
    total: float
    sumsq: float
    min: float | None
    max: float | None
    counts: list[int]
    var: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(
        cls,
        name: str,
        shape: tuple[int, ...],
        dtype: str,
        numel: int,
        non_finite: int = 0,
        attrs: dict[str, Any] | None = None,
    ) -> RawStats:
        """A tensor with no finite value (or no value at all): null moments, empty histogram."""
        return cls(
            name,
            shape,
            dtype,
            numel,
            non_finite,
            0.0,
            0.0,
            None,
            None,
            [0] * BINS,
            attrs=dict(attrs or {}),
        )


def hist_range(mn: float, mx: float) -> tuple[float, float]:
    """The histogram's outer edges: ``[min, max]``, widened by 0.5 each way when they are
    equal (numpy's convention, so a constant tensor lands in the middle bucket)."""
    if mn == mx:
        return mn - 0.5, mx + 0.5
    return mn, mx


def _edges(lo: float, hi: float) -> list[float]:
    step = (hi - lo) / BINS
    return [lo + i * step for i in range(BINS)] + [hi]


def _num(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def snapshot_record(
    s: RawStats,
    *,
    record_id: str,
    span_id: str,
    ts_ns: int,
    mode: str = "stats",
    blob_uri: str | None = None,
) -> dict[str, Any]:
    """A schema-v1 snapshot record for one tensor."""
    n = s.numel - s.non_finite
    mean = std = norm = None
    if n > 0 and s.min is not None and s.max is not None:
        mean = s.total / n
        var = s.var if s.var is not None else max(s.sumsq / n - mean * mean, 0.0)
        std = math.sqrt(max(var, 0.0))
        norm = math.sqrt(max(s.sumsq, 0.0))
        lo, hi = hist_range(s.min, s.max)
        bins: list[float | None] = list(_edges(lo, hi))
        counts = [int(c) for c in s.counts]
    else:
        bins = [None] * (BINS + 1)
        counts = [0] * BINS
    attrs = {"numel": s.numel, "non_finite": s.non_finite}
    attrs.update(s.attrs)
    return {
        "id": record_id,
        "span_id": span_id,
        "tensor_name": s.name,
        "shape": [int(d) for d in s.shape],
        "dtype": s.dtype,
        "mode": mode,
        "stats": {
            "mean": _num(mean),
            "std": _num(std),
            "min": _num(s.min) if n > 0 else None,
            "max": _num(s.max) if n > 0 else None,
            "norm": _num(norm),
            "histogram": {"bins": [_num(b) for b in bins], "counts": counts},
        },
        "blob_uri": blob_uri,
        "ts_ns": ts_ns,
        "attrs": attrs,
    }


class SnapshotWriter:
    """One profiling session's snapshot policy and sink.

    ``mode`` is ``"stats"``, ``"sampled"`` or ``"full"``; ``spool`` has ``write_blob(span_id,
    file_name, data) -> Path | None``; ``transport`` has ``on_blob(path, span_id)``;
    ``queue`` takes the finished records (the recorder's ``snapshots`` deque).
    """

    def __init__(
        self,
        *,
        mode: str,
        sample_rate: float,
        queue: Any,
        new_id: Callable[[], str],
        spool: Any = None,
        transport: Any = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.mode = mode if mode in MODES else "stats"
        self.sample_rate = sample_rate
        self.queue = queue
        self.new_id = new_id
        self.spool = spool
        self.transport = transport
        self.draw = draw
        self.warned_size = False
        self.boundaries = 0
        self.blobs_written = 0

    def wants_blobs(self) -> bool:
        """Decide, once per epoch boundary, whether raw tensors are serialised this time."""
        self.boundaries += 1
        if self.spool is None or self.mode == "stats":
            return False
        return self.mode == "full" or self.draw() < self.sample_rate

    def write(
        self,
        span_id: str,
        weights: Sequence[RawStats],
        gradients: Sequence[RawStats],
        arrays: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None,
    ) -> int:
        """Queue one record per tensor; with ``arrays`` (name → numpy array, for weights and
        for gradients) also write the blobs and point the records at them. Returns the number
        of records queued."""
        uris: dict[str, str | None] = {"weights": None, "gradients": None}
        if arrays is not None:
            self._warn_size(arrays)
            for kind, tensors in zip(("weights", "gradients"), arrays, strict=True):
                if tensors:
                    uris[kind] = self._blob(span_id, f"{kind}.safetensors", tensors)
        ts = time_ns()
        n = 0
        for kind, group in (("weights", weights), ("gradients", gradients)):
            uri = uris[kind]
            mode = self.mode if uri is not None else "stats"
            for s in group:
                self.queue.append(
                    snapshot_record(
                        s,
                        record_id=self.new_id(),
                        span_id=span_id,
                        ts_ns=ts,
                        mode=mode,
                        blob_uri=uri,
                    )
                )
                n += 1
        return n

    def _blob(self, span_id: str, file_name: str, tensors: Mapping[str, Any]) -> str | None:
        from safetensors.numpy import save

        data = save(dict(tensors), metadata={"cirron_span_id": span_id})
        path: Path | None = self.spool.write_blob(span_id, file_name, data)
        if path is None:
            return None
        self.blobs_written += 1
        if self.transport is not None:
            self.transport.on_blob(path, span_id)
        return path.resolve().as_uri()

    def _warn_size(self, arrays: tuple[Mapping[str, Any], Mapping[str, Any]]) -> None:
        size = sum(int(a.nbytes) for group in arrays for a in group.values())
        if size <= WARN_BYTES or self.warned_size:
            return
        self.warned_size = True
        params = sum(int(a.size) for a in arrays[0].values())
        try:  # an epoch boundary runs on the training thread: never raise, even under -W error
            warnings.warn(
                f"cirron: this epoch's snapshot blobs are {size / 1e6:.0f} MB ({params:,} "
                f"parameters, mode {self.mode!r}). Raw tensors are written at every "
                f"{'epoch' if self.mode == 'full' else 'sampled epoch'}; use snapshots='stats' "
                "or a lower sample_rate for large models.",
                CirronWarning,
                stacklevel=2,
            )
        except Exception:
            pass
