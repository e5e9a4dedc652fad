"""EdgeMonitor as a user meets it: other batch formats, a user's edge, divergence kept as data,
the global random-number state left alone, save refusing to overwrite, load round-tripping."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from samedge import EdgeMonitor, MonitorRecord

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")


def _model(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Dropout(dropout), nn.Linear(5, 2)).double()


def _data(n: int = 10):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 4, generator=g, dtype=F64), torch.randn(n, 2, generator=g, dtype=F64)


def test_dict_batches_through_loss_of_model_and_batch_equal_the_pair_form():
    x, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pair = EdgeMonitor(model, nn.MSELoss(), (x, y), opt, tol=1e-10).measure()

    def loss(m, batch):  # a dict batch with an extra entry the loss ignores
        return nn.functional.mse_loss(m(batch["x"]), batch["y"])

    as_dict = EdgeMonitor(model, loss, {"x": x, "y": y, "id": torch.arange(10)}, opt, batch_loss=True, tol=1e-10)
    row = as_dict.measure()
    assert row["op_norm"] == pytest.approx(pair["op_norm"], rel=1e-9)
    assert row["train_loss"] == pytest.approx(pair["train_loss"], rel=1e-12)
    halves = [{"x": x[:4], "y": y[:4]}, {"x": x[4:], "y": y[4:]}]  # a list of batches: size-weighted
    both = EdgeMonitor(model, loss, halves, opt, batch_loss=True, tol=1e-10).measure()
    assert both["op_norm"] == pytest.approx(pair["op_norm"], rel=1e-9)


def test_data_format_is_checked_when_the_monitor_is_built():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    with pytest.raises(ValueError, match="batch_loss=True"):
        EdgeMonitor(model, nn.MSELoss(), (x, y, torch.zeros(10)), opt)
    with pytest.raises(ValueError, match="batch_loss=True"):
        EdgeMonitor(model, nn.MSELoss(), {"x": x, "y": y}, opt)


def test_a_users_edge_replaces_the_missing_one():
    x, y = _data()
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no edge" warning when the user gives one
        mon = EdgeMonitor(model, nn.MSELoss(), (x, y), opt, edge=7.0)
        row = mon.measure()
    assert row["edge"] == 7.0 and row["ratio"] == pytest.approx(row["op_norm"] / 7.0)
    by_grad = EdgeMonitor(model, nn.MSELoss(), (x, y), opt, edge=lambda gn: 100 * gn).measure()
    assert by_grad["edge"] == pytest.approx(100 * by_grad["grad_norm"])
    rec = mon.record()
    assert rec.rule == "user" and "your edge" in rec.label
    with pytest.raises(ValueError, match="edge must be"):
        EdgeMonitor(model, nn.MSELoss(), (x, y), opt, edge=-1.0)


def test_divergence_is_a_warning_and_a_saved_record(tmp_path):
    x, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = EdgeMonitor(model, nn.MSELoss(), (x, y), opt, every=1)
    mon.step()
    with torch.no_grad():
        model[0].weight.fill_(float("inf"))
    with pytest.warns(RuntimeWarning, match="not finite at step 2"):
        row = mon.step()
    assert math.isnan(row["op_norm"]) and mon.diverged_at == 2
    mon.save(tmp_path / "run")
    back = MonitorRecord.load(tmp_path / "run")
    assert back.diverged and back.diverged_at == 2 and len(back.rows) == 2


def test_measuring_in_train_mode_with_dropout_leaves_the_global_rng_alone():
    x, y = _data()
    model = _model(dropout=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = EdgeMonitor(model, nn.MSELoss(), (x, y), opt, train_mode=True)
    before = torch.get_rng_state()
    mon.measure()
    assert torch.equal(torch.get_rng_state(), before)


def test_save_refuses_a_directory_holding_a_record_and_load_round_trips(tmp_path):
    x, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mon = EdgeMonitor(model, nn.MSELoss(), (x, y), opt, every=2)
    for _ in range(4):
        mon.step()
    mon.save(tmp_path / "a")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        mon.save(tmp_path / "a")
    mon.save(tmp_path / "a", overwrite=True)
    back = MonitorRecord.load(tmp_path / "a")
    assert back.rows == mon.rows and back.rule == "momentum" and back.steps == 4
    (tmp_path / "a" / "record.csv").write_text("step,train_loss\n1\n")
    with pytest.raises(ValueError, match="record.csv is damaged"):
        MonitorRecord.load(tmp_path / "a")
