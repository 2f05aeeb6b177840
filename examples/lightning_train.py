"""Profile a PyTorch Lightning run with one callback, then read the trace back.

    python examples/lightning_train.py              # lightning.pytorch
    python examples/lightning_train.py --pl         # the pytorch_lightning package instead
    python examples/lightning_train.py --ddp        # two CPU ranks (strategy="ddp")

Writes ./.cirron/ (look at it with `cirron traces view`). Needs `pip install 'cirron-sdk[lightning]'`.
"""

from __future__ import annotations

import sys

import torch

if "--pl" in sys.argv:
    import pytorch_lightning as L
else:
    import lightning.pytorch as L

import cirron as ci
from cirron.integrations.lightning import CirronCallback


class Regressor(L.LightningModule):
    """A 2-layer MLP on random data: small enough to train in a second on a laptop CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def loader(n: int, seed: int) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = x[:, :1] * 2 + 0.1 * torch.randn(n, 1, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)


def main() -> None:
    ddp = "--ddp" in sys.argv
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=2 if ddp else 1,
        strategy="ddp" if ddp else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        # No ci.profile() needed: the callback starts a session with the resolved settings.
        callbacks=[CirronCallback(), L.callbacks.EarlyStopping(monitor="val_loss", patience=2)],
    )
    trainer.fit(Regressor(), loader(512, 0), loader(128, 1))
    if trainer.global_rank == 0:
        ci.flush()
        print(ci.trace(format="tree"))


if __name__ == "__main__":
    main()
