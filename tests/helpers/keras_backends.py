"""Checks shared by the Keras backends that dispatch batch ends to worker threads (torch, JAX).

Each backend runs in its own pytest process (Keras fixes its backend at import); the test
modules ``tests/test_keras_torch.py`` and ``tests/test_keras_jax.py`` call these with the Keras
module their fixture imported.
"""

from __future__ import annotations

import itertools
import textwrap
import threading
from pathlib import Path
from typing import Any

import cirron as ci
from tests.helpers.run import run_py
from tests.test_keras import Spool, assert_clean, data, epoch_tree, tiny_model


def check_fit_with_batch_ends_on_worker_threads(keras: Any, cb_cls: Any) -> None:
    """A fit with validation: the canonical tree, batches that never overlap although their
    ends ran on worker threads, per-batch point marks, epoch summaries, one snapshot per weight
    per epoch."""
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
    assert all(sum(s["stats"]["histogram"]["counts"]) > 0 for s in sp.snapshots)


def check_evaluate_predict_and_wrap(keras: Any) -> None:
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


def check_backend_imports_none_of(tmp_path: Path, backend: str, forbidden: tuple[str, ...]) -> None:
    """A fresh interpreter on ``backend`` runs fit (zero-config profile), evaluate and predict
    with the callback, and imports none of the ``forbidden`` top-level packages."""
    script = textwrap.dedent(f"""
        import os, sys
        os.environ["KERAS_BACKEND"] = {backend!r}
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
        heavy = sorted(k for k in sys.modules if k.split(".")[0] in {forbidden!r})
        print("HEAVY", heavy)
    """)
    out = run_py(script, tmp_path, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr[-2000:]
    assert len(Spool(tmp_path / ".cirron").named("epoch")) == 2
