"""samedge.lightning: a real Trainer.fit on CPU, automatic optimization (SGD) and manual
optimization with samedge.SAM (the closure pattern samedge.lightning documents), the rows logged
to a CSVLogger; that pattern stops at max_steps after that many SAM steps."""

from __future__ import annotations

import copy
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
    """SGD by automatic optimization, or SAM by manual optimization in the pattern that
    ``samedge.lightning``'s docstring documents (``two_step``: the davda54 form it warns against)."""

    def __init__(self, sam: bool, lr: float = 0.2, two_step: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        self.sam, self.lr, self.two_step = sam, lr, two_step
        self.automatic_optimization = not sam

    def forward(self, x):
        return self.net(x)

    def loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def training_step(self, batch, batch_idx):
        if not self.sam:
            return self.loss(batch)
        opt = self.optimizers()
        if self.two_step:  # bypasses LightningOptimizer.step: global_step stays 0
            loss = self.loss(batch)
            self.manual_backward(loss)
            opt.first_step(zero_grad=True)
            self.manual_backward(self.loss(batch))
            opt.second_step(zero_grad=True)
            return loss

        def closure():  # the loss and its gradient at w~, on the same batch
            loss = self.loss(batch)
            self.manual_backward(loss)
            return loss

        opt.zero_grad()
        loss = self.loss(batch)
        self.manual_backward(loss)  # the gradient at w
        opt.step(closure)  # one SAM step; Lightning counts it in global_step
        return loss

    def configure_optimizers(self):
        if self.sam:
            return SAM(self.parameters(), torch.optim.SGD, rho=0.05, lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def trainer(max_steps, max_epochs, **kw):
    return pl.Trainer(
        max_steps=max_steps,
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        **kw,
    )


@pytest.mark.parametrize("sam", [False, True])
def test_trainer_fit_logs_edge_rows(tmp_path, sam):
    """30 full-batch steps, measured every 5: six rows in metrics.csv with op_norm, edge and ratio,
    the ratio equal to op_norm/edge, the edge 2/lr for SGD and the SAM-edge from grad_norm for SAM."""
    x, y = synthetic()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    cb = EdgeMonitorCallback(nn.MSELoss(), (x, y), every=5)
    fit = trainer(30, 30, logger=CSVLogger(tmp_path), callbacks=[cb])
    fit.fit(Net(sam), loader)
    assert fit.global_step == 30
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


def test_documented_manual_sam_stops_at_max_steps_after_max_steps_sam_steps():
    """Trainer(max_steps=5) with the documented manual-optimization SAM pattern: it stops at
    global_step 5 (max_epochs=50 only bounds the test), after exactly 5 SAM steps: the weights equal
    5 SAM steps run by hand (first_step/second_step on a copy of the initial network)."""
    x, y = synthetic()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    module = Net(sam=True)
    ref = copy.deepcopy(module.net)
    init = {k: p.detach().clone() for k, p in ref.named_parameters()}
    fit = trainer(5, 50, logger=False)
    fit.fit(module, loader)
    assert fit.global_step == 5 and fit.current_epoch == 5  # one full batch per epoch
    opt = SAM(ref.parameters(), torch.optim.SGD, rho=0.05, lr=0.2)
    for _ in range(5):
        nn.functional.mse_loss(ref(x), y).backward()
        opt.first_step(zero_grad=True)
        nn.functional.mse_loss(ref(x), y).backward()
        opt.second_step(zero_grad=True)
    for (k, p), q in zip(module.net.named_parameters(), ref.parameters()):
        assert not torch.equal(p, init[k])  # trained
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_two_step_sam_pattern_never_advances_global_step():
    """Why the docstring warns against first_step/second_step under Lightning: they bypass
    LightningOptimizer.step, so global_step stays 0 and only max_epochs stops the run."""
    x, y = synthetic()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    fit = trainer(5, 8, logger=False)
    fit.fit(Net(sam=True, two_step=True), loader)
    assert fit.global_step == 0 and fit.current_epoch == 8


def test_import_samedge_does_not_import_lightning():
    """lightning is an optional extra: importing samedge (and its monitor) leaves it unloaded."""
    code = "import sys, samedge, samedge.monitor, samedge.loop; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
