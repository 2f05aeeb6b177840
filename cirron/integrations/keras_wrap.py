"""``ci.wrap(keras_model)`` and ``ci.watch(keras_model)`` (the registry calls these).

>>> import cirron as ci
>>> model = ci.wrap(model)      # the same object; fit/evaluate/predict record themselves  # doctest: +SKIP
>>> ci.watch(model)             # weight statistics at every epoch end, manual loops too  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras

from cirron.integrations.keras_snapshots import snapshot_model

if TYPE_CHECKING:
    from cirron.integrations.keras import CirronCallback

__all__ = ["watch", "wrap"]


def watch(cirron: Any, model: Any) -> bool:
    """``ci.watch(keras_model)``: weight statistics at every epoch end of this session (manual
    ``ci.epochs`` loops included). Epochs a :class:`CirronCallback` already snapshotted for the
    same model are skipped."""
    if not isinstance(model, keras.Model):
        return False

    def on_epoch_end(scope: Any) -> None:
        done = scope.attrs.get("__cirron_keras")
        if done is not None and id(model) in done:
            return
        snapshot_model(cirron, model, scope)

    cirron._rec.epoch_listeners.append(on_epoch_end)
    return True


_INJECTED = ("fit", "evaluate", "predict")


def wrap(cirron: Any, obj: Any) -> Any:
    """``ci.wrap(keras_model)``: the same model, whose ``fit``/``evaluate``/``predict`` each get a
    :class:`CirronCallback` (unless one was passed). Returns None for anything else."""
    if not isinstance(obj, keras.Model):
        return None
    if obj.__dict__.get("__cirron_wrapped__"):
        return obj
    import cirron as facade
    from cirron.integrations.keras import CirronCallback

    target = None if cirron is facade._default else cirron  # the default: resolved per call
    callback = CirronCallback(cirron=target)
    for name in _INJECTED:
        original = getattr(obj, name)
        object.__setattr__(obj, name, _injecting(obj, original, callback, cirron._rec))
    object.__setattr__(obj, "__cirron_wrapped__", True)
    return obj


def _injecting(
    model: Any, original: Callable[..., Any], callback: CirronCallback, rec: Any
) -> Callable[..., Any]:
    from cirron.integrations.keras import OWNED_LEVELS

    params = list(inspect.signature(original).parameters)
    position = params.index("callbacks") if "callbacks" in params else None

    @functools.wraps(original)
    def method(*args: Any, **kwargs: Any) -> Any:
        args_l = list(args)
        if position is not None and len(args_l) > position:
            args_l[position] = _with_callback(model, args_l[position], callback)
        else:
            kwargs["callbacks"] = _with_callback(model, kwargs.get("callbacks"), callback)
        # Own epoch/batch from the call on: Keras fetches a first batch to build the model
        # before any callback hook runs, and the torch hooks must not make that an epoch.
        rec.claim(*OWNED_LEVELS)
        try:
            return original(*args_l, **kwargs)
        except BaseException:
            callback.abandon()
            raise
        finally:
            rec.release(*OWNED_LEVELS)

    return method


def _with_callback(model: Any, callbacks: Any, callback: CirronCallback) -> Any:
    from cirron.integrations.keras import CirronCallback

    if callbacks is None:
        return [callback]
    if isinstance(callbacks, keras.callbacks.CallbackList):
        if not any(isinstance(c, CirronCallback) for c in callbacks.callbacks):
            callback.set_model(model)
            callback.set_params(callbacks.params)
            callbacks.callbacks.append(callback)
        return callbacks
    items = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    if any(isinstance(c, CirronCallback) for c in items):
        return callbacks
    return [*items, callback]
