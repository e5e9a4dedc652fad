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


def _dense_hessian(model, x, y):
    from torch.func import functional_call, hessian

    names = [n for n, _ in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]

    def f(v):
        params, i = {}, 0
        for n, sh in zip(names, shapes):
            k = sh.numel()
            params[n] = v[i : i + k].reshape(sh)
            i += k
        return nn.functional.mse_loss(functional_call(model, params, (x,)), y)

    return hessian(f)(flat)


@pytest.mark.parametrize(
    "make, edge_of",
    [
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True), lambda gn: 2 * 1.9 / (2.8 * 0.1)),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.5), lambda gn: 2 * 1.9 / (0.5 * 0.1)),
        (lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.5), lambda gn: 2 / 0.1 - 0.5),
        (
            lambda p: __import__("samedge").SAM(p, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, weight_decay=5e-4),
            # the larger root of (rho/gn) lam^2 + lam = 2 (1 + beta)/eta - wd, typed here
            lambda gn: (-1 + math.sqrt(1 + 4 * (0.05 / gn) * (38 - 5e-4))) / (2 * 0.05 / gn),
        ),
    ],
)
def test_edges_of_sgd_variants_and_sam_over_them(make, edge_of):
    x, y = _data()
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known rule: no "no edge" warning
        mon = EdgeMonitor(model, nn.MSELoss(), (x, y), make(model.parameters()))
        row = mon.measure()
    assert row["edge"] == pytest.approx(edge_of(row["grad_norm"]), rel=1e-10)
    assert row["gd_edge"] is not None and row["gd_edge"] >= row["edge"] - 1e-9


@pytest.mark.parametrize("kind", ["Adam", "AdamW", "RMSprop"])
def test_adaptive_optimizers_measure_the_preconditioned_sharpness(kind):
    """lambda_max(P^-1 (H + wd I)) against a dense float64 eigen-solve, with P read from the state."""
    x, y = _data()
    model = _model()
    wd = 0.01
    opt = getattr(torch.optim, kind)(model.parameters(), lr=1e-3, weight_decay=wd)
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()
    mon = EdgeMonitor(model, nn.MSELoss(), (x, y), opt, tol=1e-10, max_iter=200)
    row = mon.measure()
    st = [opt.state[p] for p in model.parameters()]
    g = opt.param_groups[0]
    if kind == "RMSprop":
        P = torch.cat([s["square_avg"].sqrt().reshape(-1) + g["eps"] for s in st])
    else:
        P = torch.cat(
            [(s["exp_avg_sq"] / (1 - g["betas"][1] ** float(s["step"]))).sqrt().reshape(-1) + g["eps"] for s in st]
        )
    H = _dense_hessian(model, x, y)
    shift = 0.0 if kind == "AdamW" else wd
    S = (H + shift * torch.eye(len(P), dtype=F64)) / P.sqrt()[:, None] / P.sqrt()[None, :]
    assert row["op_norm"] == pytest.approx(float(torch.linalg.eigvalsh(S).abs().max()), rel=1e-6)
    expected = {"Adam": 2 * 1.9 / (0.1 * 1e-3), "AdamW": 1.9 * (2 - 1e-3 * wd) / (0.1 * 1e-3), "RMSprop": 2 / 1e-3}
    assert row["edge"] == pytest.approx(expected[kind], rel=1e-10)
    assert mon.record().meta["sharpness"] == "lambda_max(P^-1 H)"
