"""The run loop on real MNIST at a tiny size: record columns, monotone steps, the ratio,
save/load round trip, resume, determinism, divergence and configuration errors."""

import math
import os
from pathlib import Path

import pytest
import torch

from samedge.columns import COLUMNS, TIMING_COLUMNS
from samedge.config import ConfigError, RunConfig
from samedge.loop import RunDirError, run
from samedge.record import RunRecord

pytestmark = pytest.mark.skipif(
    not os.environ.get("SAMEDGE_DATA_DIR") or not (Path(os.environ["SAMEDGE_DATA_DIR"]) / "MNIST" / "raw").is_dir(),
    reason="set SAMEDGE_DATA_DIR to a directory holding MNIST/raw",
)

OPTS = dict(n_train=128, n_test=64, width=16, depth=2)


def cfg(**kw):
    base = dict(task="mnist", eta=0.3, rho=0.05, steps=12, measure_every=4, seed=0, options=OPTS)
    base.update(kw)
    return RunConfig(**base)


def strip_timing(rec: RunRecord):
    return rec.frame.drop(columns=TIMING_COLUMNS)


@pytest.fixture(scope="module")
def record():
    return run(cfg(), progress=False)


def test_columns_and_steps(record):
    """Every documented column; measurements at 0, 4, 8, 12; the final step included."""
    df = record.frame
    assert list(df.columns) == COLUMNS
    assert df["step"].tolist() == [0, 4, 8, 12]
    assert record.summary["complete"] and not record.diverged
    assert 0 <= record.summary["test_accuracy"] <= 1
    # Final training metrics on the whole (full-batch) training subset: the loss is L(w_T), the
    # last row's training loss, computed here through the module rather than the loss closure.
    assert record.summary["final_train_loss"] == pytest.approx(record.frame["train_loss"].iloc[-1], rel=1e-5)
    assert 0 <= record.summary["final_train_accuracy"] <= 1


def test_ratio_and_edges_recomputed(record):
    """ratio = op_norm / SAM-edge(eta, rho, grad_norm) and gd_edge = 2/eta, recomputed independently."""
    df = record.frame
    for _, row in df.iterrows():
        edge = (row["grad_norm"] / (2 * 0.05)) * (math.sqrt(1 + 8 * 0.05 / (0.3 * row["grad_norm"])) - 1)
        assert row["edge"] == pytest.approx(edge, rel=1e-9)
        assert row["ratio"] == pytest.approx(row["op_norm"] / edge, rel=1e-9)
        assert row["gd_edge"] == pytest.approx(2 / 0.3)
        assert row["op_norm"] >= row["lambda_max"] - 1e-6 and row["converged"]
        assert 0 <= row["align_grad"] <= 1 and 0 <= row["align_sam_grad"] <= 1


@pytest.mark.parametrize("rho", [0.0, 0.05])
def test_each_rule_records_its_own_edge(rho):
    """normalize=False records the unnormalized-SAM edge, the root of eta lam (1 + rho lam) = 2
    (independent of the gradient); GD records 2/eta; the rule is in the run's name."""
    rec = run(cfg(rho=rho, normalize=False, steps=8), progress=False)
    eta = 0.3
    want = 2 / eta if rho == 0 else (math.sqrt(1 + 8 * rho / eta) - 1) / (2 * rho)
    assert rec.config.rule == ("gd" if rho == 0 else "usam") and f"-{rec.config.rule}-" in rec.config.run_name()
    for _, row in rec.frame.iterrows():
        assert eta * row["edge"] * (1 + rho * row["edge"]) == pytest.approx(2.0, rel=1e-12)
        assert row["edge"] == pytest.approx(want, rel=1e-12)
        assert row["ratio"] == pytest.approx(row["op_norm"] / want, rel=1e-9)


def test_precision_pinned_and_recorded(tmp_path):
    """The run's environment records the matmul/cuDNN precision flags it ran with (TF32 off,
    cuDNN deterministic); the caller's own settings are back afterwards."""
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    try:
        rec = run(cfg(steps=4), tmp_path / "r", progress=False)
        prec = RunRecord.load(tmp_path / "r").env["precision"]
        assert prec == rec.env["precision"]
        assert prec["cudnn_allow_tf32"] is False and prec["cuda_matmul_allow_tf32"] is False
        assert prec["float32_matmul_precision"] == "highest" and prec["cudnn_deterministic"] is True
        assert prec["cudnn_benchmark"] is False
        assert torch.backends.cudnn.allow_tf32 is True and torch.backends.cudnn.benchmark is True
        tf32 = run(cfg(steps=4, allow_tf32=True), progress=False).env["precision"]
        assert tf32["cudnn_allow_tf32"] is True and tf32["float32_matmul_precision"] == "high"
    finally:
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = False


