"""Executing planned runs (``samedge.runs``) through submitit: one job per run, each job one
fingerprinted run directory; ``sweep`` plans a grid and executes it.

    records = sweep("mnist", "smoke", {"eta": [0.2, 0.3], "rho": [0.0, 0.05]}, seeds=[0, 1],
                    executor="local", max_parallel=2)

Every run's configuration is built (and validated) before anything is submitted. A run whose
directory already holds ``summary.json`` and ``record.csv`` is reloaded, not submitted; an
unfinished one (a checkpoint left by a failure, a preemption or a cancel) is submitted again and
resumes from its checkpoint through ``loop.run``, so re-running the same sweep computes only
what is missing. Executors (all submitit's):

- ``local``: one subprocess per run on this machine, at most ``max_parallel`` at a time;
- ``slurm``: one SLURM job array (``array_parallelism`` = ``max_parallel``), parameters from
  ``slurm_parameters``; a job that SLURM preempts or times out is requeued by submitit and
  resumes from its checkpoint;
- ``debug``: in this process, one run after another (submitit's debug executor, which opens
  pdb on an error).
"""

from __future__ import annotations

import datetime
import itertools
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import yaml
from tqdm.auto import tqdm

from .config import ConfigError, RunConfig, resolve_device
from .loop import CHECKPOINT, run
from .record import RunRecord
from .rundir import is_finished
from .runs import PlannedRun, plan

__all__ = [
    "EXECUTORS",
    "check_executor",
    "Outcome",
    "SweepResult",
    "SweepError",
    "RunJob",
    "slurm_parameters",
    "make_executor",
    "slurm_script",
    "SweepRunner",
    "default_folder",
    "local_gpus",
    "execute",
    "sweep",
]

EXECUTORS = ("local", "slurm", "debug")
# Where submitit's per-attempt folders (sbatch scripts, pickles, logs) go, under the results root.
SUBMITIT_DIR = "submitit"


def check_executor(executor: str) -> str:
    """``executor`` if it is one of ``EXECUTORS``, else a ConfigError listing them."""
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {list(EXECUTORS)}, got {executor!r}")
    return executor


class SweepError(RuntimeError):
    """Some runs of a sweep failed; ``result`` holds every run's outcome."""

    def __init__(self, message: str, result: "SweepResult"):
        super().__init__(message)
        self.result = result


class RunJob:
    """The job: run (or resume, or reload) one configuration in its run directory.

    Checkpointable by submitit: on SLURM preemption or time-out it is requeued with the same
    arguments, and ``loop.run`` resumes from the run directory's checkpoint.

    ``threads``: torch's CPU threads in the job (None: torch's default). Parallel local jobs
    that each take torch's default of one thread per core oversubscribe the cores, and busy-
    waiting threads then slow every job several-fold."""

    def __init__(self, threads: Optional[int] = None):
        self.threads = threads

    def __call__(self, config: Dict[str, Any], run_dir: str, data_dir: Optional[str] = None) -> Dict[str, Any]:
        """Run ``config`` into ``run_dir``; returns the step it resumed from (None: fresh) and the median ratio."""
        import torch

        if getattr(self, "threads", None):
            torch.set_num_threads(self.threads)
        cfg = RunConfig.from_dict(config)
        ckpt = Path(run_dir) / CHECKPOINT
        resumed_from = None
        if ckpt.exists() and not is_finished(Path(run_dir)):
            resumed_from = int(torch.load(ckpt, weights_only=True, map_location="cpu")["step"])
            print(f"resuming {run_dir} from step {resumed_from}", flush=True)
        record = run(cfg, run_dir, data_dir=data_dir, progress=False)
        return dict(
            run_dir=str(run_dir),
            resumed_from=resumed_from,
            median_ratio=record.median_ratio(),
            complete=bool(record.summary.get("complete")),
        )

    def many(self, items: Sequence[Sequence[Any]]) -> List[Dict[str, Any]]:
        """Run several ``(config, run_dir, data_dir)`` one after the other in one job: one process
        start (Python, torch, the data) for all of them, for sweeps of many short runs."""
        return [self(*item) for item in items]

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeue with the same arguments (submitit calls this on preemption / time-out)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def slurm_parameters(
    partition: Optional[str] = None,
    time_min: Optional[int] = None,
    gpus: Optional[int] = None,
    options: Optional[Mapping[str, Any]] = None,
    config_file: Optional[str | os.PathLike] = None,
    max_parallel: Optional[int] = None,
) -> Dict[str, Any]:
    """Parameters of ``submitit.SlurmExecutor.update_parameters``, from a YAML file and the
    command line (which wins). Keys submitit knows (``qos``, ``account``, ``mem``,
    ``cpus_per_task``, ``constraint``, ``setup``, ...) go as they are; any other key becomes an
    extra ``#SBATCH --key=value`` line (``additional_parameters``)."""
    # submitit has no public list of its SLURM parameters; its own default table is the list.
    from submitit.slurm.slurm import _get_default_parameters

    known = set(_get_default_parameters())
    merged: Dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"SLURM config file {str(path)!r} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"SLURM config file {path} must hold a mapping of SLURM parameters to values")
        merged.update(data)
    merged.update(options or {})
    # Friendly spellings (as the command line names them) for submitit's.
    for alias, name in (("gpus", "gpus_per_node"), ("time_min", "time"), ("timeout_min", "time")):
        if alias in merged:
            merged[name] = merged.pop(alias)
    for name, value in (
        ("partition", partition),
        ("time", time_min),
        ("gpus_per_node", gpus),
        ("array_parallelism", max_parallel),
    ):
        if value is not None:
            merged[name] = value
    extra = dict(merged.pop("additional_parameters", None) or {})
    out: Dict[str, Any] = {}
    for k, v in merged.items():
        if k in known:
            out[k] = v
        elif k.replace("-", "_") in known:
            out[k.replace("-", "_")] = v
        else:
            extra[k] = v
    for name in ("time", "gpus_per_node", "array_parallelism", "cpus_per_task", "nodes"):
        v = out.get(name)
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "gpus_per_node" else 1)
        ):
            raise ConfigError(
                f"SLURM parameter {name} must be a {'non-negative' if name == 'gpus_per_node' else 'positive'} integer, got {v!r}"
            )
    out.setdefault("time", 60)
    if extra:
        out["additional_parameters"] = extra
    return out


