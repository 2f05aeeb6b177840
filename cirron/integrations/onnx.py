"""ONNX Runtime: ``ci.wrap(session)`` returns a :class:`CirronSession`.

Each ``run`` / ``run_with_ort_values`` call is one ``inference`` span (batch size, input names,
shapes and dtypes, execution provider, whether it raised). Latency percentiles and the call
count are summary marks on the session span, refreshed at every flush. Everything else is the
wrapped ``InferenceSession``'s own. See ``docs/onnx.md``.

>>> import cirron as ci
>>> import onnxruntime as ort
>>> session = ci.wrap(ort.InferenceSession("model.onnx"))  # doctest: +SKIP
>>> outputs = session.run(None, {"input": batch})  # doctest: +SKIP
"""

from __future__ import annotations

import contextvars
import itertools
import os
import threading
from collections.abc import Callable, Sequence
from math import ceil
from random import random
from time import perf_counter_ns
from typing import Any

import onnxruntime

import cirron

__all__ = ["RESERVOIR_SIZE", "CirronSession", "LatencyStats", "wrap"]

RESERVOIR_SIZE = 4096  # latencies kept per session (uniform sample of every call)
MARK_PREFIX = "inference."
_START_LOCK = threading.Lock()
_UNBOUND = object()


def wrap(cirron_instance: Any, obj: Any) -> CirronSession | None:
    """The registry's entry point: a :class:`CirronSession` for an ``InferenceSession``."""
    if isinstance(obj, CirronSession):
        return obj
    if not isinstance(obj, onnxruntime.InferenceSession):
        return None
    default = cirron_instance is None or cirron_instance._rec is cirron._REC
    return CirronSession(obj, cirron=None if default else cirron_instance)


class LatencyStats:
    """Call count and a bounded uniform sample of latencies; safe to feed from many threads.

    ``add`` is the hot path: a C-level counter and one list store, no lock. ``percentiles``
    runs on the flusher thread.
    """

    __slots__ = ("_calls", "_errors", "sample", "size")

    def __init__(self, size: int = RESERVOIR_SIZE) -> None:
        self.size = size
        self.sample: list[int | None] = [None] * size
        self._calls = itertools.count()
        self._errors = itertools.count()

    def add(self, latency_ns: int) -> None:
        # Hot path. Reservoir sampling (Algorithm R): the n-th call replaces a random slot
        # with probability size/n, so the sample stays uniform over every call.
        n = next(self._calls)
        if n < self.size:
            self.sample[n] = latency_ns
        else:
            j = int(random() * (n + 1))
            if j < self.size:
                self.sample[j] = latency_ns

    def error(self) -> None:
        next(self._errors)

    @property
    def calls(self) -> int:
        return _peek(self._calls) + self.errors

    @property
    def errors(self) -> int:
        return _peek(self._errors)

    def percentiles(self, qs: Sequence[float] = (0.5, 0.95, 0.99)) -> list[float] | None:
        """Nearest-rank percentiles in milliseconds, or None before the first success."""
        values = sorted(v for v in self.sample[: _peek(self._calls)] if v is not None)
        if not values:
            return None
        n = len(values)
        return [values[min(n - 1, max(0, ceil(q * n) - 1))] / 1e6 for q in qs]


def _peek(counter: itertools.count) -> int:  # type: ignore[type-arg]
    return int(repr(counter)[6:-1])  # "count(17)": read without advancing


