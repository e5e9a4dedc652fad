"""The ``samedge`` command line: the console script is declared; ``run`` end to end at a tiny
size; ``sweep`` (debug executor in-process, a failing job named with its logs, SLURM dry run,
usage errors before anything is written); ``summarize``; ``reproduce`` delegates."""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from samedge.analysis import MEDIAN_RATIO
from samedge.cli import main
from samedge.config import RunConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("SAMEDGE_DATA_DIR")
needs_mnist = pytest.mark.skipif(
    not DATA or not (Path(DATA) / "MNIST" / "raw").is_dir(),
    reason="set SAMEDGE_DATA_DIR to a directory holding MNIST/raw",
)
TINY = ["-p", "n_train=128", "-p", "n_test=32", "-p", "width=16", "-p", "steps=10", "-p", "measure_every=5"]


def second_half_median(run_dir: Path) -> float:
    """The median ratio over steps >= steps/2, read from the files by hand."""
    steps = json.loads((run_dir / "config.json").read_text())["config"]["steps"]
    df = pd.read_csv(run_dir / "record.csv")
    return float(df.loc[df["step"] >= steps / 2, "ratio"].median())


def test_console_script_is_declared():
    """pyproject.toml's [project.scripts] names samedge.cli:main, which imports and answers --help."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["samedge"].split(":")
    target = getattr(importlib.import_module(module), func)
    assert target is main
    assert main(["--help"]) == 0


@needs_mnist
def test_run_end_to_end(tmp_path, capsys):
    """One run into <results>/<task>/<preset>/<run name>, its median printed; run again: reloaded."""
    args = [
        "run",
        "mnist",
        "--preset",
        "smoke",
        "-p",
        "rho=0.05",
        *TINY,
        "--results-dir",
        str(tmp_path),
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    dirs = [p.parent for p in tmp_path.rglob("summary.json")]
    assert len(dirs) == 1 and dirs[0].parent == tmp_path / "mnist" / "smoke"
    cfg = RunConfig.from_dict(json.loads((dirs[0] / "config.json").read_text())["config"])
    assert (cfg.rho, cfg.eta, cfg.steps, cfg.options["width"]) == (0.05, 0.3, 10, 16) and dirs[0].name == cfg.run_name()
    assert str(dirs[0]) in out
    assert f"median ratio (2nd half) {second_half_median(dirs[0]):.4f}" in out
    mtime = (dirs[0] / "record.csv").stat().st_mtime_ns
    assert main(args) == 0
    assert "reloading" in capsys.readouterr().out and (dirs[0] / "record.csv").stat().st_mtime_ns == mtime


def test_run_needs_exactly_one_rho(tmp_path, capsys):
    """The smoke preset has two rhos: without -p rho=... that is a usage error naming them."""
    assert main(["run", "mnist", "--preset", "smoke", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "2 runs" in err and "-p rho=" in err and "[0.0, 0.05]" in err
    assert main(["run", "mnist", "--preset", "smoke", "-p", "rhos=[0.0, 0.1]", "--results-dir", str(tmp_path)]) == 2
    assert "rhos=[0.0, 0.1]" in capsys.readouterr().err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--grid", "nosuch=1,2"], "unknown grid parameter 'nosuch'"),
        (["--grid", "eta="], "'eta' has no values"),
        (["--grid", "eta=0.1,-0.1"], "eta=-0.1.*eta must be a finite number > 0"),
        (["--grid", "eta=abc"], "eta must be a finite number > 0, got 'abc'"),
        (["--grid", "eta=0.1", "--grid", "eta=0.2"], "'eta' is given twice"),
        (["--grid", "rho=0", "--grid", "rhos=0.1"], "'rho' is given twice"),
        (["--grid", "eta=0.1", "--preset", "huge"], "preset must be one of"),
        (["--grid", "eta=0.1", "--seeds", "1", "1"], "seeds lists a seed twice"),
        (["--grid", "eta=0.1", "--slurm-partition", "gpu"], "only apply with --executor slurm"),
        (["--grid", "eta=0.1", "--max-parallel", "0"], "--max-parallel must be a positive integer"),
        (["--grid", "eta=0.1", "--runs-per-job", "0"], "--runs-per-job must be a positive integer"),
        (["--grid", "eta=0.1", "--executor", "slurm", "--runs-per-job", "2"], "1 with --executor slurm"),
    ],
)
def test_bad_sweeps_are_usage_errors_before_anything_is_written(tmp_path, capsys, extra, match):
    """Exit status 2, a message naming the problem, no results directory and no submitit folder."""
    args = ["sweep", "mnist", *extra, *TINY, "--results-dir", str(tmp_path / "res")]
    if "--preset" not in extra:
        args[2:2] = ["--preset", "smoke"]
    assert main(args) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "res").exists()


def test_unknown_task_is_a_usage_error(tmp_path, capsys):
    assert main(["sweep", "nosuch", "--grid", "eta=0.1", "--results-dir", str(tmp_path / "r")]) == 2
    assert "unknown task 'nosuch'" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main(["sweep", "mnist", "--executor", "lsf"]) == 2  # argparse's own usage error


@needs_mnist
def test_sweep_debug_executor_then_summarize(tmp_path, capsys):
    """A 2-run sweep in-process (submitit's debug executor); again: both reloaded; summarize
    prints each run's median (checked against the files) and writes the CSV; an empty
    directory is exit status 1 with a message."""
    args = [
        "sweep",
        "mnist",
        "--preset",
        "smoke",
        "--grid",
        "rho=0,0.05",
        "--seeds",
        "4",
        *TINY,
        "--results-dir",
        str(tmp_path),
        "--executor",
        "debug",
        "--runs-per-job",
        "2",  # both runs in one job
        "--device",
        "cpu",
        "--quiet",
        "--poll",
        "0.01",
    ]
    assert main(args) == 0
    assert "2 computed now, 0 reloaded" in capsys.readouterr().out
    assert main(args) == 0
    assert "0 computed now, 2 reloaded" in capsys.readouterr().out
    assert len(list((tmp_path / "mnist" / "smoke" / "submitit").iterdir())) == 1  # the second sweep submitted nothing

    csv = tmp_path / "table.csv"
    assert main(["summarize", str(tmp_path), "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(csv)
    assert len(table) == 2 and sorted(table["rho"]) == [0.0, 0.05] and set(table["seed"]) == {4}
    for _, row in table.iterrows():
        d = tmp_path / row["run directory"]
        assert row[MEDIAN_RATIO] == pytest.approx(second_half_median(d), rel=1e-12)
        line = next(ln for ln in out.splitlines() if row["run directory"] in ln)
        assert f"{second_half_median(d):.4g}" in line.split()
    assert "2 runs under" in out

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["summarize", str(empty)]) == 1
    assert "no finished runs" in capsys.readouterr().err


@needs_mnist
def test_failed_job_is_named_with_its_logs(tmp_path, capsys):
    """A job that raises (its run directory holds another configuration): exit status 1, the run
    and the submitit log that holds the traceback are named; the other run still finishes."""
    args = [
        "sweep",
        "mnist",
        "--preset",
        "smoke",
        "--grid",
        "rho=0,0.05",
        "--seeds",
        "0",
        *TINY,
        "--results-dir",
        str(tmp_path),
        "--device",
        "cpu",
        "--max-parallel",
        "2",
        "--quiet",
        "--poll",
        "0.2",
    ]
    assert main([*args, "--dry-run"]) == 0
    bad = next(Path(ln.split()[-1]) for ln in capsys.readouterr().out.splitlines() if "-sam-" in ln)
    bad.mkdir(parents=True)
    (bad / "config.json").write_text(json.dumps({"config": {"task": "mnist", "eta": 9.0}}))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"FAILED {bad.name}" in err and "RunDirError" in err and "different configuration" in err
    logs = [Path(ln.split("log: ", 1)[1]) for ln in err.splitlines() if "log: " in ln]
    assert logs and any(p.exists() and "RunDirError" in p.read_text() for p in logs)
    assert len([p for p in tmp_path.rglob("summary.json")]) == 1


def test_slurm_dry_run_prints_submitits_script(tmp_path, capsys):
    """--executor slurm --dry-run: the plan and the sbatch script, nothing submitted or written."""
    args = [
        "sweep",
        "mnist",
        "--preset",
        "smoke",
        "--grid",
        "eta=0.2,0.3",
        "--seeds",
        "0",
        "1",
        *TINY,
        "--results-dir",
        str(tmp_path / "res"),
        "--executor",
        "slurm",
        "--slurm-partition",
        "gpu",
        "--slurm-time",
        "45",
        "--slurm-gpus",
        "1",
        "--slurm-option",
        "qos=high",
        "--slurm-option",
        "mem=8G",
        "--max-parallel",
        "3",
        "--dry-run",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert sum(ln.startswith("  to run") for ln in out.splitlines()) == 8  # 2 etas x 2 smoke rhos x 2 seeds
    lines = set(out.splitlines())
    for flag in ["--partition=gpu", "--time=45", "--gpus-per-node=1", "--qos=high", "--mem=8G", "--array=0-7%3"]:
        assert f"#SBATCH {flag}" in lines, flag
    assert not (tmp_path / "res").exists()


def test_reproduce_delegates(capsys, tmp_path):
    """`samedge reproduce` is python -m samedge.reproduce: --list works, usage errors are status 2."""
    assert main(["reproduce", "--list"]) == 0
    assert re.search(r"^mnist: .*parameters: .*preset", capsys.readouterr().out, re.M)
    assert main(["reproduce", "--out", str(tmp_path), "--notebooks", "nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err
