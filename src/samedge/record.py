"""The record of one run: a tidy table (one row per measurement) plus its configuration,
environment and summary, saved as ``record.csv``, ``config.json`` and ``summary.json``."""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import pandas as pd
import torch

from .config import RunConfig
from .precision import precision_settings

__all__ = ["RunRecord", "COLUMNS", "TIMING_COLUMNS", "environment", "atomic_write_text", "load_records"]

# Every row has these, in this order; minibatch tasks add the eval_* columns, and runs with
# measure_ascent the ascent_* ones.
COLUMNS = [
    "step", "train_loss", "grad_norm", "op_norm", "lambda_max", "lambda_min", "edge", "gd_edge",
    "ratio", "align_grad", "align_sam_grad", "hvps", "converged", "train_seconds", "measure_seconds",
]
EVAL_COLUMNS = ["eval_loss", "eval_grad_norm", "eval_op_norm", "eval_edge", "eval_ratio", "eval_hvps"]
ASCENT_COLUMNS = ["ascent_op_norm", "ascent_hvps"]
TIMING_COLUMNS = ["train_seconds", "measure_seconds"]  # wall-clock: the only non-reproducible columns


def environment(device: str) -> Dict[str, Any]:
    """Versions and hardware, stored with every record."""
    import numpy
    from . import __version__

    env = {
        "samedge": __version__, "torch": torch.__version__, "numpy": numpy.__version__, "python": sys.version.split()[0],
        "platform": platform.platform(), "device": device, "torch_threads": torch.get_num_threads(),
    }
    env["precision"] = precision_settings()
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file in the same directory, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass
class RunRecord:
    """Rows of measurements, the configuration that made them, and a summary."""

    config: RunConfig
    rows: List[Dict[str, Any]] = field(default_factory=list)
    summary: Dict[str, Any] = field(default_factory=dict)  # test metrics, times, diverged, complete
    env: Dict[str, Any] = field(default_factory=dict)

    @property
    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame (one row per measurement)."""
        return pd.DataFrame(self.rows)

    @property
    def diverged(self) -> bool:
        """Whether the run stopped on a non-finite loss, gradient or sharpness."""
        return bool(self.summary.get("diverged", False))

    def median_ratio(self, column: str = "ratio", second_half: bool = True) -> float:
        """Median of ``column`` (sharpness / SAM-edge) over the measurements of the second half of training."""
        df = self.frame
        if df.empty:
            return float("nan")
        if second_half:
            df = df[df["step"] >= self.config.steps / 2]
        return float(df[column].median()) if len(df) else float("nan")

    def save(self, run_dir: str | os.PathLike) -> Path:
        """Write config.json, record.csv and summary.json into ``run_dir`` (atomically each)."""
        d = Path(run_dir)
        atomic_write_text(d / "config.json", json.dumps({"config": self.config.to_dict(), "env": self.env}, indent=2))
        atomic_write_text(d / "record.csv", self.frame.to_csv(index=False))
        atomic_write_text(d / "summary.json", json.dumps(self.summary, indent=2))
        return d

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "RunRecord":
        """Read a record written by ``save`` (no rerun needed for plots and tables)."""
        d = Path(run_dir)
        meta = json.loads((d / "config.json").read_text())
        text = (d / "record.csv").read_text()
        rows = pd.read_csv(d / "record.csv").to_dict("records") if text.strip() else []
        summary = json.loads((d / "summary.json").read_text())
        return cls(RunConfig.from_dict(meta["config"]), rows, summary, meta.get("env", {}))


def load_records(results_dir: str | os.PathLike) -> List[RunRecord]:
    """Every complete record under ``results_dir`` (one per run directory), sorted by rho."""
    out = []
    for d in sorted(Path(results_dir).glob("*/summary.json")):
        out.append(RunRecord.load(d.parent))
    return sorted(out, key=lambda r: (r.config.task, r.config.rho))
