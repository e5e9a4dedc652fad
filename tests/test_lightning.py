"""samedge.lightning: a real Trainer.fit on CPU, automatic optimization (SGD) and manual
optimization with samedge.SAM (davda54-style), the rows logged to a CSVLogger."""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from samedge import SAM  # noqa: E402
from samedge.lightning import EdgeMonitorCallback  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def synthetic(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    y = torch.nn.functional.one_hot(torch.randint(0, 3, (n,), generator=gen), 3).float()
    return x, y


class Net(pl.LightningModule):
    def __init__(self, sam: bool, lr: float = 0.2):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        self.sam, self.lr = sam, lr
        self.automatic_optimization = not sam

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if not self.sam:
            return nn.functional.mse_loss(self(x), y)
        optimizer = self.optimizers()
        # first forward-backward pass
        loss_1 = nn.functional.mse_loss(self(x), y)
        self.manual_backward(loss_1)
        optimizer.first_step(zero_grad=True)
        # second forward-backward pass
        loss_2 = nn.functional.mse_loss(self(x), y)
        self.manual_backward(loss_2)
        optimizer.second_step(zero_grad=True)
        return loss_1

    def configure_optimizers(self):
        if self.sam:
            return SAM(self.parameters(), torch.optim.SGD, rho=0.05, lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr)


@pytest.mark.parametrize("sam", [False, True])
def test_trainer_fit_logs_edge_rows(tmp_path, sam):
    """30 full-batch steps, measured every 5: six rows in metrics.csv with op_norm, edge and ratio,
    the ratio equal to op_norm/edge, the edge 2/lr for SGD and the SAM-edge from grad_norm for SAM."""
    x, y = synthetic()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    cb = EdgeMonitorCallback(nn.MSELoss(), (x, y), every=5)
    trainer = pl.Trainer(
        max_steps=30 if not sam else -1,
        max_epochs=30,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(tmp_path),
        callbacks=[cb],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(Net(sam), loader)
    metrics = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    rows = metrics.dropna(subset=["monitor/op_norm"])
    assert rows["step"].tolist() == [5, 10, 15, 20, 25, 30]
    assert (rows["monitor/op_norm"] > 0).all()
    assert rows["monitor/ratio"].tolist() == pytest.approx(
        (rows["monitor/op_norm"] / rows["monitor/edge"]).tolist(), rel=1e-6
    )
    if sam:
        gn = rows["monitor/grad_norm"]
        want = (gn / (2 * 0.05)) * ((1 + 8 * 0.05 / (0.2 * gn)).apply(math.sqrt) - 1)
        assert rows["monitor/edge"].tolist() == pytest.approx(want.tolist(), rel=1e-6)
    else:
        assert rows["monitor/edge"].tolist() == pytest.approx([2 / 0.2] * 6)
    assert len(cb.rows) == 6 and cb.rows[-1]["step"] == 30
    # The weights trained: the loss measured at step 30 is below the one at step 5.
    assert cb.rows[-1]["train_loss"] < cb.rows[0]["train_loss"]


def test_import_samedge_does_not_import_lightning():
    """lightning is an optional extra: importing samedge (and its monitor) leaves it unloaded."""
    code = "import sys, samedge, samedge.monitor, samedge.loop; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
