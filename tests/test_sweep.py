"""Sweeps through submitit: a 4-run sweep on the local executor (real subprocesses) equal to the
same runs in-process; a job cancelled mid-run and the sweep re-submitted (it resumes that run to
the uninterrupted record and reloads the finished one); the sbatch script submitit generates for
SLURM; grids that are errors before anything is submitted."""

from __future__ import annotations

import datetime
import itertools
import os
import shutil
import sys
import time
from pathlib import Path

import cloudpickle
import pandas as pd
import pytest
import torch

from samedge.columns import TIMING_COLUMNS
from samedge.config import ConfigError
from samedge.loop import CHECKPOINT, run
from samedge.record import RunRecord
from samedge.runs import parse_grid, plan
from samedge.sweep import (
    RunJob,
    SweepRunner,
    execute,
    make_executor,
    slurm_parameters,
    slurm_script,
    sweep,
)

DATA = os.environ.get("SAMEDGE_DATA_DIR")
needs_mnist = pytest.mark.skipif(
    not DATA or not (Path(DATA) / "MNIST" / "raw").is_dir(),
    reason="set SAMEDGE_DATA_DIR to a directory holding MNIST/raw",
)
# Smaller than the smoke preset: each run takes well under a second once torch is imported.
TINY = dict(n_train=128, n_test=32, width=16, depth=2, steps=10, measure_every=5)


@pytest.fixture(autouse=True)
def _jobs_use_this_process_threads(monkeypatch):
    """Records repeat bit for bit only at one torch thread count: the jobs get this process's, so
    that they can be compared with runs made here (sweep leaves OMP_NUM_THREADS as it finds it)."""
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))


def same_rows(a: RunRecord, b: RunRecord) -> bool:
    """Every column but the wall-clock ones equal, value for value."""
    fa, fb = a.frame.drop(columns=TIMING_COLUMNS), b.frame.drop(columns=TIMING_COLUMNS)
    return list(fa.columns) == list(fb.columns) and fa.equals(fb)


def job_intervals(folder: Path) -> list:
    """(start, end) of each job from submitit's own log lines (inside each process's lifetime)."""

    def stamp(line: str) -> float:
        return datetime.datetime.strptime(line.split("(", 1)[1].split(")", 1)[0], "%Y-%m-%d %H:%M:%S,%f").timestamp()

    out = []
    for log in folder.glob("*_0_log.out"):  # submitit logs INFO to stdout
        lines = log.read_text().splitlines()
        out.append(
            (
                stamp(next(ln for ln in lines if "Starting with" in ln)),
                stamp(next(ln for ln in lines if "Exiting after" in ln)),
            )
        )
    return out


