"""scikit-learn: ``ci.wrap(estimator)`` returns a :class:`CirronEstimator`.

The wrapper is a real meta-estimator (its only parameter is ``estimator``), so ``clone``,
``get_params``/``set_params``, pickling, ``Pipeline``, ``ColumnTransformer``, ``GridSearchCV`` and
``cross_val_score`` keep it wrapped. Every call (``fit``, ``predict``, ``transform``, ``score``, ...)
is one span named after the method; a wrapped ``Pipeline`` adds one child span per step and a
wrapped search (``n_jobs=1``) one child span per candidate fit. See ``docs/sklearn.md``.

>>> import cirron as ci
>>> from sklearn.linear_model import LogisticRegression
>>> clf = ci.wrap(LogisticRegression())
>>> clf.fit([[0.0], [1.0]], [0, 1]).predict([[0.9]])
array([1])
>>> ci.shutdown()
"""

from __future__ import annotations

import contextvars
import json
import multiprocessing
import threading
from collections.abc import Callable
from copy import deepcopy
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import get_tags
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

import cirron

__all__ = ["CirronEstimator", "wrap"]

MAX_PARAMS = 24  # scalar constructor parameters recorded per span
MAX_PARAM_CHARS = 64
# Methods after which the fitted estimator is inspected for n_iter_, loss_, best_score_ ...
_FITTING = frozenset(("fit", "partial_fit", "fit_transform", "fit_predict"))
_REFIT = frozenset(("fit", "fit_transform", "fit_predict"))  # start from a fresh clone
# Labels (``step``, ``candidate``) handed to a user-wrapped estimator called by a probe, so
# that the call is still one span, carrying them.
_PENDING: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "cirron_sklearn_pending", default=None
)
_START_LOCK = threading.Lock()


def wrap(cirron_instance: Any, obj: Any) -> CirronEstimator | None:
    """The registry's entry point: a :class:`CirronEstimator` for an estimator, else None."""
    if isinstance(obj, CirronEstimator):
        return obj
    if isinstance(obj, type) or not _is_estimator(obj):
        return None
    est = CirronEstimator(obj)
    if cirron_instance is not None and cirron_instance._rec is not cirron._REC:
        est._cirron = cirron_instance  # a non-default instance; the default is looked up per call
    return est


def _is_estimator(obj: Any) -> bool:
    return isinstance(obj, BaseEstimator) or (
        callable(getattr(obj, "fit", None)) and callable(getattr(obj, "get_params", None))
    )


def _inner_has(name: str) -> Callable[[Any], bool]:
    def check(self: Any) -> bool:
        getattr(self.estimator, name)  # the inner estimator's own AttributeError propagates
        return True

    return check


def _with_y(method: str) -> Any:
    def call(self: CirronEstimator, X: Any, y: Any = None, **params: Any) -> Any:
        return self._call(method, (X, y), params)

    return _method(call, method)


def _without_y(method: str) -> Any:
    def call(self: CirronEstimator, X: Any, **params: Any) -> Any:
        return self._call(method, (X,), params)

    return _method(call, method)


def _method(call: Any, method: str) -> Any:
    call.__name__ = method
    call.__qualname__ = f"CirronEstimator.{method}"
    call.__doc__ = (
        f"The wrapped estimator's ``{method}``, recorded as a ``{method}`` span. "
        "Present exactly when the wrapped estimator has it."
    )
    return available_if(_inner_has(method))(call)


