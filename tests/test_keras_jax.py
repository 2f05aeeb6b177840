"""Keras 3 on the JAX backend, in its own pytest process: ``pytest -m keras_jax``.

Keras fixes its backend at import; the fixture below sets ``KERAS_BACKEND=jax`` before the first
import and fails (never skips) if this process already imported Keras with another backend.
Like the torch backend, JAX lets Keras run the callback's batch-end hooks on worker threads
(``async_safe``); weight statistics go through ``keras.ops`` on JAX arrays.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import cirron as ci
from tests.test_keras import Spool, assert_clean, data, epoch_tree, import_keras, tiny_model

pytestmark = pytest.mark.keras_jax

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keras() -> Any:
    return import_keras("jax")


@pytest.fixture
def cb_cls(keras: Any) -> Any:
    from cirron.integrations.keras import CirronCallback

    return CirronCallback


def test_keras_keeps_async_batch_end_dispatch_with_the_callback(keras: Any, cb_cls: Any) -> None:
    assert keras.callbacks.CallbackList([cb_cls()])._async_train is True


def test_fit_tree_marks_and_snapshots_with_batch_ends_on_worker_threads(
    keras: Any, cb_cls: Any
) -> None:
    ci.profile(frameworks=[])
    model = tiny_model(keras)
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=2, validation_split=0.25, verbose=0, callbacks=[cb_cls()])
    assert_clean()
    ci.shutdown()
    sp = Spool()
    assert sp.tree(skip=("data_load",)) == [epoch_tree(6, 2, e, data_load=False) for e in range(2)]
    main = threading.get_ident()
    assert any(b["thread_id"] != main for b in sp.named("batch")), "every batch end ran inline"
    for epoch in sp.named("epoch"):
        train = [c for c in sp.children(epoch) if c["name"] == "batch"]
        for a, b in itertools.pairwise(train):
            assert a["end_ns"] <= b["start_ns"]
        for b in train:
            assert set(sp.marks_of(b, "point")) == {"loss", "mae"}
            assert [k["name"] for k in sp.children(b)] in ([], ["data_load"])
        summary = sp.marks_of(epoch, "summary")
        assert {"loss", "val_loss", "learning_rate", "batch_size", "samples_per_second"} <= set(
            summary
        )
    assert len(sp.snapshots) == 2 * len(model.weights)
    for s in sp.snapshots:
        assert s["stats"]["histogram"]["counts"] and sum(s["stats"]["histogram"]["counts"]) > 0


def test_evaluate_predict_and_wrap_on_jax(keras: Any) -> None:
    ci.profile(frameworks=[])
    model = ci.wrap(tiny_model(keras))
    x, y = data()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    model.evaluate(x, y, batch_size=32, verbose=0)
    model.predict(x, batch_size=32, verbose=0)
    ci.shutdown()
    sp = Spool()
    assert sp.tree(skip=("data_load",)) == [
        ("epoch", 0, [("batch", 0, []), ("batch", 1, [])]),
        ("test", None, [("batch", 0, "test", []), ("batch", 1, "test", [])]),
        ("predict", None, [("batch", 0, "predict", []), ("batch", 1, "predict", [])]),
    ]


def test_jax_backend_imports_neither_tensorflow_nor_torch(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import os, sys
        os.environ["KERAS_BACKEND"] = "jax"
        import numpy as np, keras, cirron as ci
        from cirron.integrations.keras import CirronCallback
        ci.profile()
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        m.compile(optimizer="sgd", loss="mse")
        x = np.zeros((16, 4), "float32"); y = np.zeros((16, 1), "float32")
        m.fit(x, y, batch_size=8, epochs=2, validation_split=0.5, verbose=0,
              callbacks=[CirronCallback()])
        ci.wrap(m).evaluate(x, y, verbose=0); m.predict(x, verbose=0)
        ci.shutdown()
        heavy = sorted(k for k in sys.modules if k.split(".")[0] in ("tensorflow", "torch"))
        print("HEAVY", heavy)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRRON_")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr[-2000:]
    assert len(Spool(tmp_path / ".cirron").named("epoch")) == 2
