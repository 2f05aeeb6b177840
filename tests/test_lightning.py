"""The Lightning callback: real ``Trainer.fit`` runs on tiny models, asserted from the spool.

Both ``lightning.pytorch`` and ``pytorch_lightning`` are imported once for the whole file; every
test reads back what a user would see: the span tree, marks and snapshots in ``./.cirron``.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")
PL = pytest.importorskip("pytorch_lightning")

import cirron as ci  # noqa: E402
from cirron.core.trace import TraceData, load  # noqa: E402
from cirron.integrations import lightning as cl  # noqa: E402
from cirron.integrations.lightning import CirronCallback, callback_class  # noqa: E402
from tests.helpers.schema import load_batches  # noqa: E402

NAMESPACES = {"lightning.pytorch": L, "pytorch_lightning": PL}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


# -- tiny models -------------------------------------------------------------------------------


def _loader(n: int, batch_size: int = 4) -> Any:
    g = torch.Generator().manual_seed(n)
    data = torch.utils.data.TensorDataset(
        torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)
    )
    return torch.utils.data.DataLoader(data, batch_size=batch_size)


def _module_class(lib: Any) -> type:
    class Tiny(lib.LightningModule):
        """4 → 1 linear regression; records what the recorder saw from inside the step."""

        def __init__(
            self,
            train_n: int = 12,
            val_n: int = 8,
            fail_at: int | None = None,
            const_val: bool = False,
        ) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.train_n, self.val_n, self.fail_at, self.const_val = (
                train_n,
                val_n,
                fail_at,
                const_val,
            )
            self.losses: list[float] = []
            self.owners: list[dict[str, int]] = []

        def forward(self, x: Any) -> Any:
            return self.layer(x)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.fail_at is not None and batch_idx == self.fail_at:
                raise RuntimeError("boom")
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            self.losses.append(float(loss))
            self.owners.append(dict(ci._get()._rec.owners))
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            self.log("val_loss", torch.tensor(1.0) if self.const_val else loss)

        def test_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("test_loss", torch.nn.functional.mse_loss(self(x), y))

        def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
            return self(batch[0])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

        def train_dataloader(self) -> Any:
            return _loader(self.train_n)

        def val_dataloader(self) -> Any:
            return _loader(self.val_n)

        def test_dataloader(self) -> Any:
            return _loader(8)

        def predict_dataloader(self) -> Any:
            return _loader(8)

    return Tiny


MODELS = {ns: _module_class(lib) for ns, lib in NAMESPACES.items()}


def _trainer(lib: Any = L, **kw: Any) -> Any:
    opts: dict[str, Any] = dict(
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )
    opts.update(kw)
    return lib.Trainer(**opts)


# -- reading the spool back --------------------------------------------------------------------


class Tree:
    """The spool of one directory, after superseding: spans by id, children, marks."""

    def __init__(self, root: Path) -> None:
        self.data: TraceData = load(load_batches(root))
        self.spans = self.data.spans

    def named(self, name: str) -> list[dict[str, Any]]:
        return sorted(
            (s for s in self.spans.values() if s["name"] == name),
            key=lambda s: (s["start_ns"], s["id"]),
        )

    def kids(self, span: dict[str, Any]) -> list[dict[str, Any]]:
        return [self.spans[i] for i in self.data.children.get(span["id"], [])]

    def shape(self, span: dict[str, Any]) -> list[tuple[str, int | None]]:
        return [(k["name"], k["index"]) for k in self.kids(span)]

    def marks(self, span: dict[str, Any], kind: str | None = None) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for m in self.data.marks_by_span.get(span["id"], []):
            if kind is None or m["kind"] == kind:
                out.setdefault(m["name"], []).append(m["value"])
        return out

    def session(self) -> dict[str, Any]:
        (root,) = self.named("cirron.session")
        return root


def _tree(root: Path | None = None) -> Tree:
    ci.shutdown()
    return Tree(root or Path.cwd() / ".cirron")


TRAIN_CHILDREN = ["data_load", "forward", "backward", "optimizer_step"]


# -- namespaces and the class factory ----------------------------------------------------------


@pytest.mark.parametrize("ns", list(NAMESPACES))
def test_fit_records_epochs_batches_validation_and_children(ns: str) -> None:
    lib, model = NAMESPACES[ns], MODELS[ns]()
    cb = CirronCallback(namespace=ns)
    assert isinstance(cb, lib.Callback) and isinstance(cb, CirronCallback)
    _trainer(lib, callbacks=[cb]).fit(model)

    t = _tree()
    session = t.session()
    assert t.shape(session) == [("epoch", 0), ("epoch", 1)]
    assert session["attrs"]["rank"] == 0 and session["attrs"]["world_size"] == 1
    assert len(session["attrs"]["run_id"]) == 32
    for epoch in t.kids(session):
        assert t.shape(epoch) == [("batch", 0), ("batch", 1), ("batch", 2), ("validation", None)]
        *batches, val = t.kids(epoch)
        for b in batches:
            assert [k["name"] for k in t.kids(b)] == TRAIN_CHILDREN
            assert "phase" not in b["attrs"]
            kids = t.kids(b)
            assert b["start_ns"] == kids[0]["start_ns"]  # the batch covers its data_load
            assert all(kids[i]["end_ns"] <= kids[i + 1]["start_ns"] for i in range(3))
            assert kids[-1]["end_ns"] <= b["end_ns"]
            assert list(t.marks(b, "point")) == ["loss"]
        assert t.shape(val) == [("batch", 0), ("batch", 1)]
        assert all(b["attrs"]["phase"] == "validation" for b in t.kids(val))
        assert all(t.shape(b) == [("data_load", None)] for b in t.kids(val))
        assert set(t.marks(val, "summary")) == {"val_loss"}
        summary = t.marks(epoch, "summary")
        assert {
            "train_loss_epoch",
            "train_loss_step",
            "val_loss",
            "learning_rate",
            "batch_size",
            "samples",
            "samples_per_second",
            "batches",
        } <= set(summary)
        assert summary["learning_rate"] == [0.05] and summary["batch_size"] == [4]
        assert summary["samples"] == [12] and summary["batches"] == [3]
        assert summary["samples_per_second"][0] > 0
    losses = [v for b in t.named("batch") if "phase" not in b["attrs"] for v in t.marks(b)["loss"]]
    assert losses == pytest.approx(model.losses, rel=1e-6)
    assert all(o["epoch"] == o["batch"] == o["step"] == 1 for o in model.owners)
    assert not any(ci._get()._rec.owners.values())


def test_one_callback_object_fits_either_trainer_when_both_are_imported() -> None:
    cb = CirronCallback()
    assert isinstance(cb, L.Callback) and isinstance(cb, PL.Callback)
    assert type(cb) is callback_class() and type(cb).__qualname__ == "CirronCallback"
    assert issubclass(callback_class("pytorch_lightning"), CirronCallback)
    assert not isinstance(CirronCallback(namespace="pytorch_lightning"), L.Callback)
    _trainer(L, callbacks=[cb], max_epochs=1).fit(MODELS["lightning.pytorch"]())
    _trainer(PL, callbacks=[cb], max_epochs=1).fit(MODELS["pytorch_lightning"]())
    t = _tree()
    assert t.shape(t.session()) == [("epoch", 0), ("epoch", 0)]


def test_importing_the_module_imports_no_lightning() -> None:
    code = (
        "import sys; import cirron.integrations.lightning as m; "
        "bad = [n for n in ('lightning', 'pytorch_lightning', 'torch') if n in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stderr


def test_bad_options_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="snapshots"):
        CirronCallback(snapshots="everything")
    with pytest.raises(ValueError, match="log_every_n_batches"):
        CirronCallback(log_every_n_batches=0)
    with pytest.raises(ValueError, match="namespace"):
        CirronCallback(namespace="keras")


def test_callback_pickles_and_keeps_its_options() -> None:
    cb = CirronCallback(log_every_n_batches=3, snapshots=False)
    back = pickle.loads(pickle.dumps(cb))
    assert type(back) is type(cb) and back._options == cb._options


# -- zero config, explicit instance, disabled --------------------------------------------------


def test_zero_config_starts_a_session_and_keeps_it_open_for_later_fits() -> None:
    assert not ci._get().profiling
    _trainer(callbacks=[CirronCallback()], max_epochs=1).fit(MODELS["lightning.pytorch"]())
    assert ci._get().profiling
    _trainer(callbacks=[CirronCallback()], max_epochs=1).fit(MODELS["lightning.pytorch"]())
    t = _tree()
    assert t.shape(t.session()) == [("epoch", 0), ("epoch", 0)]
    assert t.session()["attrs"]["status"] == "finished"


def test_torch_runs_unpatched_during_a_fit_and_is_hooked_again_after_it() -> None:
    """The callback times the step itself: the torch hooks' per-step patches come off for the
    fit (they would only cost), and come back when it ends."""
    from torch.nn.modules import module
    from torch.optim import optimizer
    from torch.utils.data import dataloader

    def hooked() -> bool:
        nxt = dataloader._BaseDataLoaderIter.__next__
        return bool(
            module._global_forward_pre_hooks
            or optimizer._global_optimizer_pre_hooks
            or "cirron" in getattr(nxt, "__module__", "")
            or "cirron" in getattr(torch.autograd.backward, "__module__", "")
        )

    seen: list[bool] = []

    class Probe(L.Callback):  # type: ignore[misc]
        def on_train_batch_start(self, *args: Any) -> None:
            seen.append(hooked())

    ci.profile()
    assert hooked()
    _trainer(callbacks=[CirronCallback(), Probe()], max_epochs=1).fit(MODELS["lightning.pytorch"]())
    assert seen and not any(seen)
    assert hooked()


def test_a_running_session_is_reused_and_user_marks_nest_in_the_callbacks_spans() -> None:
    ci.profile()

    class Marking(MODELS["lightning.pytorch"]):  # type: ignore[misc,valid-type]
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            ci.mark("inside", batch_idx)
            return super().training_step(batch, batch_idx)

    _trainer(callbacks=[CirronCallback()], max_epochs=1).fit(Marking())
    t = _tree()
    batches = [b for b in t.named("batch") if "phase" not in b["attrs"]]
    assert [t.marks(b)["inside"] for b in batches] == [[0], [1], [2]]


def test_explicit_instance_records_there_and_leaves_the_default_alone(tmp_path: Path) -> None:
    other = ci.Cirron(output_dir=str(tmp_path / "other"))
    try:
        _trainer(callbacks=[CirronCallback(cirron=other)], max_epochs=1).fit(
            MODELS["lightning.pytorch"]()
        )
        assert other.profiling and not ci._get().profiling
    finally:
        other.shutdown()
    t = Tree(tmp_path / "other")
    assert t.shape(t.session()) == [("epoch", 0)]
    assert not (Path.cwd() / ".cirron").exists()


def test_disabled_profiling_records_nothing_and_training_runs() -> None:
    ci.profile(enabled=False)
    model = MODELS["lightning.pytorch"]()
    _trainer(callbacks=[CirronCallback()], max_epochs=1).fit(model)
    assert len(model.losses) == 3
    ci.shutdown()
    assert not list(Path.cwd().rglob("spool/*.json"))


# -- training variants -------------------------------------------------------------------------


def test_gradient_accumulation_steps_only_on_stepping_batches_and_unscales_the_loss() -> None:
    model = MODELS["lightning.pytorch"](train_n=16)
    _trainer(
        callbacks=[CirronCallback()], max_epochs=1, accumulate_grad_batches=2, limit_val_batches=0
    ).fit(model)
    t = _tree()
    (epoch,) = t.named("epoch")
    batches = t.kids(epoch)
    assert [b["index"] for b in batches] == [0, 1, 2, 3]
    assert [[k["name"] for k in t.kids(b)] for b in batches] == [
        ["data_load", "forward", "backward"],
        TRAIN_CHILDREN,
        ["data_load", "forward", "backward"],
        TRAIN_CHILDREN,
    ]
    losses = [t.marks(b)["loss"][0] for b in batches]
    assert losses == pytest.approx(model.losses, rel=1e-6)


def test_log_every_n_batches_and_batch_marks_off() -> None:
    _trainer(
        callbacks=[CirronCallback(log_every_n_batches=2)], max_epochs=2, limit_val_batches=0
    ).fit(MODELS["lightning.pytorch"]())
    t = _tree()
    marked = [bool(t.marks(b).get("loss")) for b in t.named("batch")]
    assert marked == [False, True, False, True, False, True]  # every 2nd batch, across epochs
    shutil.rmtree(Path.cwd() / ".cirron")

    _trainer(
        callbacks=[CirronCallback(batch_marks=False, epoch_marks=False)],
        max_epochs=1,
        limit_val_batches=0,
    ).fit(MODELS["lightning.pytorch"]())
    t = _tree()
    assert not any(t.marks(s) for s in t.spans.values() if s["name"] != "cirron.session")


def test_manual_optimisation_records_forward_backward_and_step() -> None:
    class Manual(MODELS["lightning.pytorch"]):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            opt = self.optimizers()
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            return loss

    _trainer(callbacks=[CirronCallback()], max_epochs=1, limit_val_batches=0).fit(Manual())
    t = _tree()
    assert [[k["name"] for k in t.kids(b)] for b in t.named("batch")] == [TRAIN_CHILDREN] * 3


def test_resume_from_checkpoint_continues_epoch_indices(tmp_path: Path) -> None:
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _trainer(
        callbacks=[CirronCallback(), ckpt],
        max_epochs=2,
        enable_checkpointing=True,
        limit_val_batches=0,
    ).fit(MODELS["lightning.pytorch"]())
    ckpt2 = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt2")
    _trainer(
        callbacks=[CirronCallback(), ckpt2],
        max_epochs=4,
        enable_checkpointing=True,
        limit_val_batches=0,
    ).fit(MODELS["lightning.pytorch"](), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    t = _tree()
    assert [e["index"] for e in t.kids(t.session())] == [0, 1, 2, 3]
    for epoch in t.kids(t.session()):
        assert [b["index"] for b in t.kids(epoch)] == [0, 1, 2]
        assert t.marks(epoch)["checkpoint"] == [3 * (epoch["index"] + 1)] * (
            2 if epoch["index"] < 2 else 1
        )


def test_exception_in_training_closes_spans_and_releases_the_levels() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(callbacks=[CirronCallback()], max_epochs=1).fit(
            MODELS["lightning.pytorch"](fail_at=1)
        )
    assert not any(ci._get()._rec.owners.values())
    t = _tree()
    (epoch,) = t.named("epoch")
    assert epoch["attrs"]["exception"] == "RuntimeError" and not t.data.is_open(epoch["id"])
    assert [b["index"] for b in t.kids(epoch)] == [0, 1]
    assert t.kids(epoch)[1]["attrs"]["exception"] == "RuntimeError"


# -- evaluation runs ---------------------------------------------------------------------------


def test_validate_test_and_predict_runs_have_phase_batches() -> None:
    model = MODELS["lightning.pytorch"]()
    trainer = _trainer(callbacks=[CirronCallback()])
    trainer.validate(model)
    trainer.test(model)
    trainer.predict(model)
    t = _tree()
    runs = t.kids(t.session())
    assert [r["name"] for r in runs] == ["validation", "test", "predict"]
    for run in runs:
        assert t.shape(run) == [("batch", 0), ("batch", 1)]
        assert {b["attrs"]["phase"] for b in t.kids(run)} == {run["name"]}
    assert set(t.marks(runs[0], "summary")) == {"val_loss"}
    assert set(t.marks(runs[1], "summary")) == {"test_loss"}
    assert not t.marks(runs[2])


def test_sanity_check_is_a_marked_validation_run_before_the_first_epoch() -> None:
    _trainer(callbacks=[CirronCallback()], max_epochs=1, num_sanity_val_steps=1).fit(
        MODELS["lightning.pytorch"]()
    )
    t = _tree()
    first, epoch = t.kids(t.session())
    assert first["name"] == "validation" and first["attrs"]["sanity_check"] is True
    assert t.shape(first) == [("batch", 0)]
    assert epoch["name"] == "epoch" and "sanity_check" not in t.kids(epoch)[-1]["attrs"]


# -- coexistence -------------------------------------------------------------------------------


def test_coexists_with_checkpointing_early_stopping_lr_monitor_loggers_and_progress_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    callbacks = [
        L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss"),
        L.callbacks.EarlyStopping(monitor="val_loss", patience=1),
        L.callbacks.LearningRateMonitor(),
        L.callbacks.TQDMProgressBar(),
        CirronCallback(),
    ]
    logger = L.loggers.CSVLogger(tmp_path / "logs")
    model = MODELS["lightning.pytorch"](const_val=True)
    trainer = _trainer(
        callbacks=callbacks,
        max_epochs=5,
        logger=logger,
        enable_progress_bar=True,
        enable_checkpointing=True,
        log_every_n_steps=1,
    )
    trainer.fit(model)
    assert trainer.current_epoch == 2  # stopped by EarlyStopping after epoch 1
    metrics = (Path(logger.log_dir) / "metrics.csv").read_text()
    assert "lr-SGD" in metrics and "val_loss" in metrics
    assert list((tmp_path / "ckpt").glob("*.ckpt"))
    t = _tree()
    epochs = t.kids(t.session())
    assert [(e["name"], e["index"]) for e in epochs] == [("epoch", 0), ("epoch", 1)]
    assert t.marks(epochs[0])["checkpoint"] == [3]
    assert "best_checkpoint" in t.marks(epochs[0], "summary")
    assert "early_stop" not in t.marks(epochs[0])
    stop = [m for m in t.data.marks_by_span[epochs[1]["id"]] if m["name"] == "early_stop"]
    assert len(stop) == 1 and stop[0]["value"] is True and stop[0]["kind"] == "summary"
    assert stop[0]["attrs"]["reason"] == "early_stopping"
    assert stop[0]["attrs"]["monitor"] == "val_loss" and stop[0]["attrs"]["wait_count"] == 1


def test_multiple_param_groups_each_get_a_learning_rate() -> None:
    class TwoGroups(MODELS["lightning.pytorch"]):  # type: ignore[misc,valid-type]
        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(
                [
                    {"params": [self.layer.weight], "lr": 0.1},
                    {"params": [self.layer.bias], "lr": 0.01},
                ]
            )

    _trainer(callbacks=[CirronCallback()], max_epochs=1, limit_val_batches=0).fit(TwoGroups())
    t = _tree()
    summary = t.marks(t.named("epoch")[0], "summary")
    assert summary["learning_rate/pg0"] == [0.1] and summary["learning_rate/pg1"] == [0.01]


# -- ci.wrap(LightningModule) ------------------------------------------------------------------


@pytest.mark.parametrize("ns", list(NAMESPACES))
def test_wrap_adds_the_callback_through_configure_callbacks(ns: str) -> None:
    lib = NAMESPACES[ns]
    model = MODELS[ns]()
    assert ci.wrap(model) is model and ci.wrap(model) is model
    extra = lib.callbacks.Timer()
    model.__dict__["configure_callbacks"].inner = lambda: extra
    cbs = model.configure_callbacks()
    assert (
        cbs[0] is extra and isinstance(cbs[1], lib.Callback) and isinstance(cbs[1], CirronCallback)
    )
    _trainer(lib, max_epochs=1).fit(model)
    t = _tree()
    assert t.shape(t.session()) == [("epoch", 0)]
    assert [b["index"] for b in t.kids(t.named("epoch")[0]) if b["name"] == "batch"] == [0, 1, 2]


@pytest.mark.parametrize("namespace", [None, "lightning.pytorch"])
def test_only_one_callback_records_when_wrap_and_the_trainer_both_add_one(
    namespace: str | None,
) -> None:
    model = ci.wrap(MODELS["lightning.pytorch"]())
    _trainer(
        callbacks=[CirronCallback(namespace=namespace), CirronCallback()],
        max_epochs=1,
        limit_val_batches=0,
    ).fit(model)
    t = _tree()
    assert t.shape(t.session()) == [("epoch", 0)]
    assert len(t.named("batch")) == 3
    assert all(len(t.marks(b)["loss"]) == 1 for b in t.named("batch"))


def test_wrap_returns_none_for_other_objects() -> None:
    assert cl.wrap(ci._get(), torch.nn.Linear(2, 2)) is None
    assert cl.wrap(ci._get(), object()) is None


class Picklable(MODELS["lightning.pytorch"]):  # type: ignore[misc,valid-type]
    pass


def test_wrapped_module_still_pickles() -> None:
    model = ci.wrap(Picklable())
    back = pickle.loads(pickle.dumps(model))
    assert isinstance(back.configure_callbacks()[-1], CirronCallback)


# -- snapshots ---------------------------------------------------------------------------------


def test_weight_and_gradient_statistics_at_every_epoch_end() -> None:
    _trainer(callbacks=[CirronCallback()], max_epochs=2, limit_val_batches=0).fit(
        MODELS["lightning.pytorch"]()
    )
    t = _tree()
    for epoch in t.named("epoch"):
        names = {s["tensor_name"] for s in t.data.snapshots.values() if s["span_id"] == epoch["id"]}
        assert {"layer.weight", "layer.bias", "layer.weight.grad", "layer.bias.grad"} <= names


def test_snapshots_false_watches_nothing() -> None:
    _trainer(callbacks=[CirronCallback(snapshots=False)], max_epochs=1, limit_val_batches=0).fit(
        MODELS["lightning.pytorch"]()
    )
    assert not ci._get()._watched
    assert not _tree().data.snapshots


# -- DDP ---------------------------------------------------------------------------------------

DDP_SCRIPT = """
import warnings
warnings.filterwarnings("ignore")
import torch, lightning.pytorch as L
from cirron.integrations.lightning import CirronCallback