def default_folder(runs: Sequence[PlannedRun]) -> Path:
    """A new submitit folder for one submission: ``<results root>/submitit/<UTC time>`` (one per
    attempt, since local job ids are process ids, which the system reuses)."""
    folder = runs[0].run_dir.parent / SUBMITIT_DIR
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    for i in itertools.count():
        d = folder / (stamp if i == 0 else f"{stamp}-{i}")
        if not d.exists():
            return d
    raise AssertionError("unreachable")


def make_executor(
    kind: str,
    folder: str | os.PathLike,
    timeout_min: int = 24 * 60,
    slurm: Optional[Mapping[str, Any]] = None,
    gpus: int = 0,
):
    """A submitit executor writing into ``folder``: ``local`` (subprocesses, ``gpus`` visible to
    each; 0 hides every GPU, as submitit does), ``slurm`` (``slurm_parameters``) or ``debug``."""
    import submitit

    if kind == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=timeout_min, gpus_per_node=gpus)
        return ex
    if kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    if kind == "slurm":
        try:
            ex = submitit.SlurmExecutor(folder=folder)
        except RuntimeError as err:
            raise ConfigError(
                f"the slurm executor needs SLURM here ({err}); run the sweep on the cluster's login node, "
                "or add --dry-run to print the sbatch script without submitting"
            ) from None
        ex.update_parameters(**dict(slurm or {}))
        return ex
    raise ConfigError(f"executor must be one of {list(EXECUTORS)}, got {kind!r}")


def slurm_script(
    folder: str | os.PathLike, slurm: Mapping[str, Any], num_jobs: int, python: Optional[str] = None
) -> str:
    """The sbatch script submitit would submit for a job array of ``num_jobs`` runs, without
    SLURM: submitit's own ``SlurmExecutor`` parameter check and ``_make_submission_file_text``,
    on an executor built without its check that ``srun`` exists. submitit has no public way to
    render a script without a cluster, so this one function uses its private API (pinned in
    requirements.txt and tested)."""
    import submitit
    from submitit.core.core import PicklingExecutor

    ex = submitit.SlurmExecutor.__new__(submitit.SlurmExecutor)
    PicklingExecutor.__init__(ex, folder)  # SlurmExecutor.__init__ less its "is srun on PATH" check
    ex.python = shlex.quote(sys.executable) if python is None else python
    ex.update_parameters(**dict(slurm))
    if num_jobs > 1:
        ex.parameters["map_count"] = num_jobs  # as SlurmExecutor does for an array
    return ex._make_submission_file_text(ex._submitit_command_str, "dry-run")


