"""EdgeMonitor and the train/eval mode: one warning at construction when the model's Hessian
depends on the mode (BatchNorm with running statistics, dropout with p > 0), naming the mode it
measures in and how to choose the other; none for a model without such modules."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from samedge import EdgeMonitor

pytestmark = pytest.mark.usefixtures("single_thread")
MODE = {True: "train mode", False: "eval mode"}


def data(n=12, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=gen, dtype=torch.float64), torch.randn(n, 3, generator=gen, dtype=torch.float64)


def net(*middle):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), *middle, nn.Linear(6, 3)).double()


def build(model, **kw):
    return EdgeMonitor(model, nn.MSELoss(), data(), torch.optim.SGD(model.parameters(), lr=0.1), every=1, **kw)


@pytest.mark.parametrize(
    "layer, name", [(nn.BatchNorm1d(6), "BatchNorm1d"), (nn.Dropout(0.3), "Dropout"), (nn.AlphaDropout(0.2), "Alpha")]
)
@pytest.mark.parametrize("train_mode", [None, False, True])
def test_batchnorm_or_dropout_warns_once_naming_the_mode(layer, name, train_mode):
    """One UserWarning, at construction, naming the module kind, the mode measured in (the default
    when train_mode is not given) and the argument that picks the other; measuring warns no more."""
    model = net(layer)
    kw = {} if train_mode is None else {"train_mode": train_mode}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = build(model, **kw)
        mon.measure()
        mon.step()
    msgs = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1, msgs
    measured = mon.train_mode
    assert train_mode is None or measured is train_mode
    assert name in msgs[0]
    assert f"measured in {MODE[measured]}" in msgs[0]
    assert f"pass train_mode={not measured} to measure in {MODE[not measured]}" in msgs[0]
    assert caught[0].filename == __file__  # points at the caller's line


def test_default_is_train_mode_and_the_warning_says_so():
    """Train mode by default: its ||H|| is the one at 2/eta (benchmarks/BN_MODE.md)."""
    with pytest.warns(UserWarning, match="measured in train mode") as caught:
        mon = build(net(nn.BatchNorm1d(6)))
    assert mon.train_mode is True and len(caught) == 1


@pytest.mark.parametrize(
    "middle",
    [(), (nn.LayerNorm(6),), (nn.Dropout(0.0),), (nn.BatchNorm1d(6, track_running_stats=False),)],
    ids=["plain", "layernorm", "dropout-p0", "batchnorm-no-running-stats"],
)
def test_no_warning_when_the_mode_changes_nothing(middle):
    """A plain MLP, LayerNorm, Dropout(p=0), BatchNorm without running statistics (batch statistics
    in both modes): the Hessian is the same in either mode, so no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(net(*middle)).measure()
