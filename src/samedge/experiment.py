"""Run every rho of an experiment notebook's parameters, saving each run under the results
directory (``results_dir`` parameter, else ``$SAMEDGE_RESULTS_DIR``, else ``./results``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List

from tqdm.auto import tqdm

from .loop import run
from .presets import run_configs
from .record import RunRecord

__all__ = ["results_root", "run_experiment"]

RESULTS_ENV = "SAMEDGE_RESULTS_DIR"


def results_root(task: str, params: Dict[str, Any]) -> Path:
    """Where this experiment's runs are saved: <results_dir>/<task>/<preset>/."""
    base = params.get("results_dir") or os.environ.get(RESULTS_ENV) or "results"
    return Path(base).expanduser() / task / str(params.get("preset", "custom"))


def run_experiment(task: str, params: Dict[str, Any], progress: bool = True) -> List[RunRecord]:
    """Validate every configuration first, then run (or reload) each rho in turn."""
    configs = run_configs(task, params)
    root = results_root(task, params)
    records = []
    for cfg in tqdm(configs, desc=f"{task} runs", disable=not progress):
        records.append(run(cfg, root / cfg.run_name(), data_dir=params.get("data_dir"), progress=progress))
    return records
