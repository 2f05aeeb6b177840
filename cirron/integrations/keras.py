"""Keras 3 integration: a callback that records the canonical tree of a ``fit``.

>>> import cirron as ci
>>> from cirron.integrations.keras import CirronCallback
>>> model.fit(x, y, epochs=3, validation_split=0.2, callbacks=[CirronCallback()])  # doctest: +SKIP
>>> model = ci.wrap(model)   # the same model; every fit/evaluate/predict gets the callback  # doctest: +SKIP

Works on every Keras 3 backend (TensorFlow, torch, JAX) and with ``tf.keras`` (which is Keras 3
since TensorFlow 2.16). Only ``keras`` is imported here, never TensorFlow.

What a ``fit`` records (DESIGN.md §3):

* ``epoch`` spans indexed by Keras' own epoch number (so ``initial_epoch`` continues a resumed
  run), each with ``batch`` children indexed from 0; each batch covers the gap since the previous
  batch ended, recorded as a ``data_load`` child (and ``data_load_ns``);
* validation inside ``fit`` as a ``validation`` span in the epoch, ``evaluate`` as a ``test`` span,
  ``predict`` as a ``predict`` span; their batches carry ``phase``;
* ``logs`` as marks: per batch as ``point`` marks on the batch, per epoch as ``summary`` marks on
  the epoch (``val_*`` included), plus ``learning_rate``, ``batch_size`` and
  ``samples_per_second``;
* weight statistics from ``model.weights`` at every epoch end (the session's snapshot mode).

Threads: Keras may run batch-end hooks on a worker thread (``async_safe``; the torch and JAX
backends do). Batch spans are opened on the training thread at batch begin, so hooks of other
integrations (torch's forward/backward) nest in them, and closed wherever the end hook runs with
explicit times; nothing relies on the contextvar stack of another thread.
"""

from __future__ import annotations

import math
import sys
from time import perf_counter_ns
from typing import Any

from cirron.core.errors import CirronDependencyError

try:
    import keras
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise CirronDependencyError.missing("keras", "keras", "cirron.integrations.keras") from exc

from cirron.integrations.keras_snapshots import snapshot_model, to_host
from cirron.integrations.keras_wrap import watch, wrap

__all__ = ["CirronCallback", "watch", "wrap"]

_AFTER_ALL = 1 << 62  # a fence index above every batch: "the loop itself moved on"


class _Loop:
    """One running loop (an epoch of fit, a validation/test run, a predict run).

    ``scope`` is the container span (epoch / validation / test / predict). ``open`` maps a batch's
    begin index to its open scope. ``last`` is ``(end index, end ns)`` of the latest closed batch
    (the start of the next ``data_load``). ``fence`` is ``(begin index, ns)`` of the latest batch
    begun on the training thread, ``begins`` the begin times of recent batches by index: a batch
    that ends later than the next one began (its end hook ran late on a worker thread, possibly
    after several more batches began) is clipped to the instant the next one began.
    """

    __slots__ = (
        "attrs",
        "begins",
        "every",
        "fence",
        "last",
        "marks",
        "max_end",
        "open",
        "scope",
    )

    def __init__(self, scope: Any, attrs: dict[str, Any], marks: bool, every: int) -> None:
        self.scope = scope
        self.attrs = attrs
        self.marks = marks
        self.every = every
        self.open: dict[int, Any] = {}
        self.last = (-1, scope.start)
        self.fence = (-1, scope.start)
        self.begins: dict[int, int] = {}
        self.max_end = -1


class CirronCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Record a Keras ``fit``/``evaluate``/``predict`` with cirron. Zero configuration.

    Without a prior ``ci.profile()`` the callback starts profiling (with the instance's resolved
    settings) when the first loop begins, and leaves the session open for later runs.

    Args:
        cirron: the :class:`cirron.Cirron` to record into (default: the process-wide one).
        batch_marks: record each batch's ``logs`` as point marks (epoch summaries are always kept).
        log_every_n_batches: with ``batch_marks``, only every n-th batch's logs.
        snapshots: weight statistics from ``model.weights`` at every epoch end (the mode, stats /
            sampled / full, is the session's ``snapshots`` setting).
        data_load: record the gap between batches as a ``data_load`` span.

    >>> from cirron.integrations.keras import CirronCallback
    >>> cb = CirronCallback(log_every_n_batches=10)
    >>> cb.async_safe
    True
    """

    # Keras 3 runs batch-end hooks off the training thread only when every callback says so.
    async_safe = True

    def __init__(
        self,
        cirron: Any = None,
        *,
        batch_marks: bool = True,
        log_every_n_batches: int = 1,
        snapshots: bool = True,
        data_load: bool = True,
    ) -> None:
        super().__init__()
        if int(log_every_n_batches) < 1:
            raise ValueError(f"log_every_n_batches must be >= 1, got {log_every_n_batches!r}")
        self.cirron = cirron
        self.batch_marks = bool(batch_marks)
        self.log_every_n_batches = int(log_every_n_batches)
        self.snapshots = bool(snapshots)
        self.data_load = bool(data_load)
        self._rec: Any = None
        self._base: Any = None  # the training thread's scope when the run began
        self._fit = False
        self._train: _Loop | None = None
        self._eval: _Loop | None = None
        self._pred: _Loop | None = None
        self._owned = 0  # runs holding rec.owners (fit, a standalone evaluate or predict)
        self._facts: dict[str, Any] = {}
        self._epoch_ids: set[int] = set()

    def __repr__(self) -> str:
        return (
            f"CirronCallback(batch_marks={self.batch_marks}, log_every_n_batches="
            f"{self.log_every_n_batches}, snapshots={self.snapshots})"
        )

    # -- session ------------------------------------------------------------------------------
    def _client(self) -> Any:
        if self.cirron is not None:
            return self.cirron
        import cirron

        return cirron._get()

    def _start_run(self) -> bool:
        """Begin of fit / evaluate / predict: make sure a session is recording."""
        c = self._client()
        p = c.profiler
        if p is None or p._finished:
            p = c.profile()
            _stamp_session(c, p)
        if not c.profiling:
            return False  # profile(enabled=False): record nothing
        self._rec = c._rec
        return True

    def _own(self) -> None:
        """Take the levels before reading the current scope: implicit torch structure (the
        batch Keras fetched to build the model) gives way first."""
        self._rec.claim(*OWNED_LEVELS)
        self._owned += 1

    def _release(self) -> None:
        if self._owned and self._rec is not None:
            self._rec.release(*OWNED_LEVELS)
            self._owned -= 1

    def _fault(self, where: str, exc: BaseException) -> None:
        rec = self._rec
        if rec is None:
            import cirron

            rec = cirron._REC
        rec.internal_error(f"keras {where}", exc)

    def _open(
        self,
        name: str,
        index: int | None,
        parent: Any,
        attrs: dict[str, Any] | None = None,
        *,
        structural: bool = False,
    ) -> Any:
        rec = self._rec
        rec.cur.set(parent)  # drop our own frames above the parent (batches closed elsewhere)
        return rec.open(name, index, attrs, structural=structural)

    def abandon(self, reason: str = "interrupted") -> None:
        """Close whatever a run that never finished left open (an exception inside ``fit``).

        Keras calls no hook when ``fit`` raises; ``ci.wrap`` calls this, and every run's begin
        hook does it for a previous run that did not end.
        """
        rec = self._rec
        if rec is None or not (self._fit or self._owned or self._train or self._eval or self._pred):
            return
        for loop in (self._pred, self._eval, self._train):
            if loop is None:
                continue
            for s in list(loop.open.values()):
                if s.open:
                    s.attrs[reason] = True
                    s.close()
            loop.open.clear()
            if loop.scope.open:
                loop.scope.attrs[reason] = True
                rec.close(loop.scope)
        self._train = self._eval = self._pred = None
        self._fit = False
        while self._owned:
            self._release()
        rec.cur.set(self._base)

    # -- fit ----------------------------------------------------------------------------------
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        try:
            self.abandon()
            if not self._start_run():
                return
            self._own()
            self._base = self._rec.current()
            self._facts = _data_facts()
            self._fit = True
        except Exception as exc:
            self._fault("on_train_begin", exc)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not self._fit:
            return
        try:
            attrs: dict[str, Any] = {"__cirron_keras": self._epoch_ids}
            steps = (self.params or {}).get("steps")
            if steps:
                attrs["steps"] = steps
            scope = self._open("epoch", int(epoch), self._base, attrs, structural=True)
            self._train = _Loop(scope, {}, self.batch_marks, self.log_every_n_batches)
        except Exception as exc:
            self._fault("on_epoch_begin", exc)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loop = self._train
        if loop is not None:
            try:
                self._batch_begin(loop, batch)
            except Exception as exc:
                self._fault("on_train_batch_begin", exc)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loop = self._train
        if loop is not None:
            try:
                self._batch_end(loop, batch, logs)
            except Exception as exc:
                self._fault("on_train_batch_end", exc)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        loop = self._train
        if loop is None:
            return
        self._train = None
        try:
            self._end_epoch(loop, logs or {})
        except Exception as exc:
            self._fault("on_epoch_end", exc)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if not self._fit:
            return
        try:
            self.abandon("closed_by_train_end")  # nothing is open after a normal fit
        except Exception as exc:
            self._fault("on_train_end", exc)

    # -- evaluate (validation inside fit) and predict -----------------------------------------
    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        try:
            if self._fit:  # validation inside fit
                train = self._train
                parent = train.scope if train is not None else self._base
                if train is not None:
                    train.fence = (_AFTER_ALL, perf_counter_ns())  # late train ends stop here
                index = parent.index if train is not None else None
                scope = self._open("validation", index, parent)
                self._eval = _Loop(
                    scope, {"phase": "validation"}, self.batch_marks, self.log_every_n_batches
                )
                return
            self.abandon()
            if not self._start_run():
                return
            self._own()
            self._base = self._rec.current()
            scope = self._open("test", None, self._base)
            self._eval = _Loop(scope, {"phase": "test"}, self.batch_marks, self.log_every_n_batches)
        except Exception as exc:
            self._fault("on_test_begin", exc)

    def on_test_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loop = self._eval
        if loop is not None:
            try:
                self._batch_begin(loop, batch)
            except Exception as exc:
                self._fault("on_test_batch_begin", exc)

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loop = self._eval
        if loop is not None:
            try:
                self._batch_end(loop, batch, logs)
            except Exception as exc:
                self._fault("on_test_batch_end", exc)

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        loop = self._eval
        if loop is None:
            return
        self._eval = None
        try:
            self._end_loop(loop, logs)
            if loop.scope.name == "test":
                self._release()
                self._rec.cur.set(self._base)
        except Exception as exc:
            self._fault("on_test_end", exc)

    def on_predict_begin(self, logs: dict[str, Any] | None = None) -> None:
        try:
            if not self._fit:
                self.abandon()
            if not self._start_run():
                return
            if not self._fit:
                self._own()
            base = self._rec.current()
            if not self._fit:
                self._base = base
            scope = self._open("predict", None, base)
            self._pred = _Loop(scope, {"phase": "predict"}, False, 1)  # logs hold outputs
        except Exception as exc:
            self._fault("on_predict_begin", exc)

    def on_predict_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loop = self._pred
        if loop is not None:
            try:
                self._batch_begin(loop, batch)
            except Exception as exc:
                self._fault("on_predict_batch_begin", exc)

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loop = self._pred
        if loop is not None:
            try:
                self._batch_end(loop, batch, None)
            except Exception as exc:
                self._fault("on_predict_batch_end", exc)

    def on_predict_end(self, logs: dict[str, Any] | None = None) -> None:
        loop = self._pred
        if loop is None:
            return
        self._pred = None
        try:
            self._end_loop(loop, None)
            if not self._fit:
                self._release()
                self._rec.cur.set(self._base)
        except Exception as exc:
            self._fault("on_predict_end", exc)

    # -- batches (hot path) ---------------------------------------------------------------------
    def _batch_begin(self, loop: _Loop, batch: int) -> None:
        # Hot path, training thread: one clock read, one scope opened under the loop's span.
        t = perf_counter_ns()
        loop.fence = (batch, t)
        loop.begins[batch] = t
        rec = self._rec
        rec.cur.set(loop.scope)
        s = rec.Scope("batch", batch, **loop.attrs)
        s.__enter__()
        s.start = t
        loop.open[batch] = s

    def _batch_end(self, loop: _Loop, batch: int, logs: dict[str, Any] | None) -> None:
        # Hot path, any thread (Keras may dispatch it to a worker): explicit times only.
        t = perf_counter_ns()
        s = loop.open.pop(batch, None)
        if s is None:
            s = _pop_oldest(loop.open, batch)  # steps_per_execution > 1: ends at a later index
            if s is None:
                return
        first = s.index
        fi, ft = loop.fence
        begins = loop.begins
        if fi > first and ft < t:  # the end hook ran after the next batch had begun: clip
            nxt = begins.get(first + 1)
            if nxt is None:  # steps_per_execution > 1: the next begin index is further on
                nxt = min((v for b, v in list(begins.items()) if b > first), default=ft)
            t = min(t, nxt)
        begins.pop(first - _BEGINS_KEPT, None)
        li, le = loop.last
        rec = self._rec
        children = None
        if li == first - 1 and le < s.start and self.data_load:
            # data_load packed into the batch's record (see Scope.close): one record, not two
            children = (le, s.start, -1, -1, -1, -1, -1, -1)
            s.attrs["data_load_ns"] = s.start - le
            s.start = le
        if logs and loop.marks and not first % loop.every:
            rec.marks_on(s, logs)
        loop.last = (batch, t)
        if batch > loop.max_end:
            loop.max_end = batch
        s.close(t, children)

    # -- loop ends --------------------------------------------------------------------------------
    def _close_container(self, loop: _Loop) -> None:
        """Drop a batch that began but never ended (a dataset found exhausted at fetch)."""
        rec = self._rec
        for s in list(loop.open.values()):
            s.tb = None  # never recorded: like ci.batches when the fetch finds nothing
        loop.open.clear()
        rec.cur.set(loop.scope)

    def _end_loop(self, loop: _Loop, logs: dict[str, Any] | None) -> None:
        self._close_container(loop)
        if logs:
            self._summary(logs)
        self._rec.close(loop.scope)

    def _end_epoch(self, loop: _Loop, logs: dict[str, Any]) -> None:
        self._close_container(loop)
        self._summary(logs)
        mark = self._rec.mark
        lr = _learning_rate(self.model)
        if lr is not None:
            mark("learning_rate", lr, kind="summary")
        bs = self._facts.get("batch_size")
        if bs:
            mark("batch_size", bs, kind="summary")
            samples = _samples(self._facts, loop.max_end + 1)
            train_ns = loop.last[1] - loop.scope.start
            if samples and train_ns > 0:
                mark("samples_per_second", samples * 1e9 / train_ns, kind="summary")
        if self.snapshots and self.model is not None:
            self._epoch_ids.add(id(self.model))
            try:
                snapshot_model(self._client(), self.model, loop.scope)
            except Exception as exc:
                self._fault("weight snapshot", exc)
        self._rec.close(loop.scope)

    def _summary(self, logs: dict[str, Any]) -> None:
        mark = self._rec.mark
        for k, v in logs.items():
            if type(v) is float or _markable(v):
                mark(k, v, kind="summary")


# "data_load": this callback records the gap between batches itself, so the torch DataLoader
# hooks add no second data_load (the fetch runs before Keras' batch-begin hook).
OWNED_LEVELS = ("epoch", "batch", "data_load")
_BEGINS_KEPT = 64  # begin times kept per loop: a batch end later than this many begins is
# clipped to the latest begin instead


def _pop_oldest(open_: dict[int, Any], batch: int) -> Any:
    keys = [k for k in list(open_) if k <= batch]
    return open_.pop(min(keys), None) if keys else None


def _markable(v: Any) -> bool:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return True
    shape = getattr(v, "shape", None)
    try:
        return shape is not None and len(shape) == 0
    except TypeError:
        return False


def _stamp_session(c: Any, p: Any) -> None:
    """A session this callback started says it is a Keras run (even when the torch hooks, on
    the torch backend, said "pytorch"); a ``framework`` from cirron.yaml is kept."""
    session = getattr(p, "session", None)
    if session is None or not session.open:
        return
    extra = {"keras_version": keras.__version__, "keras_backend": keras.backend.backend()}
    if not getattr(c.project, "framework", None):
        extra["framework"] = "keras"
    p.update_session(**extra)


def _data_facts() -> dict[str, Any]:
    """Batch size and sample counts of the running ``fit``, read once from its epoch iterator.

    Keras 3 does not hand the batch size to callbacks; the trainer's ``fit`` frame holds it.
    """
    f: Any = sys._getframe(2)
    for _ in range(8):
        if f is None:
            break
        it = f.f_locals.get("epoch_iterator")
        adapter = getattr(it, "data_adapter", None)
        if adapter is not None:
            facts: dict[str, Any] = {}
            for key in ("batch_size", "num_batches", "partial_batch_size"):
                try:
                    value = getattr(adapter, key)
                except Exception:
                    value = None
                if isinstance(value, int) and value > 0:
                    facts[key] = value
            facts["steps_per_execution"] = int(getattr(it, "steps_per_execution", 1) or 1)
            return facts
        f = f.f_back
    return {}


def _samples(facts: dict[str, Any], steps: int) -> int:
    bs = int(facts.get("batch_size", 0))
    n = steps * bs
    partial = facts.get("partial_batch_size")
    if partial and steps == facts.get("num_batches"):
        n -= bs - partial
    return n


def _learning_rate(model: Any) -> float | None:
    opt = getattr(model, "optimizer", None)
    if opt is None:
        return None
    try:
        value = float(to_host(opt.learning_rate))
    except Exception:
        return None
    return value if math.isfinite(value) else None
