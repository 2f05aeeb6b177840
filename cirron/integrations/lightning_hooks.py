"""The Lightning hooks behind :class:`cirron.integrations.lightning.CirronCallback`.

:class:`CallbackHooks` imports no Lightning (``callback_class`` mixes it with each namespace's
``Callback``) and drives the core's primitives only. ``setup`` starts profiling if nothing runs,
takes ``rec.owners`` "epoch", "batch" and "step" (the torch hooks then open no epoch/batch and
time no step children: under ``optimizer.step(closure)`` theirs would wrap forward and backward),
stamps rank/world size and watches the module for snapshots. Training records ``epoch`` →
``batch`` → ``data_load`` / ``forward`` / ``backward`` / ``optimizer_step`` (children after the
fact, ``rec.span``); evaluation runs hold ``batch`` spans with attr ``phase``. ``teardown`` /
``on_exception`` close what is open and release the levels; the session stays open. Every hook
catches its own faults (``rec.internal_error``): nothing raises into training. See
docs/lightning.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from time import perf_counter_ns
from typing import Any

from cirron.core.errors import CirronError
from cirron.core.recorder import BACKWARD, DATA_LOAD, FORWARD, OPTIMIZER_STEP, HeldChildren
from cirron.integrations.lightning_marks import (
    Scaled,
    batch_size,
    mark_epoch_events,
    mark_learning_rates,
    mark_throughput,
)

__all__ = ["CallbackHooks"]

_SNAPSHOT_MODES = ("stats", "sampled", "full")


class CallbackHooks:
    """Lightning-agnostic hook implementations; see the module docstring."""

    _namespaces: tuple[str, ...] = ()

    def __init__(
        self,
        cirron: Any = None,
        *,
        snapshots: str | bool | None = None,
        batch_marks: bool = True,
        log_every_n_batches: int = 1,
        epoch_marks: bool = True,
    ) -> None:
        if snapshots is not None and snapshots is not False and snapshots not in _SNAPSHOT_MODES:
            raise ValueError(
                f"CirronCallback(snapshots={snapshots!r}): use None, False or one "
                f"of {', '.join(map(repr, _SNAPSHOT_MODES))}"
            )
        if int(log_every_n_batches) < 1:
            raise ValueError("CirronCallback(log_every_n_batches=...) must be at least 1")
        self._options = {
            "snapshots": snapshots,
            "batch_marks": batch_marks,
            "log_every_n_batches": int(log_every_n_batches),
            "epoch_marks": epoch_marks,
        }
        self._target = cirron
        self._snapshots = snapshots
        self._batch_marks = bool(batch_marks)
        self._every = int(log_every_n_batches)
        self._epoch_marks = bool(epoch_marks)
        self._rec: Any = None  # the recorder while active; None makes every hook a no-op
        self._reset()

    def _reset(self) -> None:
        self._owners: dict[str, int] | None = None
        self._epoch: Any = None  # the open training epoch scope
        self._eval: Any = None  # the open validation/test/predict scope
        self._batch: Any = None  # the open batch scope
        self._phase = "validation"
        self._eval_before: dict[str, Any] = {}
        self._t_prev = 0  # end of the previous batch (or start of the epoch/run)
        self._fwd = self._bwd = self._opt = 0  # pending child span starts, 0 = none
        # The open batch's children, packed into its record at its close (Scope.close).
        self._held = HeldChildren()
        self._n = 0  # training batches since the last loss mark
        self._nb = 0  # training batches in this epoch
        self._bs: int | None = None
        self._last_batch: Any = None
        self._epoch_t0 = self._train_end = 0
        self._scale = 1.0
        self._ckpts: list[tuple[int, int]] = []
        self._handles: list[Any] = []

    def __reduce__(self) -> tuple[Any, ...]:
        from cirron.integrations.lightning import _rebuild

        options = dict(self._options)
        if self._target is not None:
            options["cirron"] = self._target
        return (_rebuild, (self._namespaces, options))

    def __repr__(self) -> str:
        state = "active" if self._rec is not None else "idle"
        return f"<cirron CirronCallback {state} namespaces={list(self._namespaces)}>"

    def _fault(self, where: str, exc: BaseException) -> None:
        rec = self._rec
        if rec is None:
            import cirron

            rec = (self._target or cirron._get())._rec
        rec.internal_error(f"lightning {where}", exc)

    # -- fit / validate / test / predict lifetime --------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        try:
            self._activate(trainer, pl_module)
        except CirronError:
            raise  # a configuration error the user must see (bad setting, cirron.yaml)
        except Exception as exc:
            self._rec = None
            self._fault("setup", exc)

    def _activate(self, trainer: Any, pl_module: Any) -> None:
        import cirron

        if self._rec is not None:  # setup without teardown (an earlier run died): start clean
            self._finish(None)
        c = self._target if self._target is not None else cirron._get()
        if self._duplicate(trainer, c):
            return
        p = c.profiler
        if not c.profiling:
            if p is not None and not p.enabled:
                return  # profile(enabled=False): record nothing
            mode = self._snapshots if isinstance(self._snapshots, str) else None
            p = c.profile(snapshots=mode)
        rec = self._rec = c._rec
        self._reset()
        # "step": this callback times data_load/forward/backward/optimizer_step itself, so the
        # torch hooks record none of them (ci.batches owns batches but wants those children).
        rec.claim("epoch", "batch", "step")
        self._owners = rec.owners  # released at teardown (the very dict, even after a reset)
        self._stamp_rank(trainer, p)
        if self._snapshots is not False and pl_module is not None:
            try:
                c.watch(pl_module)
            except Exception as exc:  # never fail a fit over statistics
                self._fault("watch", exc)

    def _duplicate(self, trainer: Any, c: Any) -> bool:
        """Another CirronCallback on this trainer records into the same instance first."""
        import cirron

        for cb in getattr(trainer, "callbacks", ()) or ():
            if cb is self:
                return False
            if isinstance(cb, CallbackHooks) and (cb._target or cirron._get()) is c:
                return True
        return False

    def _stamp_rank(self, trainer: Any, p: Any) -> None:
        """Under DDP the launcher's environment may lack ``RANK``: take it from the trainer."""
        world = int(getattr(trainer, "world_size", 1) or 1)
        session = getattr(p, "session", None)
        if session is None:
            return
        if "framework_adapter" not in session.attrs:
            p.update_session(framework_adapter="lightning")
        if world > 1:
            p.set_rank(int(trainer.global_rank), int(trainer.local_rank), world)
            p.update_session(node_rank=int(getattr(trainer, "node_rank", 0)))

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._rec is not None:
            try:
                self._finish(trainer)
            except Exception as exc:
                self._fault("teardown", exc)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self._rec is not None:
            try:
                for scope in (self._batch, self._eval, self._epoch):
                    if scope is not None:
                        scope.attrs["exception"] = type(exception).__name__
                self._finish(trainer)
            except Exception as exc:
                self._fault("on_exception", exc)

    def _finish(self, trainer: Any) -> None:
        """Close everything still open, remove optimizer hooks, give the levels back."""
        rec = self._rec
        self._close_batch()
        if self._eval is not None:
            rec.close(self._eval)
        self._eval = None
        self._close_epoch(trainer)
        self._remove_step_hooks()
        owners = self._owners
        if owners is rec.owners:
            rec.release("epoch", "batch", "step")
        elif owners is not None:  # the session was reset meanwhile: its hooks are gone
            for level in ("epoch", "batch", "step"):
                owners[level] = max(0, owners.get(level, 0) - 1)
        self._owners = None
        self._last_batch = None
        self._rec = None

    # -- training -------------------------------------------------------------------------------

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self._rec is None:
            return
        try:
            k = getattr(trainer, "accumulate_grad_batches", 1) or 1
            self._scale = float(k) if getattr(pl_module, "automatic_optimization", True) else 1.0
            self._remove_step_hooks()
            for opt in getattr(trainer, "optimizers", ()) or ():
                register = getattr(opt, "register_step_post_hook", None)
                if register is not None:
                    self._handles.append(register(self._after_step))
        except Exception as exc:
            self._fault("on_train_start", exc)

    def _remove_step_hooks(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._rec is None:
            return
        try:
            self._close_epoch(trainer)
            self._remove_step_hooks()
        except Exception as exc:
            self._fault("on_train_end", exc)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        rec = self._rec
        if rec is None:
            return
        try:
            self._close_epoch(trainer)
            epoch = self._epoch = rec.open("epoch", int(trainer.current_epoch), structural=True)
            self._t_prev = self._epoch_t0 = self._train_end = perf_counter_ns()
            if epoch.tb is not None:
                epoch.start = self._t_prev
            self._nb = 0
            self._bs = None
        except Exception as exc:
            self._fault("on_train_epoch_start", exc)

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        # Hot path: one scope, one retroactive span, a few attribute stores.
        rec = self._rec
        if rec is None:
            return
        try:
            now = perf_counter_ns()
            if self._batch is not None:  # the previous batch never ended (skipped epoch rest)
                self._close_batch()
            s = rec.Scope("batch", batch_idx)
            s.__enter__()
            if s.tb is None:  # too deep to record
                self._batch = None
                return
            s.start = self._t_prev or now
            self._held.hold(s.id, DATA_LOAD, s.start, now)
            self._fwd = now
            self._batch = s
            self._last_batch = batch
            nb = self._nb = self._nb + 1
            if nb == 1:
                self._bs = batch_size(batch)
        except Exception as exc:
            self._fault("on_train_batch_start", exc)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        # Hot path.
        b = self._batch
        if b is None:
            return
        now = perf_counter_ns()
        f = self._fwd
        if f:
            self._child(b, FORWARD, "forward", f, now)
            self._fwd = 0
        self._bwd = now

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        # Hot path.
        b = self._batch
        if b is None or not self._bwd:
            return
        self._child(b, BACKWARD, "backward", self._bwd, perf_counter_ns())
        self._bwd = 0

    def _child(self, b: Any, kind: int, name: str, t0: int, t1: int) -> None:
        """Pack a child into the open batch's record; a second one of a kind in the same
        batch (two optimizers, manual optimisation) becomes a span of its own."""
        if not self._held.hold(b.id, kind, t0, t1):
            self._rec.span(name, t0, t1, parent=b)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        # Hot path: the step itself runs next; ``_after_step`` (a torch post-step hook) or the
        # batch end closes the span.
        if self._batch is not None:
            self._opt = perf_counter_ns()

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        # Hot path (torch optimizer post-step hook).
        o = self._opt
        b = self._batch
        if o and b is not None:
            self._child(b, OPTIMIZER_STEP, "optimizer_step", o, perf_counter_ns())
            self._opt = 0

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Hot path: close pending children, maybe one deferred loss mark, close the batch.
        b = self._batch
        if b is None:
            return
        rec = self._rec
        now = perf_counter_ns()
        try:
            if self._opt:
                self._child(b, OPTIMIZER_STEP, "optimizer_step", self._opt, now)
                self._opt = 0
            if self._fwd:  # no backward in this batch (manual optimisation, None loss)
                self._child(b, FORWARD, "forward", self._fwd, now)
                self._fwd = 0
            if self._batch_marks:
                n = self._n = self._n + 1
                if n >= self._every:
                    self._n = 0
                    self._mark_loss(rec, outputs)
            self._close_batch(now)
        except Exception as exc:
            self._fault("on_train_batch_end", exc)
        self._batch = None
        self._t_prev = self._train_end = now

    def _close_batch(self, end: int | None = None) -> None:
        """Close the open batch with its children packed into its record."""
        b = self._batch
        if b is None:
            return
        self._batch = None
        b.close(end, self._held.take(b.id))

    def _mark_loss(self, rec: Any, outputs: Any) -> None:
        # Hot path. A CPU loss is read now; on a device, Lightning's automatic-optimisation
        # loss is already a detached copy: wrap it (converted on the flusher thread, no sync)
        # instead of letting the recorder detach it again, which would allocate per batch.
        if type(outputs) is dict:  # automatic optimisation: {"loss": tensor, ...}
            loss = outputs.get("loss")
        else:
            loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is None:
            return
        k = self._scale
        if type(loss) is float or type(loss) is int:
            rec.mark("loss", loss * k if k != 1.0 else loss)
            return
        if getattr(loss, "is_cpu", False) and not getattr(loss, "ndim", 1):
            # Reading a CPU scalar waits for no device: a float now, instead of a tensor kept
            # alive until the flusher converts it (under the GIL the loop shares with it).
            v = float(loss.item())
            rec.mark("loss", v * k if k != 1.0 else v)
            return
        if getattr(loss, "requires_grad", False):  # a user's graph-attached tensor
            loss = loss.detach()
        elif getattr(loss, "shape", None) is None:
            return
        rec.mark("loss", Scaled(loss, k))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        rec = self._rec
        if rec is None or self._epoch is None or not self._epoch_marks:
            return
        try:
            mark_learning_rates(rec, trainer)
            mark_throughput(
                rec, self._nb, self._bs, self._last_batch, self._train_end - self._epoch_t0
            )
        except Exception as exc:
            self._fault("on_train_epoch_end", exc)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: Any) -> None:
        rec = self._rec
        if rec is None:
            return
        try:
            step, epoch = int(trainer.global_step), int(trainer.current_epoch)
            if self._epoch is not None:  # marked on the epoch when it closes
                self._ckpts.append((step, epoch))
            else:
                rec.mark("checkpoint", step, epoch=epoch)
        except Exception as exc:
            self._fault("on_save_checkpoint", exc)

    def _close_epoch(self, trainer: Any) -> None:
        """Close the training epoch: after Lightning's own epoch-end work (checkpoints, early
        stopping, metrics logged in ``LightningModule.on_train_epoch_end``), so those land on it."""
        epoch = self._epoch
        if epoch is None:
            return
        self._epoch = None
        rec = self._rec
        self._close_batch()  # a batch the loop abandoned (on_train_batch_start -> -1)
        try:
            if trainer is not None and self._epoch_marks:
                for key, value in list(getattr(trainer, "callback_metrics", {}).items()):
                    rec.mark(key, value, kind="summary")
            if trainer is not None:
                mark_epoch_events(rec, trainer, self._ckpts)
        finally:
            self._ckpts = []
            self._last_batch = None
            rec.close(epoch)

    # -- validation / test / predict -------------------------------------------------------------

    def _eval_start(self, trainer: Any, phase: str) -> None:
        rec = self._rec
        if rec is None:
            return
        try:
            if self._eval is not None:
                rec.close(self._eval)
            attrs = {"sanity_check": True} if getattr(trainer, "sanity_checking", False) else None
            self._eval = rec.open(phase, None, attrs)
            self._phase = phase
            self._eval_before = dict(getattr(trainer, "callback_metrics", {}))
            self._t_prev = perf_counter_ns()
        except Exception as exc:
            self._fault(f"on_{phase}_start", exc)

    def _eval_end(self, trainer: Any) -> None:
        rec = self._rec
        scope = self._eval
        if rec is None or scope is None:
            return
        try:
            self._close_batch()
            if self._epoch_marks:
                before = self._eval_before
                for key, value in list(getattr(trainer, "callback_metrics", {}).items()):
                    if before.get(key) is not value:  # logged during this run
                        rec.mark(key, value, kind="summary")
        except Exception as exc:
            self._fault(f"on_{self._phase}_end", exc)
        self._eval = None
        self._eval_before = {}
        rec.close(scope)
        self._t_prev = perf_counter_ns()  # the next training batch's data_load starts here

    def _eval_batch_start(self, batch_idx: int, dataloader_idx: int) -> None:
        # Hot path.
        rec = self._rec
        if rec is None:
            return
        try:
            now = perf_counter_ns()
            s = rec.Scope("batch", batch_idx, phase=self._phase)
            if dataloader_idx:
                s.attrs["dataloader_idx"] = dataloader_idx
            s.__enter__()
            if s.tb is None:
                return
            s.start = self._t_prev or now
            self._held.hold(s.id, DATA_LOAD, s.start, now)
            self._batch = s
        except Exception as exc:
            self._fault(f"on_{self._phase}_batch_start", exc)

    def _eval_batch_end(self) -> None:
        # Hot path.
        if self._batch is None:
            return
        self._close_batch()
        self._t_prev = perf_counter_ns()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start(trainer, "validation")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end(trainer)

    def on_validation_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch_start(batch_idx, dataloader_idx)

    def on_validation_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end()

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start(trainer, "test")

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end(trainer)

    def on_test_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch_start(batch_idx, dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end()

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start(trainer, "predict")

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end(trainer)

    def on_predict_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch_start(batch_idx, dataloader_idx)

    def on_predict_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end()
