"""PyTorch: automatic spans for a bare training loop, snapshots of watched models.

``install(cirron, profiler)`` (called by ``profile()`` when torch is imported, before or after
it) adds, reversibly and once per process:

* ``DataLoader.__iter__`` / the iterators' ``__next__`` (minimal patches): ``epoch`` per pass of
  the *training loader*, ``batch`` per fetched item, ``data_load`` = time inside ``__next__``;
* ``torch.autograd.backward`` (which ``Tensor.backward`` calls): ``backward``;
* the global optimizer step pre/post hooks: ``optimizer_step``;
* forward pre/post hooks on each watched model (``forward`` = its outermost call); while no
  model is watched, torch's global module hooks time the outermost module call instead;
* ``torch.distributed.init_process_group``: rank, world size and a shared run id once the group
  exists (see :mod:`cirron.integrations.torch_dist`).

Ownership: while ``rec.owners["batch"] > 0`` (``ci.batches``, a framework callback) the hooks
only add ``data_load`` to the owner's batch; while ``rec.owners["epoch"] > 0`` they open batches
but no epochs. The *training loader* is the first DataLoader iterated with gradients enabled;
passes over any other loader are ``validation`` spans whose batches carry ``phase:
"validation"``. An epoch ends when its iterator is exhausted, garbage-collected (``break``), or
the training loader starts a new pass.

>>> import cirron as ci, torch
>>> p = ci.profile(frameworks=["torch"])
>>> model = torch.nn.Linear(2, 1); ci.watch(model)
>>> ci.shutdown()
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

import torch
import torch.optim.optimizer as _optim
from torch.utils.data import dataloader as _dl

from cirron.core.errors import CirronWarning
from cirron.integrations.torch_hooks import Hooks

__all__ = ["install", "watch", "wrap"]

_ACTIVE: Hooks | None = None  # the session that owns the process-wide patches


# -- install / watch / wrap ---------------------------------------------------------------------


def install(cirron: Any, profiler: Any) -> Callable[[], None] | None:
    """Install the torch hooks for ``profiler``; returns their undo, or None if already there."""
    global _ACTIVE
    if getattr(profiler, "_torch_hooks", None) is not None:
        return None
    if _ACTIVE is not None and _ACTIVE.p is not profiler and not _ACTIVE.p._finished:
        warnings.warn(
            "cirron: torch hooks are already installed by another Cirron instance; "
            "this one records snapshots of its watched models only.",
            CirronWarning,
            stacklevel=3,
        )
        return _install_snapshots_only(cirron, profiler)
    h = Hooks(cirron, profiler, timing=True)
    profiler._torch_hooks = h
    _ACTIVE = h
    try:
        h.arm_step = lambda: _arm_step(h)
        h.arm()
        _hook_distributed(h)
        _hook_session(h)
    except BaseException:
        h.remove()
        raise
    return h.remove


def _install_snapshots_only(cirron: Any, profiler: Any) -> Callable[[], None]:
    h = Hooks(cirron, profiler, timing=False)
    profiler._torch_hooks = h
    _hook_session(h)
    return h.remove


def _arm_step(h: Hooks) -> list[Callable[[], None]]:
    """Install the per-step patches and hooks; returns their undos (see ``Hooks.arm``)."""
    undo: list[Callable[[], None]] = []
    try:
        undo.append(_patch_dataloader(h))
        undo.append(_patch_backward(h))
        undo.extend(_hook_optimizer(h))
        h.hook_forward()
    except BaseException:
        for fn in reversed(undo):
            fn()
        raise
    return undo


def _patch_dataloader(h: Hooks) -> Callable[[], None]:
    cls, it_cls = _dl.DataLoader, _dl._BaseDataLoaderIter
    orig_iter = cls.__dict__["__iter__"]
    orig_next = it_cls.__dict__["__next__"]

    def __iter__(self: Any) -> Any:
        t0 = perf_counter_ns()
        it = orig_iter(self)
        if h.live and isinstance(it, it_cls):
            try:
                h.new_pass(self, it, t0)
            except Exception as exc:
                h.fault("DataLoader.__iter__", exc)
        return it

    __next__ = h.patched_next(orig_next)
    __iter__.__wrapped__ = orig_iter  # type: ignore[attr-defined]
    cls.__iter__ = __iter__  # type: ignore[method-assign]
    it_cls.__next__ = __next__  # type: ignore[method-assign,assignment]

    def undo() -> None:
        if cls.__dict__.get("__iter__") is __iter__:
            cls.__iter__ = orig_iter  # type: ignore[method-assign]
        if it_cls.__dict__.get("__next__") is __next__:
            it_cls.__next__ = orig_next  # type: ignore[method-assign]

    return undo


def _patch_backward(h: Hooks) -> Callable[[], None]:
    ag = torch.autograd
    orig = ag.backward
    wrapped = ag.backward = h.wrap_backward(orig)

    def undo() -> None:
        if ag.backward is wrapped:
            ag.backward = orig

    return undo


def _hook_optimizer(h: Hooks) -> list[Callable[[], None]]:
    pre = _optim.register_optimizer_step_pre_hook(h.opt_pre)
    post = _optim.register_optimizer_step_post_hook(h.opt_post)
    return [pre.remove, post.remove]


def _hook_distributed(h: Hooks) -> None:
    import torch.distributed as dist

    if not dist.is_available():
        return
    from cirron.integrations.torch_dist import adopt_process_group

    def adopt() -> None:
        try:
            adopt_process_group(h.p)
        except Exception as exc:
            h.fault("distributed", exc)

    if dist.is_initialized():
        adopt()
    orig = dist.init_process_group

    def init_process_group(*args: Any, **kwargs: Any) -> Any:
        out = orig(*args, **kwargs)
        if h.live:
            adopt()
        return out

    init_process_group.__wrapped__ = orig  # type: ignore[attr-defined]
    dist.init_process_group = init_process_group

    def undo() -> None:
        if dist.init_process_group is init_process_group:
            dist.init_process_group = orig

    h.undo.append(undo)


def _hook_session(h: Hooks) -> None:
    rec, p = h.rec, h.p
    rec.epoch_listeners.append(h.on_epoch_end)
    h.undo.append(lambda: _discard(rec.epoch_listeners, h.on_epoch_end))
    if h.timing:
        rec.claim_listeners.append(h.on_claim)
        h.undo.append(lambda: _discard(rec.claim_listeners, h.on_claim))
        rec.release_listeners.append(h.on_release)
        h.undo.append(lambda: _discard(rec.release_listeners, h.on_release))
        rec.packer = h.take  # ci.batches closes its batches with the children held here

        def unpack() -> None:
            if rec.packer == h.take:
                rec.packer = None

        h.undo.append(unpack)
    cuda, sealer = h.cuda, p.sealer
    if cuda is not None and sealer is not None:
        sealer.span_resolvers.append(cuda.resolve)
        h.undo.append(lambda: _discard(sealer.span_resolvers, cuda.resolve))
    attrs: dict[str, Any] = {"torch_version": torch.__version__}
    if "device" not in p.session_attrs:
        attrs["device"] = "cuda" if h.cuda is not None and h.cuda.on() else "cpu"
    if not p.session_attrs.get("framework"):
        attrs["framework"] = "pytorch"
    h._session_attrs(**attrs)


def _discard(items: list[Any], item: Any) -> None:
    while item in items:
        items.remove(item)


def watch(cirron: Any, model: Any) -> bool:
    """Take ``model`` (a ``torch.nn.Module``) for snapshots and forward timing."""
    if not isinstance(model, torch.nn.Module):
        return False
    profiler = cirron.profiler
    if profiler is None or profiler._finished:
        return True  # kept by the Cirron instance; watched once profiling starts
    h = getattr(profiler, "_torch_hooks", None)
    if h is None:  # profile(frameworks=[]) or torch not hooked: snapshots only
        profiler._undo.append(_install_snapshots_only(cirron, profiler))
        h = profiler._torch_hooks
    h.watch(model)
    return True


def wrap(cirron: Any, obj: Any) -> Any:
    """``ci.wrap(module)``: watch a ``torch.nn.Module`` and return it unchanged."""
    if not isinstance(obj, torch.nn.Module):
        return None
    cirron.watch(obj)
    return obj