@dataclass
class Outcome:
    """What became of one planned run."""

    run: PlannedRun
    status: str  # "reloaded" (finished before), "done", "failed"
    job_id: Optional[str] = None
    logs: Sequence[str] = ()
    error: Optional[str] = None
    resumed_from: Optional[int] = None


@dataclass
class SweepResult:
    """Every run's outcome, and the submitit folder of this attempt."""

    outcomes: List[Outcome]
    folder: Optional[Path] = None

    @property
    def failed(self) -> List[Outcome]:
        """The runs that did not finish."""
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def submitted(self) -> List[Outcome]:
        """The runs that were computed (or resumed) by a job in this attempt."""
        return [o for o in self.outcomes if o.status != "reloaded"]

    def records(self) -> List[RunRecord]:
        """The records of the finished runs, in the plan's order."""
        return [RunRecord.load(o.run.run_dir) for o in self.outcomes if o.status != "failed"]

    def failure_report(self) -> str:
        """One paragraph per failed run: its directory, job id, error and logs."""
        lines = []
        for o in self.failed:
            lines.append(f"FAILED {o.run.name} (job {o.job_id}): {o.error}")
            lines.append(f"  run directory: {o.run.run_dir}")
            for log in o.logs:
                lines.append(f"  log: {log}")
        if self.failed:
            lines.append(
                f"{len(self.failed)} of {len(self.outcomes)} runs failed; run the same sweep again to compute only "
                "the missing and unfinished runs (unfinished ones resume from their checkpoint)."
            )
        return "\n".join(lines)


def _error_line(exc: BaseException) -> str:
    """The last line of a job's traceback (submitit's FailedJobError holds it between dashed lines)."""
    text = str(exc)
    parts = text.split("-" * 22)
    trace = parts[1] if len(parts) >= 3 else text
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"{type(exc).__name__}: {text}"


