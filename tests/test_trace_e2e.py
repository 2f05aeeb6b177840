"""End to end: a pure-Python loop profiled by the real runtime, read back by the trace reader."""

from __future__ import annotations

import json
import math
from pathlib import Path

from click.testing import CliRunner

import cirron as ci
from cirron.cli.traces import traces
from cirron.core.trace import export, load_dir, render, sessions, summary


def _train() -> str:
    ci.profile(frameworks=[])
    for epoch in ci.epochs(range(2)):
        for step in ci.batches(range(6)):
            with ci.scope("forward"):
                sum(i * i for i in range(2000))
            ci.mark("loss", 1.0 / (step + 1) if step != 3 else math.nan)
        ci.mark("val_acc", 0.5 + epoch / 10, kind="summary")
    live = ci.trace()
    ci.shutdown()
    return str(live)


def test_a_profiled_loop_reads_back_through_the_trace_reader(_isolated: Path) -> None:
    live = _train()
    assert live.startswith("cirron.session") and "epoch[1]" in live and "running" in live

    warnings: list[str] = []
    data = load_dir(Path(".cirron"), on_warning=warnings.append)
    assert warnings == []
    [info] = sessions(data)
    assert info.status == "finished" and info.span_count == 1 + 2 * (1 + 6 * 2)

    tree = render(data)
    assert "finished" in tree.splitlines()[0]
    assert "loss: nan" in tree and "val_acc=0.6" in tree and "forward" in tree
    assert summary(data).startswith("2 epochs, 12 batches, mean batch")

    root = render(data, format="dict")
    assert [c["index"] for c in root["children"]] == [0, 1]
    assert [b["index"] for b in root["children"][0]["children"]] == list(range(6))

    df = render(data, format="df")
    batches = df[df.name == "batch"]
    assert len(df) == info.span_count and batches.loss.isna().sum() == 2

    otlp = json.loads(export(data, "otel"))  # type: ignore[arg-type]
    spans = otlp["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert {s["traceId"] for s in spans} == {info.id}
    ids = {s["spanId"] for s in spans}
    assert len(ids) == len(spans) and all(s.get("parentSpanId", "") in ids | {""} for s in spans)

    result = CliRunner().invoke(traces, ["view", "--name", "epoch", "--depth", "0"])
    assert result.exit_code == 0 and result.stdout.count("epoch[") == 2
