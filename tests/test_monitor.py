"""EdgeMonitor against independent references: dense float64 Hessians, hand-computed gradients,
closed-form edges, real heavy-ball steps on a quadratic, and loop.run's rows on one problem."""

from __future__ import annotations

import copy
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import reference_hessian
from samedge import SAM, EdgeMonitor
from samedge.analysis import MEDIAN_RATIO
from samedge.edge import momentum_edge

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")
HAS_MNIST = (
    bool(os.environ.get("SAMEDGE_DATA_DIR"))
    and (Path(os.environ.get("SAMEDGE_DATA_DIR", "")) / "MNIST" / "raw").is_dir()
)
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason="set SAMEDGE_DATA_DIR to a directory holding MNIST/raw")


def tiny(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 6), nn.Tanh()] + ([nn.BatchNorm1d(6)] if bn else []) + [nn.Linear(6, 3)]
    return nn.Sequential(*layers).double()


def data(n=12, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=gen, dtype=F64), torch.randn(n, 3, generator=gen, dtype=F64)


def dense(model, loss, x, y):
    """(loss, grad, Hessian) of loss(model(x), y) in the parameters, by plain autograd on a copy."""
    m = copy.deepcopy(model)
    names = [n for n, _ in m.named_parameters()]
    shapes = {n: p.shape for n, p in m.named_parameters()}
    flat = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def f(v):
        params, i = {}, 0
        for n in names:
            k = math.prod(shapes[n])
            params[n] = v[i : i + k].reshape(shapes[n])
            i += k
        return loss(torch.func.functional_call(m, params, (x,)), y)

    v = flat.clone().requires_grad_(True)
    val = f(v)
    (g,) = torch.autograd.grad(val, v)
    return (
        float(val.detach()),
        g,
        reference_hessian(
            lambda p: f(torch.cat([p[n].reshape(-1) for n in names])), {n: p.detach() for n, p in m.named_parameters()}
        ),
    )