class SweepRunner:
    """Submits the unfinished runs as submitit jobs and follows them until all have ended.

    Local executors get at most ``max_parallel`` jobs at a time (submitit's local executor has
    no limit of its own); a SLURM executor gets one job array (its ``array_parallelism`` is the
    limit). ``runs_per_job`` (local and debug executors): each job runs up to that many runs one
    after the other (``RunJob.many``), which saves a process start per run when runs take seconds;
    a run a batch finished before a failure counts as done. ``start`` and ``poll`` let a caller
    act on the jobs while they run; ``wait`` does both."""

    def __init__(
        self,
        runs: Sequence[PlannedRun],
        executor,
        max_parallel: Optional[int] = None,
        job: Optional[Callable[..., Any]] = None,
        runs_per_job: int = 1,
    ):
        import submitit

        if max_parallel is not None and (
            isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1
        ):
            raise ConfigError(f"max_parallel must be a positive integer, got {max_parallel!r}")
        if isinstance(runs_per_job, bool) or not isinstance(runs_per_job, int) or runs_per_job < 1:
            raise ConfigError(f"runs_per_job must be a positive integer, got {runs_per_job!r}")
        self.runs = list(runs)
        self.executor = executor
        self.job = job or RunJob()
        if runs_per_job > 1 and not callable(getattr(self.job, "many", None)):
            raise ConfigError("runs_per_job > 1 needs a job with a many(items) method, such as RunJob")
        self.windowed = isinstance(executor, (submitit.LocalExecutor, submitit.DebugExecutor))
        if runs_per_job > 1 and not self.windowed:
            raise ConfigError("runs_per_job > 1 needs the local or debug executor (SLURM runs one run per array task)")
        self.runs_per_job = runs_per_job
        self.limit = (max_parallel or 1) if isinstance(executor, submitit.DebugExecutor) else (max_parallel or math.inf)
        self.outcomes: Dict[Path, Outcome] = {}
        self.pending: List[PlannedRun] = []
        self.jobs: Dict[Path, Any] = {}  # run_dir -> submitit job, while it runs
        self.slot: Dict[Path, Optional[int]] = {}  # run_dir -> its index in a batched job's results
        for r in self.runs:
            if r.finished:
                self.outcomes[r.run_dir] = Outcome(r, "reloaded")
            else:
                self.pending.append(r)
        if self.windowed:
            # SAM runs (two gradients a step) first, GD runs last: the runs that end a window are
            # the short ones, so fewer cores idle while the last run finishes. Results keep the
            # plan's order.
            self.pending.sort(key=lambda r: r.config.rho == 0)
        self.started = False

    @property
    def done_count(self) -> int:
        """How many runs have ended (reloaded, done or failed)."""
        return len(self.outcomes)

    def _submit(self, runs: Sequence[PlannedRun]) -> None:
        if not runs:
            return
        args = [(r.config.to_dict(), str(r.run_dir), None if r.data_dir is None else str(r.data_dir)) for r in runs]
        if self.runs_per_job > 1:
            k = self.runs_per_job
            for i in range(0, len(runs), k):
                j = self.executor.submit(self.job.many, args[i : i + k])  # type: ignore[union-attr]
                for n, r in enumerate(runs[i : i + k]):
                    self.jobs[r.run_dir], self.slot[r.run_dir] = j, n
            return
        if self.windowed:
            jobs = [self.executor.submit(self.job, *a) for a in args]
        else:
            jobs = self.executor.map_array(self.job, *zip(*args))
        for r, j in zip(runs, jobs):
            self.jobs[r.run_dir], self.slot[r.run_dir] = j, None

    def start(self) -> None:
        """Submit the first jobs (all of them for SLURM)."""
        self.started = True
        n = len(self.pending) if not self.windowed else int(min(self.limit * self.runs_per_job, len(self.pending)))
        batch, self.pending = self.pending[:n], self.pending[n:]
        self._submit(batch)

    def _finish(self, run: PlannedRun, job, slot: Optional[int] = None) -> Outcome:
        import submitit

        logs = [str(job.paths.stderr), str(job.paths.stdout)]
        debug = isinstance(job, submitit.DebugJob)
        try:
            if not debug and isinstance(job, submitit.LocalJob) and not job.paths.result_pickle.exists():
                # A local job that left no result was killed or cancelled; waiting for one is useless.
                err: Optional[str] = (
                    f"the job ended without a result (state {job.state}): killed, cancelled or timed out"
                )
            else:
                exc = job.exception()
                err = None if exc is None else _error_line(exc)
        except Exception as e:  # the debug executor raises the run's own error
            err = f"{type(e).__name__}: {e}"
        resumed = None
        if err is None:
            try:
                result = job.result()
                resumed = (result if slot is None else result[slot]).get("resumed_from")
            except Exception as e:
                err = f"{type(e).__name__}: {e}"
        if err is not None and slot is not None and run.finished:
            err = None  # its batch failed or was killed after this run had finished
        if err is None and not run.finished:
            err = f"the job ended but {run.run_dir} holds no summary.json and record.csv"
        return Outcome(run, "failed" if err else "done", str(job.job_id), () if debug else logs, err, resumed)

    def poll(self) -> List[Outcome]:
        """Collect the jobs that have ended and submit more; returns the newly ended runs."""
        if not self.started:
            self.start()
        ended = []
        for run_dir, job in list(self.jobs.items()):
            try:
                finished = job.done()
            except Exception:  # the debug executor runs the job inside done() and raises its error
                finished = True
            if finished:
                del self.jobs[run_dir]
                run_ = next(r for r in self.runs if r.run_dir == run_dir)
                out = self._finish(run_, job, self.slot.pop(run_dir, None))
                self.outcomes[run_dir] = out
                ended.append(out)
        if self.windowed and self.pending:
            running = len({id(j) for j in self.jobs.values()})
            room = int(min((self.limit - running) * self.runs_per_job, len(self.pending)))
            batch, self.pending = self.pending[:room], self.pending[room:]
            self._submit(batch)
        return ended

    @property
    def active(self) -> bool:
        """Whether jobs are still running or waiting to be submitted."""
        return bool(self.jobs or self.pending or not self.started)

    def wait(self, progress: bool = True, poll_s: float = 0.2, desc: str = "sweep") -> SweepResult:
        """Poll until every job has ended: a progress bar of the runs done, one line per ended run."""
        bar = tqdm(total=len(self.runs), initial=self.done_count, desc=desc, unit="run", disable=not progress)
        failed = 0
        count = self.done_count  # runs ended so far, counted one by one (a poll can end several)
        try:
            while True:
                for o in self.poll():
                    bar.update(1)
                    count += 1
                    failed += o.status == "failed"
                    bar.set_postfix(failed=failed, refresh=False)
                    if progress:
                        tail = "" if o.status == "done" else f" FAILED: {o.error}"
                        # Progress goes to stderr, like the bar: a notebook's stdout is what a built
                        # book shows, and the book removes stderr (execute.stderr_output in _config.yml).
                        bar.write(
                            f"[{count}/{len(self.runs)}] {o.run.name}"
                            + (" (resumed)" if o.resumed_from else "")
                            + tail,
                            file=sys.stderr,
                        )
                if not self.active:
                    break
                time.sleep(poll_s)
        finally:
            bar.close()
        return SweepResult([self.outcomes[r.run_dir] for r in self.runs], Path(self.executor.folder))


