"""The state and hot-path callbacks of the torch hooks (installed by :mod:`.torch`).

Everything here that runs per batch is written for speed: a depth counter and one clock read
per outermost forward / optimizer step, one span tuple per child, no lock and no allocation
beyond the recorder's own records. See :mod:`cirron.integrations.torch` for what is recorded.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

import torch
from torch.nn.modules import module as _module

from cirron.core.recorder import DATA_LOAD, MAX_DEPTH, HeldChildren, Scope
from cirron.core.snapshots import SnapshotWriter
from cirron.integrations.torch_cuda import CudaTiming
from cirron.integrations.torch_watch import Watched

__all__ = ["Hooks"]

_OWNED, _TRAIN, _EVAL, _SILENT = 1, 2, 3, 4
_WAKE_MASK = 4095  # wake the flusher every 4096 batches so span buffers never fill


class _Pass:
    """One pass over a DataLoader (one ``iter(loader)``).

    One ``batch`` span object serves the whole pass (a batch closes before the next opens),
    re-stamped with a new id per batch, as :meth:`cirron.core.recorder.Recorder.batches` does:
    no object, no dict and no context-variable write per batch on the common path.
    """

    __slots__ = (
        "backwards0",
        "batch",
        "battrs",
        "bs",
        "gpu",
        "hooks",
        "loader",
        "mode",
        "n",
        "outer",
        "start",
        "thread",
    )

    def __init__(self, loader: Any, start: int, hooks: Hooks) -> None:
        self.loader = loader  # strong: `for x in DataLoader(...)` keeps no other reference
        self.start = start
        self.hooks = hooks
        self.mode = 0
        self.n = 0
        self.batch: Any = None  # the open batch (``bs`` while open, else None)
        self.bs: Any = None  # the pass's reusable batch span object
        self.outer: Any = None
        self.battrs: dict[str, Any] | None = None
        self.gpu: Any = None
        self.thread = threading.get_ident()
        self.backwards0 = 0  # Hooks.backwards when the pass's epoch opened


class Hooks:
    """The torch hooks of one profiling session."""

    def __init__(self, cirron: Any, profiler: Any, *, timing: bool) -> None:
        self.c = cirron
        self.p = profiler
        self.rec = rec = cirron._rec
        self.owners = rec.owners
        self.Scope = rec.Scope
        self.BatchScope: type[Any] = type(
            "BatchScope",
            (rec.Scope,),
            {"__slots__": ("pass_",), "close": _close_batch_scope, "packs": True},
        )
        self.span = rec.span
        self.timing = timing
        self.fdepth = 0
        self.ft0 = 0
        self.fgpu: Any = None
        self.odepth = 0
        self.ot0 = 0
        self.ogpu: Any = None
        # Children of the innermost packing batch, held for its record (see _put).
        self.cur_get = rec.cur.get
        self.held = HeldChildren()
        self.hold = self.held.hold
        self.in_backward = False
        self.backwards = 0  # backward passes seen (a pass that saw none may be dropped)
        self.train_loader: weakref.ref[Any] | None = None
        self.epoch_pass: _Pass | None = None
        self.epoch_n = 0
        self.eval_n = 0
        self.epoch_peak = 0
        self.sample_amp = True
        self.cuda = CudaTiming.maybe() if timing else None
        settings = profiler.settings
        self.watched = Watched(
            SnapshotWriter(
                mode=getattr(settings, "snapshots", "stats") or "stats",
                sample_rate=float(getattr(settings, "sample_rate", 0.01) or 0.0),
                queue=rec.snapshots,
                new_id=rec.new_id,
                spool=profiler.spool,
                transport=profiler.transport,
            )
        )
        self.global_fwd: list[Any] = []
        self.model_fwd: list[Any] = []
        self.undo: list[Callable[[], None]] = []
        # The per-step patches (DataLoader, backward, optimizer, forward): installed by
        # ``arm_step`` (set by the installer) while no framework callback owns the step.
        self.arm_step: Callable[[], list[Callable[[], None]]] | None = None
        self.step_undo: list[Callable[[], None]] | None = None
        self.live = True

    # -- faults ---------------------------------------------------------------------------------
    def fault(self, where: str, exc: BaseException) -> None:
        self.rec.internal_error(f"torch {where}", exc)

    # -- forward (outermost call only) ------------------------------------------------------------
    def fwd_pre(self, module: Any, args: Any) -> None:
        # Hot path: a depth counter, one clock read at depth 0.
        d = self.fdepth
        self.fdepth = d + 1
        if d == 0:
            if self.sample_amp:
                self._sample_amp(module)
            cuda = self.cuda
            if cuda is not None and cuda.on():
                self.fgpu = cuda.start()
            self.ft0 = perf_counter_ns()

    def fwd_post(self, module: Any, args: Any, output: Any) -> None:
        # Registered with ``always_call``: a forward that raises still comes here, so the depth
        # stays right (an OOM caught and retried with a smaller batch is timed again).
        d = self.fdepth - 1
        if d > 0:
            self.fdepth = d
            return
        self.fdepth = 0
        if d < 0 or self.owners["step"]:
            return
        t1 = perf_counter_ns()
        g = self.fgpu
        if g is None:
            self._put(2, "forward", self.ft0, t1)
        else:
            self.fgpu = None
            self.span("forward", self.ft0, t1, attrs={"__gpu": self.cuda.stop(g)})  # type: ignore[union-attr]

    def _sample_amp(self, module: Any) -> None:
        self.sample_amp = False
        try:
            dev = "cuda" if self.cuda is not None and self.cuda.on() else "cpu"
            on = torch.is_autocast_enabled(dev)
            amp = str(torch.get_autocast_dtype(dev)).removeprefix("torch.") if on else None
            self._session_attrs(autocast=amp)
        except Exception as exc:
            self.fault("autocast", exc)

    # -- backward ---------------------------------------------------------------------------------
    def wrap_backward(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        def backward(*args: Any, **kwargs: Any) -> Any:
            if not self.live or self.in_backward or self.owners["step"]:
                return orig(*args, **kwargs)
            self.in_backward = True
            self.backwards += 1
            cuda = self.cuda
            g = cuda.start() if cuda is not None and cuda.on() else None
            t0 = perf_counter_ns()
            try:
                return orig(*args, **kwargs)
            finally:
                t1 = perf_counter_ns()
                self.in_backward = False
                if g is None:
                    self._put(4, "backward", t0, t1)
                else:
                    self.span("backward", t0, t1, attrs={"__gpu": cuda.stop(g)})  # type: ignore[union-attr]

        backward.__wrapped__ = orig  # type: ignore[attr-defined]
        return backward

    # -- optimizer step ---------------------------------------------------------------------------
    def opt_pre(self, opt: Any, args: Any, kwargs: Any) -> None:
        d = self.odepth
        self.odepth = d + 1
        if d == 0:
            cuda = self.cuda
            if cuda is not None and cuda.on():
                self.ogpu = cuda.start()
            self.ot0 = perf_counter_ns()

    def opt_post(self, opt: Any, args: Any, kwargs: Any) -> None:
        d = self.odepth - 1
        if d > 0:
            self.odepth = d
            return
        self.odepth = 0
        if d < 0 or self.owners["step"]:
            return
        t1 = perf_counter_ns()
        g = self.ogpu
        if g is None:
            self._put(6, "optimizer_step", self.ot0, t1)
        else:
            self.ogpu = None
            self.span("optimizer_step", self.ot0, t1, attrs={"__gpu": self.cuda.stop(g)})  # type: ignore[union-attr]

    # -- DataLoader -------------------------------------------------------------------------------
    def new_pass(self, loader: Any, it: Any, start: int) -> None:
        p = _Pass(loader, start, self)
        slot = it.__dict__.get("_cirron_slot")
        if slot is None or slot[1] is not self:
            slot = it.__dict__["_cirron_slot"] = [p, self]
            f = weakref.finalize(it, _iterator_died, slot)
            f.atexit = False
        else:
            old = slot[0]
            if old is not p:
                self.finish_pass(old, perf_counter_ns(), early=True)
            slot[0] = p

    def patched_next(self, orig: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """The DataLoader iterators' ``__next__`` for these hooks, wrapping ``orig``."""
        h = self

        def __next__(it: Any) -> Any:
            # Hot path: one call per fetched batch. The original __next__ runs exactly once.
            if not h.live:
                return orig(it)
            try:
                slot = it.__dict__.get("_cirron_slot")
                p = slot[0] if slot is not None and slot[1] is h else None
                if p is None or not p.mode:
                    p = h._begin(it, p)
                mode = p.mode
                t0 = perf_counter_ns()
                if p.batch is not None:
                    h._end_batch(p, t0)
            except Exception as exc:
                h.fault("DataLoader.__next__", exc)
                return orig(it)
            if mode == _SILENT:
                return orig(it)
            try:
                item = orig(it)
            except StopIteration:
                if mode != _OWNED:
                    h.finish_pass(p, t0)
                raise
            try:
                t1 = perf_counter_ns()
                if mode == _OWNED:
                    # (else the owner, a callback, times fetches itself)
                    if not h.owners["data_load"]:
                        h._put(0, "data_load", t0, t1)
                    return item
                h._open_batch(p, t0, t1)
            except Exception as exc:
                h.fault("DataLoader.__next__", exc)
            return item

        __next__.__wrapped__ = orig  # type: ignore[attr-defined]
        return __next__

    def _open_batch(self, p: _Pass, t0: int, t1: int) -> None:
        """Stamp the pass's batch span object as the next batch (``t0``: its start, also the
        start of its fetch; ``t1``: the fetch's end)."""
        rec = self.rec
        try:
            tb = rec.tls.tb
        except AttributeError:
            tb = rec.new_buffer()
        s = p.bs
        if s is None:
            s = p.bs = object.__new__(self.BatchScope)
            s.pass_ = p
            s.name = "batch"
            s.attrs = dict(p.battrs or ())
            s.tb = None
        cur = rec.cur
        if cur.get() is not s:  # the first batch, or the stack changed since the last one
            par = rec.live_parent(cur.get())
            s.parent = par
            d = s.depth = par.depth + 1 if par is not None else 1
            if d > MAX_DEPTH:
                tb.depth_drops += 1
                return
            cur.set(s)
        n = p.n
        s.index = n
        s.id = next(tb.span_ids)
        s.tb = tb
        s.start = t0
        p.batch = s
        self.hold(s.id, DATA_LOAD, t0, t1)
        p.n = n = n + 1
        cuda = self.cuda
        if cuda is not None and cuda.on():
            p.gpu = cuda.start()
            cuda.reset_peak()
        if n == 2:
            outer = p.outer
            if outer is not None and outer.open:
                rec.structural[outer.id] = outer  # a real epoch: crash-safe from now
        if not n & _WAKE_MASK:
            rec.wake()

    def _end_batch(self, p: _Pass, end: int) -> None:
        """Record the open batch with its children packed in (see ``_put``); the span object
        stays the innermost scope (closed) until the next batch re-stamps it."""
        s = p.batch
        p.batch = None
        packed = self.take(s)
        rec = self.rec
        c = rec.cur.get()
        if c is not s and c is not None:
            rec.unwind(s, c)  # the body left scopes open: close them first
        if s.tb is None:  # already closed
            return
        s.tb = None
        tb = rec.buffer()  # the closing thread's: sequence numbers stay single-writer
        # Records never share the dict the open span exposes: an unchanged batch records the
        # pass's own attrs (handed to no one), a changed one keeps its dict and the span object
        # gets a fresh copy for the next batch.
        attrs = s.attrs
        if attrs:
            if attrs == p.battrs:
                attrs = p.battrs
            else:
                s.attrs = dict(p.battrs or ())
        g = p.gpu
        if g is not None:
            p.gpu = None
            cuda = self.cuda
            attrs = dict(attrs)
            attrs["__gpu"] = cuda.stop(g)  # type: ignore[union-attr]
            peak = cuda.peak()  # type: ignore[union-attr]
            attrs["__mem"] = peak
            if peak > self.epoch_peak:
                self.epoch_peak = peak
        par = s.parent
        tb.spans.append(
            (
                s.id,
                par.id if par is not None else rec.root_id,
                "batch",
                s.index,
                s.start,
                end,
                attrs or None,  # a shared dict, never mutated once recorded
                packed,
                next(tb.span_close_seq),
            )
        )

    def _put(self, k: int, name: str, t0: int, t1: int) -> None:
        """Record a child of the innermost scope. Under a packing batch it is held for that
        batch's one record (``k``: 0 data_load, 2 forward, 4 backward, 6 optimizer_step): one
        record per training step instead of five is most of what keeps the hooks cheap. Else,
        or when the batch already holds one of the kind (two models, two optimizers), it is a
        span of its own."""
        b = self.cur_get()
        if b is not None and b.packs and b.tb is not None and self.hold(b.id, k, t0, t1):
            return
        self.span(name, t0, t1)

    def take(self, batch: Any) -> tuple[int, ...] | None:
        """The children held for ``batch`` (closing now), as its record's packed tuple."""
        return self.held.take(getattr(batch, "id", None))

    def _begin(self, it: Any, p: _Pass | None) -> _Pass:
        """The first fetch of a pass: decide who owns its epoch and batches."""
        if p is None:  # an iterator made before install, or not through DataLoader.__iter__
            self.new_pass(getattr(it, "_cirron_loader", None), it, perf_counter_ns())
            p = it.__dict__["_cirron_slot"][0]
        if self.owners.get("step"):
            p.mode = _SILENT  # a framework callback records this loop's children itself
            return p
        if self.owners["batch"] > 0:
            p.mode = _OWNED
            return p
        loader = p.loader
        if self._is_training_loader(loader):
            p.mode = _TRAIN
            if self.owners["epoch"] == 0:
                prev = self.epoch_pass
                if prev is not None:
                    self.finish_pass(prev, perf_counter_ns(), early=True)
                # Not structural (provisionally written, closed at exit) until it proves to be
                # an epoch: a second batch (see _open_batch) or its close.
                ep = self.rec.open("epoch", self.epoch_n)
                ep.start = min(p.start, ep.start)
                self.epoch_n += 1
                self.epoch_peak = 0
                self.sample_amp = True
                p.outer = ep
                p.backwards0 = self.backwards
                self.epoch_pass = p
        else:
            p.mode = _EVAL
            v = self.rec.open("validation", self.eval_n, {"phase": "validation"})
            v.start = min(p.start, v.start)
            self.eval_n += 1
            p.outer = v
            p.battrs = {"phase": "validation"}
        return p

    def _is_training_loader(self, loader: Any) -> bool:
        ref = self.train_loader
        current = ref() if ref is not None else None
        if current is None and loader is not None and torch.is_grad_enabled():
            self.train_loader = weakref.ref(loader)
            return True
        return current is not None and current is loader

    def _pop_batch_scope(self, p: _Pass) -> None:
        """Leave the pass's (closed) batch span object off the innermost-scope slot."""
        s = p.bs
        if s is not None and self.rec.cur.get() is s:
            self.rec.cur.set(s.parent)

    def finish_pass(self, p: _Pass, end: int, *, early: bool = False) -> None:
        """Close what a pass opened: its open batch, then its epoch or validation span."""
        try:
            if early and self._trivial(p):
                self._drop_pass(p)
                return
            if p.batch is not None:
                self._end_batch(p, end)
            self._pop_batch_scope(p)
            outer = p.outer
            p.outer = None
            if self.epoch_pass is p:
                self.epoch_pass = None
            if outer is not None and outer.open:
                if early:
                    outer.attrs["stopped_early"] = True
                if outer.name == "epoch" and self.epoch_peak:
                    outer.attrs["__mem"] = self.epoch_peak
                self.rec.close(outer, end)
        except Exception as exc:
            self.fault("closing a DataLoader pass", exc)

    # -- arming: per-step patches only while they have something to record -----------------------
    def arm(self) -> None:
        """Install the per-step patches (idempotent; not while a callback owns the step)."""
        if (
            self.step_undo is None
            and self.arm_step is not None
            and self.live
            and not self.owners.get("step")
        ):
            self.step_undo = self.arm_step()

    def disarm(self) -> None:
        """Remove the per-step patches: torch runs untouched (idempotent)."""
        undo, self.step_undo = self.step_undo, None
        for fn in reversed(undo or ()):
            try:
                fn()
            except Exception as exc:
                self.fault("uninstall", exc)
        for h in self.global_fwd + self.model_fwd:
            h.remove()
        self.global_fwd.clear()
        self.model_fwd.clear()
        self.fdepth = self.odepth = 0
        self.in_backward = False

    def hook_forward(self) -> None:
        """Forward hooks: on each watched model, or torch's global module hooks while none is."""
        if self.watched.models:
            for model in self.watched.models:
                self._hook_model(model)
        else:
            self.global_fwd.append(_module.register_module_forward_pre_hook(self.fwd_pre))
            self.global_fwd.append(
                _module.register_module_forward_hook(self.fwd_post, always_call=True)
            )

    def _hook_model(self, model: torch.nn.Module) -> None:
        self.model_fwd.append(model.register_forward_pre_hook(self.fwd_pre))
        self.model_fwd.append(model.register_forward_hook(self.fwd_post, always_call=True))

    # -- an owner takes over ------------------------------------------------------------------------
    def on_release(self) -> None:
        """An owner gave levels back: once nobody owns the step, the per-step patches return."""
        if not self.owners.get("step"):
            self.arm()

    def on_claim(self) -> None:
        """A framework callback just took the epoch/batch levels (``rec.claim``). A training
        pass whose epoch holds only one fetch and no backward (Keras fetching a batch to build
        the model before any callback hook) was no epoch: drop it, keeping its fetch as a
        ``data_load`` under the session. A real epoch in progress is closed instead. Either
        way, the pass's next fetch decides again under the new owner.

        A callback that owns the step (Lightning) times every child itself: the per-step
        patches come off until it releases the step (``on_release``), so they cost nothing
        per batch meanwhile."""
        if self.owners.get("step"):
            self.disarm()
        p = self.epoch_pass
        if p is None or p.mode != _TRAIN:
            return
        self.finish_pass(p, perf_counter_ns(), early=True)
        p.mode = 0

    def _trivial(self, p: _Pass) -> bool:
        """A training pass abandoned after at most one fetch with no backward pass (a model
        built from one batch, ``next(iter(loader))`` to look at a sample): not an epoch."""
        outer = p.outer
        return (
            outer is not None
            and outer.name == "epoch"
            and p.n <= 1
            and self.backwards == p.backwards0
        )

    def _drop_pass(self, p: _Pass) -> None:
        rec = self.rec
        b, outer = p.batch, p.outer
        p.batch = p.outer = p.gpu = None
        fetch = self.take(b) if b is not None else None
        if self.epoch_pass is p:
            self.epoch_pass = None
        self._pop_batch_scope(p)
        for s in (b, outer):
            if s is not None and s.open:
                s.tb = None  # never recorded
                rec.structural.pop(s.id, None)
                if rec.cur.get() is s:
                    rec.cur.set(s.parent)
        if outer is not None and outer.name == "epoch":
            self.epoch_n -= 1
        if fetch is not None and fetch[1] >= 0:  # the pass's one fetch stays, as a data_load
            rec.span("data_load", fetch[0], fetch[1])

    # -- snapshots and session ------------------------------------------------------------------
    def on_epoch_end(self, scope: Any) -> None:
        span_id = scope.span_id
        if span_id is not None:
            self.watched.capture(span_id)

    def watch(self, model: torch.nn.Module) -> None:
        if not self.watched.add(model):
            return
        self._describe(model)
        if not self.timing or self.step_undo is None:  # disarmed: arm() hooks it later
            return
        for h in self.global_fwd:  # per-model hooks from now on: far cheaper than global ones
            h.remove()
        self.global_fwd.clear()
        self._hook_model(model)

    def _describe(self, model: torch.nn.Module) -> None:
        p = next(model.parameters(), None)
        if p is not None:
            self._session_attrs(device=str(p.device), dtype=str(p.dtype).removeprefix("torch."))

    def _session_attrs(self, **attrs: Any) -> None:
        self.p.update_session(**attrs)

    def remove(self) -> None:
        self.disarm()
        self.live = False
        while self.undo:
            fn = self.undo.pop()
            try:
                fn()
            except Exception as exc:
                self.fault("uninstall", exc)
        self.watched.models.clear()
        if getattr(self.p, "_torch_hooks", None) is self:
            self.p._torch_hooks = None


def _close_batch_scope(
    s: Any, end_ns: int | None = None, children: tuple[int, ...] | None = None
) -> None:
    """``close()`` of a pass's batch span object: closed from outside (a scope below it exited
    first), it still records the children the hooks hold for it."""
    p = s.pass_
    if p.batch is s:
        p.hooks._end_batch(p, perf_counter_ns() if end_ns is None else end_ns)
    else:
        Scope.close(s, end_ns, children)


def _iterator_died(slot: list[Any]) -> None:
    p, hooks = slot
    if not hooks.live or p.thread != threading.get_ident():
        return  # another thread (cyclic GC): the next pass or exit closes it
    if p.batch is not None or p.outer is not None:
        hooks.finish_pass(p, perf_counter_ns(), early=True)
