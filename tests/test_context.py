"""Platform context and rank: read from the environment, never raising."""

from __future__ import annotations

import dataclasses

import pytest

from cirron.core.context import PlatformContext, read_context


def test_outside_the_platform_everything_is_default() -> None:
    ctx = read_context()
    assert ctx == PlatformContext()
    assert (ctx.run_id, ctx.pipeline_id, ctx.deployment_id, ctx.workspace_id) == (
        None,
        None,
        None,
        None,
    )
    assert (ctx.rank, ctx.local_rank, ctx.world_size, ctx.warnings) == (0, 0, 1, ())
    assert ctx.as_attrs() == {"rank": 0, "local_rank": 0, "world_size": 1}
    assert not ctx.is_distributed


def test_platform_ids_and_ranks_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in {
        "CIRRON_RUN_ID": "run_1",
        "CIRRON_PIPELINE_ID": "pipe_2",
        "CIRRON_DEPLOYMENT_ID": "dep_3",
        "CIRRON_WORKSPACE_ID": "ws_4",
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
    }.items():
        monkeypatch.setenv(var, value)
    ctx = read_context()
    assert ctx.as_attrs() == {
        "run_id": "run_1",
        "pipeline_id": "pipe_2",
        "deployment_id": "dep_3",
        "workspace_id": "ws_4",
        "rank": 3,
        "local_rank": 1,
        "world_size": 4,
    }
    assert ctx.is_distributed and ctx.warnings == ()


def test_only_set_ids_are_stamped() -> None:
    attrs = read_context({"CIRRON_RUN_ID": "r", "CIRRON_DEPLOYMENT_ID": "  "}).as_attrs()
    assert attrs == {"run_id": "r", "rank": 0, "local_rank": 0, "world_size": 1}


@pytest.mark.parametrize(
    ("environ", "field", "expected", "warning"),
    [
        ({"RANK": "zero"}, "rank", 0, "RANK='zero' is not an integer; using 0"),
        ({"LOCAL_RANK": "1.5"}, "local_rank", 0, "LOCAL_RANK='1.5' is not an integer"),
        ({"WORLD_SIZE": "many"}, "world_size", 1, "WORLD_SIZE='many' is not an integer; using 1"),
        ({"RANK": "-1"}, "rank", 0, "RANK=-1 is negative"),
        ({"WORLD_SIZE": "0"}, "world_size", 1, "WORLD_SIZE=0 is below 1"),
    ],
)
def test_malformed_ranks_fall_back_with_a_warning(
    environ: dict[str, str], field: str, expected: int, warning: str
) -> None:
    ctx = read_context(environ)
    assert getattr(ctx, field) == expected
    assert any(warning in w for w in ctx.warnings), ctx.warnings


def test_rank_not_below_world_size_is_kept_but_flagged() -> None:
    ctx = read_context({"RANK": "4", "WORLD_SIZE": "4"})
    assert ctx.rank == 4 and "RANK=4 is not below WORLD_SIZE=4" in ctx.warnings


def test_blank_and_spaced_values() -> None:
    ctx = read_context({"RANK": "", "WORLD_SIZE": " 2 "})
    assert (ctx.rank, ctx.world_size, ctx.warnings) == (0, 2, ())


def test_context_is_immutable() -> None:
    ctx = read_context()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.rank = 1  # type: ignore[misc]