def max_overlap(intervals: list) -> int:
    """The most intervals that contain one moment."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda e: (e[0], e[1]))
    best = live = 0
    for _, d in events:
        live += d
        best = max(best, live)
    return best


# ---- grids and plans (no compute) ----


def test_grid_spellings_and_numbers():
    """Repeated --grid and one comma list mean the same; 1e-3 (a string to YAML 1.1) is a float."""
    assert (
        parse_grid(["eta=0.1,0.2", "rho=0,1e-3"])
        == parse_grid(["eta=0.1,0.2,rho=0,1e-3"])
        == {"eta": [0.1, 0.2], "rho": [0, 0.001]}
    )
    assert parse_grid(["steps=20,40"]) == {"steps": [20, 40]}


def test_plan_is_the_product_of_grid_and_seeds(tmp_path):
    """2 etas x 2 rhos x 3 seeds -> 12 distinct run directories holding exactly those settings;
    a grid without rho runs every rho of the preset (smoke: 0 and 0.05), and without seeds every
    seed of the preset (smoke: 0 and 1)."""
    runs = plan("mnist", "smoke", {"eta": [0.2, 0.3], "rhos": [0.0, 0.1]}, [0, 1, 2], TINY, tmp_path)
    assert len({r.run_dir for r in runs}) == 12
    assert {(r.config.eta, r.config.rho, r.config.seed) for r in runs} == set(
        itertools.product([0.2, 0.3], [0.0, 0.1], [0, 1, 2])
    )
    assert all(r.run_dir.parent == tmp_path / "mnist" / "smoke" and r.config.steps == 10 for r in runs)
    runs = plan("mnist", "smoke", {"eta": [0.2, 0.3]}, None, TINY, tmp_path)
    assert {(r.config.eta, r.config.rho, r.config.seed) for r in runs} == set(
        itertools.product([0.2, 0.3], [0.0, 0.05], [0, 1])
    )
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # planning writes nothing


@pytest.mark.parametrize(
    "grid, match",
    [
        ({"nosuch": [1]}, "unknown grid parameter 'nosuch'.*allowed"),
        ({"eta": []}, "'eta' has no values"),
        ({"eta": [0.1, -0.2]}, "eta=-0.2.*eta must be a finite number > 0"),
        ({"eta": [0.0]}, "eta must be a finite number > 0"),
        ({"eta": ["fast"]}, "eta must be a finite number > 0, got 'fast'"),
        ({"batch_size": [16, 2.5]}, "batch_size=2.5.*batch_size must be a positive integer"),
        ({"rho": [0.0], "rhos": [0.1]}, "'rho' is given twice"),
        ({"eta": [0.1, 0.1]}, "lists the value 0.1 twice"),
        ({"seed": [0, 1]}, "use seeds="),
    ],
)
def test_bad_grid_is_an_error_before_anything_is_submitted(tmp_path, grid, match):
    """The error names the parameter and the value; no run directory and no submitit folder exist."""
    with pytest.raises(ConfigError, match=match):
        sweep("mnist", "smoke", grid, params=TINY, results_dir=tmp_path / "res", executor="local", progress=False)
    assert not (tmp_path / "res").exists()


def test_unknown_task_preset_and_seeds_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'nosuch'"):
        plan("nosuch", "smoke", {"eta": [0.1]}, None, None, tmp_path)
    with pytest.raises(ConfigError, match="preset must be one of"):
        plan("mnist", "huge", {"eta": [0.1]}, None, None, tmp_path)
    with pytest.raises(ConfigError, match="seeds lists a seed twice"):
        plan("mnist", "smoke", {"eta": [0.1]}, [0, 0], None, tmp_path)
    with pytest.raises(ConfigError, match="set both as a parameter"):
        plan("mnist", "smoke", {"eta": [0.1]}, None, {"eta": 0.2}, tmp_path)


def test_job_device_on_this_machine_or_a_slurm_node():
    """A local or debug job's device is resolved here; a SLURM job's on its node: 'auto' is cuda
    exactly when GPUs are requested, and 'cuda' is not checked against this machine."""
    from samedge.config import resolve_device
    from samedge.sweep import EXECUTORS, check_executor

    assert resolve_device("auto", here=False, gpus=0) == "cpu"
    assert resolve_device("auto", here=False, gpus=2) == "cuda"
    assert resolve_device("cuda:1", here=False) == "cuda:1" and resolve_device("cpu", here=False, gpus=1) == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="device must be"):
        resolve_device("tpu", here=False)
    assert [check_executor(e) for e in EXECUTORS] == list(EXECUTORS) == ["local", "slurm", "debug"]
    with pytest.raises(ConfigError, match=r"executor must be one of \['local', 'slurm', 'debug'\]"):
        check_executor("cluster")


# ---- the local executor, end to end ----


@needs_mnist
def test_local_sweep_of_four_runs_equals_in_process_runs(tmp_path):
    """2 etas x 2 rhos through submitit's local executor (subprocesses, 2 at a time): four run
    directories, each record equal to the same configuration run here with loop.run; a second
    sweep reloads all four and submits nothing."""
    grid = {"eta": [0.2, 0.3], "rho": [0.0, 0.05]}
    records = sweep(
        "mnist",
        "smoke",
        grid,
        seeds=[0],
        params=TINY,
        results_dir=tmp_path,
        executor="local",
        max_parallel=2,
        device="cpu",
        progress=False,
        poll_s=0.2,
    )
    assert [(r.config.eta, r.config.rho) for r in records] == list(itertools.product([0.2, 0.3], [0.0, 0.05]))
    folders = list((tmp_path / "mnist" / "smoke" / "submitit").iterdir())
    assert len(folders) == 1 and len(list(folders[0].glob("*_result.pkl"))) == 4  # four jobs, one result each
    assert max_overlap(job_intervals(folders[0])) <= 2  # never more than max_parallel jobs alive
    for rec in records:
        d = tmp_path / "mnist" / "smoke" / rec.config.run_name()
        assert (d / "record.csv").is_file() and (d / "summary.json").is_file() and not (d / CHECKPOINT).exists()
        assert same_rows(rec, run(rec.config, progress=False))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("record.csv")}
    again = execute(plan("mnist", "smoke", grid, [0], TINY, tmp_path), "local", 2, progress=False)
    assert [o.status for o in again.outcomes] == ["reloaded"] * 4 and again.folder is None
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("record.csv")} == before


class FailSecondJob(RunJob):
    """The sweep's job, failing on the second run it is given (a run whose eta is 0.3)."""

    def __call__(self, config, run_dir, data_dir=None):
        if config["eta"] == 0.3:
            raise RuntimeError("planned failure of the eta=0.3 run")
        return super().__call__(config, run_dir, data_dir)


