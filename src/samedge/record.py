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

__all__ = [
    "RunRecord", "COLUMNS", "TIMING_COLUMNS", "EVAL_COLUMNS", "ASCENT_COLUMNS", "SHARPNESS_AND_EDGE", "environment",
    "atomic_write_text",
]

# The record's column names, one constant each (analysis, plots, the loop and the monitor use these).
STEP, TRAIN_LOSS, GRAD_NORM, OP_NORM = "step", "train_loss", "grad_norm", "op_norm"
LAMBDA_MAX, LAMBDA_MIN, EDGE, GD_EDGE, RATIO = "lambda_max", "lambda_min", "edge", "gd_edge", "ratio"
ALIGN_GRAD, ALIGN_SAM_GRAD, HVPS, CONVERGED = "align_grad", "align_sam_grad", "hvps", "converged"
TRAIN_SECONDS, MEASURE_SECONDS = "train_seconds", "measure_seconds"
EVAL_LOSS, EVAL_GRAD_NORM, EVAL_OP_NORM = "eval_loss", "eval_grad_norm", "eval_op_norm"
EVAL_EDGE, EVAL_RATIO, EVAL_HVPS = "eval_edge", "eval_ratio", "eval_hvps"
ASCENT_OP_NORM, ASCENT_HVPS = "ascent_op_norm", "ascent_hvps"
# EdgeMonitor rows call the training loss "loss" (it is the loss on the monitor's data); a saved
# monitor record names it TRAIN_LOSS like every other record.
LOSS = "loss"

# Every row has these, in this order; minibatch tasks add the eval_* columns (after CONVERGED),
# and runs with measure_ascent the ascent_* ones.
COLUMNS = [
    STEP, TRAIN_LOSS, GRAD_NORM, OP_NORM, LAMBDA_MAX, LAMBDA_MIN, EDGE, GD_EDGE,
    RATIO, ALIGN_GRAD, ALIGN_SAM_GRAD, HVPS, CONVERGED, TRAIN_SECONDS, MEASURE_SECONDS,
]
# What a fixed evaluation batch records, and under which name (train column -> eval column).
EVAL_COLUMNS = {TRAIN_LOSS: EVAL_LOSS, GRAD_NORM: EVAL_GRAD_NORM, OP_NORM: EVAL_OP_NORM, EDGE: EVAL_EDGE,
                RATIO: EVAL_RATIO, HVPS: EVAL_HVPS}
# What the measurement at the SAM ascent point w~ records.
ASCENT_COLUMNS = {OP_NORM: ASCENT_OP_NORM, HVPS: ASCENT_HVPS}
# The sharpness and the edge behind each ratio column.
SHARPNESS_AND_EDGE = {RATIO: (OP_NORM, EDGE), EVAL_RATIO: (EVAL_OP_NORM, EVAL_EDGE)}
TIMING_COLUMNS = [TRAIN_SECONDS, MEASURE_SECONDS]  # wall-clock: the only non-reproducible columns


def environment(device: str) -> Dict[str, Any]:
    """Versions and hardware, stored with every record."""
    import numpy
    from . import __version__

    env = {
        "samedge": __version__, "torch": torch.__version__, "numpy": numpy.__version__, "python": sys.version.split()[0],
        "platform": platform.platform(), "device": device, "torch_threads": torch.get_num_threads(),
    }
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

