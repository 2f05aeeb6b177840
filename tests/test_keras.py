"""Keras 3 on the TensorFlow backend: real ``fit``/``evaluate``/``predict`` runs on tiny models.

Keras fixes its backend at import, so the torch backend has its own module
(``test_keras_torch.py``, marker ``keras_torch``) and its own pytest process:

    pytest -m "not keras_torch"      # this module (TensorFlow backend)
    pytest -m keras_torch            # the torch backend

Keras is imported by a fixture, not at module level, so collecting both modules in one process
imports nothing; this module refuses to run where Keras was already imported with another backend.
The helpers below are shared with the torch-backend module.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cirron as ci
from tests.helpers.schema import load_batches

# -- helpers shared with test_keras_torch.py -------------------------------------------------------


def import_keras(backend: str) -> Any:
    """Import Keras with ``backend``, or fail loudly if this process already chose another."""
    if "keras" in sys.modules:
        import keras

        have = keras.backend.backend()
        if have != backend:
            pytest.fail(
                f"Keras was already imported with the {have!r} backend in this process; "
                f"the {backend!r} tests need their own pytest process (see the module "
                "docstring: pytest -m keras_torch / -m 'not keras_torch')."
            )
        return keras
    os.environ["KERAS_BACKEND"] = backend
    import keras

    assert keras.backend.backend() == backend
    return keras


class Spool:
    """What a user sees in ``./.cirron/spool`` after ``ci.shutdown()``: spans (closing records
    supersede provisional ones), marks and snapshots."""

    def __init__(self, root: Path | str = ".cirron") -> None:
        batches = load_batches(Path(root))
        self.spans: dict[str, dict[str, Any]] = {}
        self.marks: list[dict[str, Any]] = []
        self.snapshots: list[dict[str, Any]] = []
        for b in batches:
            for s in b["spans"]:
                if not s["attrs"].get("open") or s["id"] not in self.spans:
                    self.spans[s["id"]] = s
            self.marks += b["marks"]
            self.snapshots += b["snapshots"]

    def named(self, name: str) -> list[dict[str, Any]]:
        return sorted(
            (s for s in self.spans.values() if s["name"] == name), key=lambda s: s["start_ns"]
        )

    def children(self, span: dict[str, Any] | None) -> list[dict[str, Any]]:
        pid = span["id"] if span is not None else None
        return sorted(
            (s for s in self.spans.values() if s["parent_id"] == pid),
            key=lambda s: (s["start_ns"], s["name"]),
        )

    @property
    def session(self) -> dict[str, Any]:
        (root,) = self.named("cirron.session")
        return root

    def tree(self, span: dict[str, Any] | None = None, skip: tuple[str, ...] = ()) -> list[Any]:
        """Nested ``(name, index[, phase], children)`` below ``span`` (default the session)."""
        span = span if span is not None else self.session
        out: list[Any] = []
        for c in self.children(span):
            if c["name"] in skip:
                continue
            key = (c["name"], c["index"]) + (
                (c["attrs"]["phase"],) if "phase" in c["attrs"] else ()
            )
            out.append((*key, self.tree(c, skip)))
        return out

    def marks_of(self, span: dict[str, Any], kind: str | None = None) -> dict[str, Any]:
        return {
            m["name"]: m["value"]
            for m in self.marks
            if m["span_id"] == span["id"] and (kind is None or m["kind"] == kind)
        }


def epoch_tree(
    n_batches: int, val_batches: int, epoch: int, data_load: bool = True
) -> tuple[Any, ...]:
    dl = [("data_load", None, [])] if data_load else []
    batches = [("batch", i, list(dl)) for i in range(n_batches)]
    val = (
        [("validation", epoch, [("batch", i, "validation", list(dl)) for i in range(val_batches)])]
        if val_batches
        else []
    )
    return ("epoch", epoch, batches + val)


def tiny_model(keras: Any, seed: int = 0) -> Any:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", metrics=["mae"])
    return model


def data(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (x.sum(axis=1, keepdims=True) * 0.5).astype("float32")


def assert_clean() -> None:
    """No fault of cirron's own and no bad mark value during the run."""
    health = ci.health()
    assert health.get("internal_errors", 0) == 0, health
    assert health["drops"].get("bad_mark_values", 0) == 0, health


# -- this module: the TensorFlow backend ---------------------------------------------------------


@pytest.fixture(scope="module")
def keras() -> Any:
    return import_keras("tensorflow")


@pytest.fixture
def cb_cls(keras: Any) -> Any:
    from cirron.integrations.keras import CirronCallback

    return CirronCallback