@needs_mnist
def test_runs_per_job_batches_runs_into_fewer_jobs(tmp_path):
    """runs_per_job=2 on 3 runs, 2 jobs at a time: two jobs (2 runs and 1), each run's record equal
    to the same run in-process, outcomes in the plan's order, SAM runs submitted first."""
    grid = {"rho": [0.0, 0.05, 0.1]}
    runs = plan("mnist", "smoke", grid, [0], TINY, tmp_path)
    result = execute(runs, "local", 2, folder=tmp_path / "sub", progress=False, poll_s=0.1, runs_per_job=2)
    assert [o.status for o in result.outcomes] == ["done"] * 3
    assert [o.run.config.rho for o in result.outcomes] == [0.0, 0.05, 0.1]
    assert len(list((tmp_path / "sub").glob("*_result.pkl"))) == 2  # two jobs for three runs
    jobs = {o.run.config.rho: o.job_id for o in result.outcomes}
    assert jobs[0.05] == jobs[0.1] != jobs[0.0]  # the two SAM runs shared the first job
    for rec in result.records():
        assert same_rows(rec, run(rec.config, progress=False))


@needs_mnist
def test_runs_per_job_failure_marks_only_unfinished_runs_failed(tmp_path):
    """A batch of 3 runs whose second run raises: the first is done, the second failed with its
    error, the third (never started) failed; a second sweep computes only those two."""
    grid = {"eta": [0.2, 0.3, 0.4], "rho": [0.05]}
    runs = plan("mnist", "smoke", grid, [0], TINY, tmp_path / "res")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # FailSecondJob lives in this test module
    try:
        runner = SweepRunner(
            runs,
            make_executor("local", tmp_path / "sub1", timeout_min=10),
            max_parallel=1,
            job=FailSecondJob(),
            runs_per_job=3,
        )
        first = runner.wait(progress=False, poll_s=0.1)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert [o.status for o in first.outcomes] == ["done", "failed", "failed"]
    assert all("planned failure" in o.error for o in first.failed)
    assert runs[0].finished and not runs[1].finished and not runs[2].finished
    second = execute(runs, "local", 1, folder=tmp_path / "sub2", progress=False, poll_s=0.1, runs_per_job=3)
    assert [o.status for o in second.outcomes] == ["reloaded", "done", "done"]


def test_runs_per_job_is_checked():
    """runs_per_job must be a positive integer, and needs a windowed executor and a RunJob."""
    import submitit

    ex = submitit.DebugExecutor(folder="unused")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="runs_per_job must be a positive integer"):
            SweepRunner([], ex, runs_per_job=bad)
    with pytest.raises(ConfigError, match="many"):
        SweepRunner([], ex, job=lambda *a: None, runs_per_job=2)


class SlowJob(RunJob):
    """The sweep's job, slowed after every checkpoint so the test can cancel it mid-run."""

    def __call__(self, config, run_dir, data_dir=None):
        import time as _time

        import samedge.rundir as rundir

        save = rundir.save_checkpoint

        def slow_save(path, state):
            save(path, state)
            _time.sleep(0.15)

        rundir.save_checkpoint = slow_save
        return super().__call__(config, run_dir, data_dir)