class CirronSession:
    """A proxy for an ``onnxruntime.InferenceSession`` that records every inference call.

    ``run`` and ``run_with_ort_values`` open an ``inference`` span each; every other attribute
    and method is the wrapped session's (``get_inputs``, ``io_binding``, ``end_profiling``,
    ...). The proxy is not an ``InferenceSession`` subclass: ``session.session`` is the
    original. Profiling starts by itself at the first call if it is not running.

    >>> import cirron as ci
    >>> session = ci.wrap(ort_session)  # doctest: +SKIP
    >>> session.run(None, {"X": x})  # doctest: +SKIP
    """

    __cirron_wrapped__ = True

    def __init__(self, session: Any, *, cirron: Any = None) -> None:
        self.session = session
        self._cirron = cirron  # None: the default instance, looked up at each call
        self._profiler: Any = _UNBOUND  # the profiler whose flushes carry our marks
        self._active = False
        self.stats = LatencyStats()
        self._emitted = 0  # calls covered by the marks already emitted
        self._provider = _provider(session)
        self._model = _model_label(session)
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if name == "session":  # during unpickling / copy: no wrapped session yet
            raise AttributeError(name)
        return getattr(self.session, name)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(dir(self.session)))

    def __repr__(self) -> str:
        return f"<cirron.CirronSession model={self._model!r} provider={self._provider!r}>"

    # -- recorded calls ----------------------------------------------------------------------------
    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        """``InferenceSession.run`` inside an ``inference`` span."""
        # Hot path: written for speed (budget: 5 µs over a bare run). Shapes and dtypes are
        # collected raw; dtypes are named on the flusher thread.
        rec = self._recorder()
        if rec is None:
            return self.session.run(output_names, input_feed, run_options)
        shapes: list[Any] = []
        dtypes: list[Any] = []
        try:
            for a in input_feed.values():
                shapes.append(a.shape)
                dtypes.append(a.dtype)
        except AttributeError:  # lists and other array-likes: described off the fast path
            shapes, dtypes = _describe_arraylikes(input_feed)
        return self._timed(
            rec,
            self.session.run,
            output_names,
            input_feed,
            run_options,
            tuple(input_feed),
            shapes,
            dtypes,
        )

    def run_with_ort_values(
        self, output_names: Any, input_dict_ort_values: Any, run_options: Any = None
    ) -> Any:
        """``InferenceSession.run_with_ort_values`` inside an ``inference`` span."""
        rec = self._recorder()
        if rec is None:
            return self.session.run_with_ort_values(
                output_names, input_dict_ort_values, run_options
            )
        names = tuple(input_dict_ort_values)
        try:
            values = input_dict_ort_values.values()
            shapes = [tuple(v.shape()) for v in values]
            dtypes = [v.data_type() for v in values]
        except Exception:
            shapes, dtypes = [], []
        return self._timed(
            rec,
            self.session.run_with_ort_values,
            output_names,
            input_dict_ort_values,
            run_options,
            names,
            shapes,
            dtypes,
        )

    def set_providers(self, *args: Any, **kwargs: Any) -> Any:
        """``InferenceSession.set_providers``; later spans name the new provider."""
        out = self.session.set_providers(*args, **kwargs)
        self._provider = _provider(self.session)
        return out

    def _timed(
        self,
        rec: Any,
        fn: Callable[..., Any],
        output_names: Any,
        feed: Any,
        run_options: Any,
        names: tuple[str, ...],
        shapes: list[Any],
        dtypes: list[Any],
    ) -> Any:
        s = rec.Scope("inference")
        first = shapes[0] if shapes else None
        # The attrs dict is built as a literal (no **kwargs). ``__onnx`` is raw (never written
        # as is): the seal-time resolver turns it into the ``inputs`` / ``shapes`` / ``dtypes``
        # attributes, cached per input signature.
        s.attrs = {
            "batch_size": first[0] if first else None,
            "provider": self._provider,
            "model": self._model,
            "raised": False,
            "__onnx": (names, shapes, dtypes),
        }
        s.__enter__()
        try:
            t0 = perf_counter_ns()
            out = fn(output_names, feed, run_options)
            t1 = perf_counter_ns()
        except BaseException as exc:
            self._failed(s, exc)
            raise
        s.__exit__(None, None, None)
        self.stats.add(t1 - t0)
        return out

    def _failed(self, s: Any, exc: BaseException) -> None:
        s.attrs["raised"] = True
        self.stats.error()
        s.__exit__(type(exc), exc, exc.__traceback__)

    # -- which recorder, and the session-level marks -----------------------------------------------
    def _recorder(self) -> Any:
        c = self._cirron if self._cirron is not None else cirron._get()
        p = c._profiler
        if p is not self._profiler:
            p = self._bind(c, p)
        return c._rec if self._active and not p._finished else None

    def _bind(self, c: Any, p: Any) -> Any:
        """A new profiling session (or none yet): start one if needed, hook its flushes."""
        with self._lock:
            if p is None:
                with _START_LOCK:
                    if c._profiler is None:
                        c.profile()
                p = c._profiler
            if p is self._profiler:
                return p
            self.stats = LatencyStats()
            self._emitted = 0
            self._active = bool(p.enabled) and not p._finished
            if self._active:
                resolvers = p.sealer.span_resolvers
                if describe_inputs not in resolvers:
                    resolvers.append(describe_inputs)
                on_flush(p, self._emit_marks, c._rec)
            self._profiler = p
            return p

    def _emit_marks(self, rec: Any) -> None:
        """Latency percentiles and call count as summary marks on the session span."""
        stats = self.stats
        calls = stats.calls
        if not calls or calls == self._emitted:
            return  # nothing new since the last flush
        self._emitted = calls
        labels = {"model": self._model, "provider": self._provider}
        pct = stats.percentiles()
        if pct is not None:
            for q, ms in zip(("p50", "p95", "p99"), pct, strict=True):
                rec.mark(f"{MARK_PREFIX}latency_{q}_ms", ms, kind="summary", **labels)
        rec.mark(f"{MARK_PREFIX}calls", calls, kind="summary", **labels)
        if stats.errors:
            rec.mark(f"{MARK_PREFIX}errors", stats.errors, kind="summary", **labels)


