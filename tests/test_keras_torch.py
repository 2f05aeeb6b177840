"""Keras 3 on the torch backend, in its own pytest process: ``pytest -m keras_torch``.

Keras fixes its backend at import; the fixture below sets ``KERAS_BACKEND=torch`` before the first
import and fails (never skips) if this process already imported Keras with another backend.
On this backend Keras runs the callback's batch-end hooks on worker threads (``async_safe``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

import cirron as ci
from tests.helpers.keras_backends import (
    check_backend_imports_none_of,
    check_evaluate_predict_and_wrap,
    check_fit_with_batch_ends_on_worker_threads,
)
from tests.test_keras import Spool, assert_clean, data, import_keras, tiny_model

pytestmark = pytest.mark.keras_torch

HAVE_TORCH_ADAPTER = importlib.util.find_spec("cirron.integrations.torch") is not None


@pytest.fixture(scope="module")
def keras() -> Any:
    return import_keras("torch")


@pytest.fixture
def cb_cls(keras: Any) -> Any:
    from cirron.integrations.keras import CirronCallback

    return CirronCallback


def test_keras_keeps_async_batch_end_dispatch_with_the_callback(keras: Any, cb_cls: Any) -> None:
    assert keras.callbacks.CallbackList([cb_cls()])._async_train is True


def test_fit_tree_with_batch_ends_on_worker_threads(keras: Any, cb_cls: Any) -> None:
    check_fit_with_batch_ends_on_worker_threads(keras, cb_cls)


def test_evaluate_predict_and_wrap_on_torch(keras: Any) -> None:
    check_evaluate_predict_and_wrap(keras)


def test_torch_backend_never_imports_tensorflow(tmp_path: Path) -> None:
    check_backend_imports_none_of(tmp_path, "torch", ("tensorflow",))


def _fit_with_torch_hooks(keras: Any, fit: Any) -> Spool:
    ci.profile(frameworks=["torch"])
    model = tiny_model(keras)
    x, y = data()
    fit(model, x, y)
    assert_clean()
    ci.shutdown()
    return Spool()


def _assert_one_owner(sp: Spool, epochs: list[int]) -> None:
    assert [(e["index"], e["parent_id"]) for e in sp.named("epoch")] == [
        (i, sp.session["id"]) for i in epochs
    ]
    containers = sp.named("epoch") + sp.named("validation")
    ours = {c["id"] for p in containers for c in sp.children(p) if c["name"] == "batch"}
    assert {b["id"] for b in sp.named("batch")} == ours  # no batch opened by the torch hooks
    for epoch in sp.named("epoch"):
        for b in [c for c in sp.children(epoch) if c["name"] == "batch"]:
            kids = {k["name"] for k in sp.children(b)}
            assert {"forward", "backward"} <= kids  # the torch hooks' children, in our batch


@pytest.mark.skipif(not HAVE_TORCH_ADAPTER, reason="cirron.integrations.torch is not installed")
def test_torch_hooks_only_add_children_no_duplicate_epochs(keras: Any, cb_cls: Any) -> None:
    def fit(model: Any, x: Any, y: Any) -> None:
        ci.wrap(model).fit(x, y, batch_size=16, epochs=2, validation_split=0.25, verbose=0)

    sp = _fit_with_torch_hooks(keras, fit)
    _assert_one_owner(sp, [0, 1])
    assert len(sp.named("batch")) == 2 * (3 + 1)


@pytest.mark.skipif(not HAVE_TORCH_ADAPTER, reason="cirron.integrations.torch is not installed")
def test_plain_callback_with_torch_hooks_on_a_built_model(keras: Any, cb_cls: Any) -> None:
    def fit(model: Any, x: Any, y: Any) -> None:
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # builds; the hooks own this one
        with ci.scope("ours"):
            model.fit(
                x,
                y,
                batch_size=16,
                epochs=2,
                validation_split=0.25,
                verbose=0,
                callbacks=[cb_cls()],
            )

    sp = _fit_with_torch_hooks(keras, fit)
    (ours,) = sp.named("ours")
    assert [
        (e["index"], e["parent_id"]) for e in sp.named("epoch") if e["parent_id"] == ours["id"]
    ] == [(0, ours["id"]), (1, ours["id"])]


@pytest.mark.skipif(not HAVE_TORCH_ADAPTER, reason="cirron.integrations.torch is not installed")
def test_plain_callback_first_fit_with_torch_hooks_has_no_build_epoch(
    keras: Any, cb_cls: Any
) -> None:
    def fit(model: Any, x: Any, y: Any) -> None:
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb_cls()])

    sp = _fit_with_torch_hooks(keras, fit)
    # Keras fetches a batch to build the model before any callback hook runs; the torch hooks
    # give way when the callback claims the levels: no extra epoch, and that fetch stays a
    # data_load directly under the session.
    epochs = sp.named("epoch")
    assert [e["index"] for e in epochs] == [0, 1]
    assert all(e["parent_id"] == sp.session["id"] for e in epochs)
    assert all(b["parent_id"] in {e["id"] for e in epochs} for b in sp.named("batch"))
    assert any(d["parent_id"] == sp.session["id"] for d in sp.named("data_load"))


@pytest.mark.skipif(not HAVE_TORCH_ADAPTER, reason="cirron.integrations.torch is not installed")
def test_zero_config_on_torch_backend(keras: Any, cb_cls: Any) -> None:
    model = tiny_model(keras)
    x, y = data()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[cb_cls()])
    assert ci._get().profiling
    ci.shutdown()
    sp = Spool()
    assert sp.session["attrs"]["keras_backend"] == "torch"
    assert sp.session["attrs"]["framework"] == "keras"  # not the torch hooks' "pytorch"
    assert [e["index"] for e in sp.named("epoch")] == [0]