def test_fit_records_epochs_batches_validation_and_data_load(keras: Any, cb_cls: Any) -> None:
    ci.profile(frameworks=[])
    model = tiny_model(keras)
    x, y = data()
    model.fit(x, y, batch_size=16, epochs=2, validation_split=0.25, verbose=0, callbacks=[cb_cls()])
    assert_clean()
    ci.shutdown()
    sp = Spool()
    assert sp.tree() == [epoch_tree(3, 1, 0), epoch_tree(3, 1, 1)]
    for batch in sp.named("batch"):
        (dl,) = sp.children(batch)
        assert batch["start_ns"] == dl["start_ns"] <= dl["end_ns"] <= batch["end_ns"]
        assert batch["attrs"]["data_load_ns"] == dl["end_ns"] - dl["start_ns"]
    epochs = sp.named("epoch")
    for a, b in itertools.pairwise(epochs):
        assert a["end_ns"] <= b["start_ns"]
    assert epochs[0]["attrs"]["steps"] == 3


def test_logs_become_batch_point_marks_and_epoch_summaries(keras: Any, cb_cls: Any) -> None:
    ci.profile(frameworks=[])
    model = tiny_model(keras)
    x, y = data()
    history = model.fit(
        x, y, batch_size=16, epochs=2, validation_split=0.25, verbose=0, callbacks=[cb_cls()]
    )
    ci.shutdown()
    sp = Spool()
    for epoch in sp.named("epoch"):
        summary = sp.marks_of(epoch, "summary")
        assert {
            "loss",
            "mae",
            "val_loss",
            "val_mae",
            "learning_rate",
            "batch_size",
            "samples_per_second",
        } <= set(summary)
        assert summary["val_loss"] == pytest.approx(history.history["val_loss"][epoch["index"]])
        assert summary["learning_rate"] == pytest.approx(0.01)
        assert summary["batch_size"] == 16
        assert summary["samples_per_second"] > 0
        for batch in [c for c in sp.children(epoch) if c["name"] == "batch"]:
            points = sp.marks_of(batch, "point")
            assert set(points) == {"loss", "mae"}
            assert len(batch["mark_ids"]) == 2
    (val,) = [c for c in sp.children(sp.named("epoch")[0]) if c["name"] == "validation"]
    assert set(sp.marks_of(val, "summary")) == {"loss", "mae"}


def test_evaluate_and_predict_record_test_and_predict_spans(keras: Any, cb_cls: Any) -> None:
    ci.profile(frameworks=[])
    model = tiny_model(keras)
    x, y = data()
    cb = cb_cls()
    result = model.evaluate(x, y, batch_size=32, verbose=0, callbacks=[cb], return_dict=True)
    model.predict(x, batch_size=16, verbose=0, callbacks=[cb])
    ci.shutdown()
    sp = Spool()
    dl = [("data_load", None, [])]
    assert sp.tree() == [
        ("test", None, [("batch", 0, "test", dl), ("batch", 1, "test", dl)]),
        ("predict", None, [("batch", i, "predict", dl) for i in range(4)]),
    ]
    (test,) = sp.named("test")
    assert sp.marks_of(test, "summary")["loss"] == pytest.approx(result["loss"])
    assert not [m for m in sp.marks if m["name"] == "outputs"]


def test_snapshots_per_epoch_per_weight_match_the_weights(keras: Any, cb_cls: Any) -> None:
    ci.profile(frameworks=[])
    model = tiny_model(keras)
    x, y = data()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb_cls()])
    ci.shutdown()
    sp = Spool()
    epochs = sp.named("epoch")
    names = [w.path for w in model.weights]
    by_epoch = Counter((s["span_id"], s["tensor_name"]) for s in sp.snapshots)
    assert by_epoch == Counter({(e["id"], n): 1 for e in epochs for n in names})
    last = {s["tensor_name"]: s for s in sp.snapshots if s["span_id"] == epochs[-1]["id"]}
    for w in model.weights:
        arr = w.numpy().astype(np.float64)
        rec = last[w.path]
        assert rec["shape"] == list(arr.shape) and rec["dtype"] == "float32"
        assert rec["mode"] == "stats" and rec["blob_uri"] is None
        st = rec["stats"]
        assert st["mean"] == pytest.approx(arr.mean(), abs=1e-6)
        assert st["std"] == pytest.approx(arr.std(), abs=1e-6)
        assert st["norm"] == pytest.approx(np.linalg.norm(arr), rel=1e-5)
        assert (st["min"], st["max"]) == pytest.approx((arr.min(), arr.max()))
        assert sum(st["histogram"]["counts"]) == arr.size


