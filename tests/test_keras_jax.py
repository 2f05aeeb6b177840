"""Keras 3 on the JAX backend, in its own pytest process: ``pytest -m keras_jax``.

Keras fixes its backend at import; the fixture below sets ``KERAS_BACKEND=jax`` before the first
import and fails (never skips) if this process already imported Keras with another backend.
Like the torch backend, JAX lets Keras run the callback's batch-end hooks on worker threads
(``async_safe``); weight statistics go through ``keras.ops`` on JAX arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.keras_backends import (
    check_backend_imports_none_of,
    check_evaluate_predict_and_wrap,
    check_fit_with_batch_ends_on_worker_threads,
)
from tests.test_keras import import_keras

pytestmark = pytest.mark.keras_jax


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
    check_fit_with_batch_ends_on_worker_threads(keras, cb_cls)


def test_evaluate_predict_and_wrap_on_jax(keras: Any) -> None:
    check_evaluate_predict_and_wrap(keras)


def test_jax_backend_imports_neither_tensorflow_nor_torch(tmp_path: Path) -> None:
    check_backend_imports_none_of(tmp_path, "jax", ("tensorflow", "torch"))
