"""Every example in examples/ runs end to end (the README's main command among them) and leaves
a schema-valid spool; each is a real subprocess, as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.run import REPO, child_env
from tests.helpers.schema import load_batches

NEEDS = {
    "train_torch.py": ("torch",),
    "sklearn_gridsearch.py": ("sklearn",),
    "onnx_inference.py": ("onnxruntime", "skl2onnx", "sklearn"),
    "lightning_train.py": ("lightning", "torch"),
    "keras_train.py": ("keras", "tensorflow"),
    "ddp_gloo.py": ("torch",),
}
EXPECTED = {
    "quickstart.py": ("cirron.session", "epoch[2]", "drops: 0"),
    "train_torch.py": ("cirron.session", "optimizer_step", "3 epochs, 96 batches"),
    "sklearn_gridsearch.py": ("cirron.session", "fit", "score"),
    "onnx_inference.py": ("cirron.session", "inference"),
    "lightning_train.py": ("cirron.session", "epoch", "data_load"),
    "keras_train.py": ("cirron.session", "epoch", "predict"),
    "ddp_gloo.py": (),
}


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in (REPO / "examples").glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_and_writes_a_valid_spool(name: str, tmp_path: Path) -> None:
    for module in NEEDS.get(name, ()):
        pytest.importorskip(module)  # CI has every framework: this skips only in tox's `core`
    args = ["--quiet"] if name == "ddp_gloo.py" else []
    r = subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *args],
        cwd=tmp_path,
        env=child_env(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for text in EXPECTED[name]:
        assert text in r.stdout, f"{text!r} not in the output of {name}:\n{r.stdout[-2000:]}"
    batches = load_batches(tmp_path)
    assert any(s["name"] == "cirron.session" for b in batches for s in b["spans"])