def test_full_snapshot_mode_writes_a_weights_blob_per_epoch(keras: Any, cb_cls: Any) -> None:
    from safetensors.numpy import load_file

    ci.profile(frameworks=[], snapshots="full")
    model = tiny_model(keras)
    x, y = data()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[cb_cls()])
    ci.shutdown()
    sp = Spool()
    (epoch,) = sp.named("epoch")
    path = Path(".cirron/snapshots") / epoch["id"] / "weights.safetensors"
    tensors = load_file(path)
    assert set(tensors) == {w.path for w in model.weights}
    assert {s["mode"] for s in sp.snapshots} == {"full"}
    assert {s["blob_uri"] for s in sp.snapshots} == {path.resolve().as_uri()}


def test_device_path_stats_equal_the_numpy_path(keras: Any) -> None:
    from cirron.integrations.keras_snapshots import weight_stats

    model = tiny_model(keras)
    w = model.weights[0]
    w.assign(np.where(np.arange(w.shape[0] * w.shape[1]).reshape(w.shape) == 3, np.nan, w.numpy()))
    host = weight_stats(model, on_device=False)
    dev = weight_stats(model, on_device=True)
    assert [s.name for s in host] == [s.name for s in dev]
    assert host[0].non_finite == dev[0].non_finite == 1
    for a, b in zip(host, dev, strict=True):
        assert (a.numel, a.shape) == (b.numel, b.shape)
        assert (a.total, a.sumsq, a.min, a.max, a.var) == pytest.approx(
            (b.total, b.sumsq, b.min, b.max, b.var), rel=1e-5, abs=1e-6
        )
        assert sum(a.counts) == sum(b.counts)
        assert np.abs(np.subtract(a.counts, b.counts)).sum() <= 2  # edge rounding at most


def test_zero_config_starts_profiling_and_keeps_the_session_for_later_fits(
    keras: Any, cb_cls: Any
) -> None:
    assert not ci._get().profiling
    model = tiny_model(keras)
    x, y = data()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[cb_cls()])
    assert ci._get().profiling  # left open for later fits
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[cb_cls()])
    assert_clean()
    ci.shutdown()
    sp = Spool()
    assert sp.tree(skip=("data_load",)) == [
        ("epoch", 0, [("batch", 0, []), ("batch", 1, [])]),
        ("epoch", 0, [("batch", 0, []), ("batch", 1, [])]),
    ]
    attrs = sp.session["attrs"]
    assert attrs["framework"] == "keras" and attrs["keras_backend"] == "tensorflow"
    assert attrs["status"] == "finished"


def test_explicit_instance_records_there_and_leaves_the_default_alone(
    keras: Any, cb_cls: Any, tmp_path: Path
) -> None:
    c = ci.Cirron(output_dir=str(tmp_path / "other"))
    model = tiny_model(keras)
    x, y = data()
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[cb_cls(cirron=c)])
    assert c.profiling and not ci._get().profiling
    c.shutdown()
    assert not Path(".cirron").exists()
    sp = Spool(tmp_path / "other")
    assert [e["index"] for e in sp.named("epoch")] == [0, 1]


def test_resumed_fit_continues_epoch_indices(keras: Any, cb_cls: Any) -> None:
    ci.profile(frameworks=[])
    model = tiny_model(keras)
    x, y = data()
    model.fit(x, y, batch_size=32, epochs=4, initial_epoch=2, verbose=0, callbacks=[cb_cls()])
    ci.shutdown()
    sp = Spool()
    assert [(e["index"], [b["index"] for b in sp.children(e)]) for e in sp.named("epoch")] == [
        (2, [0, 1]),
        (3, [0, 1]),
    ]


def test_options_turn_batch_marks_snapshots_and_data_load_off(keras: Any, cb_cls: Any) -> None:
    ci.profile(frameworks=[])
    model = tiny_model(keras)
    x, y = data()
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=1,
        verbose=0,
        callbacks=[cb_cls(log_every_n_batches=3, snapshots=False, data_load=False)],
    )
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb_cls(batch_marks=False)])
    ci.shutdown()
    sp = Spool()
    first, second = sp.named("epoch")
    marked = [b["index"] for b in sp.children(first) if sp.marks_of(b)]
    assert marked == [0, 3, 6]
    assert all(not sp.children(b) for b in sp.children(first))
    assert not any(sp.marks_of(b) for b in sp.children(second))
    assert "loss" in sp.marks_of(second, "summary")
    assert {s["span_id"] for s in sp.snapshots} == {second["id"]}