_DESCRIPTIONS: dict[tuple[Any, ...], dict[str, Any]] = {}
_MAX_DESCRIPTIONS = 1024


def describe_inputs(raw_attrs: dict[str, Any], span: dict[str, Any]) -> None:
    """Span resolver (flusher thread): ``__onnx`` → ``inputs``, ``shapes``, ``dtypes``.

    Most traffic repeats a few input signatures, so each one's JSON-ready description is built
    once (``str(dtype)`` is slow) and reused.
    """
    raw = raw_attrs.get("__onnx")
    if raw is None:
        return
    try:
        names, shapes, dtypes = raw
        key = (names, tuple(shapes), tuple(dtypes))
        desc = _DESCRIPTIONS.get(key)
        if desc is None:
            desc = {
                "inputs": [str(n) for n in names],
                "shapes": [
                    [int(x) if x is not None else None for x in sh] if sh is not None else None
                    for sh in shapes
                ],
                "dtypes": [str(d) for d in dtypes],
            }
            if len(_DESCRIPTIONS) < _MAX_DESCRIPTIONS:
                _DESCRIPTIONS[key] = desc
    except Exception:  # never let a description break the batch it belongs to
        return
    span["attrs"].update(desc)


def _describe_arraylikes(feed: Any) -> tuple[list[Any], list[Any]]:
    import numpy as np

    shapes: list[Any] = []
    dtypes: list[Any] = []
    for a in feed.values():
        try:
            arr = np.asarray(a)
            shapes.append(arr.shape)
            dtypes.append(str(arr.dtype))
        except Exception:
            shapes.append(None)
            dtypes.append(type(a).__name__)
    return shapes, dtypes


def _provider(session: Any) -> str | None:
    try:
        providers = session.get_providers()
        return str(providers[0]) if providers else None
    except Exception:
        return None


def _model_label(session: Any) -> str | None:
    path = getattr(session, "_model_path", None)
    if isinstance(path, (str, os.PathLike)):
        return os.path.basename(os.fspath(path))
    try:
        return str(session.get_modelmeta().graph_name) or None
    except Exception:
        return None


# -- flush-time hooks ---------------------------------------------------------------------------


def on_flush(profiler: Any, hook: Callable[[Any], None], rec: Any) -> None:
    """Run ``hook(rec)`` before every flush of ``profiler`` and once before its session closes,
    in an empty scope context (so its marks attach to the session span).

    Uses the core's ``profiler.flush_hooks`` when it has them; until then, a reversible
    per-instance shim around ``flusher.flush`` and ``profiler.finish`` (removed at shutdown).
    """

    def run() -> None:
        try:
            contextvars.Context().run(hook, rec)
        except Exception as exc:
            rec.internal_error("onnx latency marks", exc)

    hooks = getattr(profiler, "flush_hooks", None)
    if isinstance(hooks, list):
        hooks.append(run)
        return
    shim = profiler.__dict__.get("_cirron_flush_hooks")
    if shim is None:
        shim = profiler._cirron_flush_hooks = []
        _install_shim(profiler, shim)
    shim.append(run)


def _install_shim(profiler: Any, hooks: list[Callable[[], None]]) -> None:
    flusher = profiler.flusher
    flush, finish = flusher.flush, profiler.finish

    def run_hooks() -> None:
        if not profiler._finished:
            for h in list(hooks):
                h()

    def flush_with_hooks(timeout: float | None = None) -> bool:
        run_hooks()
        return bool(flush(timeout))

    def finish_with_hooks(*args: Any, **kwargs: Any) -> None:
        run_hooks()  # before the session span closes, so the final values land on it
        finish(*args, **kwargs)

    def undo() -> None:
        flusher.__dict__.pop("flush", None)
        profiler.__dict__.pop("finish", None)
        profiler.__dict__.pop("_cirron_flush_hooks", None)

    if flusher is not None:
        flusher.flush = flush_with_hooks
    profiler.finish = finish_with_hooks
    profiler._undo.append(undo)