@needs_mnist
def test_cancelled_job_resumes_on_resubmission(tmp_path):
    """Two runs on the local executor; one job is cancelled (submitit's job.cancel(), as scancel)
    once its checkpoint is past step 10. That sweep reports it failed, with its logs; the sweep
    re-submitted runs only that one, which resumes from its checkpoint to the record of an
    uninterrupted run, and reloads the other without touching its files."""
    params = {**TINY, "steps": 40, "measure_every": 3, "checkpoint_every": 2}
    runs = plan("mnist", "smoke", {"rho": [0.0, 0.05]}, [3], params, tmp_path / "res")
    target = runs[1]
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # SlowJob lives in this test module
    try:
        runner = SweepRunner(
            runs, make_executor("local", tmp_path / "sub1", timeout_min=10), max_parallel=2, job=SlowJob()
        )
        runner.start()
        deadline, cancelled_at = time.time() + 180, None
        while time.time() < deadline and cancelled_at is None and runner.active:
            runner.poll()
            assert len(runner.jobs) <= 2
            ck = target.run_dir / CHECKPOINT
            if ck.exists() and target.run_dir in runner.jobs:
                try:
                    step = torch.load(ck, weights_only=True)["step"]
                except Exception:  # caught between write and rename: look again
                    step = 0
                if step >= 10:
                    saved_rows = torch.load(ck, weights_only=True)["rows"]  # with the first attempt's timings
                    runner.jobs[target.run_dir].cancel()
                    cancelled_at = step
            time.sleep(0.05)
        assert cancelled_at is not None, "the job finished or hung before it could be cancelled"
        first = runner.wait(progress=False, poll_s=0.1)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert [o.status for o in first.outcomes] == ["done", "failed"]
    failed = first.failed[0]
    assert failed.run == target and "without a result" in failed.error
    assert any(Path(p).exists() for p in failed.logs) and all(str(tmp_path / "sub1") in p for p in failed.logs)
    assert target.run_dir.name in first.failure_report() and not target.finished
    assert (target.run_dir / CHECKPOINT).exists()

    done_files = {p: p.stat().st_mtime_ns for p in runs[0].run_dir.iterdir()}
    second = execute(runs, "local", max_parallel=2, folder=tmp_path / "sub2", progress=False, poll_s=0.1)
    assert [o.status for o in second.outcomes] == ["reloaded", "done"]
    assert second.outcomes[1].resumed_from is not None and second.outcomes[1].resumed_from >= cancelled_at
    assert {p: p.stat().st_mtime_ns for p in runs[0].run_dir.iterdir()} == done_files
    assert len(list((tmp_path / "sub2").glob("*_result.pkl"))) == 1  # one job submitted, not two
    resumed = RunRecord.load(target.run_dir)
    assert resumed.frame["step"].tolist() == runs[0].config.measured_steps()  # the schedule, pairs included
    assert same_rows(resumed, run(target.config, progress=False))
    assert not (target.run_dir / CHECKPOINT).exists()
    # Resumed, not recomputed: the rows before the cancel keep the first attempt's wall-clock times.
    by_step = resumed.frame.set_index("step")
    assert saved_rows and all(
        by_step.loc[r["step"], c] == pytest.approx(r[c], rel=1e-12) for r in saved_rows for c in TIMING_COLUMNS
    )


# ---- SLURM: submitit's own sbatch script, nothing submitted ----


def test_slurm_script_holds_partition_time_gpus_and_options(tmp_path):
    """The script submitit writes for a job array of 5 runs, 3 at a time."""
    params = slurm_parameters(
        "gpu-long", 90, 2, {"qos": "high", "mem": "16G", "cpus_per_task": 4, "reservation": "r1"}, max_parallel=3
    )
    text = slurm_script(tmp_path / "submitit", params, num_jobs=5)
    lines = set(text.splitlines())
    for flag in [
        "--partition=gpu-long",
        "--time=90",
        "--gpus-per-node=2",
        "--qos=high",
        "--mem=16G",
        "--cpus-per-task=4",
        "--reservation=r1",
        "--array=0-4%3",
    ]:
        assert f"#SBATCH {flag}" in lines, (flag, text)
    assert (
        f"-m submitit.core._submit {tmp_path / 'submitit'}" in text
        and f"--output={tmp_path / 'submitit'}/%A_%a_0_log.out" in text
    )
    assert not (tmp_path / "submitit").exists()  # nothing submitted, nothing written


def test_slurm_yaml_file_and_command_line(tmp_path):
    """A YAML file of SLURM parameters, the command line overriding it; bad values are errors."""
    f = tmp_path / "slurm.yaml"
    f.write_text(
        "partition: short\ntime: 20\ngpus: 1\nconstraint: a100\nsetup: [module load cuda/12.4]\naccount: lab\n"
    )
    params = slurm_parameters(partition="long", config_file=f)
    text = slurm_script(tmp_path / "s", params, num_jobs=1)
    for flag in ["--partition=long", "--time=20", "--gpus-per-node=1", "--constraint=a100", "--account=lab"]:
        assert f"#SBATCH {flag}" in text.splitlines(), (flag, text)
    assert "module load cuda/12.4" in text.splitlines() and "--array" not in text
    with pytest.raises(ConfigError, match="time must be a positive integer, got 'soon'"):
        slurm_parameters(time_min="soon")
    with pytest.raises(ConfigError, match="gpus_per_node must be a non-negative integer"):
        slurm_parameters(gpus=-1)
    with pytest.raises(ConfigError, match="does not exist"):
        slurm_parameters(config_file=tmp_path / "missing.yaml")