class CirronEstimator(MetaEstimatorMixin, BaseEstimator):  # type: ignore[misc]
    """A scikit-learn meta-estimator that records one span per call of ``estimator``.

    Parameters
    ----------
    estimator : estimator
        The wrapped estimator (anything with ``fit``), including pipelines and searches.

    Methods (``predict``, ``predict_proba``, ``transform``, ``score``, ...) exist exactly when
    the wrapped estimator has them; fitted attributes (``coef_``, ``best_estimator_``, ...),
    tags and fittedness are the wrapped estimator's. ``fit`` and ``partial_fit`` return the
    wrapper. Profiling starts by itself at the first call if it is not running.

    >>> from sklearn.preprocessing import StandardScaler
    >>> from cirron.integrations.sklearn import CirronEstimator
    >>> scaler = CirronEstimator(StandardScaler()).fit([[0.0], [2.0]])
    >>> scaler.mean_
    array([1.])
    >>> import cirron as ci; ci.shutdown()
    """

    __cirron_wrapped__ = True

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    # -- delegation ---------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # Only public names: private and dunder lookups (pickle, copy, sklearn internals such
        # as metadata requests) must see the wrapper itself.
        if name.startswith("_"):
            raise AttributeError(name)
        d = self.__dict__
        if "estimator_" in d:
            return getattr(d["estimator_"], name)
        if "estimator" in d:
            return getattr(d["estimator"], name)
        raise AttributeError(name)

    def _fitted(self) -> Any:
        """The estimator that answers calls: the fitted clone, else the one given."""
        return self.__dict__.get("estimator_", self.estimator)

    def __sklearn_tags__(self) -> Any:
        try:
            tags = deepcopy(get_tags(self.estimator))
        except Exception:  # not an estimator: fit will say so
            return super().__sklearn_tags__()
        # The wrapper reads shapes from its inputs to describe each call; it is verified with
        # numpy, pandas and sparse inputs, not with array-API namespaces (cupy, torch, ...).
        tags.array_api_support = False
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        try:
            check_is_fitted(self._fitted())
        except (NotFittedError, TypeError):
            return False
        return True

    def __sklearn_clone__(self) -> CirronEstimator:
        new: CirronEstimator = super().__sklearn_clone__()
        binding = self.__dict__.get("_cirron")
        if binding is not None:  # a clone records into the same (non-default) instance
            new._cirron = binding
        return new

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_cirron", None)  # a Cirron instance is process state, never pickled
        return state

    @available_if(_inner_has("__getitem__"))  # type: ignore[untyped-decorator]
    def __getitem__(self, key: Any) -> Any:
        """Index the wrapped ``Pipeline`` / ``ColumnTransformer`` (the fitted one once fitted)."""
        return self._fitted()[key]

    @available_if(_inner_has("set_output"))  # type: ignore[untyped-decorator]
    def set_output(self, **params: Any) -> CirronEstimator:
        """Set the wrapped estimator's output container; returns the wrapper."""
        self.estimator.set_output(**params)
        if "estimator_" in self.__dict__:
            self.estimator_.set_output(**params)
        return self

    def get_metadata_routing(self) -> Any:
        """Route metadata to the wrapped estimator's methods of the same name (pass-through)."""
        from sklearn.utils.metadata_routing import MetadataRouter, MethodMapping

        mapping = MethodMapping()
        for m in (
            "fit",
            "partial_fit",
            "predict",
            "predict_proba",
            "predict_log_proba",
            "decision_function",
            "score",
            "transform",
            "fit_transform",
            "fit_predict",
            "inverse_transform",
        ):
            mapping.add(caller=m, callee=m)
        return MetadataRouter(owner=self).add(estimator=self.estimator, method_mapping=mapping)

    # -- recorded methods ---------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, **params: Any) -> CirronEstimator:
        """Fit the wrapped estimator inside a ``fit`` span; returns the wrapper."""
        if not callable(getattr(self.estimator, "fit", None)):
            raise TypeError(
                "CirronEstimator(estimator=...) needs a scikit-learn estimator (an object "
                f"with a fit method); got {type(self.estimator).__module__}."
                f"{type(self.estimator).__qualname__}."
            )
        self._call("fit", (X, y), params)
        return self

    partial_fit = _with_y("partial_fit")
    fit_transform = _with_y("fit_transform")
    fit_predict = _with_y("fit_predict")
    score = _with_y("score")
    predict = _without_y("predict")
    predict_proba = _without_y("predict_proba")
    predict_log_proba = _without_y("predict_log_proba")
    decision_function = _without_y("decision_function")
    score_samples = _without_y("score_samples")
    transform = _without_y("transform")
    inverse_transform = _without_y("inverse_transform")

    # -- recording ----------------------------------------------------------------------------
    def _call(self, method: str, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
        target, fresh = self._target(method)
        if isinstance(target, CirronEstimator):  # it records this very call itself
            out = self._delegate_labelled(target, method, args, params)
        else:
            out = self._record(target, method, args, params)
        if fresh:
            self.estimator_ = target
        return self if method == "partial_fit" else out

    def _target(self, method: str) -> tuple[Any, bool]:
        """Who answers ``method``, and whether it is a fresh clone to keep as ``estimator_``.

        Like every scikit-learn meta-estimator, fitting never touches the ``estimator``
        parameter: ``fit`` fits a clone (``partial_fit`` keeps updating the same one).
        """
        d = self.__dict__
        if method in _REFIT or (method == "partial_fit" and "estimator_" not in d):
            return clone(self.estimator), True
        return self._fitted(), False

    def _labels(self) -> dict[str, Any]:
        return {}

    def _delegate_labelled(
        self, inner: CirronEstimator, method: str, args: tuple[Any, ...], params: dict[str, Any]
    ) -> Any:
        labels = self._labels() or _PENDING.get()
        token = _PENDING.set(labels or None)
        try:
            return getattr(inner, method)(*args, **params)
        finally:
            _PENDING.reset(token)

    def _record(
        self, inner: Any, method: str, args: tuple[Any, ...], params: dict[str, Any]
    ) -> Any:
        rec = _recorder(self.__dict__.get("_cirron"))
        pending = _PENDING.get()
        token = _PENDING.set(None) if pending is not None else None
        try:
            if rec is None:
                return _invoke(self, inner, method, args, params)
            with rec.Scope(method, None, **self._span_attrs(rec, inner, args[0], pending)):
                out = _invoke(self, inner, method, args, params)
                _summarize(rec, method, inner, out)
            return out
        finally:
            if token is not None:
                _PENDING.reset(token)

    def _span_attrs(
        self, rec: Any, inner: Any, X: Any, pending: dict[str, Any] | None
    ) -> dict[str, Any]:
        try:
            attrs: dict[str, Any] = {"estimator": type(inner).__name__}
            attrs.update(_data_shape(X))
            scalars = _scalar_params(inner)
            if scalars:
                attrs["params"] = scalars
            attrs.update(self._labels())
            if pending:
                attrs.update(pending)
            return attrs
        except Exception as exc:
            rec.internal_error("sklearn span attributes", exc)
            return {"estimator": type(inner).__name__}


class _Probe(CirronEstimator):
    """A transparent, temporary stand-in for a pipeline step or a search's base estimator.

    It records like a :class:`CirronEstimator` but its parameters are the wrapped estimator's
    own, so the pipeline or search driving it sees no difference. It only lives inside one call
    of a wrapped pipeline or search and is swapped back out before that call returns.
    """

    def _target(self, method: str) -> tuple[Any, bool]:
        return self.estimator, False  # the pipeline or search expects its own object fitted

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params: dict[str, Any] = self.estimator.get_params(deep=deep)
        return params

    def set_params(self, **params: Any) -> _Probe:
        self.estimator.set_params(**params)
        if params:
            self._candidate = {**self.__dict__.get("_candidate", {}), **params}
        return self

    def __sklearn_clone__(self) -> _Probe:
        new = _Probe(clone(self.estimator))
        for key in ("_cirron", "_step"):
            if key in self.__dict__:
                new.__dict__[key] = self.__dict__[key]
        return new

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:
        return repr(self.estimator)

    def _labels(self) -> dict[str, Any]:
        d = self.__dict__
        labels: dict[str, Any] = {}
        if "_step" in d:
            labels["step"] = d["_step"]
        if "_candidate" in d:
            labels["candidate"] = d["_candidate"]
        return labels


# -- how a call reaches the wrapped estimator -----------------------------------------------------


def _invoke(
    owner: CirronEstimator, inner: Any, method: str, args: tuple[Any, ...], params: dict[str, Any]
) -> Any:
    """Call ``inner.method``; pipelines and sequential searches get probes on their parts."""
    try:
        plan = _plan(inner, method)
    except Exception as exc:  # cirron's fault: fall back to the plain call
        cirron._get()._rec.internal_error("sklearn probe plan", exc)
        plan = None
    if plan is None:
        return getattr(inner, method)(*args, **params)
    attr, probe_in, probe_out = plan
    binding = owner.__dict__.get("_cirron")
    # Work on a shallow twin so that concurrent calls on a shared fitted pipeline never see
    # each other's probes; a fitting call copies the twin's new state back.
    twin = object.__new__(type(inner))
    twin.__dict__.update(inner.__dict__)
    setattr(twin, attr, probe_in(getattr(inner, attr), binding))
    out = getattr(twin, method)(*args, **params)
    if method in _FITTING:
        state = dict(twin.__dict__)
        probe_out(state, getattr(inner, attr))
        inner.__dict__.update(state)
    return inner if out is twin else out


def _plan(inner: Any, method: str) -> tuple[str, Callable[..., Any], Callable[..., None]] | None:
    from sklearn.pipeline import Pipeline

    if isinstance(inner, Pipeline):
        return "steps", _probe_steps, _unprobe_steps
    if method == "fit" and _is_sequential_search(inner):
        return "estimator", _probe_base, _unprobe_search
    return None


def _is_sequential_search(inner: Any) -> bool:
    from joblib import effective_n_jobs
    from sklearn.model_selection._search import BaseSearchCV

    return (
        isinstance(inner, BaseSearchCV)
        and effective_n_jobs(inner.n_jobs) == 1
        and not isinstance(inner.estimator, _Probe)
    )


def _probe(est: Any, binding: Any, **labels: Any) -> Any:
    if est is None or isinstance(est, str):  # "passthrough", "drop"
        return est
    p = _Probe(est)
    if binding is not None:
        p._cirron = binding
    p.__dict__.update({f"_{k}": v for k, v in labels.items()})
    return p


def _unprobe(est: Any) -> Any:
    return est.estimator if isinstance(est, _Probe) else est


def _probe_steps(steps: list[tuple[str, Any]], binding: Any) -> list[tuple[str, Any]]:
    return [(name, _probe(step, binding, step=name)) for name, step in steps]


def _unprobe_steps(state: dict[str, Any], original: Any) -> None:
    state["steps"] = [(name, _unprobe(step)) for name, step in state["steps"]]


def _probe_base(estimator: Any, binding: Any) -> Any:
    return _probe(estimator, binding)


def _unprobe_search(state: dict[str, Any], original: Any) -> None:
    state["estimator"] = original
    if "best_estimator_" in state:
        state["best_estimator_"] = _unprobe(state["best_estimator_"])


# -- what a call records ------------------------------------------------------------------------


def _recorder(binding: Any) -> Any:
    """The recorder to write to, starting profiling if nothing runs yet; None: do not record.

    A worker process (joblib's loky workers for ``n_jobs>1``, multiprocessing children) never
    starts a session of its own: it records only if profiling already runs there.
    """
    c = binding if binding is not None else cirron._get()
    if c.profiler is None:
        if multiprocessing.parent_process() is not None:
            return None
        with _START_LOCK:
            if c.profiler is None:
                c.profile()
    return c._rec if c.profiling else None


def _data_shape(X: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    shape = getattr(X, "shape", None)
    if isinstance(shape, tuple) and shape:
        out["n_samples"] = int(shape[0])
        if len(shape) > 1:
            out["n_features"] = int(shape[1])
        return out
    if hasattr(X, "__len__") and not isinstance(X, (str, bytes, dict)):
        out["n_samples"] = len(X)
        first = X[0] if len(X) and hasattr(X, "__getitem__") else None
        if isinstance(first, (list, tuple)):
            out["n_features"] = len(first)
    return out


def _scalar_params(est: Any) -> dict[str, Any]:
    try:
        params = est.get_params(deep=False)
    except Exception:
        return {}
    out: dict[str, Any] = {}
    for key in sorted(params):
        v = params[key]
        if hasattr(v, "item") and getattr(v, "shape", None) == ():
            v = v.item()  # numpy scalar
        if isinstance(v, str):
            v = v[:MAX_PARAM_CHARS]
        elif not (v is None or isinstance(v, (bool, int, float))):
            continue
        out[key] = v
        if len(out) >= MAX_PARAMS:
            break
    return out


def _summarize(rec: Any, method: str, inner: Any, out: Any) -> None:
    """Summary marks on the open span: the score, or what the fitted estimator reveals."""
    try:
        if method == "score":
            rec.mark("score", _number(out), kind="summary")
        elif method in _FITTING:
            _fitted_marks(rec, inner)
    except Exception as exc:
        rec.internal_error("sklearn summary marks", exc)


def _fitted_marks(rec: Any, est: Any) -> None:
    n_iter = _attr(est, "n_iter_")
    if n_iter is not None:
        rec.mark("n_iter", int(np.max(n_iter)), kind="summary")
    loss = _attr(est, "loss_")
    if not isinstance(loss, (int, float)) or isinstance(loss, bool):
        curve = _attr(est, "loss_curve_")
        loss = curve[-1] if curve is not None and len(curve) else None
    if loss is not None:
        rec.mark("loss", _number(loss), kind="summary")
    best_score = _attr(est, "best_score_")
    if best_score is not None:
        rec.mark("best_score", _number(best_score), kind="summary")
    best_params = _attr(est, "best_params_")
    if isinstance(best_params, dict):
        text = json.dumps(best_params, sort_keys=True, default=repr)
        rec.mark("best_params", text, kind="summary")
        scope = rec.current()
        if scope is not None:
            scope.attrs["best_params"] = best_params


def _attr(est: Any, name: str) -> Any:
    try:
        return getattr(est, name, None)
    except Exception:  # a property that raises (unfitted part, no refit) reveals nothing
        return None


def _number(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
