"""GPU time and peak memory for torch spans, without host-device synchronisation.

A span that runs while CUDA is initialised gets a pair of timing events recorded on the current
stream (``record()`` only enqueues them). The pair travels in the span's internal attribute
``__gpu``; at seal time, on the flusher thread, :meth:`CudaTiming.resolve` waits for the end event
there (never on the training thread), writes ``gpu_ns`` and returns the events to a pool, so steady
state allocates no events. Peak memory comes from the caching allocator's host-side counters
(``__mem`` → ``memory_peak_bytes``), reset per batch; neither call synchronises.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["CudaTiming"]


class CudaTiming:
    """Event pool and seal-time resolver. Use :meth:`maybe` to get one only where CUDA exists."""

    def __init__(self) -> None:
        self._pool: list[Any] = []
        self._is_init: Any = torch.cuda.is_initialized
        self.resolved = 0
        self.failed = 0

    @classmethod
    def maybe(cls) -> CudaTiming | None:
        try:
            return cls() if torch.cuda.is_available() else None
        except Exception:
            return None

    def on(self) -> bool:
        """CUDA is in use by this process (cheap; never initialises it)."""
        return bool(self._is_init())

    # These run inside the user's forward/step, so none of them may raise: during CUDA graph
    # capture (or on any CUDA error) they record nothing and the span simply has no gpu_ns.
    def _event(self) -> Any:
        if torch.cuda.is_current_stream_capturing():
            return None
        pool = self._pool
        ev = pool.pop() if pool else torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        ev.record()
        return ev

    def start(self) -> Any:
        try:
            return self._event()
        except Exception:
            self.failed += 1
            return None

    def stop(self, start: Any) -> tuple[Any, Any] | None:
        if start is None:
            return None
        try:
            end = self._event()
        except Exception:
            end = None
        if end is None:
            self.failed += 1
            self._pool.append(start)
            return None
        return (start, end)

    def reset_peak(self) -> None:
        try:
            torch.cuda.reset_peak_memory_stats()
        except Exception:
            self.failed += 1

    def peak(self) -> int:
        try:
            stats = torch._C._cuda_memoryStats(torch.cuda.current_device())
            return int(stats["allocated_bytes"]["all"]["peak"])
        except Exception:
            self.failed += 1
            return 0

    def resolve(self, raw: dict[str, Any], span: dict[str, Any]) -> None:
        """A sealer span resolver: runs on the flusher thread."""
        mem = raw.get("__mem")
        if mem is not None:
            span["memory_peak_bytes"] = int(mem)
        pair = raw.get("__gpu")
        if pair is None or span.get("attrs", {}).get("open"):
            return
        start, end = pair
        try:
            if not end.query():
                end.synchronize()  # the flusher waits, the training thread does not
            span["gpu_ns"] = max(0, int(start.elapsed_time(end) * 1e6))
            self.resolved += 1
            self._pool.extend(pair)
        except Exception:
            self.failed += 1
