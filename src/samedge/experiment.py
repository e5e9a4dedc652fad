"""Run every seed and rho of an experiment notebook's parameters, saving each run under the
results directory (``samedge.runs.results_root``): in this process one after the other, or as
parallel local jobs (``samedge.sweep.execute``)."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from tqdm.auto import tqdm

from .config import ConfigError
from .loop import run
from .record import RunRecord
from .runs import planned_runs
from .sweep import SweepError, execute

__all__ = ["run_experiment", "run_experiments", "default_parallel"]


def default_parallel(device: str, runs: int) -> int:
    """Runs at once: one per CPU core on the CPU (single-threaded jobs beat one multi-threaded
    process on small models), one on a GPU (the runs would share it)."""
    if not str(device).startswith("cpu") or runs < 2:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, runs))


def run_experiment(
    task: str, params: Dict[str, Any], progress: bool = True, parallel: Optional[int] = None
) -> List[RunRecord]:
    """Validate every configuration first, then run (or reload) each seed and rho, seed by seed.

    ``parallel``: runs at once (None: ``default_parallel``). With 1 they run in this process, one
    after the other; with more, as jobs of submitit's local executor (``samedge.sweep``), each job
    with ``cores // parallel`` torch threads. Either way a finished run directory is reloaded."""
    return run_experiments({task: params}, progress=progress, parallel=parallel)[task]


def run_experiments(
    experiments: Dict[str, Dict[str, Any]], progress: bool = True, parallel: Optional[int] = None
) -> Dict[str, List[RunRecord]]:
    """``run_experiment`` for several tasks (task -> notebook parameters) at once: every
    configuration is validated first, and parallel jobs are drawn from one queue of all the tasks'
    runs, so that no core waits for one task's last run before the next task starts."""
    plans = {task: planned_runs(task, params) for task, params in experiments.items()}
    runs = [r for rs in plans.values() for r in rs]
    if parallel is None:
        devices = {str(p.get("device", "cpu")) for p in experiments.values()}
        parallel = min(default_parallel(d, len(runs)) for d in devices) if devices else 1
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(f"parallel must be a positive integer (runs at once), got {parallel!r}")
    desc = f"{' + '.join(plans)} runs"
    if parallel > 1 and sum(not r.finished for r in runs) > 1:
        result = execute(runs, "local", max_parallel=parallel, progress=progress, desc=desc)
        if result.failed:
            raise SweepError(result.failure_report(), result)
        records = result.records()
    else:
        records = [
            run(r.config, r.run_dir, data_dir=r.data_dir, progress=progress)
            for r in tqdm(runs, desc=desc, disable=not progress)
        ]
    out, start = {}, 0
    for task, rs in plans.items():
        out[task] = records[start : start + len(rs)]
        start += len(rs)
    return out