@pytest.mark.skipif(shutil.which("srun") is not None, reason="SLURM is installed here")
def test_slurm_executor_without_slurm_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="needs SLURM.*--dry-run"):
        make_executor("slurm", tmp_path / "s", slurm=slurm_parameters("gpu"))
    assert not (tmp_path / "s").exists()


def test_debug_executor_runs_in_process(tmp_path):
    """submitit's debug executor: the runs happen here, the records are the in-process ones."""
    if not DATA or not (Path(DATA) / "MNIST" / "raw").is_dir():
        pytest.skip("needs MNIST")
    records = sweep(
        "mnist",
        "smoke",
        {"rho": [0.0, 0.05]},
        seeds=[0],
        params=TINY,
        results_dir=tmp_path,
        executor="debug",
        device="cpu",
        progress=False,
        poll_s=0.01,
    )
    assert len(records) == 2
    for rec in records:
        assert same_rows(rec, run(rec.config, progress=False))
    assert isinstance(records[0].frame, pd.DataFrame)


def test_progress_goes_to_stderr_only(tmp_path, capsys):
    """With progress on, the per-run lines and the bar are on stderr: stdout (what a built book
    shows of a cell) stays empty."""
    if not DATA or not (Path(DATA) / "MNIST" / "raw").is_dir():
        pytest.skip("needs MNIST")
    sweep(
        "mnist",
        "smoke",
        {"rho": [0.0]},
        seeds=[0],
        params=TINY,
        results_dir=tmp_path,
        executor="debug",
        device="cpu",
        progress=True,
        poll_s=0.01,
    )
    out, err = capsys.readouterr()
    assert "[1/1]" in err and out == "", (out, err)


def test_run_experiment_in_parallel_jobs_equals_in_process(tmp_path):
    """A notebook's runs (2 seeds x 2 rhos) through local jobs, 2 at a time, give the records of
    the same runs made in this process one after the other, in the same order (seed by seed);
    a second call reloads them all."""
    if not DATA or not (Path(DATA) / "MNIST" / "raw").is_dir():
        pytest.skip("needs MNIST")
    from samedge.experiment import run_experiment
    from samedge.presets import resolve_params

    def params(where):
        return resolve_params("mnist", "smoke", seeds=[0, 1], results_dir=str(tmp_path / where), device="cpu", **TINY)

    jobs = run_experiment("mnist", params("jobs"), progress=False, parallel=2)
    here = run_experiment("mnist", params("here"), progress=False, parallel=1)
    assert [(r.config.seed, r.config.rho) for r in jobs] == [(0, 0.0), (0, 0.05), (1, 0.0), (1, 0.05)]
    assert [r.config for r in jobs] == [r.config for r in here]
    assert all(same_rows(a, b) for a, b in zip(jobs, here))
    assert (tmp_path / "jobs" / "mnist" / "smoke" / "submitit").is_dir()  # it did go through submitit
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "jobs").rglob("record.csv")}
    again = run_experiment("mnist", params("jobs"), progress=False, parallel=2)
    assert all(same_rows(a, b) for a, b in zip(again, jobs))
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "jobs").rglob("record.csv")} == before
    with pytest.raises(ConfigError, match="parallel"):
        run_experiment("mnist", params("x"), parallel=0)


def test_run_experiments_pools_tasks_into_one_queue(tmp_path):
    """Two tasks' runs from one queue of local jobs (2 at a time): each task gets its own records,
    in its plan's order, equal to the same runs made in this process task by task."""
    if not DATA or not (Path(DATA) / "MNIST" / "raw").is_dir() or not (Path(DATA) / "cifar-10-batches-bin").is_dir():
        pytest.skip("needs MNIST and CIFAR-10")
    from samedge.experiment import run_experiment, run_experiments
    from samedge.presets import resolve_params

    def params(task, where):
        sizes = TINY if task == "mnist" else dict(n_train=16, n_test=16, steps=4, measure_every=2)
        return resolve_params(task, "smoke", seeds=[0], results_dir=str(tmp_path / where), device="cpu", **sizes)

    pooled = run_experiments({t: params(t, "pooled") for t in ("mnist", "cifar10")}, progress=False, parallel=2)
    assert list(pooled) == ["mnist", "cifar10"]
    for task, recs in pooled.items():
        here = run_experiment(task, params(task, "here"), progress=False, parallel=1)
        assert [r.config for r in recs] == [r.config for r in here] and all(r.config.task == task for r in recs)
        assert all(same_rows(a, b) for a, b in zip(recs, here))
    # One submission for both tasks: a single submitit folder under each task's results root.
    assert len(list((tmp_path / "pooled").rglob("submitit/*"))) == 1
