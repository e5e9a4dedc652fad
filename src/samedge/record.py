"""The record of one run: a tidy table (one row per measurement) plus its configuration,
environment and summary, saved as ``record.csv``, ``config.json`` and ``summary.json``."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd

from .columns import (
    ACCOUNT_COLUMNS,
    ASCENT_COLUMNS,
    ASCENT_OF,
    BOOL_COLUMNS,
    COLUMNS,
    EDGE,
    EVAL_COLUMNS,
    EVAL_OF,
    FINITE_COLUMNS,
    INT_COLUMNS,
    RATIO,
    SHARPNESS_AND_EDGE,
    STEP,
    TIMING_COLUMNS,
)
from .config import RunConfig
from .rundir import CONFIG, RECORD, SUMMARY, DamagedRunError, atomic_write_text, check_fingerprint, damaged, read_config

__all__ = [
    "RunRecord",
    "COLUMNS",
    "TIMING_COLUMNS",
    "EVAL_COLUMNS",
    "ASCENT_COLUMNS",
    "EVAL_OF",
    "ASCENT_OF",
    "SHARPNESS_AND_EDGE",
    "second_half",
    "check_record",
    "DamagedRunError",
]


def second_half(df: pd.DataFrame, steps: int) -> pd.DataFrame:
    """The measurements of the second half of a ``steps``-step run (step >= steps/2): where
    the book's medians and tolerance bands (``samedge.analysis.BANDS``) are read."""
    return df[df[STEP] >= steps / 2] if not df.empty else df


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

    # The attributes analysis and plots read from any record (samedge.MonitorRecord has them too).
    @property
    def diverged_at(self) -> Optional[int]:
        """The step at which the run diverged, or None."""
        return self.summary.get("diverged_at")

    @property
    def label(self) -> str:
        """'GD' or 'SAM rho=0.05' (with 'unnormalized' when so)."""
        c = self.config
        if c.rho == 0:
            return "GD"
        return f"{'SAM' if c.normalize else 'unnormalized SAM'} rho={c.rho:g}"

    @property
    def steps(self) -> int:
        """The run's steps (its second half is where medians are read)."""
        return self.config.steps

    @property
    def eta(self) -> float:
        """The step size."""
        return self.config.eta

    @property
    def rho(self) -> float:
        """SAM's radius (0: GD)."""
        return self.config.rho

    @property
    def seed(self) -> int:
        """The run's seed."""
        return self.config.seed

    @property
    def rule(self) -> str:
        """The update rule (a name of ``samedge.edge.RULES``)."""
        return self.config.rule

    @property
    def batching(self) -> str:
        """'full batch' or 'minibatch': whether the gradients came from the whole training set."""
        return "full batch" if self.config.batch_size is None else "minibatch"

    def median_ratio(self, column: str = RATIO) -> float:
        """Median of ``column`` (sharpness / edge) over the second half of training."""
        half = second_half(self.frame, self.config.steps)
        return float(half[column].median()) if len(half) else float("nan")

    def save(self, run_dir: str | os.PathLike) -> Path:
        """Write config.json, record.csv and summary.json into ``run_dir`` (atomically each, the
        summary last: its presence marks a finished run). A record that would not load is refused."""
        d = Path(run_dir)
        check_record(self.config, self.frame, self.summary, d)
        atomic_write_text(d / CONFIG, json.dumps({"config": self.config.to_dict(), "env": self.env}, indent=2))
        atomic_write_text(d / RECORD, self.frame.to_csv(index=False))
        atomic_write_text(d / SUMMARY, json.dumps(self.summary, indent=2))
        return d

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "RunRecord":
        """Read a record written by ``save`` (no rerun needed for plots and tables), checked with
        ``check_record``: a damaged or inconsistent file raises DamagedRunError naming it."""
        d = Path(run_dir)
        meta = read_config(d)
        if meta is None:
            raise damaged(d / CONFIG, "it is missing")
        try:
            cfg = RunConfig.from_dict(meta["config"])
        except (ValueError, TypeError) as err:  # ConfigError is a ValueError; a missing field a TypeError
            raise damaged(d / CONFIG, f"it holds an invalid configuration ({err})") from None
        lacking = sorted(set(cfg.to_dict()) - set(meta["config"]))
        if lacking:
            raise damaged(
                d / CONFIG,
                f"it lacks the configuration fields {lacking}: it was written by another "
                "version of samedge, so its record may not be this version's",
            )
        check_fingerprint(d, cfg.fingerprint())
        summary = _read_summary(d / SUMMARY)
        frame = _read_frame(d / RECORD)
        check_record(cfg, frame, summary, d)
        return cls(cfg, frame.to_dict("records"), summary, meta.get("env", {}))


