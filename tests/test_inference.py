"""``@ci.inference``: one span per request, for sync, async and streaming handlers."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cirron as ci
from tests.helpers.run import all_marks, spans_by_name
from tests.helpers.schema import load_batches


def test_sync_async_and_streaming_handlers_each_get_a_request_span() -> None:
    ci.profile(frameworks=[])

    @ci.inference
    def predict(x: int) -> int:
        with ci.scope("preprocess"):
            ci.mark("x", x)
        return x + 1

    @ci.inference(config={"model": "m1"})
    async def apredict(x: int) -> int:
        await asyncio.sleep(0)
        ci.mark("x", x)
        return x * 2

    @ci.inference
    def stream(n: int):  # type: ignore[no-untyped-def]
        yield from range(n)

    assert predict(1) == 2
    assert predict.__name__ == "predict" and apredict._cirron_config == {"model": "m1"}

    async def serve() -> list[int]:
        return await asyncio.gather(*(apredict(k) for k in range(3)))

    assert asyncio.run(serve()) == [0, 2, 4]
    assert list(stream(4)) == [0, 1, 2, 3]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(predict, range(8))) == list(range(1, 9))
    ci.shutdown()
    batches = load_batches(Path(".cirron"))
    spans = spans_by_name(batches)
    requests = spans["inference"]
    assert len(requests) == 1 + 3 + 1 + 8
    assert len({r["attrs"]["request_id"] for r in requests}) == len(requests)
    by_id = {r["id"]: r for r in requests}
    for p in spans["preprocess"]:
        assert by_id[p["parent_id"]]["attrs"]["function"].endswith("predict")
    for m in all_marks(batches):
        assert m["span_id"] in by_id or m["span_id"] in {p["id"] for p in spans["preprocess"]}
    (streamed,) = [r for r in requests if r["attrs"]["function"].endswith("stream")]
    assert streamed["attrs"]["items"] == 4 and streamed["attrs"]["time_to_first_item_ns"] >= 0
