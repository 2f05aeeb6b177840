"""Snapshot statistics and records: both torch strategies against numpy, and the core writer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cirron.core.snapshots import BINS, RawStats, SnapshotWriter, hist_range, snapshot_record
from cirron.integrations.torch_stats import tensor_stats
from tests.helpers.schema import validate_batch


def record(s: RawStats) -> dict[str, Any]:
    return snapshot_record(s, record_id="a" * 32, span_id="b" * 32, ts_ns=1)


def as_batch(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "sdk_version": "0",
        "batch_id": "c" * 32,
        "created_ns": 1,
        "spans": [],
        "marks": [],
        "snapshots": records,
    }


def numpy_stats(arr: np.ndarray) -> dict[str, Any]:
    fin = arr[np.isfinite(arr)].astype(np.float64)
    counts, edges = np.histogram(fin, bins=BINS)
    return {
        "mean": fin.mean(),
        "std": fin.std(),
        "min": fin.min(),
        "max": fin.max(),
        "norm": np.linalg.norm(fin),
        "counts": counts.tolist(),
        "bins": edges.tolist(),
        "non_finite": int(arr.size - fin.size),
    }


CASES = {
    "normal": torch.randn(1000, generator=torch.Generator().manual_seed(1)),
    "matrix": torch.rand(13, 7, generator=torch.Generator().manual_seed(2)) * 4 - 1,
    "constant": torch.full((5,), 3.0),
    "offset": torch.randn(500, generator=torch.Generator().manual_seed(3)) * 1e-3 + 100.0,
    "with_nan_inf": torch.tensor([1.0, float("nan"), -2.0, float("inf"), 0.5, -float("inf")]),
    "half": torch.randn(64, generator=torch.Generator().manual_seed(4)).half(),
}


@pytest.mark.parametrize("strategy", ["tensor", "segment"])
def test_statistics_match_numpy_over_the_finite_values(strategy: str) -> None:
    named = list(CASES.items())
    out = tensor_stats(named, strategy)
    assert [s.name for s in out] == list(CASES)
    for s, (name, t) in zip(out, named, strict=True):
        ref = numpy_stats(t.float().numpy())
        r = record(s)
        st = r["stats"]
        assert r["attrs"]["non_finite"] == ref["non_finite"], name
        assert r["shape"] == list(t.shape) and r["dtype"] == str(t.dtype)[6:]
        for key in ("mean", "min", "max", "norm"):
            assert st[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-9), (name, key)
        assert st["std"] == pytest.approx(ref["std"], rel=1e-3, abs=1e-9), name
        got, want = st["histogram"]["counts"], ref["counts"]
        assert sum(got) == sum(want), name
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1, (name, got, want)
        assert st["histogram"]["bins"] == pytest.approx(ref["bins"], rel=1e-6, abs=1e-9)
    validate_batch(as_batch([record(s) for s in out]))


@pytest.mark.parametrize("strategy", ["tensor", "segment"])
def test_all_non_finite_and_empty_tensors_give_nulls(strategy: str) -> None:
    named = [("nan", torch.full((3,), float("nan"))), ("empty", torch.zeros(0, 4))]
    nan, empty = (record(s) for s in tensor_stats(named, strategy))
    for r in (nan, empty):
        assert all(r["stats"][k] is None for k in ("mean", "std", "min", "max", "norm"))
        assert r["stats"]["histogram"] == {"bins": [None] * 17, "counts": [0] * 16}
    assert nan["attrs"]["non_finite"] == 3 and empty["attrs"]["numel"] == 0
    validate_batch(as_batch([nan, empty]))


def test_segment_strategy_spans_several_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    from cirron.integrations import torch_stats

    monkeypatch.setattr(torch_stats, "CHUNK", 100)
    g = torch.Generator().manual_seed(5)
    named = [(f"t{i}", torch.randn(n, generator=g)) for i, n in enumerate([30, 90, 250, 5])]
    a = tensor_stats(named, "segment")
    b = tensor_stats(named, "tensor")
    for x, y in zip(a, b, strict=True):
        assert (x.numel, x.min, x.max) == (y.numel, y.min, y.max)
        assert x.total == pytest.approx(y.total, rel=1e-5, abs=1e-6)
        assert sum(x.counts) == sum(y.counts) == x.numel


def test_histogram_range_follows_numpy_for_constant_tensors() -> None:
    assert hist_range(2.0, 2.0) == (1.5, 2.5)
    assert hist_range(-1.0, 3.0) == (-1.0, 3.0)
    r = record(tensor_stats([("c", torch.full((4,), 2.0))])[0])
    assert r["stats"]["histogram"]["counts"][8] == 4
    assert r["stats"]["std"] == 0.0 and r["stats"]["norm"] == pytest.approx(4.0)


class FakeSpool:
    def __init__(self, root: Path) -> None:
        self.root = root

    def write_blob(self, span_id: str, file_name: str, data: bytes) -> Path:
        d = self.root / span_id
        d.mkdir(parents=True, exist_ok=True)
        (d / file_name).write_bytes(data)
        return d / file_name


class FakeTransport:
    def __init__(self) -> None:
        self.blobs: list[tuple[Path, str]] = []

    def on_blob(self, path: Path, span_id: str) -> None:
        self.blobs.append((path, span_id))


def test_writer_draws_per_boundary_and_tells_the_transport(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    queue: list[dict[str, Any]] = []
    draws = iter([0.5, 0.001])
    transport = FakeTransport()
    w = SnapshotWriter(
        mode="sampled",
        sample_rate=0.01,
        queue=queue,
        new_id=lambda: "d" * 32,
        spool=FakeSpool(tmp_path),
        transport=transport,
        draw=lambda: next(draws),
    )
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    s = tensor_stats([("w", torch.from_numpy(arr))])[0]
    assert w.wants_blobs() is False
    w.write("e" * 32, [s], [])
    assert w.wants_blobs() is True
    w.write("f" * 32, [s], [], ({"w": arr}, {}))
    assert [r["mode"] for r in queue] == ["stats", "sampled"]
    assert queue[0]["blob_uri"] is None
    path = tmp_path / ("f" * 32) / "weights.safetensors"
    assert queue[1]["blob_uri"] == path.resolve().as_uri()
    assert transport.blobs == [(path, "f" * 32)]
    np.testing.assert_array_equal(load_file(path)["w"], arr)
    assert not (tmp_path / ("f" * 32) / "gradients.safetensors").exists()
    validate_batch(as_batch(queue))


def test_stats_mode_and_no_spool_never_write_blobs() -> None:
    q: list[dict[str, Any]] = []
    assert not SnapshotWriter(mode="stats", sample_rate=1.0, queue=q, new_id=str).wants_blobs()
    assert not SnapshotWriter(mode="full", sample_rate=1.0, queue=q, new_id=str).wants_blobs()


def test_norm_and_std_are_consistent_for_large_values() -> None:
    t = torch.tensor([1e20, -1e20, 3e20])  # float32 dot overflows: redone in float64
    r = record(tensor_stats([("big", t)])[0])
    ref = t.double().numpy()
    assert r["stats"]["norm"] == pytest.approx(float(np.linalg.norm(ref)), rel=1e-6)
    assert r["stats"]["std"] == pytest.approx(float(ref.std()), rel=1e-6)
    assert r["attrs"]["non_finite"] == 0 and not math.isnan(r["stats"]["mean"])
