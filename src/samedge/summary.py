"""The book's cross-task summary: every experiment's runs (reloaded when already saved),
one table of median sharpness / edge per task and rho, and one figure."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

from .analysis import (
    BAND_HIGH,
    BAND_LOW,
    FINAL_TRAIN_LOSS,
    IN_BAND,
    MEDIAN_EDGE,
    MEDIAN_H,
    MEDIAN_RATIO,
    RATIO_MAX,
    RATIO_MIN,
    SEEDS_IN_BAND,
    TEST_ACCURACY,
    TEST_LOSS,
    TRAIN_ACCURACY,
    TWO_OVER_ETA,
    band_of,
    ratio_table,
    seed_table,
)
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
    """One row per task and setting (rho): the mean over seeds of the median ||H||/edge over the
    second half, its min and max over the seeds, the task's band (``analysis.BANDS``), 2/eta, losses."""
    frames = []
    for task, recs in records.items():
        t = seed_table(recs)
        lo, hi = band_of(recs)
        per_run = ratio_table(recs)
        t.insert(0, "task", task)
        t[BAND_LOW], t[BAND_HIGH] = lo, hi
        r = t[MEDIAN_RATIO]
        t[IN_BAND] = (r >= lo) & (r <= hi) & ~t["diverged"]
        within = (per_run[MEDIAN_RATIO] >= lo) & (per_run[MEDIAN_RATIO] <= hi)
        within &= ~per_run["diverged"]
        t[SEEDS_IN_BAND] = [
            f"{int(within[per_run['run'] == run].sum())} of {n}" for run, n in zip(t["run"], t["seeds"])
        ]
        frames.append(t)
    cols = [
        "task",
        "run",
        "rho",
        "eta",
        TWO_OVER_ETA,
        "seeds",
        MEDIAN_H,
        MEDIAN_EDGE,
        MEDIAN_RATIO,
        RATIO_MIN,
        RATIO_MAX,
        BAND_LOW,
        BAND_HIGH,
        IN_BAND,
        SEEDS_IN_BAND,
        FINAL_TRAIN_LOSS,
        TEST_LOSS,
        "diverged",
    ]
    return pd.concat(frames, ignore_index=True)[cols]


def summary_sentence(table: pd.DataFrame) -> str:
    """How many SAM settings per task sat at the SAM-edge, and GD at 2/eta, from the table."""
    parts = []
    for task in dict.fromkeys(table["task"]):
        t = table[table["task"] == task]
        sam, gd = t[t["rho"] > 0], t[t["rho"] == 0]
        n = int(t["seeds"].max())
        s = (
            f"{task}: {int(sam[IN_BAND].sum())} of {len(sam)} SAM radii within [{t[BAND_LOW].iloc[0]:g}, {t[BAND_HIGH].iloc[0]:g}] of the SAM-edge "
            f"(mean over {n} seed{'s' if n > 1 else ''}; ratios {sam[MEDIAN_RATIO].min():.3f} to "
            f"{sam[MEDIAN_RATIO].max():.3f})"
            if len(sam)
            else f"{task}"
        )
        if len(gd):
            g = gd.iloc[0]
            s += f", GD at {float(g[MEDIAN_RATIO]):.3f} x 2/eta"
            if g["seeds"] > 1:
                s += f" (seeds {float(g[RATIO_MIN]):.3f} to {float(g[RATIO_MAX]):.3f})"
        parts.append(s)
    return "; ".join(parts) + "."


# The columns of samedge.analysis.seed_table a chapter's results table shows (rho, eta and
# DIVERGED_AT are in the run name, 2/eta and the divergence note).
RESULT_COLUMNS = [
    "run",
    "seeds",
    TWO_OVER_ETA,
    MEDIAN_H,
    MEDIAN_EDGE,
    MEDIAN_RATIO,
    RATIO_MIN,
    RATIO_MAX,
    FINAL_TRAIN_LOSS,
    TRAIN_ACCURACY,
    TEST_LOSS,
    TEST_ACCURACY,
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
        "seeds",
        MEDIAN_H,
        MEDIAN_EDGE,
        MEDIAN_RATIO,
        RATIO_MIN,
        RATIO_MAX,
        SEEDS_IN_BAND,
        TEST_LOSS,
    ]
    # Four decimals for the ratios: tests/browser/test_intro_numbers.py reads them back to 6e-5.
    ratios = [MEDIAN_RATIO, RATIO_MIN, RATIO_MAX]
    return table_styler(table, cols, table_id="samedge-summary").format("{:.4f}", subset=ratios)


def plot_summary(table: pd.DataFrame) -> Figure:
    """Median ||H|| / edge per rho (mean over seeds, min to max as an error bar), one panel per
    task (two per row), with the task's band (GD at rho = 0)."""
    tasks = list(dict.fromkeys(table["task"]))
    with book_style():
        fig, axes, free = panel_grid(len(tasks), height=2.6)
        for ax, task in zip(axes, tasks):
            t = table[table["task"] == task]
            lo, hi = float(t[BAND_LOW].iloc[0]), float(t[BAND_HIGH].iloc[0])
            ax.axhspan(lo, hi, color="C2", alpha=0.15, label="the task's band")
            ax.axhline(1, color="k", lw=1, ls="--", label="at the edge (ratio 1)")
            labels = [("GD" if rho == 0 else f"{rho:g}") for rho in t["rho"]]
            colors = ["C3" if d else ("C0" if rho > 0 else "C1") for rho, d in zip(t["rho"], t["diverged"])]
            mid = t[MEDIAN_RATIO].to_numpy()
            err = np.vstack([mid - t[RATIO_MIN].to_numpy(), t[RATIO_MAX].to_numpy() - mid])
            ax.bar(range(len(t)), mid, color=colors)
            ax.errorbar(range(len(t)), mid, yerr=err, fmt="none", ecolor="k", capsize=3, lw=1)
            ax.set_xticks(range(len(t)), labels)
            ax.set_xlabel("rho (GD: ratio to 2/eta)")
            ax.set_ylabel("median $\\|H\\|_{op}$ / edge")
            n = int(t["seeds"].max())
            ax.set_title(
                f"{task} ($\\eta$={t['eta'].iloc[0]:g}, {n} seed{'s' if n > 1 else ''}, band [{lo:g}, {hi:g}])"
            )
            top = float(np.nanmax(t[RATIO_MAX])) if len(t) else 1.5
            ax.set_ylim(0, max(1.5, top * 1.1))
        # Bar colours, for the legend: SAM, GD, diverged; the error bar.
        for c, name in (("C0", "SAM (mean over seeds)"), ("C1", "GD (mean over seeds)"), ("C3", "diverged")):
            axes[0].bar([0], [0], color=c, label=name)
        axes[0].errorbar([], [], yerr=[], fmt="none", ecolor="k", capsize=3, lw=1, label="min to max over seeds")
        shared_legend(fig, axes, free, ncols=3)
    return fig
