"""Measurement pairs (``RunConfig.measure_pairs``) and the SAM map's accounts in the run loop and
its record, and the per-phase and phase-free analysis of ``samedge.analysis`` against numbers
computed by hand from hand-built records."""

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from samedge import analysis as an
from samedge.columns import ACCOUNT_COLUMNS
from samedge.config import ConfigError, RunConfig
from samedge.edge import aligned_sam_edge
from samedge.loop import run
from samedge.record import DamagedRunError, RunRecord, check_record

HAVE_MNIST = (
    bool(os.environ.get("SAMEDGE_DATA_DIR")) and (Path(os.environ["SAMEDGE_DATA_DIR"]) / "MNIST" / "raw").is_dir()
)
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason="set SAMEDGE_DATA_DIR to a directory holding MNIST/raw")
OPTS = dict(n_train=128, n_test=64, width=16, depth=2)


def cfg(**kw):
    base = dict(task="mnist", eta=0.3, rho=0.05, steps=12, measure_every=4, seed=0, options=OPTS)
    base.update(kw)
    return RunConfig(**base)


def test_schedules():
    assert cfg().measured_steps() == [0, 4, 8, 12]
    assert cfg(measure_pairs=True).measured_steps() == [0, 1, 4, 5, 8, 9, 12]
    assert cfg(steps=10, measure_pairs=True).measured_steps() == [0, 1, 4, 5, 8, 9, 10]
    assert cfg().account_steps() == []
    assert cfg(accounts_every=4).account_steps() == [8, 12]  # the second half: t >= 6
    assert cfg(accounts_every=4, measure_pairs=True).account_steps() == [8, 9]  # 12 has no pair
    with pytest.raises(ConfigError, match="accounts_every must be a multiple of measure_every"):
        cfg(accounts_every=6)
    with pytest.raises(ConfigError, match="measure_pairs must be True or False"):
        cfg(measure_pairs=1)


def test_schedule_from_a_step():
    """measure_from: step 0 (and its pair), then the schedule from measure_from on, and the last;
    the accounts only on measured steps."""
    assert cfg(measure_from=6).measured_steps() == [0, 8, 12]
    assert cfg(measure_from=8, measure_pairs=True).measured_steps() == [0, 1, 8, 9, 12]
    assert cfg(measure_from=12).measured_steps() == [0, 12]
    assert cfg(steps=24, measure_from=16, accounts_every=4, measure_pairs=True).account_steps() == [16, 17, 20, 21]
    for bad in (-1, 13, 2.0, True):
        with pytest.raises(ConfigError, match="measure_from must be an integer from 0 to steps"):
            cfg(measure_from=bad)


@needs_mnist
def test_loop_measures_from_a_step(tmp_path):
    """The loop measures the measure_from schedule, and check_record accepts it on reload."""
    c = cfg(measure_from=8, measure_pairs=True)
    rec = run(c, tmp_path / "run", progress=False)
    assert rec.frame["step"].tolist() == [0, 1, 8, 9, 12]
    assert RunRecord.load(tmp_path / "run").frame.equals(rec.frame)


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs") / "run"
    return run(cfg(measure_pairs=True, accounts_every=4, measure_ascent=True), d, progress=False), d


@needs_mnist
def test_loop_measures_pairs_and_accounts(paired):
    rec, d = paired
    df = rec.frame
    assert df["step"].tolist() == [0, 1, 4, 5, 8, 9, 12]
    has = df[ACCOUNT_COLUMNS].notna().all(axis=1)
    assert df["step"][has].tolist() == [8, 9]
    assert df[ACCOUNT_COLUMNS][~has].isna().all().all()
    # A pair's second row is the next iterate, not a copy: its loss and sharpness differ.
    assert df["train_loss"].iloc[0] != df["train_loss"].iloc[1]
    back = RunRecord.load(d)  # check_record accepts the pair schedule and the account columns
    assert back.frame.equals(df)


@needs_mnist
@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda df: df[df["step"] != 5], "not the schedule"),  # a pair's second step missing
        (lambda df: df[df["step"] != 1], "not the schedule"),
        (lambda df: df.assign(growth_u=df["growth_u"].where(df["step"] != 9)), "account steps"),
        (lambda df: df.assign(sam_map_mu=df["sam_map_mu"].fillna(1.0)), "account steps"),
        (lambda df: df.drop(columns=["amplitude_u"]), "missing \\['amplitude_u'\\]"),
    ],
)
def test_damaged_pair_record_refused(paired, tmp_path, damage, match):
    rec, d = paired
    dd = tmp_path / "r"
    shutil.copytree(d, dd)
    damage(rec.frame).to_csv(dd / "record.csv", index=False)
    with pytest.raises(DamagedRunError, match=match):
        RunRecord.load(dd)


