"""The book's cross-task summary: every experiment's runs (reloaded when already saved),
one table of median sharpness / edge per task and rho, and one figure."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

from .analysis import BANDS, DEFAULT_BAND, ratio_table
from .experiment import run_experiment
from .plots import book_style, panel_grid, shared_legend
from .presets import resolve_params
from .record import RunRecord

__all__ = [
    "EXPERIMENTS",
    "RESULT_COLUMNS",
    "experiment_records",
    "summary_table",
    "summary_sentence",
    "summary_styler",
    "table_styler",
    "plot_summary",
]

EXPERIMENTS = ("mnist", "cifar10", "shakespeare")


def experiment_records(
    tasks: Sequence[str] = EXPERIMENTS,
    preset: Optional[str] = None,
    results_dir: Optional[str] = None,
    device: str = "auto",
    progress: bool = False,
) -> Dict[str, List[RunRecord]]:
    """Each task's runs at its notebook's default parameters for ``preset`` (same run
    directories as the notebooks, so finished runs are reloaded, not recomputed)."""
    out = {}
    for task in tasks:
        params = resolve_params(task, preset, results_dir=results_dir, device=device)
        out[task] = run_experiment(task, params, progress=progress)
    return out


def summary_table(records: Dict[str, List[RunRecord]]) -> pd.DataFrame:
    """One row per task and run: median ||H||/edge over the second half, its band, 2/eta, losses."""
    frames = []
    for task, recs in records.items():
        t = ratio_table(recs)
        lo, hi = BANDS.get(task, DEFAULT_BAND)
        t.insert(0, "task", task)
        t["band"] = f"[{lo:g}, {hi:g}]"
        r = t["median ratio (2nd half)"]
        t["in band"] = (r >= lo) & (r <= hi) & ~t["diverged"]
        frames.append(t)
    cols = [
        "task",
        "run",
        "rho",
        "eta",
        "2/eta",
        "median ||H|| (2nd half)",
        "median SAM-edge (2nd half)",
        "median ratio (2nd half)",
        "band",
        "in band",
        "final train loss",
        "test loss",
        "diverged",
    ]
    return pd.concat(frames, ignore_index=True)[cols]


def summary_sentence(table: pd.DataFrame) -> str:
    """How many SAM runs per task sat at the SAM-edge, and GD at 2/eta, from the table."""
    parts = []
    for task in dict.fromkeys(table["task"]):
        t = table[table["task"] == task]
        sam, gd = t[t["rho"] > 0], t[t["rho"] == 0]
        s = f"{task}: {int(sam['in band'].sum())} of {len(sam)} SAM runs within {t['band'].iloc[0]} of the SAM-edge"
        if len(gd):
            s += f", GD at {float(gd['median ratio (2nd half)'].iloc[0]):.3f} x 2/eta"
        parts.append(s)
    return "; ".join(parts) + "."


# The columns of samedge.analysis.ratio_table a chapter's results table shows (rho, eta and
# "diverged at" are in the run name, 2/eta and the divergence note).
RESULT_COLUMNS = [
    "run",
    "2/eta",
    "median ||H|| (2nd half)",
    "median SAM-edge (2nd half)",
    "median ratio (2nd half)",
    "final train loss",
    "train accuracy",
    "test loss",
    "test accuracy",
    "diverged",
]


def _cell(v: object) -> str:
    """One value as a table shows it: 4 significant digits, yes/no, a dash for a missing number."""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{v:d}"
    if isinstance(v, (float, np.floating)):
        return "–" if not np.isfinite(v) else f"{v:.4g}"
    return "–" if v is None else str(v)


def table_styler(
    table: pd.DataFrame, columns: Optional[Sequence[str]] = None, table_id: Optional[str] = None
) -> Styler:
    """A table as the book shows it: chosen ``columns`` (default all), no index, 4 significant digits."""
    cols = [c for c in (columns or list(table.columns)) if c in table.columns]
    attrs = 'class="samedge-table"' + (f' id="{table_id}"' if table_id else "")
    text = [c for c in cols if pd.api.types.is_string_dtype(table[c])]  # labels left, numbers right (CSS)
    return (
        table[cols]
        .style.format(_cell)
        .hide(axis="index")
        .set_properties(subset=text, **{"text-align": "left"})
        .set_table_attributes(attrs)
    )


def summary_styler(table: pd.DataFrame) -> Styler:
    """The table as the intro shows it: the columns a reader compares (the band is in the figure)."""
    cols = [
        "task",
        "run",
        "median ||H|| (2nd half)",
        "median SAM-edge (2nd half)",
        "median ratio (2nd half)",
        "in band",
        "test loss",
    ]
    # Four decimals for the ratio: tests/browser/test_intro_numbers.py reads it back to 6e-5.
    return table_styler(table, cols, table_id="samedge-summary").format("{:.4f}", subset=["median ratio (2nd half)"])


def plot_summary(table: pd.DataFrame) -> Figure:
    """Median ||H|| / edge per rho, one panel per task (two per row), with the task's band (GD at rho = 0)."""
    tasks = list(dict.fromkeys(table["task"]))
    with book_style():
        fig, axes, free = panel_grid(len(tasks), height=2.6)
        for ax, task in zip(axes, tasks):
            t = table[table["task"] == task]
            lo, hi = BANDS.get(task, DEFAULT_BAND)
            ax.axhspan(lo, hi, color="C2", alpha=0.15, label="the task's band")
            ax.axhline(1, color="k", lw=1, ls="--", label="at the edge (ratio 1)")
            labels = [("GD" if rho == 0 else f"{rho:g}") for rho in t["rho"]]
            colors = ["C3" if d else ("C0" if rho > 0 else "C1") for rho, d in zip(t["rho"], t["diverged"])]
            ax.bar(range(len(t)), t["median ratio (2nd half)"], color=colors)
            ax.set_xticks(range(len(t)), labels)
            ax.set_xlabel("rho (GD: ratio to 2/eta)")
            ax.set_ylabel("median $\\|H\\|_{op}$ / edge")
            ax.set_title(f"{task} ($\\eta$={t['eta'].iloc[0]:g}, band [{lo:g}, {hi:g}])")
            ax.set_ylim(0, max(1.5, float(t["median ratio (2nd half)"].max()) * 1.1 if len(t) else 1.5))
        # Bar colours, for the legend: SAM, GD, diverged.
        for c, name in (("C0", "SAM run"), ("C1", "GD run"), ("C3", "diverged")):
            axes[0].bar([0], [0], color=c, label=name)
        shared_legend(fig, axes, free, ncols=3)
    return fig
