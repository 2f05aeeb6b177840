"""What the Lightning callback marks outside the per-batch path, and the values it hands over.

Epoch-level marks (learning rates, throughput, checkpoints, early stopping) run once per epoch,
so they are written for reading; :class:`Scaled` and :func:`batch_size` are used per batch or
per epoch and stay cheap. Nothing here imports Lightning or torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["Scaled", "batch_size", "mark_epoch_events", "mark_learning_rates", "mark_throughput"]


class Scaled:
    """A 0-d value the recorder converts off the training thread: ``tensor.item() * k``.

    Lightning divides the loss it hands to ``on_train_batch_end`` by ``accumulate_grad_batches``;
    this undoes that without a tensor op or a device sync on the training thread. The recorder
    treats anything with ``shape == ()``, ``detach()`` and ``item()`` as a deferred 0-d tensor;
    wrapping Lightning's already-detached loss also saves allocating a new tensor per batch.
    """

    __slots__ = ("k", "t")
    shape = ()

    def __init__(self, t: Any, k: float) -> None:
        self.t = t
        self.k = k

    def detach(self) -> Scaled:  # what the recorder calls on a tensor: nothing to do here
        return self

    def item(self) -> float:
        value = float(self.t.item())
        return value * self.k if self.k != 1.0 else value


def batch_size(batch: Any) -> int | None:
    """The first dimension of the first tensor found in ``batch`` (tensor, mapping, sequence).

    >>> batch_size([[1, 2, 3]])
    3
    """
    for _ in range(8):
        shape = getattr(batch, "shape", None)
        if shape is not None:
            return int(shape[0]) if len(shape) else None
        if isinstance(batch, Mapping):
            batch = next(iter(batch.values()), None)
        elif isinstance(batch, (list, tuple)) and batch and not isinstance(batch[0], (int, float)):
            batch = batch[0]
        else:
            return len(batch) if isinstance(batch, (list, tuple)) else None
    return None


def mark_learning_rates(rec: Any, trainer: Any) -> None:
    """One ``summary`` mark per optimizer param group: ``learning_rate``, or ``learning_rate/pg<j>`` and
    ``learning_rate/opt<i>/pg<j>`` when there are several (attrs ``optimizer`` and ``param_group``)."""
    optimizers = list(getattr(trainer, "optimizers", ()) or ())
    groups = [(i, j, g) for i, opt in enumerate(optimizers) for j, g in enumerate(opt.param_groups)]
    for i, j, group in groups:
        if "lr" not in group:
            continue
        if len(groups) == 1:
            name = "learning_rate"
        elif len(optimizers) == 1:
            name = f"learning_rate/pg{j}"
        else:
            name = f"learning_rate/opt{i}/pg{j}"
        rec.mark(name, group["lr"], kind="summary", optimizer=i, param_group=j)


def mark_throughput(
    rec: Any, batches: int, first_size: int | None, last_batch: Any, duration_ns: int
) -> None:
    """``batches``, ``batch_size``, ``samples`` and ``samples_per_second`` of one training epoch.

    Samples are ``(batches - 1) * first batch size + last batch size``: exact for a DataLoader
    whose last batch is the only short one.
    """
    if not batches:
        return
    rec.mark("batches", batches, kind="summary")
    if first_size is None:
        return
    last = batch_size(last_batch)
    samples = (batches - 1) * first_size + (last if last is not None else first_size)
    rec.mark("batch_size", first_size, kind="summary")
    rec.mark("samples", samples, kind="summary")
    if duration_ns > 0:
        rec.mark("samples_per_second", samples / (duration_ns / 1e9), kind="summary")


def mark_epoch_events(rec: Any, trainer: Any, checkpoints: list[tuple[int, int]]) -> None:
    """Checkpoints saved during the epoch (``checkpoint`` points, value = global step; the best
    path as ``best_checkpoint``) and a stop request (``early_stop`` with EarlyStopping's state)."""
    for step, epoch in checkpoints:
        rec.mark("checkpoint", step, epoch=epoch)
    if checkpoints:
        best = getattr(getattr(trainer, "checkpoint_callback", None), "best_model_path", "")
        if best:
            rec.mark("best_checkpoint", str(best), kind="summary")
    if getattr(trainer, "should_stop", False):
        rec.mark("early_stop", True, kind="summary", **_stop_reason(trainer))


def _stop_reason(trainer: Any) -> dict[str, Any]:
    for cb in getattr(trainer, "early_stopping_callbacks", ()) or ():
        if getattr(cb, "stopped_epoch", 0) or getattr(cb, "wait_count", 0):
            return {
                "reason": "early_stopping",
                "monitor": cb.monitor,
                "patience": cb.patience,
                "wait_count": cb.wait_count,
                "best_score": cb.best_score,  # a tensor: the flusher converts it
            }
    return {"reason": "should_stop"}