def _read_summary(path: Path) -> Dict[str, Any]:
    if not path.exists():
        raise damaged(
            path,
            "it is missing, so the run did not finish (or its last write was cut short)",
            "run it again with samedge.loop.run to resume or recompute it",
        )
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise damaged(path, f"it is not valid JSON ({err})") from None
    if not isinstance(summary, dict):
        raise damaged(path, f"it holds a {type(summary).__name__}, not an object")
    return summary


def _read_frame(path: Path) -> pd.DataFrame:
    """record.csv as a DataFrame; every line must have the header's number of fields (pandas
    would fill a short line with NaN)."""
    if not path.exists():
        raise damaged(path, "it is missing although summary.json says the run finished")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise damaged(path, f"it cannot be read as text ({err})") from None
    if not text.strip():
        return pd.DataFrame()
    lines = list(csv.reader(io.StringIO(text)))
    header = lines[0]
    if len(set(header)) != len(header):
        raise damaged(path, f"its header repeats a column ({header})")
    for i, fields in enumerate(lines[1:], start=2):
        if len(fields) != len(header):
            raise damaged(path, f"line {i} has {len(fields)} fields but the header has {len(header)}")
    try:
        return pd.read_csv(io.StringIO(text))
    except (ValueError, pd.errors.ParserError) as err:
        raise damaged(path, f"it cannot be parsed as CSV ({err})") from None


def _schedule(cfg: RunConfig) -> List[int]:
    """The measured steps of a run that does not diverge (``RunConfig.measured_steps``)."""
    return cfg.measured_steps()


def _first_bad(df: pd.DataFrame, column: str, bad: pd.Series) -> str:
    """The first offending value of ``column`` and its row, for error messages."""
    hits = bad.to_numpy().nonzero()[0]
    if not len(hits):
        return f"values of dtype {df[column].dtype}"
    i = hits[0]
    v, step = (
        x.item() if hasattr(x, "item") else x for x in (df[column].iloc[i], df[STEP].iloc[i] if STEP in df else "?")
    )
    return f"{v!r} in row {i + 1} (step {step})"