def test_sharpness_matches_dense_hessian():
    """The loop's op_norm at step 0 equals the dense float64 Hessian's largest |eigenvalue|."""
    from samedge.hessian import dense_hessian
    from samedge.losses import module_loss, parameters_of
    from samedge.tasks import get_task

    c = cfg(
        options=dict(n_train=32, n_test=8, width=4, depth=1),
        dtype="float64",
        lanczos_tol=1e-8,
        steps=4,
        measure_every=4,
    )
    rec = run(c, progress=False)
    torch.manual_seed(0)
    built = get_task("mnist").build(c.options, None, "cpu", torch.float64, None)
    x, y = built.sample(0, torch.Generator())
    H = dense_hessian(module_loss(built.model, built.loss, x, y), parameters_of(built.model))
    ev = torch.linalg.eigvalsh(H)
    assert rec.rows[0]["op_norm"] == pytest.approx(float(ev.abs().max()), rel=1e-6)


def test_save_load_round_trip(record, tmp_path):
    """Saved and reloaded records are equal, rows and summary, value for value."""
    record.save(tmp_path / "r")
    back = RunRecord.load(tmp_path / "r")
    assert back.config == record.config
    assert back.frame.equals(record.frame)
    assert back.summary == record.summary


def test_deterministic(record):
    """Two runs with one seed give identical records (timings aside); another seed differs."""
    again = run(cfg(), progress=False)
    assert strip_timing(again).equals(strip_timing(record))
    other = run(cfg(seed=1), progress=False)
    assert not strip_timing(other).equals(strip_timing(record))


def test_resume_equals_uninterrupted(record, tmp_path):
    """Stopping after 6 steps and rerunning in the same directory gives the uninterrupted record."""
    c = cfg(checkpoint_every=3)
    d = tmp_path / c.run_name()
    partial = run(c, d, progress=False, stop_after=6)
    assert not partial.summary["complete"] and (d / "checkpoint.pt").exists()
    full = run(c, d, progress=False)
    assert strip_timing(full).equals(strip_timing(record)) and not (d / "checkpoint.pt").exists()
    assert RunRecord.load(d).frame.equals(full.frame)  # and a finished run reloads, no rerun


def test_other_config_refused(tmp_path):
    """A results directory holding another configuration's run is refused, not overwritten."""
    d = tmp_path / "run"
    run(cfg(steps=4, measure_every=4), d, progress=False)
    with pytest.raises(RunDirError, match="different configuration"):
        run(cfg(steps=4, measure_every=4, rho=0.1), d, progress=False)


def test_divergence_recorded():
    """A huge eta diverges; the record says at which step and keeps the finite rows."""
    rec = run(cfg(eta=1e4, steps=30, measure_every=1), progress=False)
    assert rec.diverged and rec.summary["complete"]
    assert rec.summary["diverged_at"] <= 30
    assert all(math.isfinite(r["train_loss"]) for r in rec.rows)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(eta=0.0), "eta must be a finite number > 0"),
        (dict(eta=float("nan")), "eta must be"),
        (dict(rho=-0.1), "rho must be a finite number >= 0"),
        (dict(steps=0), "steps must be a positive integer"),
        (dict(steps=2.5), "steps must be a positive integer"),
        (dict(measure_every=20), "measure_every must be <= steps"),
        (dict(task="imagenet"), "unknown task 'imagenet'"),
        (dict(options=dict(OPTS, widht=3)), "unknown option"),
        (dict(options=dict(OPTS, width=0)), "width must be a positive integer"),
        (dict(options=dict(OPTS, n_train=70000)), "MNIST has 60000"),
        (dict(dtype="float16"), "dtype must be"),
        (dict(allow_tf32="yes"), "allow_tf32 must be True or False"),
        (dict(normalize=1), "normalize must be True or False"),
    ],
)
def test_bad_config(kw, match):
    """Each bad parameter raises ConfigError naming it, before any compute."""
    with pytest.raises(ConfigError, match=match):
        cfg(**kw)
