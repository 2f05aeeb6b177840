"""PyTorch Lightning: ``Trainer(callbacks=[CirronCallback()])`` records the canonical tree.

>>> from cirron.integrations.lightning import CirronCallback
>>> trainer = Trainer(callbacks=[CirronCallback()])          # doctest: +SKIP
>>> model = ci.wrap(MyLightningModule())                     # doctest: +SKIP

``lightning.pytorch`` and ``pytorch_lightning`` are two copies of the same code and each Trainer
rejects the other's callbacks. ``CirronCallback(...)`` therefore returns an instance of a class
built on demand that subclasses the ``Callback`` of *every* Lightning namespace imported at that
moment, so one object works with either Trainer. Importing this module imports neither.

The recording itself lives in :mod:`cirron.integrations.lightning_hooks`; this module holds the
public names, the per-namespace classes and ``ci.wrap(LightningModule)``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

from cirron.core.errors import CirronDependencyError
from cirron.integrations.lightning_hooks import CallbackHooks

__all__ = ["NAMESPACES", "CirronCallback", "callback_class", "wrap"]

NAMESPACES = ("lightning.pytorch", "pytorch_lightning")
"""The Lightning packages whose Trainers the callback supports, preferred first."""

_CLASSES: dict[tuple[str, ...], type] = {}


def _imported() -> tuple[str, ...]:
    return tuple(ns for ns in NAMESPACES if ns in sys.modules)


def _default_namespace() -> str:
    for ns in NAMESPACES:
        if importlib.util.find_spec(ns.split(".")[0]) is not None:
            return ns
    raise CirronDependencyError.missing("lightning", "lightning", "CirronCallback()")


def callback_class(namespaces: str | tuple[str, ...] | None = None) -> type:
    """The concrete callback class for ``namespaces`` (default: every one imported so far).

    Subclass this, not :class:`CirronCallback`, to extend the callback:

    >>> class MyCallback(callback_class("lightning.pytorch")):   # doctest: +SKIP
    ...     def on_train_epoch_end(self, trainer, pl_module):
    ...         super().on_train_epoch_end(trainer, pl_module)
    """
    if isinstance(namespaces, str):
        namespaces = (namespaces,)
    key = tuple(namespaces) if namespaces else (_imported() or (_default_namespace(),))
    cls = _CLASSES.get(key)
    if cls is None:
        bad = [ns for ns in key if ns not in NAMESPACES]
        if bad:
            raise ValueError(f"unknown Lightning namespace {bad[0]!r}; use one of {NAMESPACES}")
        bases = tuple(importlib.import_module(ns).Callback for ns in key)
        cls = type(
            "CirronCallback",
            (CallbackHooks, *bases),
            {
                "__module__": __name__,
                "__qualname__": "CirronCallback",
                "__doc__": CirronCallback.__doc__,
                "_namespaces": key,
            },
        )
        _CLASSES[key] = cls
    return cls


class _Factory(type):
    """``CirronCallback(...)`` builds the right concrete class; ``isinstance`` sees them all."""

    def __call__(
        cls, *args: Any, namespace: str | tuple[str, ...] | None = None, **kwargs: Any
    ) -> Any:
        return callback_class(namespace)(*args, **kwargs)

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, CallbackHooks)

    def __subclasscheck__(cls, sub: type) -> bool:
        return isinstance(sub, type) and issubclass(sub, CallbackHooks)


class CirronCallback(metaclass=_Factory):
    """Lightning callback that records epochs, batches, evaluation runs, metrics and snapshots.

    ``CirronCallback(cirron=None, *, snapshots=None, batch_marks=True, log_every_n_batches=1,
    epoch_marks=True, namespace=None)``

    * ``cirron``: the :class:`cirron.Cirron` to record into (default: the ``ci.*`` instance).
      Without a running session the callback calls ``cirron.profile()`` at setup and leaves the
      session open for later fits.
    * ``snapshots``: ``None`` follows the session's setting; ``"stats"``, ``"sampled"`` or
      ``"full"`` pick a mode; ``False`` records no weight/gradient statistics.
    * ``batch_marks``: record the step loss as a ``point`` mark on training batches.
    * ``log_every_n_batches``: record it on every n-th training batch only.
    * ``epoch_marks``: ``callback_metrics``, learning rates, batch size and samples/s as
      ``summary`` marks on each epoch (and evaluation metrics on evaluation runs).
    * ``namespace``: ``"lightning.pytorch"`` or ``"pytorch_lightning"`` to pick the base class
      explicitly (default: every Lightning namespace imported so far).

    >>> import lightning.pytorch as L                                  # doctest: +SKIP
    >>> L.Trainer(max_epochs=3, callbacks=[CirronCallback()]).fit(model)  # doctest: +SKIP
    """

    def __init__(
        self,
        cirron: Any = None,
        *,
        snapshots: str | bool | None = None,
        batch_marks: bool = True,
        log_every_n_batches: int = 1,
        epoch_marks: bool = True,
    ) -> None:  # pragma: no cover - see _Factory
        raise AssertionError("unreachable: _Factory.__call__ builds the concrete class")


def _rebuild(namespaces: tuple[str, ...], options: dict[str, Any]) -> Any:
    """Unpickle a callback (the concrete classes are built at run time)."""
    return callback_class(namespaces)(**options)


# -- ci.wrap(LightningModule) ------------------------------------------------------------------


def _module_namespace(obj: Any) -> str | None:
    """The namespace whose ``LightningModule`` ``obj`` is, without importing anything."""
    for ns in NAMESPACES:
        mod = sys.modules.get(ns)
        base = getattr(mod, "LightningModule", None) if mod is not None else None
        if base is not None and isinstance(obj, base):
            return ns
    return None


class _ConfigureCallbacks:
    """Replaces a wrapped module's ``configure_callbacks``: the user's callbacks plus ours."""

    def __init__(self, module: Any, cirron: Any, namespace: str, inner: Any) -> None:
        self.module = module
        self.cirron = cirron
        self.namespace = namespace
        self.inner = inner  # an instance-level override the module already had, else None

    def __call__(self) -> Any:
        inner = self.inner
        got = inner() if inner is not None else type(self.module).configure_callbacks(self.module)
        if got is None:
            got = []
        elif not isinstance(got, (list, tuple)):
            got = [got]
        got = list(got)
        if not any(isinstance(cb, CallbackHooks) for cb in got):
            # The same class a plain CirronCallback() gets, so Lightning's rule "a model
            # callback replaces a trainer callback of the same type" avoids a duplicate.
            namespaces = _imported() if self.namespace in _imported() else (self.namespace,)
            got.append(callback_class(namespaces)(cirron=self.cirron))
        return got

    def __reduce__(self) -> tuple[Any, ...]:
        # A pickled module unpickles unwrapped-then-rewrapped with the default instance.
        return (_ConfigureCallbacks, (self.module, None, self.namespace, self.inner))


def wrap(cirron: Any, obj: Any) -> Any:
    """``ci.wrap(lightning_module)``: add a :class:`CirronCallback` through the module's
    ``configure_callbacks`` and return the same module; None for anything else.

    >>> model = ci.wrap(MyLightningModule())      # doctest: +SKIP
    >>> Trainer(max_epochs=2).fit(model)           # doctest: +SKIP
    """
    ns = _module_namespace(obj)
    if ns is None:
        return None
    import cirron as _ci

    target = None if cirron is _ci._get() else cirron
    inner = obj.__dict__.get("configure_callbacks")
    object.__setattr__(obj, "configure_callbacks", _ConfigureCallbacks(obj, target, ns, inner))
    object.__setattr__(obj, "__cirron_wrapped__", True)
    return obj