def execute(
    runs: Sequence[PlannedRun],
    executor: str = "local",
    max_parallel: Optional[int] = None,
    folder: Optional[str | os.PathLike] = None,
    timeout_min: int = 24 * 60,
    slurm: Optional[Mapping[str, Any]] = None,
    gpus: int = 0,
    progress: bool = True,
    poll_s: float = 0.2,
    job: Optional[Callable[..., Any]] = None,
    desc: Optional[str] = None,
    runs_per_job: int = 1,
) -> SweepResult:
    """Run the unfinished ones of ``runs`` through a submitit executor; finished ones are reloaded.

    ``folder``: where submitit's files go (default: ``<results root>/submitit/<UTC time>``);
    ``runs_per_job``: runs one local job runs one after the other (``SweepRunner``)."""
    check_executor(executor)
    todo = [r for r in runs if not r.finished]
    if not todo:  # nothing to submit: no executor, no folder
        return SweepResult([Outcome(r, "reloaded") for r in runs], None)
    folder = folder if folder is not None else default_folder(runs)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if executor == "local" and max_parallel is None:
        max_parallel = cores
    if executor == "local" and job is None and "OMP_NUM_THREADS" not in os.environ:
        job = RunJob(threads=max(1, cores // max_parallel))  # the cores shared out among the jobs
    if executor == "slurm":
        slurm = dict(slurm or {})
        if max_parallel is not None:
            slurm["array_parallelism"] = max_parallel
    ex = make_executor(executor, folder, timeout_min=timeout_min, slurm=slurm, gpus=gpus)
    runner = SweepRunner(
        runs, ex, max_parallel=max_parallel if executor != "slurm" else None, job=job, runs_per_job=runs_per_job
    )
    return runner.wait(progress=progress, poll_s=poll_s, desc=desc or f"sweep {runs[0].config.task}")


def sweep(
    task: str,
    preset: Optional[str] = None,
    grid: Optional[Mapping[str, Sequence[Any]]] = None,
    seeds: Optional[Sequence[int]] = None,
    params: Optional[Mapping[str, Any]] = None,
    *,
    executor: str = "local",
    max_parallel: Optional[int] = None,
    results_dir: Optional[str | os.PathLike] = None,
    device: str = "auto",
    slurm: Optional[Mapping[str, Any]] = None,
    timeout_min: int = 24 * 60,
    folder: Optional[str | os.PathLike] = None,
    progress: bool = True,
    poll_s: float = 0.2,
    runs_per_job: int = 1,
) -> List[RunRecord]:
    """Plan (validating every configuration), run the missing runs through submitit, and return
    every run's record in the plan's order; raises ``SweepError`` naming the failed runs.

    ``grid`` maps notebook parameters (``eta``, ``rho``, ``steps``, ``width``, ...) to lists of
    values; ``slurm`` is ``slurm_parameters(...)``; ``max_parallel`` bounds the jobs running at once;
    ``runs_per_job`` > 1 (local executor) runs that many runs in each job, for grids of short runs."""
    gpus = int((slurm or {}).get("gpus_per_node") or 0)
    check_executor(executor)
    given = (params or {}).get("device", device) if device == "auto" else device
    dev = resolve_device(given, here=executor != "slurm", gpus=gpus)
    runs = plan(task, preset, grid, seeds, params, results_dir, dev)
    gpus_seen = local_gpus(dev) if executor == "local" else 0
    result = execute(
        runs, executor, max_parallel, folder, timeout_min, slurm, gpus_seen, progress, poll_s, runs_per_job=runs_per_job
    )
    if result.failed:
        raise SweepError(result.failure_report(), result)
    return result.records()


def local_gpus(device: str) -> int:
    """GPUs a local job must see: submitit's local executor hides all of them unless asked."""
    if not device.startswith("cuda"):
        return 0
    import torch

    return torch.cuda.device_count()
