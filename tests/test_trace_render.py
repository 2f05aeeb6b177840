"""Rendering a session: the text tree, its filters, dict, JSON, DataFrame and the summary line."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

from cirron.core.errors import CirronDependencyError
from cirron.core.trace import TraceData, load_dir, render, summary
from cirron.core.trace_render import fmt_duration, parse_duration
from tests.helpers.spoolgen import MS, T0, Run, write_training_run

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return write_training_run(tmp_path / ".cirron", epochs=3, batches=32)


@pytest.fixture
def data(run: Run) -> TraceData:
    return load_dir(run.root)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> TraceData:
    root = tmp_path_factory.mktemp("big") / ".cirron"
    write_training_run(root, epochs=10, batches=500, per_file=5000, snapshots=False, validate=False)
    return load_dir(root)


# -- numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0 ns"),
        (999, "999 ns"),
        (812_000, "812 µs"),
        (8_123, "8.12 µs"),
        (999_700, "1.00 ms"),
        (12_345_678, "12.3 ms"),
        (1_523_000_000, "1.52 s"),
        (123_000_000_000, "2m 03s"),
        (3_723_000_000_000, "1h 02m"),
    ],
)
def test_durations_read_like_a_person_would_write_them(ns: int, text: str) -> None:
    assert fmt_duration(ns) == text


def test_parse_duration_accepts_units_and_rejects_junk() -> None:
    assert parse_duration("5ms") == 5 * MS
    assert parse_duration("250us") == parse_duration("250µs") == 250_000
    assert parse_duration("1.5s") == 1_500_000_000
    assert parse_duration("100ns") == 100
    with pytest.raises(ValueError, match="5ms"):
        parse_duration("fast")


# -- the tree ------------------------------------------------------------------------------


def test_tree_shows_session_epochs_batches_and_their_children(run: Run, data: TraceData) -> None:
    text = render(data)
    first = text.splitlines()[0]
    assert first.startswith(f"cirron.session  {run.session_id[:8]}  demo 0.1.0")
    assert "finished" in first
    for piece in ("epoch[0]", "epoch[2]", "batch[0]", "batch[31]", "validation", "(validation)"):
        assert piece in text
    assert re.search(r"batch\[0\]  \d+\.\d+ ms  loss: [0-9.]+  ▸ data_load \d+ µs · forward", text)
    assert "val_acc=0.7" in text and "val_acc=0.8" in text


def test_point_marks_are_summarised_with_last_mean_and_count(run: Run, data: TraceData) -> None:
    epoch2 = next(line for line in render(data).splitlines() if "epoch[2]" in line)
    losses = run.losses[64:96]
    m = re.search(r"loss: last ([0-9.]+) \(mean ([0-9.]+), n=32\)", epoch2)
    assert m, epoch2
    assert float(m.group(1)) == pytest.approx(losses[-1], rel=1e-2)
    assert float(m.group(2)) == pytest.approx(sum(losses) / 32, rel=1e-2)


def test_a_nan_mark_is_shown_as_nan_and_left_out_of_the_mean(tmp_path: Path) -> None:
    small = write_training_run(tmp_path / ".cirron", epochs=1, batches=6, nan_at=(0, 4))
    text = render(load_dir(small.root))
    assert re.search(r"batch\[4\]  [0-9.]+ ms  loss: nan", text)
    finite = [v for v in small.losses if not math.isnan(v)]
    epoch0 = next(line for line in text.splitlines() if "epoch[0]" in line)
    m = re.search(r"mean ([0-9.]+), n=6", epoch0)
    assert m and float(m.group(1)) == pytest.approx(sum(finite) / len(finite), rel=1e-2)


def test_long_runs_of_batches_collapse_to_head_tail_and_a_stats_line(data: TraceData) -> None:
    text = render(data)
    assert text.count("… 27 more batch spans (32 in all: mean") == 3
    assert re.search(r"p95 \d+\.\d+ ms\)", text)
    assert "batch[3]" not in text.split("epoch[1]")[0]


def test_ten_epochs_of_500_batches_stay_a_screenful(big: TraceData) -> None:
    lines = render(big).splitlines()
    assert len(lines) <= 60
    assert any("… 5 more epoch spans (10 in all" in line for line in lines)
    assert any("… 495 more batch spans (500 in all" in line for line in lines)


def test_name_filter_keeps_matching_spans_and_their_descendants(data: TraceData) -> None:
    text = render(data, name="validation")
    assert text.count("── validation") == 3
    assert "epoch[" not in text and text.count("(validation)") == 6
    assert render(data, name="valid*") == text
    assert "(no spans match)" in render(data, name="nothing")


def test_last_keeps_the_most_recently_closed_spans(data: TraceData) -> None:
    text = render(data, last=1)
    assert "epoch[2]" in text and "epoch[1]" not in text
    only = render(data, name="batch", last=2)
    assert (
        "── batch[0]  2.00 ms  (validation)" in only
        and "── batch[1]  2.00 ms  (validation)" in only
    )
    assert "batch[31]" not in only


def test_depth_cuts_the_tree_and_says_how_much_is_below(data: TraceData) -> None:
    text = render(data, depth=1)
    assert len(text.splitlines()) == 4
    assert "[+163 below]" in text
    assert render(data, depth=0).count("\n") == 0


def test_min_wall_hides_short_spans_and_counts_them(data: TraceData) -> None:
    text = render(data, min_wall_ns=1_500_000)
    assert "optimizer_step" not in text and "data_load" not in text
    assert re.search(r"… \d spans? under 1\.50 ms hidden", text)


def test_colour_only_when_asked(data: TraceData) -> None:
    plain = render(data)
    coloured = render(data, color=True)
    assert "\x1b[" not in plain
    assert "\x1b[" in coloured and ANSI.sub("", coloured) == plain


def test_sessions_are_picked_newest_by_default_or_all(tmp_path: Path) -> None:
    root = tmp_path / ".cirron"
    a = write_training_run(root, epochs=1, batches=2, seed=1)
    b = write_training_run(
        root, epochs=1, batches=2, seed=2, start_ns=T0 + 10**12, status="crashed"
    )
    data = load_dir(root)
    assert b.session_id[:8] in render(data) and a.session_id[:8] not in render(data)
    assert "crashed" in render(data)
    both = render(data, session_id="all")
    assert both.index(a.session_id[:8]) < both.index(b.session_id[:8])
    assert a.session_id[:8] in render(data, session_id=a.session_id[:6])


def test_empty_data_renders_gracefully() -> None:
    empty = TraceData()
    assert render(empty) == "no spans recorded yet"
    assert render(empty, format="dict") == {}
    assert render(empty, format="json") == "{}"
    assert len(render(empty, format="df")) == 0
    assert summary(empty) == "no sessions recorded"


def test_unknown_format_lists_the_valid_ones(data: TraceData) -> None:
    with pytest.raises(ValueError, match="tree, dict, json, df"):
        render(data, format="yaml")


# -- dict and json -------------------------------------------------------------------------


def test_dict_is_one_nested_node_per_span(run: Run, data: TraceData) -> None:
    root = render(data, format="dict")
    assert root["id"] == run.session_id and root["name"] == "cirron.session"
    assert [c["index"] for c in root["children"]] == [0, 1, 2]
    epoch = root["children"][0]
    assert set(epoch) >= {
        "id",
        "name",
        "index",
        "start_ns",
        "end_ns",
        "duration_ns",
        "attrs",
        "marks",
        "children",
    }
    assert epoch["duration_ns"] == epoch["end_ns"] - epoch["start_ns"]
    assert {m["name"] for m in epoch["marks"]} == {"val_acc", "lr"}
    batch = epoch["children"][0]
    assert [c["name"] for c in batch["children"]] == [
        "data_load",
        "forward",
        "backward",
        "optimizer_step",
    ]
    assert batch["marks"][0]["name"] == "loss"
    assert sum(1 for c in epoch["children"] if c["name"] == "batch") == 32


def test_filtered_dict_is_a_list_and_json_is_its_text(data: TraceData) -> None:
    epochs = render(data, format="dict", name="epoch")
    assert isinstance(epochs, list) and [e["index"] for e in epochs] == [0, 1, 2]
    text = render(data, format="json", name="epoch")
    assert json.loads(text) == epochs
    assert json.loads(render(data, format="json")) == render(data, format="dict")


def test_depth_and_min_wall_apply_to_dict_too(data: TraceData) -> None:
    root = render(data, format="dict", depth=1)
    assert all(e["children"] == [] for e in root["children"])
    short = render(data, format="dict", min_wall_ns=3 * MS)
    names = {c["name"] for e in short["children"] for c in e["children"]}
    assert names == {"batch", "validation"}


# -- DataFrame -----------------------------------------------------------------------------


def test_dataframe_has_one_row_per_span_with_marks_as_columns(run: Run, data: TraceData) -> None:
    df = render(data, format="df")
    assert len(df) == 1 + 3 * (1 + 32 * 5 + 3)
    for col in (
        "span_id",
        "name",
        "index",
        "parent_id",
        "depth",
        "start_ns",
        "duration_ns",
        "attrs",
    ):
        assert col in df.columns
    assert {"loss", "val_acc", "lr"} <= set(df.columns)
    session = df[df.name == "cirron.session"].iloc[0]
    assert session.depth == 0 and session.span_id == run.session_id
    batches = df[(df.name == "batch") & (df.depth == 2)]
    assert len(batches) == 96
    assert batches.loss.isna().sum() == 1  # the NaN loss comes back as NaN
    assert batches.loss.dropna().iloc[0] == pytest.approx(run.losses[0])
    assert set(df[df.name == "forward"].depth) == {3}
    assert df[df.name == "epoch"].val_acc.tolist() == [0.7, 0.75, 0.8]
    assert isinstance(df["attrs"].iloc[0], dict)


def test_dataframe_respects_the_filters(data: TraceData) -> None:
    df = render(data, format="df", name="epoch", depth=1)
    assert list(df.name.unique()) == ["epoch", "batch", "validation"]
    assert list(df[df.name == "epoch"]["depth"]) == [1, 1, 1]


def test_dataframe_without_pandas_names_the_pip_line(
    data: TraceData, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(CirronDependencyError) as exc:
        render(data, format="df")
    assert exc.value.pip_line == "pip install 'cirron-sdk[pandas]'"
    assert "ci.trace(format='df')" in str(exc.value)


# -- summary -------------------------------------------------------------------------------


def test_summary_is_one_line_about_the_run(run: Run, data: TraceData) -> None:
    line = summary(data)
    m = re.fullmatch(
        r"3 epochs, 96 batches, mean batch (\d+\.\d+) ms, data_load (\d+)% of batch time, final loss ([0-9.]+)",
        line,
    )
    assert m, line
    assert 10 <= int(m.group(2)) <= 30
    assert float(m.group(3)) == pytest.approx(run.losses[-1], rel=1e-2)


def test_summary_uses_the_data_load_attribute_when_there_is_no_span(tmp_path: Path) -> None:
    from tests.helpers.spoolgen import Ids, span, write_batch

    ids = Ids(11)
    sid, eid, bid = ids(), ids(), ids()
    spans = [
        span(
            sid,
            "cirron.session",
            None,
            T0,
            T0 + 20 * MS,
            session_id=sid,
            attrs={"status": "interrupted"},
        ),
        span(eid, "epoch", sid, T0, T0 + 10 * MS, index=0, session_id=sid),
        span(
            bid,
            "batch",
            eid,
            T0,
            T0 + 10 * MS,
            index=0,
            session_id=sid,
            attrs={"data_load_ns": 2 * MS},
        ),
    ]
    write_batch(tmp_path / "spool", spans, created_ns=T0 + 20 * MS)
    line = summary(load_dir(tmp_path))
    assert line == "1 epoch, 1 batch, mean batch 10.0 ms, data_load 20% of batch time, interrupted"
