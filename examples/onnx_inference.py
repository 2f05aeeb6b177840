"""An ONNX Runtime inference loop through ``ci.wrap``: a span per request, latency percentiles.

    python examples/onnx_inference.py

Exports a small torch MLP to ONNX (the TorchScript exporter, which works offline), serves it
with ``onnxruntime`` through ``ci.wrap(session)``, and reads the latency percentiles back from
the trace: they are summary marks on the session span, refreshed at every flush.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import cirron as ci


def export_model(path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, on purpose
        torch.onnx.export(
            net.eval(),
            (torch.zeros(1, 16),),
            str(path),
            dynamo=False,
            input_names=["features"],
            output_names=["logits"],
            dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}},
        )


def main() -> None:
    # torch is imported only to export the model: profile ONNX Runtime alone (without this
    # line the first run would start profiling by itself, with torch's hooks as well).
    ci.profile(frameworks=["onnxruntime"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mlp.onnx"
        export_model(path)
        session = ci.wrap(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
        print("inputs:", [(i.name, i.shape) for i in session.get_inputs()])  # delegated

        rng = np.random.default_rng(0)
        for request in range(500):
            batch = rng.random((1 + request % 32, 16), dtype=np.float32)
            (logits,) = session.run(["logits"], {"features": batch})
            assert logits.shape == (len(batch), 3)

        data = ci.trace(format="dict")  # flushes first, so the marks are current
        marks = _session_marks(data)
        print(
            f"{marks['inference.calls']} calls: "
            f"p50 {marks['inference.latency_p50_ms']:.3f} ms, "
            f"p95 {marks['inference.latency_p95_ms']:.3f} ms, "
            f"p99 {marks['inference.latency_p99_ms']:.3f} ms"
        )
        print(ci.trace(last=3))
        ci.shutdown()


def _session_marks(node: object) -> dict[str, object]:
    """The summary marks of the session span in ``ci.trace(format="dict")``."""
    if isinstance(node, list):
        node = node[0]
    assert isinstance(node, dict)
    found: dict[str, object] = {}
    for mark in node.get("marks", []):
        found[mark["name"]] = mark["value"]
    return found


if __name__ == "__main__":
    main()
