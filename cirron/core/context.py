"""Platform context and distributed rank, read from the environment once per session.

The Cirron runner injects ``CIRRON_RUN_ID``, ``CIRRON_PIPELINE_ID``, ``CIRRON_DEPLOYMENT_ID`` and
``CIRRON_WORKSPACE_ID``; launchers such as ``torchrun`` and Lightning set ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``. A malformed rank never raises: the default is used and the
reason kept in ``warnings``.

>>> ctx = read_context({"CIRRON_RUN_ID": "run-1", "RANK": "1", "WORLD_SIZE": "2"})
>>> ctx.as_attrs()
{'run_id': 'run-1', 'rank': 1, 'local_rank': 0, 'world_size': 2}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["PLATFORM_ID_VARS", "PlatformContext", "read_context"]

PLATFORM_ID_VARS = {
    "run_id": "CIRRON_RUN_ID",
    "pipeline_id": "CIRRON_PIPELINE_ID",
    "deployment_id": "CIRRON_DEPLOYMENT_ID",
    "workspace_id": "CIRRON_WORKSPACE_ID",
}
"""Field name → the environment variable the platform runner sets."""

RANK_VARS = {"rank": ("RANK", 0), "local_rank": ("LOCAL_RANK", 0), "world_size": ("WORLD_SIZE", 1)}
"""Field name → (environment variable, default)."""


@dataclass(frozen=True)
class PlatformContext:
    """Where this process runs: platform ids (``None`` outside the platform) and its rank."""

    run_id: str | None = None
    pipeline_id: str | None = None
    deployment_id: str | None = None
    workspace_id: str | None = None
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    warnings: tuple[str, ...] = ()

    @property
    def is_distributed(self) -> bool:
        """More than one process takes part in this run."""
        return self.world_size > 1

    def as_attrs(self) -> dict[str, str | int]:
        """The platform ids that are set, plus rank, local_rank and world_size: the attributes
        stamped on the session span."""
        attrs: dict[str, str | int] = {
            name: value for name in PLATFORM_ID_VARS if (value := getattr(self, name)) is not None
        }
        attrs.update(rank=self.rank, local_rank=self.local_rank, world_size=self.world_size)
        return attrs


def read_context(environ: Mapping[str, str] | None = None) -> PlatformContext:
    """Read the platform context from ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    ids = {name: (env.get(var) or "").strip() or None for name, var in PLATFORM_ID_VARS.items()}
    problems: list[str] = []
    ranks = {name: _int(env, var, default, problems) for name, (var, default) in RANK_VARS.items()}
    if ranks["world_size"] < 1:
        problems.append(f"WORLD_SIZE={ranks['world_size']} is below 1; using 1")
        ranks["world_size"] = 1
    if ranks["rank"] >= ranks["world_size"]:
        problems.append(f"RANK={ranks['rank']} is not below WORLD_SIZE={ranks['world_size']}")
    return PlatformContext(
        run_id=ids["run_id"],
        pipeline_id=ids["pipeline_id"],
        deployment_id=ids["deployment_id"],
        workspace_id=ids["workspace_id"],
        rank=ranks["rank"],
        local_rank=ranks["local_rank"],
        world_size=ranks["world_size"],
        warnings=tuple(problems),
    )


def _int(env: Mapping[str, str], var: str, default: int, problems: list[str]) -> int:
    raw = (env.get(var) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{var}={raw!r} is not an integer; using {default}")
        return default
    if value < 0:
        problems.append(f"{var}={value} is negative; using {default}")
        return default
    return value