def test_unpaired_schedule_refuses_pairs(tmp_path):
    c = cfg(measure_every=4)
    rows = pd.DataFrame({"step": [0, 1, 4, 8, 12]})
    with pytest.raises(DamagedRunError):
        check_record(c, rows, {"complete": True, "diverged": False, "diverged_at": None, "steps_done": 12}, tmp_path)


# --- analysis on hand-built records ---


def _rec(rho, seed, values, steps=8, eta=1.0, extra=None):
    """A run of ``steps`` steps measured in pairs at 0,1, 4,5, 8: ratio = values (op_norm = ratio, edge 1)."""
    st = [0, 1, 4, 5, 8][: len(values)]
    rows = []
    for i, (t, v) in enumerate(zip(st, values)):
        row = dict(step=t, ratio=v, op_norm=v, edge=1.0, grad_norm=0.5, align_grad=0.6)
        if extra:
            row.update({k: x[i] for k, x in extra.items()})
        rows.append(row)
    return RunRecord(RunConfig("mnist", eta, rho, steps, 4, seed=seed, measure_pairs=True), rows, {})


def test_pair_means_and_phase_medians():
    # second half: steps 4, 5, 8 -> even 4, 8 (values 1.2, 1.4), odd 5 (1.0); one pair (4, 5): 1.1.
    r = _rec(0.1, 0, [9.0, 9.0, 1.2, 1.0, 1.4])
    ph = an.phase_medians(r)
    assert ph[an.PHASE_EVEN] == pytest.approx(1.3)
    assert ph[an.PHASE_ODD] == pytest.approx(1.0)
    assert ph[an.PAIR_RATIO] == pytest.approx(1.1)
    assert ph[an.PAIRS] == 1
    pm = an.pair_means(pd.Series([0, 1, 2, 5, 6]), pd.Series([1.0, 3.0, 5.0, 2.0, np.nan]))
    assert pm.index.tolist() == [0, 1] and pm.tolist() == [2.0, 4.0]  # (5, 6) has no value at 6


def test_phase_table_means_over_seeds():
    a = _rec(0.1, 0, [9.0, 9.0, 1.2, 1.0, 1.4])
    b = _rec(0.1, 1, [9.0, 9.0, 1.0, 1.2, 1.0])  # even 1.0, odd 1.2, pair 1.1
    t = an.phase_table([a, b])
    row = t.iloc[0]
    assert row["seeds"] == 2
    assert row[an.PHASE_EVEN] == pytest.approx((1.3 + 1.0) / 2)
    assert row[an.PHASE_ODD] == pytest.approx((1.0 + 1.2) / 2)
    assert row[an.PAIR_RATIO] == pytest.approx(1.1)
    assert row[an.MEDIAN_RATIO] == pytest.approx((1.2 + 1.0) / 2)  # medians of all 2nd-half rows
    assert row[an.PHASE_GAP] == pytest.approx(0.05)
    assert "differ by at most 0.050" in an.phase_sentence(t)


def test_phase_table_of_another_column():
    """column="eval_ratio" reads that column (the Transformer's fixed-batch ratio), not the ratio."""
    ev = dict(eval_ratio=[5.0, 5.0, 2.0, 3.0, 2.2])  # even 2.0, 2.2 -> 2.1; odd 3.0; pair 2.5
    a = _rec(0.1, 0, [9.0, 9.0, 1.2, 1.0, 1.4], extra=ev)
    row = an.phase_table([a], column="eval_ratio").iloc[0]
    assert row[an.PHASE_EVEN] == pytest.approx(2.1) and row[an.PHASE_ODD] == pytest.approx(3.0)
    assert row[an.PAIR_RATIO] == pytest.approx(2.5) and row[an.MEDIAN_RATIO] == pytest.approx(2.2)


def test_growth_as_ratio():
    # GD on a quadratic: G = (1 - eta lam)^2; eta lam = 2 r -> (1 + sqrt G)/2 = r for r >= 1/2.
    r = np.array([0.6, 1.0, 1.3])
    g = pd.Series((1 - 2 * r) ** 2)
    assert an.growth_as_ratio(g).to_numpy() == pytest.approx(r)
    assert math.isnan(an.growth_as_ratio(pd.Series([-0.1])).iloc[0])


