"""``ci.wrap(obj)`` dispatch for scikit-learn and ONNX Runtime objects, and its error for others.

Keras, Lightning and torch wrap paths are tested by their adapters' own test files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import cirron as ci
from cirron.integrations.onnx import CirronSession
from cirron.integrations.sklearn import CirronEstimator

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def onnx_session(tmp_path_factory: pytest.TempPathFactory) -> ort.InferenceSession:
    from skl2onnx import to_onnx

    X = np.arange(8, dtype=np.float32).reshape(4, 2)
    onx = to_onnx(StandardScaler().fit(X), X[:1])
    path = tmp_path_factory.mktemp("models") / "scaler.onnx"
    path.write_bytes(onx.SerializeToString())
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "make",
    [
        LogisticRegression,
        lambda: make_pipeline(StandardScaler(), LogisticRegression()),
        lambda: GridSearchCV(LogisticRegression(), {"C": [1.0]}),
    ],
    ids=["estimator", "pipeline", "search"],
)
def test_an_sklearn_estimator_becomes_a_cirron_estimator(make) -> None:  # type: ignore[no-untyped-def]
    est = make()
    wrapped = ci.wrap(est)
    assert isinstance(wrapped, CirronEstimator) and wrapped.estimator is est
    assert ci.wrap(wrapped) is wrapped


def test_an_onnx_session_becomes_a_cirron_session(onnx_session: ort.InferenceSession) -> None:
    wrapped = ci.wrap(onnx_session)
    assert isinstance(wrapped, CirronSession) and wrapped.session is onnx_session
    assert ci.wrap(wrapped) is wrapped


def _run(code: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_an_unsupported_object_is_refused_with_what_is_supported() -> None:
    # A fresh interpreter with scikit-learn and onnxruntime imported (so both adapters are
    # consulted) and no other framework: the error must come from the registry, not an import.
    out = _run("""
        import json, sys
        import sklearn.linear_model, onnxruntime
        import cirron as ci

        messages = []
        for obj in (object(), sklearn.linear_model.LogisticRegression, len, "model.onnx"):
            try:
                ci.wrap(obj)
            except ci.CirronError as exc:
                messages.append(str(exc))
        frameworks = [m for m in ("torch", "keras", "tensorflow", "lightning") if m in sys.modules]
        print(json.dumps({"messages": messages, "frameworks": frameworks}))
    """)
    messages = out["messages"]
    assert isinstance(messages, list) and len(messages) == 4
    first = messages[0]
    assert "builtins.object" in first
    for supported in (
        "scikit-learn estimators",
        "onnxruntime.InferenceSession",
        "Keras models",
        "LightningModules",
        "torch.nn.Modules",
    ):
        assert supported in first
    assert "ci.scope()" in first  # and what to do instead
    assert "instrument a builtins.type." in messages[1]  # an estimator class, not an instance
    assert "instrument a builtins.str." in messages[3]
    assert out["frameworks"] == []  # wrap() imported no framework to find out


def test_wrap_imports_no_framework_the_program_has_not_imported() -> None:
    out = _run("""
        import json, sys
        import cirron as ci
        try:
            ci.wrap(object())
        except ci.CirronError:
            pass
        names = ("sklearn", "onnxruntime", "torch", "keras", "tensorflow", "lightning")
        print(json.dumps({"imported": [m for m in names if m in sys.modules]}))
    """)
    assert out["imported"] == []
