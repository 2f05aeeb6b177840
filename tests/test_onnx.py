"""``ci.wrap(session)`` on ONNX Runtime: an ``inference`` span per run, latency marks, delegation.

Real models: a scikit-learn classifier converted with skl2onnx and a torch MLP exported with the
TorchScript exporter, both written to temporary files. Assertions read the spool after
``ci.shutdown()``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import cirron as ci
import cirron.integrations.onnx as onnx_adapter
from cirron.integrations.onnx import CirronSession, LatencyStats
from tests.helpers.adapters import keep_only
from tests.helpers.schema import load_batches

PROVIDERS = ["CPUExecutionProvider"]
RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def sklearn_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skl2onnx import to_onnx
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    X, y = make_classification(n_samples=50, n_features=4, random_state=0)
    X = X.astype(np.float32)
    onx = to_onnx(LogisticRegression().fit(X, y), X[:1], options={"zipmap": False})
    path = tmp_path_factory.mktemp("models") / "clf.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


@pytest.fixture(scope="module")
def torch_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    path = tmp_path_factory.mktemp("models") / "mlp.onnx"
    with pytest.warns(DeprecationWarning):  # the legacy exporter works offline, no onnxscript
        torch.onnx.export(
            net,
            (torch.zeros(1, 4),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )
    return path, net


@pytest.fixture(autouse=True)
def _only_these_adapters(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch is imported here to export a model; its hooks are tested by their owner.
    keep_only(monkeypatch, "sklearn", "onnx")


@pytest.fixture
def profiled() -> Iterator[None]:
    ci.profile(frameworks=[])
    yield


def batch(n: int) -> np.ndarray:
    return RNG.random((n, 4), dtype=np.float32)


class Trace:
    """The spool as a user reads it after shutdown: newest record of each span, every mark."""

    def __init__(self, root: Path, *, shutdown: bool = True) -> None:
        if shutdown:
            ci.shutdown()
        self.spans: dict[str, dict[str, Any]] = {}
        self.marks: list[dict[str, Any]] = []
        for b in load_batches(root):
            for span in b["spans"]:
                self.spans[span["id"]] = span
            self.marks.extend(b["marks"])
        self.marks.sort(key=lambda m: m["ts_ns"])
        self.sessions = sorted(
            (s for s in self.spans.values() if s["name"] == "cirron.session"),
            key=lambda s: s["start_ns"],
        )

    def named(self, name: str) -> list[dict[str, Any]]:
        return sorted(
            (s for s in self.spans.values() if s["name"] == name), key=lambda s: s["start_ns"]
        )

    def final_marks(self, span: dict[str, Any]) -> dict[str, Any]:
        return {m["name"]: m["value"] for m in self.marks if m["span_id"] == span["id"]}


# -- spans ---------------------------------------------------------------------------------------


def test_each_run_is_an_inference_span_with_inputs_and_provider(
    sklearn_model: Path, profiled: None, tmp_path: Path
) -> None:
    bare = ort.InferenceSession(str(sklearn_model), providers=PROVIDERS)
    session = ci.wrap(ort.InferenceSession(str(sklearn_model), providers=PROVIDERS))
    assert isinstance(session, CirronSession)
    for n in (1, 5, 10):
        x = batch(n)
        for got, want in zip(session.run(None, {"X": x}), bare.run(None, {"X": x}), strict=True):
            np.testing.assert_array_equal(got, want)

    t = Trace(tmp_path)
    spans = t.named("inference")
    assert [s["attrs"]["batch_size"] for s in spans] == [1, 5, 10]
    assert all(s["parent_id"] == t.sessions[0]["id"] for s in spans)
    assert spans[1]["attrs"] == {
        "batch_size": 5,
        "inputs": ["X"],
        "shapes": [[5, 4]],
        "dtypes": ["float32"],
        "provider": "CPUExecutionProvider",
        "model": "clf.onnx",
        "raised": False,
    }


def test_a_model_exported_from_torch(
    torch_model: tuple[Path, Any], profiled: None, tmp_path: Path
) -> None:
    import torch

    path, net = torch_model
    session = ci.wrap(ort.InferenceSession(str(path), providers=PROVIDERS))
    x = batch(7)
    (y,) = session.run(["y"], {"x": x})
    with torch.no_grad():
        np.testing.assert_allclose(y, net(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)

    (span,) = Trace(tmp_path).named("inference")
    assert span["attrs"]["batch_size"] == 7 and span["attrs"]["model"] == "mlp.onnx"
    assert span["attrs"]["inputs"] == ["x"] and span["attrs"]["shapes"] == [[7, 4]]


def test_run_with_ort_values_is_recorded_too(
    sklearn_model: Path, profiled: None, tmp_path: Path
) -> None:
    session = ci.wrap(ort.InferenceSession(str(sklearn_model), providers=PROVIDERS))
    value = ort.OrtValue.ortvalue_from_numpy(batch(3))
    outputs = session.run_with_ort_values(None, {"X": value})
    assert outputs[0].shape() == [3]

    (span,) = Trace(tmp_path).named("inference")
    assert span["attrs"]["batch_size"] == 3 and span["attrs"]["shapes"] == [[3, 4]]
    assert span["attrs"]["dtypes"] == ["tensor(float)"] and span["attrs"]["raised"] is False


def test_a_failing_run_is_recorded_and_its_exception_reraised_untouched(
    sklearn_model: Path, profiled: None, tmp_path: Path
) -> None:
    bare = ort.InferenceSession(str(sklearn_model), providers=PROVIDERS)
    session = ci.wrap(ort.InferenceSession(str(sklearn_model), providers=PROVIDERS))
    wrong = RNG.random((2, 3), dtype=np.float32)
    with pytest.raises(Exception) as expected:
        bare.run(None, {"X": wrong})
    with pytest.raises(type(expected.value)) as got:
        session.run(None, {"X": wrong})
    assert str(got.value) == str(expected.value)
    assert got.value.__traceback__ is not None
    session.run(None, {"X": batch(2)})

    t = Trace(tmp_path)
    failed, ok = t.named("inference")
    assert failed["attrs"]["raised"] is True
    assert failed["attrs"]["exception"] == type(expected.value).__name__
    assert ok["attrs"]["raised"] is False and "exception" not in ok["attrs"]
    marks = t.final_marks(t.sessions[0])
    assert marks["inference.calls"] == 2 and marks["inference.errors"] == 1


def test_concurrent_runs_from_threads_record_separate_correct_spans(
    sklearn_model: Path, profiled: None, tmp_path: Path
) -> None:
    session = ci.wrap(ort.InferenceSession(str(sklearn_model), providers=PROVIDERS))
    barrier = threading.Barrier(4)

    def request(i: int) -> int:
        if i < 4:
            barrier.wait()  # make the first runs overlap for real
        with ci.scope("request", index=i):
            (labels, _) = session.run(None, {"X": batch(i + 1)})
        return len(labels)

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(request, range(40))) == [i + 1 for i in range(40)]

    t = Trace(tmp_path)
    requests = {s["id"]: s for s in t.named("request")}
    spans = t.named("inference")
    assert len(spans) == 40 and len({s["thread_id"] for s in spans}) > 1
    for span in spans:
        parent = requests[span["parent_id"]]  # each run nests under its own thread's request
        assert span["attrs"]["batch_size"] == parent["index"] + 1
        assert span["thread_id"] == parent["thread_id"]
    assert t.final_marks(t.sessions[0])["inference.calls"] == 40


# -- latency marks ---------------------------------------------------------------------------------


def test_latency_percentiles_and_call_count_are_session_summary_marks(
    sklearn_model: Path, profiled: None, tmp_path: Path
) -> None:
    session = ci.wrap(ort.InferenceSession(str(sklearn_model), providers=PROVIDERS))
    for i in range(50):
        session.run(None, {"X": batch(1 + i % 8)})

    t = Trace(tmp_path)
    marks = [m for m in t.marks if m["name"].startswith("inference.")]
    assert {m["span_id"] for m in marks} == {t.sessions[0]["id"]}
    assert {m["kind"] for m in marks} == {"summary"}
    assert marks[0]["attrs"] == {"model": "clf.onnx", "provider": "CPUExecutionProvider"}
    final = t.final_marks(t.sessions[0])
    assert final["inference.calls"] == 50
    p50, p95, p99 = (final[f"inference.latency_{q}_ms"] for q in ("p50", "p95", "p99"))
    longest_ms = max(s["end_ns"] - s["start_ns"] for s in t.named("inference")) / 1e6
    assert 0 < p50 <= p95 <= p99 <= longest_ms


def test_latency_marks_are_refreshed_at_every_flush(
    sklearn_model: Path, profiled: None, tmp_path: Path
) -> None:
    session = ci.wrap(ort.InferenceSession(str(sklearn_model), providers=PROVIDERS))

    def calls_in_spool() -> list[int]:
        t = Trace(tmp_path, shutdown=False)
        return [m["value"] for m in t.marks if m["name"] == "inference.calls"]

    for _ in range(10):
        session.run(None, {"X": batch(2)})
    ci.flush()
    assert calls_in_spool() == [10]
    ci.flush()  # nothing new: no new marks
    assert calls_in_spool() == [10]
    for _ in range(5):
        session.run(None, {"X": batch(2)})
    ci.flush()
    assert calls_in_spool() == [10, 15]
    session.run(None, {"X": batch(2)})
    ci.shutdown()  # the final values land on the session span before it closes
    t = Trace(tmp_path)
    assert t.final_marks(t.sessions[0])["inference.calls"] == 16


def test_a_new_session_starts_fresh_statistics(sklearn_model: Path, tmp_path: Path) -> None:
    session = ci.wrap(ort.InferenceSession(str(sklearn_model), providers=PROVIDERS))
    for _ in range(5):
        session.run(None, {"X": batch(1)})
    ci.shutdown()
    for _ in range(3):
        session.run(None, {"X": batch(1)})

    t = Trace(tmp_path)
    first, second = t.sessions
    assert t.final_marks(first)["inference.calls"] == 5
    assert t.final_marks(second)["inference.calls"] == 3


def test_latency_stats_keep_a_bounded_uniform_sample() -> None:
    stats = LatencyStats(size=100)
    for ns in range(1, 10_001):
        stats.add(ns * 1000)
    stats.error()
    assert stats.calls == 10_001 and stats.errors == 1
    assert len(stats.sample) == 100 and None not in stats.sample
    p50, p95, p99 = stats.percentiles()
    assert 2.0 < p50 < 8.0 and p50 < p95 <= p99 <= 10.0  # ms, from a sample over all calls
    assert LatencyStats().percentiles() is None


# -- a proxy, not a replacement --------------------------------------------------------------------


def test_everything_else_is_delegated_untouched(
    sklearn_model: Path, profiled: None, tmp_path: Path
) -> None:
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "ort")
    bare = ort.InferenceSession(str(sklearn_model), options, providers=PROVIDERS)
    session = ci.wrap(bare)
    assert session.session is bare
    assert [i.name for i in session.get_inputs()] == ["X"]
    assert [o.name for o in session.get_outputs()] == [o.name for o in bare.get_outputs()]
    assert session.get_providers() == PROVIDERS
    assert session.get_modelmeta().producer_name == bare.get_modelmeta().producer_name
    assert "get_inputs" in dir(session)

    binding = session.io_binding()
    binding.bind_cpu_input("X", batch(4))
    binding.bind_output(bare.get_outputs()[0].name)
    session.run_with_iobinding(binding)
    assert binding.copy_outputs_to_cpu()[0].shape == (4,)
    assert Path(session.end_profiling()).exists()

    assert Trace(tmp_path).named("inference") == []  # only run / run_with_ort_values record


def test_set_providers_is_delegated_and_later_spans_name_the_provider(
    sklearn_model: Path, profiled: None, tmp_path: Path
) -> None:
    session = ci.wrap(ort.InferenceSession(str(sklearn_model), providers=PROVIDERS))
    session.set_providers(PROVIDERS)
    session.run(None, {"X": batch(1)})
    (span,) = Trace(tmp_path).named("inference")
    assert span["attrs"]["provider"] == "CPUExecutionProvider"


def test_wrapping_twice_returns_the_same_proxy(sklearn_model: Path) -> None:
    session = ci.wrap(ort.InferenceSession(str(sklearn_model), providers=PROVIDERS))
    assert ci.wrap(session) is session
    assert onnx_adapter.wrap(ci._get(), object()) is None


def test_the_first_run_starts_profiling_when_nothing_runs(
    sklearn_model: Path, tmp_path: Path
) -> None:
    session = ci.wrap(ort.InferenceSession(str(sklearn_model), providers=PROVIDERS))
    assert not ci._get().profiling
    session.run(None, {"X": batch(1)})
    assert ci._get().profiling
    assert len(Trace(tmp_path).named("inference")) == 1


def test_a_disabled_profiler_records_nothing(sklearn_model: Path, tmp_path: Path) -> None:
    ci.profile(enabled=False)
    session = ci.wrap(ort.InferenceSession(str(sklearn_model), providers=PROVIDERS))
    assert session.run(None, {"X": batch(1)})[0].shape == (1,)
    ci.shutdown()
    assert load_batches(tmp_path) == []


def test_another_instance_gets_the_spans(sklearn_model: Path, tmp_path: Path) -> None:
    other = ci.Cirron(output_dir=str(tmp_path / "other"))
    session = other.wrap(ort.InferenceSession(str(sklearn_model), providers=PROVIDERS))
    session.run(None, {"X": batch(2)})  # starts profiling on that instance
    assert other.profiling and not ci._get().profiling
    other.shutdown()

    batches = load_batches(tmp_path / "other")
    names = [s["name"] for b in batches for s in b["spans"]]
    assert names.count("inference") == 1
    assert not (tmp_path / "work" / ".cirron").exists()