def test_amplitude_column_and_sentence():
    """run_accounts carries each run's median amplitude along u; the sentence gives it per rho and
    says when every run's oscillation is below the small perturbation (the growths then coincide)."""
    amp = lambda a: dict(amplitude_u=[np.nan, np.nan, a, 3 * a, np.nan])  # noqa: E731
    runs = an.run_accounts(
        [_rec(0.0, 0, [1, 1, 1.0, 1.0, 1.0], extra=amp(1e-2)), _rec(0.1, 0, [1, 1, 1.0, 1.0, 1.0], extra=amp(1e-4))]
    )
    per_run = runs.drop_duplicates(["rho"]).set_index("rho")[an.AMPLITUDE]
    assert per_run[0.0] == pytest.approx(2e-2) and per_run[0.1] == pytest.approx(2e-4)  # medians of (a, 3a)
    text = an.amplitude_sentence(runs, eps=1e-3)
    assert "rho=0: 2.0e-02;" in text and "rho=0.1: 2.0e-04." in text  # one run per rho: no range
    assert "at rho=0.1 every run's oscillation along u is smaller" in text and "at rho=0," not in text
    assert "different sizes" in an.amplitude_sentence(runs, eps=1e-5)
    assert "no amplitude" in an.amplitude_sentence(an.run_accounts([_rec(0.0, 0, [1, 1, 1.0, 1.0, 1.0])]))


def test_accounts_and_drift_by_hand():
    extra = lambda mu, g, ga, asc: dict(  # noqa: E731
        sam_map_mu=[np.nan, np.nan, mu, mu, np.nan],
        growth_u=[np.nan, np.nan, g, g, np.nan],
        growth_u_at_amplitude=[np.nan, np.nan, ga, ga, np.nan],
        ascent_op_norm=[asc] * 5,
    )
    # eta = 1: eta mu / 2 = mu / 2; growth 1 -> 1.0 and 2.25 -> 1.25 on the ratio scale.
    gd = [_rec(0.0, s, [1, 1, 1.0, 1.0, 1.0], extra=extra(2.0, 1.0, 1.0, 1.0)) for s in (0, 1)]
    sam = [
        _rec(0.1, 0, [1, 1, 1.2, 1.0, 1.4], extra=extra(2.2, 1.0, 2.25, 1.05)),
        _rec(0.1, 1, [1, 1, 1.3, 1.1, 1.0], extra=extra(2.6, 1.0, 2.25, 1.05)),
    ]
    fr = an.account_frame(sam[0])
    aligned = 1.2 / aligned_sam_edge(1.0, 0.1, 0.5, 0.36)
    assert fr[an.ACCOUNT_ALIGNED].iloc[2] == pytest.approx(aligned)
    assert fr[an.ACCOUNT_FORMULA_AT_ACCOUNTS].isna().tolist() == [True, True, False, False, True]
    t = an.accounts_table(gd + sam)
    s = t[t["rho"] == 0.1].iloc[0]
    assert s[an.ACCOUNT_FORMULA] == pytest.approx((1.1 + 1.2) / 2)  # pair means (4, 5) of each seed
    assert s[an.ACCOUNT_EXACT] == pytest.approx((1.1 + 1.3) / 2)
    assert s[an.ACCOUNT_CYCLE] == pytest.approx(1.0)
    assert s[an.ACCOUNT_CYCLE_AMPLITUDE] == pytest.approx(1.25)
    assert s[an.ACCOUNT_ASCENT] == pytest.approx(1.05)
    assert s[an.PHASE_EVEN] == pytest.approx((1.3 + 1.15) / 2)
    d = an.drift_table(an.run_accounts(gd + sam)).set_index("account")
    assert d.loc[an.ACCOUNT_FORMULA, "drift"] == pytest.approx(0.15)
    assert (d.loc[an.ACCOUNT_FORMULA, "drift seed min"], d.loc[an.ACCOUNT_FORMULA, "drift seed max"]) == (
        pytest.approx(0.1),
        pytest.approx(0.2),
    )
    assert d.loc[an.ACCOUNT_CYCLE, "drift"] == pytest.approx(0.0) and d.loc[an.ACCOUNT_CYCLE, "explains"]
    # No drift but far from 1 explains nothing: the same account judged against a band above it.
    far = an.drift_table(an.run_accounts(gd + sam), band=(1.1, 1.2)).set_index("account")
    assert not far.loc[an.ACCOUNT_CYCLE, "explains"]
    assert d.loc[an.ACCOUNT_EXACT, "drift"] == pytest.approx(0.2) and not d.loc[an.ACCOUNT_EXACT, "explains"]
    assert d.loc[an.ACCOUNT_ASCENT, "drift / formula drift"] == pytest.approx(0.05 / 0.15)
    text = an.drift_sentence(d.reset_index())
    assert "two-step growth (small) does" in text and "eta mu / 2" in text