def test_wrap_injects_the_callback_once_into_fit_evaluate_and_predict(
    keras: Any, cb_cls: Any
) -> None:
    ci.profile(frameworks=[])
    model = tiny_model(keras)
    assert ci.wrap(model) is model
    assert ci.wrap(model) is model  # idempotent
    x, y = data()
    model.fit(x, y, 32, 1, 0, validation_split=0.5)  # callbacks not passed at all
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[cb_cls()])  # user's own
    model.evaluate(x, y, batch_size=64, verbose=0)
    model.predict(x, batch_size=64, verbose=0)
    ci.shutdown()
    sp = Spool()
    assert sp.tree(skip=("data_load",)) == [
        ("epoch", 0, [("batch", 0, []), ("validation", 0, [("batch", 0, "validation", [])])]),
        ("epoch", 0, [("batch", 0, []), ("batch", 1, [])]),
        ("test", None, [("batch", 0, "test", [])]),
        ("predict", None, [("batch", 0, "predict", [])]),
    ]


def test_wrap_closes_what_an_interrupted_fit_left_open(keras: Any) -> None:
    ci.profile(frameworks=[])
    model = ci.wrap(tiny_model(keras))
    x, y = data()

    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if batch == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[Boom()])
    with ci.scope("after"):
        pass
    assert not any(ci._get()._rec.owners.values())
    ci.shutdown()
    sp = Spool()
    (epoch,) = sp.named("epoch")
    assert epoch["attrs"]["interrupted"] is True
    assert [c["name"] for c in sp.children(None)] == ["cirron.session"]
    assert [c["name"] for c in sp.children(sp.session)] == ["epoch", "after"]


def test_tf_keras_model_fit_is_recorded(keras: Any, cb_cls: Any) -> None:
    import tensorflow as tf

    ci.profile(frameworks=[])
    tfk = tf.keras
    model = tfk.Sequential([tfk.Input((4,)), tfk.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    x, y = data()
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[cb_cls()])
    ci.shutdown()
    sp = Spool()
    assert sp.tree(skip=("data_load",)) == [
        ("epoch", i, [("batch", 0, []), ("batch", 1, [])]) for i in range(2)
    ]
    assert len(sp.snapshots) == 2 * len(model.weights)


def test_batch_end_on_another_thread_closes_the_right_batch(keras: Any, cb_cls: Any) -> None:
    """What Keras does with ``async_safe`` callbacks on torch/JAX: batch ends on a worker."""
    ci.profile(frameworks=[])
    model = tiny_model(keras)
    cb = cb_cls()
    cb.set_model(model)
    cb.set_params({"epochs": 1, "steps": 3, "verbose": 0})
    cb.on_train_begin()
    cb.on_epoch_begin(0)
    for i in range(3):
        cb.on_train_batch_begin(i)
        with ci.scope("forward"):  # another integration's child, on the training thread
            pass
        t = threading.Thread(target=cb.on_train_batch_end, args=(i, {"loss": float(i)}))
        t.start()
        t.join()
    cb.on_epoch_end(0, {"loss": 1.0})
    cb.on_train_end()
    with ci.scope("after"):
        pass
    ci.shutdown()
    sp = Spool()
    assert sp.tree() == [
        (
            "epoch",
            0,
            [("batch", i, [("data_load", None, []), ("forward", None, [])]) for i in range(3)],
        ),
        ("after", None, []),
    ]
    for b in sp.named("batch"):
        assert sp.marks_of(b) == {"loss": float(b["index"])}


def test_ci_watch_takes_keras_models_for_manual_epochs(keras: Any) -> None:
    ci.profile(frameworks=[])
    model = tiny_model(keras)
    ci.watch(model)
    for _ in ci.epochs(range(2)):
        pass
    ci.shutdown()
    sp = Spool()
    assert len(sp.snapshots) == 2 * len(model.weights)


def test_callback_is_async_safe_and_keeps_keras_async_dispatch(keras: Any, cb_cls: Any) -> None:
    assert cb_cls.async_safe is True
    callbacks = keras.callbacks.CallbackList([cb_cls()])
    if not hasattr(callbacks, "_async_train"):
        pytest.skip(f"Keras {keras.__version__} has no asynchronous batch-end dispatch")
    # TensorFlow is not thread-safe for Keras, so it dispatches batch ends synchronously; the
    # torch module checks that the callback keeps Keras' asynchronous dispatch.
    assert callbacks._async_train is False
