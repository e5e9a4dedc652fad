"""The edge of stability in a user's plain PyTorch loop on real MNIST, measured by EdgeMonitor:
full-batch GD (torch.optim.SGD) settles at 2/eta, SAM (samedge.SAM, davda54 usage) at its
SAM-edge. The cpu preset's MNIST setting: 1000 images, MLP 3x256, eta = 0.7, 600 steps,
measured every 20 steps. About a minute (GD) and two (SAM) on one core: marked slow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from samedge import SAM, EdgeMonitor
from samedge.record import second_half

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(
        not os.environ.get("SAMEDGE_DATA_DIR") or not (Path(os.environ["SAMEDGE_DATA_DIR"]) / "MNIST" / "raw").is_dir(),
        reason="set SAMEDGE_DATA_DIR to a directory holding MNIST/raw",
    ),
]
STEPS, EVERY, ETA = 600, 20, 0.7


def train(rho: float):
    """The plain loop a user writes, with the monitor; returns its frame."""
    from samedge.data import load_mnist

    train_split, _ = load_mnist(1000, 10)
    x, y = train_split.inputs, train_split.targets
    torch.manual_seed(0)
    # The user's own module (not samedge.models), Glorot-normal weights and zero biases as in the paper.
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
    if rho == 0:
        optimizer = torch.optim.SGD(model.parameters(), lr=ETA)
    else:
        optimizer = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=ETA)
    monitor = EdgeMonitor(model, nn.functional.mse_loss, (x, y), optimizer, every=EVERY)
    for _ in range(STEPS):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if rho == 0:
            optimizer.step()
        else:
            optimizer.first_step(zero_grad=True)
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.second_step()
        optimizer.zero_grad()
        monitor.step()
    return monitor.to_frame()


def test_gd_settles_at_two_over_eta():
    """Median ||H||_op / (2/eta) over the second half lies in [0.95, 1.08]."""
    df = train(0.0)
    assert (df["edge"] == 2 / ETA).all()
    ratio = float(second_half(df, STEPS)["ratio"].median())
    assert 0.95 <= ratio <= 1.08, ratio
    assert float(df["ratio"].iloc[0]) < 0.9  # it started below the edge: progressive sharpening, then EoS


def test_sam_settles_at_the_sam_edge():
    """samedge.SAM (rho = 0.05): median ||H||_op / SAM-edge over the second half in [0.9, 1.15],
    while ||H||_op stays far below 2/eta (so the comparison with GD's edge would fail)."""
    df = train(0.05)
    half = second_half(df, STEPS)
    ratio = float(half["ratio"].median())
    assert 0.9 <= ratio <= 1.15, ratio
    assert float(half["op_norm"].median()) < 0.6 * 2 / ETA
