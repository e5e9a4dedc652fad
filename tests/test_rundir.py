"""Damaged run directories: every kind of damage to record.csv, summary.json, config.json and
checkpoint.pt is an error naming the file and the fix (or, for a checkpoint, a restart with a
warning), never partial or mistyped data; what the directory held before is not destroyed."""

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from samedge.columns import TIMING_COLUMNS
from samedge.config import RunConfig
from samedge.loop import run
from samedge.record import RunRecord
from samedge.rundir import CHECKPOINT, DamagedRunError, RunDirError

pytestmark = pytest.mark.skipif(
    not os.environ.get("SAMEDGE_DATA_DIR") or not (Path(os.environ["SAMEDGE_DATA_DIR"]) / "MNIST" / "raw").is_dir(),
    reason="set SAMEDGE_DATA_DIR to a directory holding MNIST/raw",
)

CFG = dict(
    task="mnist",
    eta=0.3,
    rho=0.05,
    steps=8,
    measure_every=3,
    seed=0,
    checkpoint_every=2,
    options=dict(n_train=32, n_test=16, width=8, depth=1),
)
STEPS = [0, 3, 6, 8]  # the schedule: every 3 steps from 0, and the last


def cfg(**kw) -> RunConfig:
    return RunConfig(**{**CFG, **kw})


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run directory (never modified: tests damage copies)."""
    c = cfg()
    d = tmp_path_factory.mktemp("finished") / c.run_name()
    run(c, d, progress=False)
    return d


@pytest.fixture()
def copy(finished, tmp_path) -> Path:
    d = tmp_path / finished.name
    shutil.copytree(finished, d)
    return d


def strip(rec: RunRecord) -> pd.DataFrame:
    return rec.frame.drop(columns=TIMING_COLUMNS)


def rewrite_csv(d: Path, edit) -> None:
    df = pd.read_csv(d / "record.csv")
    df = edit(df)
    (d / "record.csv").write_text(df.to_csv(index=False))


def test_intact_run_loads_with_expected_schedule(finished):
    """The undamaged directory loads: the schedule, ints, bools (a control for the tests below)."""
    rec = RunRecord.load(finished)
    df = rec.frame
    assert df["step"].tolist() == STEPS
    assert df["step"].dtype.kind == "i" and df["hvps"].dtype.kind == "i" and df["converged"].dtype == bool
    assert rec.summary["complete"] and rec.summary["steps_done"] == 8


@pytest.mark.parametrize(
    "name, damage, match",
    [
        (
            "only step,op_norm: 1,abc",
            lambda t: "step,op_norm\n1,abc\n",
            r"its columns are wrong \(missing \['align_grad', ",
        ),
        ("row 1,abc", lambda t: t + "1,abc\n", r"record.csv is damaged: line 6 has 2 fields but the header has 15"),
        ("truncated", lambda t: t[: len(t) * 2 // 3], r"record.csv is damaged"),
        ("empty", lambda t: "", r"record.csv is damaged: it has no rows"),
        ("binary", lambda t: "\x00\x01garbage\n", r"record.csv is damaged"),
        ("repeated column", lambda t: t.replace("edge,gd_edge", "edge,edge", 1), r"header repeats a column"),
    ],
)
def test_damaged_record_text(copy, name, damage, match):
    """Text-level damage to record.csv: an error naming the file and 'delete ... to recompute'."""
    p = copy / "record.csv"
    p.write_text(damage(p.read_text()))
    with pytest.raises(DamagedRunError, match=match) as err:
        RunRecord.load(copy)
    assert str(p) in str(err.value) and f"delete the run directory {copy}" in str(err.value)


@pytest.mark.parametrize(
    "name, edit, match",
    [
        (
            "abc in op_norm",
            lambda df: df.astype({"op_norm": object}).assign(op_norm=["1.0", "abc", "2.0", "3.0"]),
            r"column 'op_norm' must hold numbers, got 'abc' in row 2 \(step 3\)",
        ),
        ("missing column", lambda df: df.drop(columns=["op_norm"]), r"missing \['op_norm'\], unknown \[\]"),
        ("unknown column", lambda df: df.assign(foo=1.0), r"missing \[\], unknown \['foo'\]"),
        ("partial eval columns", lambda df: df.assign(eval_loss=1.0), r"missing \['eval_edge', .*unknown \[\]"),
        (
            "NaN op_norm, no divergence",
            lambda df: df.assign(op_norm=[1.0, float("nan"), 2.0, 3.0]),
            r"column 'op_norm' must be finite, got nan in row 2 \(step 3\) and the run did not diverge",
        ),
        ("inf train_loss", lambda df: df.assign(train_loss=[1.0, 1.0, math.inf, 1.0]), r"'train_loss' must be finite"),
        ("float step", lambda df: df.assign(step=[0, 3, 6.5, 8]), r"column 'step' must hold integers, got 6.5"),
        ("float hvps", lambda df: df.assign(hvps=[3, 3.5, 3, 3]), r"column 'hvps' must hold integers"),
        ("negative hvps", lambda df: df.assign(hvps=[3, -1, 3, 3]), r"column 'hvps' must be >= 0"),
        (
            "converged not bool",
            lambda df: df.assign(converged=["True", "maybe", "True", "True"]),
            r"column 'converged' must hold True/False",
        ),
        (
            "negative time",
            lambda df: df.assign(train_seconds=[0.0, -1.0, 0.1, 0.2]),
            r"'train_seconds' must be finite and >= 0",
        ),
        (
            "non-increasing steps",
            lambda df: df.iloc[[0, 2, 1, 3]],
            r"steps are not strictly increasing \(\[0, 6, 3, 8\]",
        ),
        ("repeated step", lambda df: df.assign(step=[0, 3, 3, 8]), r"steps are not strictly increasing"),
        (
            "step off schedule",
            lambda df: df.assign(step=[0, 3, 5, 8]),
            r"not the schedule of steps=8, measure_every=3 "
            r"\(off-schedule \[5\], missing \[6\]\)",
        ),
        ("missing row", lambda df: df.iloc[[0, 1, 3]], r"off-schedule \[\], missing \[6\]"),
        ("nan ratio", lambda df: df.assign(ratio=[0.5, float("nan"), 0.5, 0.5]), r"column 'ratio' must be finite"),
    ],
)
def test_damaged_record_values(copy, name, edit, match):
    """Mistyped, non-finite, missing or misplaced values in record.csv are refused by name."""
    rewrite_csv(copy, edit)
    with pytest.raises(DamagedRunError, match=match):
        RunRecord.load(copy)
    with pytest.raises(DamagedRunError, match=match):  # and run() does not return it either
        run(cfg(), copy, progress=False)


def test_nan_at_recorded_divergence_accepted(copy):
    """A non-finite sharpness on the row where summary.json records the divergence is what the
    loop writes when sharpness blows up: it loads; the same NaN one row earlier does not."""
    s = json.loads((copy / "summary.json").read_text())
    s.update(diverged=True, diverged_at=6, steps_done=6)
    (copy / "summary.json").write_text(json.dumps(s))
    rewrite_csv(copy, lambda df: df.iloc[:3].assign(op_norm=[1.0, 2.0, float("nan")], ratio=[0.1, 0.2, float("nan")]))
    rec = RunRecord.load(copy)
    assert rec.diverged and rec.frame["step"].tolist() == [0, 3, 6] and math.isnan(rec.rows[-1]["op_norm"])
    rewrite_csv(copy, lambda df: df.assign(op_norm=[1.0, float("nan"), 2.0]))
    with pytest.raises(DamagedRunError, match="'op_norm' must be finite, got nan in row 2 \\(step 3\\)"):
        RunRecord.load(copy)


def test_diverged_run_round_trip(tmp_path):
    """A real diverged run (huge eta) is saved, reloaded and not recomputed: the validation
    accepts what the loop writes."""
    c = cfg(eta=1e4, steps=30, measure_every=1)
    first = run(c, tmp_path / c.run_name(), progress=False)
    assert first.diverged
    again = run(c, tmp_path / c.run_name(), progress=False)
    assert again.frame.equals(first.frame) and again.summary == first.summary


@pytest.mark.parametrize(
    "name, edit, match",
    [
        ("complete false", dict(complete=False), r"'complete' is False, not true"),
        ("diverged without step", dict(diverged=True), r"'diverged' is True but 'diverged_at' is None"),
        ("diverged_at without flag", dict(diverged_at=6), r"'diverged' is False but 'diverged_at' is 6"),
        (
            "diverged_at out of range",
            dict(diverged=True, diverged_at=99),
            r"'diverged_at' is 99, not null or a step in 0..8",
        ),
        ("steps_done", dict(steps_done=7), r"'steps_done' is 7 but the run has 8 steps"),
        (
            "rows past divergence",
            dict(diverged=True, diverged_at=3, steps_done=3),
            r"not the schedule .* diverged at 3",
        ),
        ("negative seconds", dict(train_seconds=-1), r"'train_seconds' is -1, not a finite number >= 0"),
    ],
)
def test_inconsistent_summary(copy, name, edit, match):
    """A summary.json that contradicts itself or the rows is refused, naming summary.json or record.csv."""
    s = json.loads((copy / "summary.json").read_text())
    s.update(edit)
    (copy / "summary.json").write_text(json.dumps(s))
    with pytest.raises(DamagedRunError, match=match):
        RunRecord.load(copy)


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"complete": tru', r"summary.json is damaged: it is not valid JSON"),
        ("[1, 2]", r"summary.json is damaged: it holds a list, not an object"),
    ],
)
def test_damaged_summary(copy, text, match):
    (copy / "summary.json").write_text(text)
    with pytest.raises(DamagedRunError, match=match):
        RunRecord.load(copy)


def test_missing_summary_resumes_with_warning(copy):
    """record.csv without summary.json is a save cut short: load() says so, run() recomputes it
    (with a warning) to the same record, since nothing in a record without summary is trusted."""
    before = RunRecord.load(copy)
    (copy / "summary.json").unlink()
    with pytest.raises(DamagedRunError, match="summary.json is damaged: it is missing, so the run did not finish"):
        RunRecord.load(copy)
    with pytest.warns(RuntimeWarning, match="record.csv but no summary.json"):
        again = run(cfg(), copy, progress=False)
    assert strip(again).equals(strip(before)) and (copy / "summary.json").exists()


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("not json", '{"config": {"task": "mni', r"config.json is damaged: it is not valid JSON"),
        ("no config key", '{"env": {}}', r"config.json is damaged: it has no 'config' object"),
        (
            "invalid value",
            None,
            r"config.json is damaged: it holds an invalid configuration \(eta must be a finite number > 0",
        ),
        (
            "unknown key",
            None,
            r"config.json is damaged: it holds an invalid configuration \(unknown run configuration keys \['foo'\]",
        ),
    ],
)
def test_damaged_config(copy, name, text, match):
    """A damaged config.json: an error naming it (load and run), not a bare JSONDecodeError."""
    p = copy / "config.json"
    if text is None:
        meta = json.loads(p.read_text())
        meta["config"].update(eta=-1.0) if name == "invalid value" else meta["config"].update(foo=1)
        text = json.dumps(meta)
    p.write_text(text)
    with pytest.raises(DamagedRunError, match=match):
        RunRecord.load(copy)
    if name != "invalid value" and name != "unknown key":  # those two differ from cfg: 'different configuration'
        with pytest.raises(DamagedRunError, match=match):
            run(cfg(), copy, progress=False)


def test_missing_config(copy):
    """Run files without config.json: nothing says which configuration made them: refused."""
    (copy / "config.json").unlink()
    with pytest.raises(
        DamagedRunError,
        match=r"config.json is damaged: it is missing, so nothing tells which "
        r"configuration made \['record.csv', 'summary.json'\]",
    ):
        run(cfg(), copy, progress=False)
    with pytest.raises(DamagedRunError, match="config.json is damaged: it is missing"):
        RunRecord.load(copy)


def test_other_config_and_fingerprint(copy, tmp_path):
    """Another configuration in the directory is refused (RunDirError); a config.json replaced by
    another run's, or a renamed directory, contradicts the fingerprint in the name."""
    with pytest.raises(RunDirError, match=r"holds a run with a different configuration \(differs in \['rho'\]\)"):
        run(cfg(rho=0.1), copy, progress=False)
    meta = json.loads((copy / "config.json").read_text())
    meta["config"]["rho"] = 0.1
    (copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(
        DamagedRunError,
        match=r"the directory name says configuration [0-9a-f]{10} but the "
        r"configuration has fingerprint",
    ):
        RunRecord.load(copy)
    renamed = tmp_path / cfg(rho=0.2).run_name()
    shutil.copytree(copy, renamed)
    meta["config"]["rho"] = 0.05
    (renamed / "config.json").write_text(json.dumps(meta))
    with pytest.raises(DamagedRunError, match="a renamed directory or a replaced config.json"):
        RunRecord.load(renamed)
    with pytest.raises(DamagedRunError, match="a renamed directory or a replaced config.json"):
        run(cfg(), renamed, progress=False)


def test_results_path_is_a_file(tmp_path):
    """A run directory that is a file, or lies under one: RunDirError naming the file."""
    f = tmp_path / "results"
    f.write_text("not a directory")
    with pytest.raises(RunDirError, match=f"{f} is a file, not a directory, but it is the run directory"):
        run(cfg(), f, progress=False)
    with pytest.raises(RunDirError, match=f"{f} is a file, not a directory, but it is a parent of the run directory"):
        run(cfg(), f / "mnist" / cfg().run_name(), progress=False)
    assert f.read_text() == "not a directory"


def test_directory_named_for_another_configuration(tmp_path):
    """A new directory whose name ends with another configuration's fingerprint is refused before
    any compute (its record could never be reloaded)."""
    with pytest.raises(
        RunDirError,
        match=r"is named for configuration [0-9a-f]{10}, but this run's configuration has "
        r"fingerprint [0-9a-f]{10}: name the directory RunConfig.run_name\(\)",
    ):
        run(cfg(), tmp_path / cfg(rho=0.2).run_name(), progress=False)
    assert not (tmp_path / cfg(rho=0.2).run_name()).exists()


def test_config_written_by_another_version(copy):
    """A config.json lacking a field of this version's RunConfig (written by an older samedge)."""
    meta = json.loads((copy / "config.json").read_text())
    del meta["config"]["lanczos_max_iter"]
    (copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(
        DamagedRunError,
        match=r"it lacks the configuration fields \['lanczos_max_iter'\]: it was "
        "written by another version of samedge",
    ):
        RunRecord.load(copy)


@pytest.fixture()
def partial(tmp_path):
    """A run stopped at step 4 with its checkpoint, and the record an uninterrupted run gives."""
    c = cfg()
    d = tmp_path / c.run_name()
    run(c, d, progress=False, stop_after=4)
    assert torch.load(d / CHECKPOINT, weights_only=True)["step"] == 4
    return d


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _garbage(p: Path) -> None:
    p.write_bytes(os.urandom(4096))


def _wrong_keys(p: Path) -> None:
    state = torch.load(p, weights_only=True)
    state["momentum"] = state.pop("warm")
    torch.save(state, p)


def _other_params(p: Path) -> None:
    state = torch.load(p, weights_only=True)
    k = next(iter(state["params"]))
    state["params"][k] = torch.zeros(3)
    torch.save(state, p)


def _other_run(p: Path) -> None:
    other = cfg(rho=0.1)
    run(other, p.parent.parent / "other", progress=False, stop_after=4)
    shutil.copy(p.parent.parent / "other" / CHECKPOINT, p)


def _not_a_dict(p: Path) -> None:
    torch.save([1, 2, 3], p)


@pytest.mark.parametrize(
    "damage, match",
    [
        (_truncate, r"it cannot be read as a checkpoint \("),
        (_garbage, r"it cannot be read as a checkpoint"),
        (_wrong_keys, r"its keys are wrong \(missing \['warm'\], unexpected \['momentum'\]\)"),
        (_other_params, r"its parameters do not match the model's names, shapes and dtypes"),
        (_other_run, r"it belongs to another configuration"),
        (_not_a_dict, r"it holds a list, not a checkpoint dict"),
    ],
)
def test_damaged_checkpoint(partial, damage, match, record_fresh):
    """A damaged checkpoint.pt: 'error' raises DamagedRunError naming the file and both fixes;
    the default 'restart' warns, keeps the file as checkpoint.pt.damaged, and reruns from step 0
    to the uninterrupted record. The failed call released the lock (the restart could take it)."""
    ck = partial / CHECKPOINT
    damage(ck)
    damaged_bytes = ck.read_bytes()
    with pytest.raises(DamagedRunError, match=match) as err:
        run(cfg(), partial, progress=False, on_damaged_checkpoint="error")
    msg = str(err.value)
    assert f"{ck} is damaged" in msg and f"delete {ck} to restart the run from step 0" in msg
    assert "on_damaged_checkpoint='restart'" in msg and ck.read_bytes() == damaged_bytes
    assert "weights_only" not in msg  # torch's advice to load an unknown file unsafely is not passed on
    with pytest.warns(
        RuntimeWarning,
        match=rf"{ck} is damaged: .*Restarting the run from step 0 .*the damaged file "
        "is kept as",
    ):
        rec = run(cfg(), partial, progress=False)
    assert strip(rec).equals(strip(record_fresh))
    assert (partial / "checkpoint.pt.damaged").read_bytes() == damaged_bytes


@pytest.fixture(scope="module")
def record_fresh() -> RunRecord:
    return run(cfg(), progress=False)


def test_bad_option_value():
    with pytest.raises(ValueError, match="on_damaged_checkpoint must be 'restart' or 'error', got 'ignore'"):
        run(cfg(), None, progress=False, on_damaged_checkpoint="ignore")


def test_stray_temporary_files_removed(partial, record_fresh):
    """Temporary files left by a writer killed mid-write are removed on restart and never read."""
    (partial / "record.csv.abc123.tmp").write_text("step\n1,abc\n")
    (partial / "checkpoint.pt.x.tmp").write_bytes(b"\x00" * 10)
    rec = run(cfg(), partial, progress=False)
    assert strip(rec).equals(strip(record_fresh)) and not list(partial.glob("*.tmp"))
