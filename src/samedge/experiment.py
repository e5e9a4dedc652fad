"""Run every seed and rho of an experiment notebook's parameters, saving each run under the
results directory (``results_dir`` parameter, else ``$SAMEDGE_RESULTS_DIR``, else ``./results``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from tqdm.auto import tqdm

from .config import ConfigError
from .loop import run
from .presets import run_configs
from .record import RunRecord

__all__ = ["results_root", "run_experiment", "default_parallel"]

RESULTS_ENV = "SAMEDGE_RESULTS_DIR"


def results_root(task: str, params: Dict[str, Any]) -> Path:
    """Where this experiment's runs are saved: <results_dir>/<task>/<preset>/."""
    base = params.get("results_dir") or os.environ.get(RESULTS_ENV) or "results"
    return Path(base).expanduser() / task / str(params.get("preset", "custom"))


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
    configs = run_configs(task, params)
    root = results_root(task, params)
    if parallel is None:
        parallel = default_parallel(params.get("device", "cpu"), len(configs))
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(f"parallel must be a positive integer (runs at once), got {parallel!r}")
    todo = [c for c in configs if not (root / c.run_name() / "summary.json").exists()]
    if parallel > 1 and len(todo) > 1:
        from .sweep import PlannedRun, SweepError, execute  # the sweep module builds on this one

        runs = [PlannedRun(c, root / c.run_name(), params.get("data_dir")) for c in configs]
        result = execute(runs, "local", max_parallel=parallel, progress=progress, desc=f"{task} runs")
        if result.failed:
            raise SweepError(result.failure_report(), result)
        return result.records()
    records = []
    for cfg in tqdm(configs, desc=f"{task} runs", disable=not progress):
        records.append(run(cfg, root / cfg.run_name(), data_dir=params.get("data_dir"), progress=progress))
    return records
