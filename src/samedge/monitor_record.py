"""The record of one ``EdgeMonitor``: its rows and what made them (the optimizer's rule, the
measurement settings, the environment), saved as ``monitor.json`` and ``record.csv``.

A user's loop is not a ``RunConfig``: it has no task, preset or schedule that samedge could
rerun, so it gets its own record with its own validation. ``samedge.analysis`` and
``samedge.plots`` read it through the same attributes as a run's record (``frame``, ``label``,
``steps``, ``eta``, ``rho``, ``seed``, ``rule``, ``diverged_at``, ``summary``).
Reading and writing use the csv module: the core imports no pandas (``frame`` does, lazily).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .columns import (
    ALIGN_SAM_GRAD,
    ASCENT_COLUMNS,
    BOOL_COLUMNS,
    COLUMNS,
    EDGE,
    EVAL_COLUMNS,
    FINITE_COLUMNS,
    GD_EDGE,
    INT_COLUMNS,
    RATIO,
    SHARPNESS_AND_EDGE,
    STEP,
    TIMING_COLUMNS,
)
from .files import atomic_write_text

__all__ = ["MonitorRecord", "DamagedMonitorRecord", "MONITOR_FILE", "RECORD_FILE", "KIND"]

MONITOR_FILE, RECORD_FILE = "monitor.json", "record.csv"
KIND = "samedge.EdgeMonitor"  # what monitor.json says it holds
# What monitor.json must say, and of which type.
META_TYPES: Dict[str, Any] = {
    "label": str,
    "optimizer": str,
    "rule": (str, type(None)),
    "no_edge_reason": (str, type(None)),
    "lr": (float, int, type(None)),
    "rho": (float, int),
    "beta": (float, int),
    "every": int,
    "steps": int,
    "diverged_at": (int, type(None)),
    "tol": (float, int),
    "max_iter": int,
    "hvp_method": str,
    "kernels": str,
    "train_mode": bool,
    "seed": int,
    "device": str,
    "dtype": str,
    "sharpness": str,
}
# Columns that stay empty when the optimizer has no known edge.
NO_EDGE_COLUMNS = (EDGE, GD_EDGE, RATIO, ALIGN_SAM_GRAD)


class DamagedMonitorRecord(ValueError):
    """A saved monitor record that is unreadable or inconsistent; the message names the file."""


def _damaged(path: Path, what: str) -> DamagedMonitorRecord:
    return DamagedMonitorRecord(f"{path} is damaged: {what}; save the monitor again to rewrite it")


def _cell(column: str, text: str) -> Any:
    """A CSV cell as the type its column holds (empty: None)."""
    if text == "":
        return None
    if column in BOOL_COLUMNS:
        if text not in ("True", "False"):
            raise ValueError(f"{text!r} is not True or False")
        return text == "True"
    if column in INT_COLUMNS:
        return int(text)
    return float(text)


@dataclass
class MonitorRecord:
    """Rows of measurements from a user's training loop, and what made them (``meta``)."""

    rows: List[Dict[str, Any]]
    meta: Dict[str, Any]
    env: Dict[str, Any] = field(default_factory=dict)

    # The attributes analysis and plots read from any record.
    @property
    def label(self) -> str:
        """The update rule in words, e.g. 'SAM rho=0.05 over SGD momentum=0.9'."""
        return str(self.meta["label"])

    @property
    def steps(self) -> int:
        """Optimizer steps the monitor saw (its second half is where medians are read)."""
        return int(self.meta["steps"])

    @property
    def eta(self) -> float:
        """The learning rate at the last measurement (NaN if the optimizer has none)."""
        lr = self.meta.get("lr")
        return float("nan") if lr is None else float(lr)

    @property
    def rho(self) -> float:
        """SAM's radius (0 for other optimizers)."""
        return float(self.meta["rho"])

    @property
    def seed(self) -> int:
        """The seed of the first measurement's Lanczos start."""
        return int(self.meta["seed"])

    @property
    def rule(self) -> Optional[str]:
        """The update rule (a name of ``samedge.edge.RULES``), None when no edge is known."""
        return self.meta["rule"]

    @property
    def batching(self) -> str:
        """'full batch' or 'minibatch', as the user declared it (default: full batch)."""
        return str(self.meta.get("batching", "full batch"))

    @property
    def diverged_at(self) -> Optional[int]:
        """The step of the first non-finite loss or sharpness, or None."""
        return self.meta.get("diverged_at")

    @property
    def diverged(self) -> bool:
        """Whether a measurement saw a non-finite loss or sharpness."""
        return self.diverged_at is not None

    @property
    def summary(self) -> Dict[str, Any]:
        """What a run's summary would hold: divergence (a monitor has no test metrics)."""
        return {"diverged": self.diverged, "diverged_at": self.diverged_at}

    @property
    def frame(self):
        """The rows as a pandas DataFrame (one row per measurement)."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def median_ratio(self, column: str = RATIO) -> float:
        """Median of ``column`` over the measurements of the second half (NaN if none)."""
        values = sorted(
            float(r[column])
            for r in self.rows
            if r[STEP] >= self.steps / 2 and r.get(column) is not None and not math.isnan(float(r[column]))
        )
        if column not in SHARPNESS_AND_EDGE or not values:
            return float("nan")
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])

    def columns(self) -> List[str]:
        """The record's columns, in the order of ``samedge.columns.COLUMNS`` then the extras."""
        present = {k for r in self.rows for k in r}
        order = COLUMNS + EVAL_COLUMNS + ASCENT_COLUMNS
        return [c for c in order if c in present] + sorted(present - set(order))

    def check(self, where: Path = Path(MONITOR_FILE)) -> None:
        """Raise DamagedMonitorRecord unless meta and rows are what ``EdgeMonitor`` writes."""
        for key, types in META_TYPES.items():
            allowed = types if isinstance(types, tuple) else (types,)
            if key not in self.meta:
                raise _damaged(where, f"its 'meta' lacks {key!r}")
            v = self.meta[key]
            if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
                raise _damaged(where, f"'{key}' is {v!r}, not {names}")
        rec = where.with_name(RECORD_FILE)
        cols = set(self.columns())
        required = {c for c in COLUMNS if c != ALIGN_SAM_GRAD}
        unknown = cols - set(COLUMNS) - set(EVAL_COLUMNS) - set(ASCENT_COLUMNS)
        if self.rows and (required - cols or unknown):
            raise _damaged(rec, f"its columns are wrong (missing {sorted(required - cols)}, unknown {sorted(unknown)})")
        steps = [r[STEP] for r in self.rows]
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in steps):
            raise _damaged(rec, f"steps must be integers >= 0, got {steps[:8]}")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise _damaged(rec, f"its steps are not strictly increasing ({steps[:8]}...)")
        if steps and steps[-1] > self.steps:
            raise _damaged(rec, f"it has a row at step {steps[-1]} after the last step {self.steps}")
        div = self.diverged_at
        for i, r in enumerate(self.rows, start=2):
            for c, v in r.items():
                if c in BOOL_COLUMNS and not isinstance(v, bool):
                    raise _damaged(rec, f"line {i}: column {c!r} must be True or False, got {v!r}")
                if c in INT_COLUMNS and v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                    raise _damaged(rec, f"line {i}: column {c!r} must be an integer >= 0, got {v!r}")
                if c in TIMING_COLUMNS and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                    raise _damaged(rec, f"line {i}: column {c!r} must be a finite number >= 0, got {v!r}")
                if c in FINITE_COLUMNS and (div is None or r[STEP] < div):
                    if v is None and (c in NO_EDGE_COLUMNS and (self.rule is None or c == ALIGN_SAM_GRAD)):
                        continue
                    if not (isinstance(v, (int, float)) and math.isfinite(v)):
                        raise _damaged(rec, f"line {i}: column {c!r} must be finite, got {v!r}")

    def save(self, run_dir: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write monitor.json and record.csv into ``run_dir`` (each atomically, record.csv last).
        A directory that holds another record is refused unless ``overwrite``."""
        d = Path(run_dir)
        self.check(d / MONITOR_FILE)
        held = [n for n in (MONITOR_FILE, RECORD_FILE, "config.json", "summary.json") if (d / n).exists()]
        if held and not overwrite:
            raise FileExistsError(
                f"{d} already holds a record ({', '.join(held)}); choose another directory or pass overwrite=True"
            )
        cols = self.columns()
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(cols)
        for r in self.rows:
            writer.writerow(["" if r.get(c) is None else repr(r[c]) if isinstance(r[c], float) else r[c] for c in cols])
        atomic_write_text(d / MONITOR_FILE, json.dumps({"kind": KIND, "meta": self.meta, "env": self.env}, indent=2))
        atomic_write_text(d / RECORD_FILE, buf.getvalue())
        return d

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "MonitorRecord":
        """Read a record written by ``save``, checked: a damaged file is an error naming it."""
        d = Path(run_dir)
        meta_path, rec_path = d / MONITOR_FILE, d / RECORD_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"{d} holds no {MONITOR_FILE}: it is not a saved EdgeMonitor record")
        try:
            saved = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise _damaged(meta_path, f"it is not valid JSON ({err})") from None
        if not isinstance(saved, dict) or saved.get("kind") != KIND or not isinstance(saved.get("meta"), dict):
            raise _damaged(meta_path, f"it does not hold an EdgeMonitor record (kind {KIND!r} with a 'meta' object)")
        if not rec_path.exists():
            raise _damaged(rec_path, "it is missing")
        lines = list(csv.reader(io.StringIO(rec_path.read_text())))
        rows: List[Dict[str, Any]] = []
        if lines:
            header = lines[0]
            for i, fields in enumerate(lines[1:], start=2):
                if len(fields) != len(header):
                    raise _damaged(rec_path, f"line {i} has {len(fields)} fields but the header has {len(header)}")
                try:
                    rows.append({c: _cell(c, t) for c, t in zip(header, fields)})
                except ValueError as err:
                    raise _damaged(rec_path, f"line {i}: {err}") from None
        out = cls(rows, saved["meta"], saved.get("env") or {})
        out.check(meta_path)
        return out
