"""cirron on a plain Python loop: no framework, just epochs, batches, scopes and marks.

    python examples/quickstart.py

Writes ./.cirron/spool/ and prints the trace tree; `cirron traces view` shows it again later.
"""

from __future__ import annotations

import math
import random
import time

import cirron as ci


def load(batch: int) -> list[float]:
    time.sleep(0.002)  # pretend to read from disk: this shows up as data_load time
    return [random.gauss(0, 1) for _ in range(batch)]


def main() -> None:
    random.seed(0)
    ci.profile(frameworks=[], config={"lr": 0.1, "batch": 64})
    w = 0.0
    for epoch in ci.epochs(range(3)):
        for xs in ci.batches(load(64) for _ in range(20)):
            with ci.scope("step"):
                grad = sum(2 * (w - x) for x in xs) / len(xs)
                w -= 0.1 * grad
                ci.mark("loss", sum((w - x) ** 2 for x in xs) / len(xs))
        with ci.scope("evaluate", epoch=epoch):
            ci.mark("val_rmse", math.sqrt(sum(x * x for x in load(256))) / 16, kind="summary")
    print(ci.trace())
    health = ci.health()
    print(f"drops: {sum(health['drops'].values())}, spool: {health['spool_files']} files")


if __name__ == "__main__":
    main()