def test_full_batch_numbers_match_dense_hessian():
    """loss, ||g||, ||H||_op, lambda_max, lambda_min (Ritz bound) and the GD edge 2/lr on one batch."""
    model, (x, y) = tiny(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    mon = EdgeMonitor(model, nn.MSELoss(), (x, y), opt, every=1, tol=1e-10, max_iter=200)
    row = mon.measure()
    loss, g, H = dense(model, nn.MSELoss(), x, y)
    ev = torch.linalg.eigvalsh(H)
    assert row["train_loss"] == pytest.approx(loss, rel=1e-12)
    assert row["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-10)
    assert row["op_norm"] == pytest.approx(float(ev.abs().max()), rel=1e-8)
    assert row["lambda_max"] == pytest.approx(float(ev.max()), rel=1e-8)
    assert row["lambda_min"] >= float(ev.min()) - 1e-8
    assert row["edge"] == row["gd_edge"] == pytest.approx(2 / 0.2)
    assert row["ratio"] == pytest.approx(float(ev.abs().max()) * 0.2 / 2, rel=1e-8)
    assert row["converged"] and row["step"] == 0 and row["hvps"] > 0


def test_iterable_of_batches_is_the_size_weighted_full_data_hessian():
    """Unequal batches (5, 3, 4) give the loss, gradient and Hessian of the mean over all 12 examples."""
    model, (x, y) = tiny(), data()
    batches = [(x[:5], y[:5]), (x[5:8], y[5:8]), (x[8:], y[8:])]
    mon = EdgeMonitor(
        model, nn.MSELoss(), batches, torch.optim.SGD(model.parameters(), lr=0.1), tol=1e-10, max_iter=200
    )
    row = mon.measure()
    loss, g, H = dense(model, nn.MSELoss(), x, y)
    assert row["train_loss"] == pytest.approx(loss, rel=1e-12)
    assert row["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-10)
    assert row["op_norm"] == pytest.approx(float(torch.linalg.eigvalsh(H).abs().max()), rel=1e-8)


def test_step_returns_none_between_measurements():
    """every=3: step() returns None twice, then the row (step 3), and so on; rows and frame follow."""
    model, (x, y) = tiny(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = EdgeMonitor(model, nn.MSELoss(), (x, y), opt, every=3)
    out = []
    for _ in range(7):
        opt.zero_grad()
        nn.MSELoss()(model(x), y).backward()
        opt.step()
        out.append(mon.step())
    assert [r is None for r in out] == [True, True, False, True, True, False, True]
    assert [r["step"] for r in mon.rows] == [3, 6] and out[2] is mon.rows[0]
    assert set(["step", "train_loss", "grad_norm", "op_norm", "edge", "ratio", "hvps", "converged"]) <= set(out[2])
    assert mon.to_frame()["step"].tolist() == [3, 6]


def test_leaves_parameters_grads_modes_and_buffers_as_found():
    """Parameters bitwise unchanged, .grad None stays None and set grads unchanged, each module's
    train/eval flag restored, BatchNorm running statistics untouched (eval and train mode)."""
    model, (x, y) = tiny(bn=True), data()
    model.train()
    model[2].eval()  # a mixed state must come back mixed
    nn.MSELoss()(model(x), y).backward()
    model[0].weight.grad = None  # one parameter without a gradient
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    grads = {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    flags = [m.training for m in model.modules()]
    for train_mode in (False, True):
        EdgeMonitor(
            model, nn.MSELoss(), (x, y), torch.optim.SGD(model.parameters(), lr=0.1), train_mode=train_mode
        ).measure()
        assert all(torch.equal(p, params[k]) for k, p in model.named_parameters())
        for k, p in model.named_parameters():
            assert (p.grad is None) if grads[k] is None else torch.equal(p.grad, grads[k])
        assert all(torch.equal(b, buffers[k]) for k, b in model.named_buffers())
        assert [m.training for m in model.modules()] == flags


def test_batchnorm_measured_in_train_mode_by_default():
    """With BatchNorm the default measures the train-mode loss (batch statistics, the loss GD
    descends; benchmarks/BN_MODE.md): its dense Hessian, not the eval-mode one; train_mode=False
    gives the eval-mode one."""
    model, (x, y) = tiny(bn=True), data()
    with torch.no_grad():
        model[2].running_mean.uniform_(-0.5, 0.5)
        model[2].running_var.uniform_(0.5, 2.0)
    model.eval()  # the model's own mode does not decide
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="measured in train mode"):
        row = EdgeMonitor(model, nn.MSELoss(), (x, y), opt, tol=1e-10, max_iter=200).measure()
    with pytest.warns(UserWarning, match="measured in eval mode"):
        row_eval = EdgeMonitor(model, nn.MSELoss(), (x, y), opt, tol=1e-10, max_iter=200, train_mode=False).measure()
    _, _, Htrain = dense(copy.deepcopy(model).train(), nn.MSELoss(), x, y)
    _, _, Heval = dense(copy.deepcopy(model).eval(), nn.MSELoss(), x, y)
    train, evals = (float(torch.linalg.eigvalsh(H).abs().max()) for H in (Htrain, Heval))
    assert row["op_norm"] == pytest.approx(train, rel=1e-8)
    assert row_eval["op_norm"] == pytest.approx(evals, rel=1e-8)
    assert abs(train - evals) > 1e-3 * train  # the two modes differ here


def _sgd(model, **kw):
    return torch.optim.SGD(model.parameters(), **kw)


def test_edges_read_from_the_optimizer():
    """2/lr for SGD, 2(1+beta)/lr for heavy ball, the SAM-edge from ||g|| at the measured point for
    SAM, the rho-only edge for unnormalized SAM (closed forms typed here); lr followed through a schedule."""
    model, (x, y) = tiny(), data()
    mon = lambda opt: EdgeMonitor(model, nn.MSELoss(), (x, y), opt)  # noqa: E731
    assert mon(_sgd(model, lr=0.25)).measure()["edge"] == pytest.approx(8.0)
    assert mon(_sgd(model, lr=0.25, momentum=0.9)).measure()["edge"] == pytest.approx(2 * 1.9 / 0.25)
    row = mon(SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.25)).measure()
    gn = row["grad_norm"]
    assert row["edge"] == pytest.approx((gn / (2 * 0.05)) * (math.sqrt(1 + 8 * 0.05 / (0.25 * gn)) - 1), rel=1e-10)
    assert row["gd_edge"] == pytest.approx(8.0) and 0 <= row["align_sam_grad"] <= 1
    row = mon(SAM(model.parameters(), torch.optim.SGD, rho=0.05, normalize=False, lr=0.25)).measure()
    assert row["edge"] == pytest.approx((math.sqrt(1 + 8 * 0.05 / 0.25) - 1) / (2 * 0.05), rel=1e-10)
    opt = _sgd(model, lr=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    m = mon(opt)
    opt.step()
    sched.step()
    assert m.measure()["edge"] == pytest.approx(2 / 0.25)


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda m: torch.optim.Adagrad(m.parameters(), lr=1e-3), "Adagrad"),
        (lambda m: torch.optim.Adam(m.parameters(), lr=1e-3, amsgrad=True), "amsgrad"),
        (lambda m: SAM(m.parameters(), torch.optim.Adam, rho=0.05, lr=0.1), "Adam"),
        (lambda m: SAM(m.parameters(), torch.optim.SGD, rho=0.05, adaptive=True, lr=0.1), "adaptive"),
        (
            lambda m: torch.optim.SGD(
                [{"params": [m[0].weight], "lr": 0.1}, {"params": [m[0].bias, m[2].weight, m[2].bias], "lr": 0.2}]
            ),
            "lr",
        ),
    ],
)
def test_unknown_update_rules_warn_and_record_no_edge(make, why):
    """No formula covers these: a warning naming the reason, and edge = ratio = None (never a number)."""
    model, (x, y) = tiny(), data()
    with pytest.warns(UserWarning, match=why):
        mon = EdgeMonitor(model, nn.MSELoss(), (x, y), make(model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not at every measurement
        row = mon.measure()
    assert row["edge"] is None and row["ratio"] is None and row["op_norm"] > 0


def test_momentum_edge_on_a_quadratic_with_real_heavy_ball_steps():
    """torch.optim.SGD(momentum=beta) on L = 0.5 w^T A w: the iterates grow iff lambda_max(A) >
    2(1+beta)/lr, and the monitor reports ||A|| and that edge."""
    lr, beta = 0.1, 0.9
    edge = 2 * (1 + beta) / lr
    assert momentum_edge(lr, beta) == pytest.approx(edge)
    for factor, grows in ((0.97, False), (1.03, True)):
        lam = torch.tensor([factor * edge, 0.3 * edge, 1.0], dtype=F64)
        model = nn.Linear(3, 1, bias=False).double()
        with torch.no_grad():
            model.weight.fill_(1.0)
        x = torch.diag(lam.sqrt())  # model(x)_i = sqrt(lam_i) w_i
        loss = lambda out, tgt: 0.5 * (out**2).sum()  # noqa: E731  # = 0.5 w^T diag(lam) w
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=beta)
        mon = EdgeMonitor(model, loss, (x, torch.zeros(3, 1, dtype=F64)), opt, every=100, tol=1e-10)
        start = model.weight.detach().abs().max().item()
        for _ in range(300):  # growth ~1.35^t above the edge, decay ~0.95^t below
            opt.zero_grad()
            loss(model(x), None).backward()
            opt.step()
            mon.step()
        end = model.weight.detach()[0, 0].abs().item()
        assert (end > 1e3 * start) == grows and (end < 1e-3 * start) == (not grows)
        row = mon.rows[0]
        assert row["op_norm"] == pytest.approx(float(lam.max()), rel=1e-8)
        assert row["edge"] == pytest.approx(edge) and row["ratio"] == pytest.approx(factor, rel=1e-8)


def test_save_is_a_monitor_record_that_plots_and_tables_read(tmp_path):
    """save() writes a MonitorRecord (monitor.json, record.csv in the runs' column format);
    MonitorRecord.load, ratio_table and the plots use it."""
    from samedge import MonitorRecord, plots
    from samedge.analysis import ratio_table
    from samedge.columns import COLUMNS

    model, (x, y) = tiny(), data()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    mon = EdgeMonitor(model, nn.MSELoss(), (x, y), opt, every=2, eval_data=(x[:4], y[:4]))
    mon.measure()
    for _ in range(6):
        nn.MSELoss()(model(x), y).backward()
        opt.first_step(zero_grad=True)
        nn.MSELoss()(model(x), y).backward()
        opt.second_step(zero_grad=True)
        mon.step()
    mon.save(tmp_path / "mine")
    assert {p.name for p in (tmp_path / "mine").iterdir()} == {"monitor.json", "record.csv"}
    rec = MonitorRecord.load(tmp_path / "mine")
    df = rec.frame
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS and "eval_ratio" in df
    assert df["step"].tolist() == [0, 2, 4, 6]
    assert df["train_loss"].tolist() == pytest.approx([r["train_loss"] for r in mon.rows])
    assert df["ratio"].tolist() == pytest.approx([r["ratio"] for r in mon.rows])
    assert rec.rule == "sam" and rec.steps == 6 and rec.eta == 0.1 and rec.rho == 0.05 and rec.seed == 0
    assert rec.label == "SAM rho=0.05" and rec.diverged_at is None
    assert rec.median_ratio() == pytest.approx(float(df[df["step"] >= 3]["ratio"].median()))
    assert mon.record().rows == mon.rows and mon.record("mine").label == "mine"
    t = ratio_table([rec])
    assert t["run"].iloc[0] == "SAM rho=0.05"
    assert t[MEDIAN_RATIO].iloc[0] == pytest.approx(float(df[df["step"] >= 3]["ratio"].median()))
    for fig in (plots.plot_sharpness(rec), plots.plot_edge_ratio(rec), plots.plot_alignment(rec), plots.plot_loss(rec)):
        assert fig.axes
    # A directory that holds a record is not overwritten by accident.
    with pytest.raises(FileExistsError, match="overwrite=True"):
        mon.save(tmp_path / "mine")
    mon.save(tmp_path / "mine", label="again", overwrite=True)
    assert MonitorRecord.load(tmp_path / "mine").label == "again"


def test_monitor_record_is_not_a_run_record(tmp_path):
    """A user's loop is not a rerunnable run: there is no task 'custom', and the record of a
    monitor is no RunRecord (it loads as a MonitorRecord only)."""
    from samedge.record import RunRecord
    from samedge.tasks import TASKS

    assert "custom" not in TASKS
    model, (x, y) = tiny(), data()
    mon = EdgeMonitor(model, nn.MSELoss(), (x, y), _sgd(model, lr=0.1))
    mon.measure()
    mon.save(tmp_path / "mine")
    with pytest.raises(Exception, match="config.json"):
        RunRecord.load(tmp_path / "mine")


def test_bad_arguments_named():
    """every, the optimizer and eval_data are checked with messages naming them."""
    model, (x, y) = tiny(), data()
    opt = _sgd(model, lr=0.1)
    with pytest.raises(ValueError, match="every must be a positive integer"):
        EdgeMonitor(model, nn.MSELoss(), (x, y), opt, every=0)
    with pytest.raises(TypeError, match="optimizer must be"):
        EdgeMonitor(model, nn.MSELoss(), (x, y), "sgd")
    with pytest.raises(ValueError, match="eval_data"):
        EdgeMonitor(model, nn.MSELoss(), (x, y), opt, eval_data=[x])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    """On CUDA (device from the parameters, data moved there) the numbers equal the CPU ones."""
    model, (x, y) = tiny(), data()
    cpu = EdgeMonitor(model, nn.MSELoss(), (x, y), _sgd(model, lr=0.1), tol=1e-10, max_iter=200).measure()
    gpu_model = copy.deepcopy(model).cuda()
    gpu = EdgeMonitor(gpu_model, nn.MSELoss(), (x, y), _sgd(gpu_model, lr=0.1), tol=1e-10, max_iter=200).measure()
    for k in ("train_loss", "grad_norm", "op_norm", "edge", "ratio"):
        assert gpu[k] == pytest.approx(cpu[k], rel=1e-8)


def test_loop_has_no_measurement_code_of_its_own():
    """loop.run measures through samedge.measure: no Lanczos, operator, norm or ratio in loop.py."""
    import samedge.loop as loop

    src = Path(loop.__file__).read_text()
    for name in ("sharpness(", "HessianOperator", "alignment(", "lanczos(", "/ edge", "norm(", "grad_and_value"):
        assert name not in src, name


@needs_mnist
@pytest.mark.parametrize("rho, normalize", [(0.0, True), (0.05, True), (0.05, False)])
def test_loop_rows_equal_a_plain_loop_with_the_monitor(rho, normalize):
    """loop.run's rows equal EdgeMonitor rows in a plain PyTorch loop (torch.optim.SGD or
    samedge.SAM, davda54-style) on the same tiny MNIST problem, to float32 round-off."""
    from samedge.config import RunConfig
    from samedge.loop import run
    from samedge.losses import squared_loss
    from samedge.tasks import get_task

    cfg = RunConfig(
        task="mnist",
        eta=0.3,
        rho=rho,
        normalize=normalize,
        steps=12,
        measure_every=4,
        options=dict(n_train=128, n_test=16, width=16, depth=2),
    )
    rec = run(cfg, progress=False)
    torch.manual_seed(cfg.seed)  # the loop seeds before building the task: the same initial weights
    inst = get_task("mnist").build(cfg.options, None, "cpu", torch.float32, None)
    model, (x, y) = inst.model, inst.sample(0, None)
    opt = (
        torch.optim.SGD(model.parameters(), lr=cfg.eta)
        if rho == 0
        else SAM(model.parameters(), torch.optim.SGD, rho=rho, normalize=normalize, lr=cfg.eta)
    )
    mon = EdgeMonitor(model, squared_loss, (x, y), opt, every=cfg.measure_every, tol=cfg.lanczos_tol, seed=cfg.seed)
    mon.measure()
    for _ in range(cfg.steps):
        squared_loss(model(x), y).backward()
        if rho == 0:
            opt.step()
        else:
            opt.first_step(zero_grad=True)
            squared_loss(model(x), y).backward()
            opt.second_step()
        opt.zero_grad()
        mon.step()
    assert [r["step"] for r in mon.rows] == [r["step"] for r in rec.rows] == [0, 4, 8, 12]
    for mine, theirs in zip(mon.rows, rec.rows):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
        for k in ("grad_norm", "op_norm", "lambda_max", "edge", "gd_edge", "ratio"):
            assert mine[k] == pytest.approx(theirs[k], rel=1e-4), k
        for k in ("align_grad", "align_sam_grad") if rho else ("align_grad",):
            assert mine[k] == pytest.approx(theirs[k], abs=1e-3), k
        assert mine["converged"] == theirs["converged"]


def test_warm_start_from_the_previous_eigenvector(monkeypatch):
    """Each measurement hands the previous measurement's eigenvector to samedge.hessian.sharpness
    as v0 (its guarded warm start), the first one none, for the training data and the eval batch."""
    import samedge.measure as measure

    calls = []

    def spy(op, v0=None, **kw):
        out = real(op, v0=v0, **kw)
        calls.append((v0, out.eigenvector))
        return out

    real = measure.sharpness
    monkeypatch.setattr(measure, "sharpness", spy)
    model, (x, y) = tiny(), data(n=40)
    mon = EdgeMonitor(model, nn.MSELoss(), (x, y), _sgd(model, lr=0.1), eval_data=(x[:8], y[:8]))
    first, second = mon.measure(), mon.measure()
    (v0_train, v_train), (v0_eval, v_eval), (w0_train, _), (w0_eval, _) = calls
    assert v0_train is None and v0_eval is None
    assert torch.equal(w0_train, v_train) and torch.equal(w0_eval, v_eval)
    assert not torch.equal(v_train, v_eval)  # two different operators, two warm starts
    assert second["op_norm"] == pytest.approx(first["op_norm"], rel=1e-3)


def test_save_without_an_edge_round_trips(tmp_path):
    """A run whose optimizer has no edge formula (Adagrad) saves and reloads with empty edge and ratio."""
    from samedge import MonitorRecord

    model, (x, y) = tiny(), data()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    with pytest.warns(UserWarning, match="Adagrad"):
        mon = EdgeMonitor(model, nn.MSELoss(), (x, y), opt, every=2)
    for _ in range(4):
        opt.zero_grad()
        nn.MSELoss()(model(x), y).backward()
        opt.step()
        mon.step()
    mon.save(tmp_path / "adagrad")
    rec = MonitorRecord.load(tmp_path / "adagrad")
    assert rec.rule is None and "Adagrad" in rec.meta["no_edge_reason"]
    df = rec.frame
    assert df["step"].tolist() == [2, 4] and df["edge"].isna().all() and df["ratio"].isna().all()
    assert df["op_norm"].tolist() == pytest.approx([r["op_norm"] for r in mon.rows])


def test_non_finite_loss_is_a_warning_a_nan_row_and_diverged_at(tmp_path):
    """A measurement at a non-finite loss runs no Lanczos: a RuntimeWarning (once) naming the step,
    a row with NaN sharpness and no edge, ``diverged_at`` on the monitor and in its saved record."""
    from samedge import MonitorRecord

    model, (x, y) = tiny(), data()
    opt = _sgd(model, lr=0.1)
    mon = EdgeMonitor(model, nn.MSELoss(), (x, y), opt, every=1)
    assert mon.step()["converged"] is not None and mon.diverged_at is None
    with torch.no_grad():
        model[0].weight.fill_(float("inf"))
    with pytest.warns(RuntimeWarning, match="not finite at step 2"):
        row = mon.step()
    assert not math.isfinite(row["train_loss"]) and math.isnan(row["op_norm"]) and math.isnan(row["lambda_max"])
    assert row["edge"] is None and row["ratio"] is None and row["hvps"] == 0 and row["converged"] is False
    assert mon.diverged_at == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once
        mon.step()
    assert mon.diverged_at == 2 and [r["step"] for r in mon.rows] == [1, 2, 3]
    mon.save(tmp_path / "diverged")
    rec = MonitorRecord.load(tmp_path / "diverged")
    assert rec.diverged_at == 2 and rec.diverged and math.isnan(rec.frame["op_norm"].iloc[1])


@pytest.mark.parametrize("train_mode", [False, True])
def test_measurements_do_not_consume_the_global_rng(train_mode):
    """A measurement (dropout in train mode included) leaves the global random-number state as
    found: the user's training draws the same numbers with the monitor as without it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 3)).double()
    x, y = data()
    mon = EdgeMonitor(model, nn.MSELoss(), (x, y), _sgd(model, lr=0.1), train_mode=train_mode)
    torch.manual_seed(1)
    before = torch.random.get_rng_state()
    mon.measure()
    mon.measure()
    assert torch.equal(torch.random.get_rng_state(), before)


def test_forward_over_reverse_and_train_mode_batchnorm():
    """torch.func cannot differentiate train-mode BatchNorm (an in-place running-statistics
    update): the raw operator raises at its first HVP, so EdgeMonitor refuses the pair when it is
    built and names the fix; in eval mode forward-over-reverse measures what double backward does.
    (The loss is samedge's squared_loss: nn.MSELoss has no forward-over-reverse HVP in torch 2.14.)"""
    from samedge.hessian import HessianOperator
    from samedge.losses import module_loss, parameters_of, squared_loss

    model, (x, y) = tiny(bn=True), data()
    model.train()
    op = HessianOperator(module_loss(model, squared_loss, x, y), parameters_of(model), "forward_over_reverse")
    with pytest.raises(RuntimeError, match="in-place"):
        op(torch.ones(op.size, dtype=F64))
    model = tiny(bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="double_backward"):
        EdgeMonitor(model, squared_loss, (x, y), opt, train_mode=True, hvp_method="forward_over_reverse")
    rows = [
        EdgeMonitor(model, squared_loss, (x, y), opt, train_mode=False, hvp_method=m, tol=1e-10).measure()
        for m in ("double_backward", "forward_over_reverse")
    ]
    assert rows[1]["op_norm"] == pytest.approx(rows[0]["op_norm"], rel=1e-8)