def check_record(cfg: RunConfig, frame: pd.DataFrame, summary: Dict[str, Any], run_dir: Path) -> None:
    """Raise DamagedRunError unless ``frame`` and ``summary`` are what ``loop.run`` writes for
    ``cfg``: the columns of record.COLUMNS (with all or none of EVAL_COLUMNS, and ASCENT_COLUMNS
    exactly when measure_ascent, ACCOUNT_COLUMNS exactly when accounts_every, finite on the rows
    of ``RunConfig.account_steps`` and NaN on the others), integer steps and HVP counts, boolean ``converged``, finite
    numbers except on the row of a recorded divergence, steps strictly increasing on the schedule
    (every measure_every steps from 0, and ``steps``; a diverged run stops at ``diverged_at``),
    and a summary of a complete run consistent with the rows."""
    rec, summ = Path(run_dir) / RECORD, Path(run_dir) / SUMMARY
    if summary.get("complete") is not True:
        raise damaged(summ, f"'complete' is {summary.get('complete')!r}, not true")
    div, div_at, done = summary.get("diverged"), summary.get("diverged_at"), summary.get("steps_done")
    if not isinstance(div, bool):
        raise damaged(summ, f"'diverged' is {div!r}, not true or false")
    if div_at is not None and (isinstance(div_at, bool) or not isinstance(div_at, int) or not 0 <= div_at <= cfg.steps):
        raise damaged(summ, f"'diverged_at' is {div_at!r}, not null or a step in 0..{cfg.steps}")
    if div != (div_at is not None):
        raise damaged(summ, f"'diverged' is {div} but 'diverged_at' is {div_at!r}")
    if done != (div_at if div else cfg.steps) or isinstance(done, bool):
        why = f"diverged at {div_at}" if div else f"has {cfg.steps} steps"
        raise damaged(summ, f"'steps_done' is {done!r} but the run {why}")
    for k in TIMING_COLUMNS:
        v = summary.get(k, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise damaged(summ, f"{k!r} is {v!r}, not a finite number >= 0")

    expected = [t for t in _schedule(cfg) if not div or t <= div_at]
    if frame.empty:
        if expected and not (div and div_at == expected[0] == 0):
            raise damaged(rec, f"it has no rows, but the summary expects measurements at steps {expected[:5]}...")
        return
    cols = set(frame.columns)
    want = set(COLUMNS) | (set(ASCENT_COLUMNS) if cfg.measure_ascent else set())
    want |= set(ACCOUNT_COLUMNS) if cfg.accounts_every is not None else set()
    if cols & set(EVAL_COLUMNS):
        want |= set(EVAL_COLUMNS)
    missing, unknown = sorted(want - cols), sorted(cols - want)
    if missing or unknown:
        raise damaged(rec, f"its columns are wrong (missing {missing}, unknown {unknown})")
    at_div = (
        (frame[STEP] == div_at)
        if div and pd.api.types.is_numeric_dtype(frame[STEP])
        else pd.Series(False, index=frame.index)
    )
    for c in frame.columns:
        s = frame[c]
        if c in BOOL_COLUMNS:
            if not pd.api.types.is_bool_dtype(s):
                raise damaged(
                    rec, f"column {c!r} must hold True/False, got {_first_bad(frame, c, ~s.isin([True, False]))}"
                )
            continue
        if pd.api.types.is_bool_dtype(s):
            raise damaged(rec, f"column {c!r} must hold numbers, got True/False")
        num = pd.to_numeric(s, errors="coerce")
        nonnum = num.isna() & s.notna()
        if nonnum.any():
            raise damaged(rec, f"column {c!r} must hold numbers, got {_first_bad(frame, c, nonnum)}")
        if c in INT_COLUMNS and not pd.api.types.is_integer_dtype(s):
            raise damaged(
                rec, f"column {c!r} must hold integers, got {_first_bad(frame, c, (num != num.round()) | num.isna())}"
            )
        if c in INT_COLUMNS and (s < 0).any():
            raise damaged(rec, f"column {c!r} must be >= 0, got {_first_bad(frame, c, s < 0)}")
        if c in FINITE_COLUMNS:
            bad = ~pd.Series(num.map(math.isfinite).astype(bool), index=s.index) & ~at_div
            if bad.any():
                why = "" if div else " and the run did not diverge (summary.json has no 'diverged_at')"
                raise damaged(rec, f"column {c!r} must be finite, got {_first_bad(frame, c, bad)}{why}")
        if c in TIMING_COLUMNS:
            bad = ~num.map(lambda v: math.isfinite(v) and v >= 0).astype(bool)
            if bad.any():
                raise damaged(rec, f"column {c!r} must be finite and >= 0, got {_first_bad(frame, c, bad)}")
    if cfg.accounts_every is not None:
        due = frame[STEP].isin(cfg.account_steps()) & ~at_div
        for c in ACCOUNT_COLUMNS:
            finite = pd.to_numeric(frame[c], errors="coerce").map(math.isfinite).astype(bool)
            bad = (due & ~finite) | (~due & ~at_div & frame[c].notna())
            if bad.any():
                raise damaged(
                    rec,
                    f"column {c!r} must be finite on the account steps {cfg.account_steps()[:6]}... and empty "
                    f"elsewhere, got {_first_bad(frame, c, bad)}",
                )
    edge, ratio = frame[EDGE].astype(float), frame[RATIO].astype(float)
    ok_ratio = ratio.map(math.isfinite).astype(bool) | ((edge == 0) & (ratio == math.inf)) | at_div
    if not ok_ratio.all():
        raise damaged(
            rec, f"column 'ratio' must be finite (or inf where edge is 0), got {_first_bad(frame, 'ratio', ~ok_ratio)}"
        )
    steps = frame[STEP].tolist()
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise damaged(rec, f"its steps are not strictly increasing ({steps[:8]}...)")
    if steps != expected and not (div and steps == expected[:-1] and expected[-1] == div_at):
        off = sorted(set(steps) - set(expected))
        raise damaged(
            rec,
            f"its steps {steps[:8]}{'...' if len(steps) > 8 else ''} are not the schedule of "
            f"steps={cfg.steps}, measure_every={cfg.measure_every}"
            f"{', measure_pairs' if cfg.measure_pairs else ''}"
            f"{', diverged at ' + str(div_at) if div else ''} (off-schedule {off[:5]}, "
            f"missing {sorted(set(expected) - set(steps))[:5]})",
        )