class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, sync_dist=True)
        return loss
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)
    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g))
        return torch.utils.data.DataLoader(data, batch_size=4)

if __name__ == "__main__":
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=2, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[CirronCallback()])
    trainer.fit(Tiny())
"""


def test_ddp_two_ranks_record_their_own_files_with_one_run_id(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CIRRON_", "MASTER_", "PL_"))
        and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")
    }
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    run = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    sessions = _wait_for_sessions(tmp_path / ".cirron", 2, timeout=30)
    attrs = sorted((s["attrs"] for s in sessions), key=lambda a: a["rank"])
    assert [(a["rank"], a["world_size"]) for a in attrs] == [(0, 2), (1, 2)]
    assert attrs[0]["run_id"] == attrs[1]["run_id"]
    assert attrs[0]["pid"] != attrs[1]["pid"]
    t = Tree(tmp_path / ".cirron")
    for session in sessions:
        epochs = t.kids(t.spans[session["id"]])
        assert [(e["name"], e["index"]) for e in epochs] == [("epoch", 0), ("epoch", 1)]
        assert all(t.shape(e) == [("batch", 0), ("batch", 1)] for e in epochs)  # 16 / 2 / 4
        rank = session["attrs"]["rank"]
        assert {
            s["rank"]
            for i, s in t.spans.items()
            if t.data.session_of[i] == session["id"] and s["name"] != "cirron.session"
        } == {rank}


def _wait_for_sessions(root: Path, n: int, timeout: float) -> list[dict[str, Any]]:
    """Rank 1 may still be exiting when rank 0 returns: wait for both closed sessions."""
    deadline = time.monotonic() + timeout
    while True:
        data = load(load_batches(root)) if (root / "spool").exists() else TraceData()
        done = [
            s
            for s in data.spans.values()
            if s["name"] == "cirron.session" and s["attrs"].get("status") == "finished"
        ]
        if len(done) >= n or time.monotonic() > deadline:
            assert len(done) == n, json.dumps([s["attrs"] for s in done])[:2000]
            return done
        time.sleep(0.2)


@pytest.fixture(autouse=True)
def _no_cirron_warnings() -> Iterator[None]:
    """A fit must not trip cirron's internal-error path."""
    rec = ci._get()._rec
    before = rec.internal_errors
    with warnings.catch_warnings():
        yield
    assert rec.internal_errors == before, rec.last_internal_error
