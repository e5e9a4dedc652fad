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

__all__ = ["run_experiment", "default_parallel"]


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
    runs = planned_runs(task, params)
    if parallel is None:
        parallel = default_parallel(params.get("device", "cpu"), len(runs))
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(f"parallel must be a positive integer (runs at once), got {parallel!r}")
    if parallel > 1 and sum(not r.finished for r in runs) > 1:
        result = execute(runs, "local", max_parallel=parallel, progress=progress, desc=f"{task} runs")
        if result.failed:
            raise SweepError(result.failure_report(), result)
        return result.records()
    return [
        run(r.config, r.run_dir, data_dir=r.data_dir, progress=progress)
        for r in tqdm(runs, desc=f"{task} runs", disable=not progress)
    ]
