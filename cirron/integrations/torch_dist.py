"""Rank, world size and one run id per job under ``torch.distributed``.

Before ``init_process_group`` the session carries what the environment says (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``; see :mod:`cirron.core.context`). Once the process group exists,
:func:`adopt_process_group` stamps the real rank and world size on the session and on every span
sealed from then on, and agrees on one run id for all ranks through the process group's own
key-value store: rank 0 publishes its id, the others read it. That happens once, right after
``init_process_group`` returns, never on the training path, and it is no collective: a rank that
cannot read the key within :data:`STORE_TIMEOUT` keeps its environment-derived id.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch.distributed as dist

__all__ = ["STORE_KEY", "STORE_TIMEOUT", "adopt_process_group"]

STORE_KEY = "cirron/run_id"
STORE_TIMEOUT = timedelta(seconds=10)


def adopt_process_group(profiler: Any) -> None:
    """Read rank/world size from the initialised default group into the session."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    rank = dist.get_rank()
    world = dist.get_world_size()
    attrs: dict[str, Any] = {
        "rank": rank,
        "world_size": world,
        "local_rank": _local_rank(rank),
        "distributed_backend": str(dist.get_backend()),
    }
    profiler.set_rank(rank, attrs["local_rank"], world)
    run_id = _shared_run_id(rank, profiler)
    if run_id:
        attrs["run_id"] = run_id
        os.environ["CIRRON_JOB_RUN_ID"] = run_id
    profiler.update_session(**attrs)


def _local_rank(rank: int) -> int:
    raw = os.environ.get("LOCAL_RANK", "")
    return int(raw) if raw.isdigit() else rank


def _shared_run_id(rank: int, profiler: Any) -> str | None:
    if os.environ.get("CIRRON_RUN_ID"):
        return None  # the platform's run id wins and is already the same everywhere
    mine = profiler.session_attrs.get("run_id")
    try:
        store = dist.distributed_c10d._get_default_store()
        if rank == 0:
            if mine:
                store.set(STORE_KEY, str(mine))
            return None
        store.wait([STORE_KEY], STORE_TIMEOUT)
        value = store.get(STORE_KEY)
        return value.decode() if isinstance(value, bytes) else str(value)
    except Exception:
        return None
