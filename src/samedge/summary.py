"""The book's cross-task summary: every experiment's runs (reloaded when already saved),
one table of median sharpness / edge per task and rho, and one figure."""

from __future__ import annotations

import functools
import html
import re
from pathlib import Path
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
    PAIRS,
    PHASE_GAP,
    RATIO_MAX,
    RATIO_MIN,
    SEEDS_IN_BAND,
    TEST_ACCURACY,
    TEST_LOSS,
    TRAIN_ACCURACY,
    TWO_OVER_ETA,
    band_of,
    ratio_table,
    ratio_verdict,
    sam_bias_sentence,
    seed_table,
)
from .experiment import run_experiments
from .hessian import DEFAULT_TOL
from .plots import book_style, panel_grid, shared_legend
from .presets import load_preset, resolve_params
from .record import RunRecord
from .runs import planned_runs
from .tasks import get_task

__all__ = [
    "EXPERIMENTS",
    "RESULT_COLUMNS",
    "experiment_records",
    "summary_table",
    "summary_sentence",
    "TASK_NAMES",
    "deviation_table",
    "model_description",
    "verdict_glue",
    "read_markdown_table",
    "report_sections",
    "run_links",
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
    params = {task: resolve_params(task, preset, results_dir=results_dir, device=device) for task in tasks}
    return run_experiments(params, progress=progress)


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
        TEST_ACCURACY,
        "diverged",
    ]
    return pd.concat(frames, ignore_index=True)[cols]


# How the book names each experiment in prose.
TASK_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "shakespeare": "tiny_shakespeare"}


def _task_sentence(t: pd.DataFrame) -> str:
    """One task's rows of ``summary_table`` in words: SAM against its band and 2/eta, the bias, GD."""
    lo, hi = float(t[BAND_LOW].iloc[0]), float(t[BAND_HIGH].iloc[0])
    v = ratio_verdict(t, (lo, hi))
    n = int(t["seeds"].max())
    name = TASK_NAMES.get(str(t["task"].iloc[0]), str(t["task"].iloc[0]))
    parts = []
    if len(v["sam"]):
        parts.append(
            f"{v['inside']} of {len(v['sam'])} SAM radii within [{lo:g}, {hi:g}] of the SAM-edge (mean over {n} "
            f"seed{'s' if n > 1 else ''}; ratios {v['low']:.4f} to {v['high']:.4f}), the sharpness at "
            f"{v['of_gd_low']:.2f} to {v['of_gd_high']:.2f} x 2/eta"
        )
        parts.append(sam_bias_sentence(v, drift_note="the grid chapter analyses this drift"))
    if v["gd"] is not None:
        where = "at its edge" if v["gd_in_band"] else f"outside [{lo:g}, {hi:g}]"
        parts.append(f"GD at {v['gd']:.4f} x 2/eta ({where})")
    return f"**{name}**: " + "; ".join(parts) + "."


def summary_sentence(table: pd.DataFrame) -> str:
    """Per task, from the table: how many SAM radii sat at the SAM-edge and how far from 2/eta, the
    offset's trend in rho, and where GD sat (one sentence per task, separated by blank lines)."""
    return "\n\n".join(_task_sentence(table[table["task"] == task]) for task in dict.fromkeys(table["task"]))


def verdict_glue(table: pd.DataFrame) -> Dict[str, str]:
    """The numbers and sentences the intro's verdict box glues, keyed by name, from ``summary_table``:
    per task ``<task>-sam`` (SAM's ratio range), ``<task>-gd``, ``<task>-in-band`` ("k of n" runs over
    all seeds), ``<task>-of-gd`` (SAM's sharpness over 2/eta), ``<task>-bias`` (``sam_bias_sentence``),
    ``<task>-test-accuracy`` (range over settings of the mean over seeds) and ``<task>-gd-where``."""
    out: Dict[str, str] = {}
    for task in dict.fromkeys(table["task"]):
        t = table[table["task"] == task]
        lo, hi = float(t[BAND_LOW].iloc[0]), float(t[BAND_HIGH].iloc[0])
        v = ratio_verdict(t, (lo, hi))
        inside = sum(int(s.split(" of ")[0]) for s in t[SEEDS_IN_BAND])
        runs = sum(int(s.split(" of ")[1]) for s in t[SEEDS_IN_BAND])
        out[f"{task}-in-band"] = f"{inside} of {runs}"
        out[f"{task}-band"] = f"[{lo:g}, {hi:g}]"
        acc = t[TEST_ACCURACY]
        out[f"{task}-test-accuracy"] = _span(acc.min(), acc.max(), ".0%")
        if len(v["sam"]):
            out[f"{task}-sam"] = _span(v["low"], v["high"], ".4f")
            out[f"{task}-of-gd"] = _span(v["of_gd_low"], v["of_gd_high"], ".2f")
            out[f"{task}-bias"] = sam_bias_sentence(v, drift_note="the grid chapter analyses this drift")
        if v["gd"] is not None:
            out[f"{task}-gd"] = f"{v['gd']:.4f}"
            out[f"{task}-gd-where"] = (
                f"inside its band {out[f'{task}-band']}"
                if v["gd_in_band"]
                else f"outside its band {out[f'{task}-band']}"
            )
    return out


def read_markdown_table(path: str | Path, column: str) -> pd.DataFrame:
    """The first pipe table of a committed Markdown results file (``benchmarks/*.md``) whose header
    has a column named ``column``, as strings (the file's own rounding), one row per table row."""
    lines = Path(path).read_text().splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and column in cells:
            rows = []
            for body in lines[i + 2 :]:
                if not body.lstrip().startswith("|"):
                    break
                rows.append([c.strip() for c in body.strip().strip("|").split("|")])
            return pd.DataFrame(rows, columns=cells)
    raise ValueError(f"no table with a column {column!r} in {path}")


def run_links(task: str, params: Dict[str, object]) -> str:
    """HTML: one line per run of a chapter (``params`` as ``presets.resolve_params`` gives them) with
    links to its ``record.csv`` and ``config.json`` where the built site serves them (copied to
    ``runs/<task>/<preset>/<run>/`` by book/_ext/samedge_provenance.py)."""
    items = []
    for r in planned_runs(task, dict(params)):
        base = f"../runs/{task}/{params['preset']}/{r.name}"
        what = "GD" if r.config.rho == 0 else f"SAM rho={r.config.rho:g}"
        links = " · ".join(f'<a href="{html.escape(base)}/{f}" download>{f}</a>' for f in ("record.csv", "config.json"))
        items.append(f"<li>{html.escape(what)}, seed {r.config.seed}: {links}</li>")
    return '<ul class="samedge-run-links">' + "".join(items) + "</ul>"


def report_sections(text: str) -> Dict[str, str]:
    """A committed benchmark report (``benchmarks/RESULTS.md``) as the appendix shows it: its
    ``## `` sections by title (numbering dropped), without the development targets the report
    prints beside its numbers (paragraphs starting "Target", parentheticals "(target <= ...)")."""
    text = text.split("<!-- report -->", 1)[-1]
    out: Dict[str, str] = {"": ""}
    title = ""
    for line in text.splitlines():
        if line.startswith("## "):
            title = re.sub(r"^\w+\.\s*", "", line[3:].strip())
            out[title] = ""
            continue
        if line.startswith("Target"):
            continue
        line = re.sub(r"\s*\(target <= [^;)]*\)", "", line)
        if line.startswith("|") and not set(line) <= set("|-: "):
            line = re.sub(r"(?<=\w)-(?=\w)", "\u2011", line)  # a table's hyphens do not break a line
        line = re.sub(r"target <= [^;)]*;\s*", "", line)
        line = re.sub(r";\s*target <= [^;)]*", "", line)
        out[title] += line + "\n"
    return {k: v.strip() + "\n" for k, v in out.items()}


def model_description(task: str, options: Dict[str, object]) -> str:
    """The network of ``task`` with these options, in words, with its number of parameters (counted
    on the model the task builds)."""
    o = get_task(task).resolve_options({k: v for k, v in options.items() if k in get_task(task).defaults})
    n = sum(p.numel() for p in get_task(task).model(o).parameters())
    if task == "mnist":
        what = f"MLP, {o['depth']} hidden layers of {o['width']}"
    elif task == "cifar10":
        chans = ", ".join(str(o["base_channels"] * 2**i) for i in range(int(o["num_blocks"])))
        what = f"CNN, {o['num_blocks']} blocks of {o['layers_per_block']} convolution, channels {chans}"
    elif task == "shakespeare":
        what = (
            f"Transformer, {o['num_layers']} layers, {o['num_heads']} heads of size {o['key_size']}, "
            f"model size {o['model_size']}"
        )
    else:
        what = task
    return f"{what} ({n:,} parameters)"


def _data_description(task: str, p: Dict[str, object]) -> str:
    if task == "shakespeare":
        return f"random crops of {p['sequence_length']} characters"
    return f"first {int(p['n_train']):,} training images"  # type: ignore[call-overload]


def deviation_table(tasks: Sequence[str] = EXPERIMENTS, ours: str = "cpu", theirs: str = "paper") -> pd.DataFrame:
    """Per task and setting, the authors' value (preset ``theirs``, with the authors' measurement and
    wall-clock schedule) beside this book's (preset ``ours``), and whether they differ; read from the
    preset files, the models' parameter counts computed."""
    rows = []
    for task in tasks:
        a, b = load_preset(task, theirs), load_preset(task, ours)
        pairs = {
            "data": (_data_description(task, a), _data_description(task, b)),
            "model": (model_description(task, a), model_description(task, b)),
            "eta": (f"{a['eta']:g}", f"{b['eta']:g}"),
            "rho (SAM)": tuple(", ".join(f"{r:g}" for r in p["rhos"] if r > 0) for p in (a, b)),
            "batch": tuple(f"{p['batch_size']} crops" if p.get("batch_size") else "full batch" for p in (a, b)),
            "steps": (
                f"until a wall-clock limit ({theirs} preset: {a['steps']:,})",
                f"{b['steps']:,}",
            ),
            "measurement": (
                "central-difference HVPs, power iteration from a random vector",
                f"exact HVPs, Lanczos warm-started, relative residual {DEFAULT_TOL:g}",
            ),
            "schedule": (
                f"every so many hours of wall-clock time ({theirs} preset: every {a['measure_every']} steps)",
                (
                    f"steps t and t + 1 every {b['measure_every']} steps"
                    if b.get("measure_pairs")
                    else f"every {b['measure_every']} steps"
                )
                + (f" from step {b['measure_from']} (and step 0)" if b.get("measure_from") else ""),
            ),
            "seeds": (
                f"from the clock ({theirs} preset: {', '.join(map(str, a['seeds']))})",
                ", ".join(map(str, b["seeds"])),
            ),
        }
        for what, (theirs_v, ours_v) in pairs.items():
            rows.append(
                {
                    "task": TASK_NAMES.get(task, task),
                    "setting": what,
                    "authors": theirs_v,
                    "this book": ours_v,
                    "differs": theirs_v != ours_v,
                }
            )
    return pd.DataFrame(rows)


# The columns of samedge.analysis.seed_table a chapter's results table shows (rho and eta are in the
# run name and the parameters; GD's median edge is 2/eta).
RESULT_COLUMNS = [
    "run",
    "seeds",
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


def _significant(v: float, digits: int = 4) -> str:
    """``digits`` significant digits, in fixed notation between 1e-3 and 1e6 (thousands separated)."""
    if v == 0:
        return "0"
    if not 1e-3 <= abs(v) < 1e6:
        return f"{v:.{digits - 1}e}"
    decimals = max(0, digits - 1 - int(np.floor(np.log10(abs(v)))))
    return f"{v:,.{decimals}f}"


def _is_ratio(column: object) -> bool:
    """Whether a column holds a ratio of sharpness to an edge (shown with 4 decimals): its name says
    "ratio" or "/ edge", it is a difference of ratios (``PHASE_GAP``), a "seed N" column of
    ``analysis.per_seed_ratios`` or a "rho=..." or "drift" column of ``analysis.drift_table``."""
    name = str(column)
    return (
        "ratio" in name.lower()
        or "/ edge" in name
        or column == PHASE_GAP
        or re.fullmatch(r"seed \d+", name) is not None
        or re.match(r"(rho=|drift\b)", name) is not None  # analysis.drift_table: accounts on the ratio's scale
    )


# Columns that hold a run's settings (shown as given: 0.05, not 0.05000) and counts (means over seeds
# of a count are whole numbers when every seed has the same count: shown as integers).
SETTING_COLUMNS = ("rho", "eta")
COUNT_COLUMNS = ("seeds", PAIRS)


def _setting(v: object) -> str:
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
        return f"{v:g}" if np.isfinite(v) else "–"
    return _cell(v)


def _count(v: object) -> str:
    if isinstance(v, (float, np.floating)) and np.isfinite(v) and float(v).is_integer():
        return f"{int(v):d}"
    return _cell(v)


def _span(low: float, high: float, fmt: str) -> str:
    """'low to high' in ``fmt``, or one number when both print the same."""
    a, b = format(low, fmt), format(high, fmt)
    return a if a == b else f"{a} to {b}"


def _cell(v: object, ratio: bool = False) -> str:
    """One value as a table shows it: a ratio with 4 decimals, any other number with 4 significant
    digits, an integer as is, yes/no, a dash for a missing number."""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{v:d}"
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "–"
        return f"{v:.4f}" if ratio else _significant(float(v))
    return "–" if v is None else str(v)


def _words(text: object) -> str:
    """Text as HTML whose line breaks can fall only between words: each word in a no-wrap span."""
    return " ".join(f'<span class="samedge-word">{html.escape(w)}</span>' for w in str(text).split())


def table_styler(
    table: pd.DataFrame, columns: Optional[Sequence[str]] = None, table_id: Optional[str] = None
) -> Styler:
    """A table as the book shows it: chosen ``columns`` (default all), no index, one rounding rule
    per quantity (``_cell``), headers and text that break between words only, numbers never."""
    cols = [c for c in (columns or list(table.columns)) if c in table.columns]
    attrs = 'class="samedge-table"' + (f' id="{table_id}"' if table_id else "")
    text = [c for c in cols if pd.api.types.is_string_dtype(table[c])]  # labels left, numbers right (CSS)
    numbers = [c for c in cols if c not in text]
    styler = table[cols].style.hide(axis="index")
    for c in cols:
        if c in text:
            styler = styler.format(lambda v: _words(_cell(v)), subset=[c])
        elif c in SETTING_COLUMNS:
            styler = styler.format(_setting, subset=[c])
        elif c in COUNT_COLUMNS:
            styler = styler.format(_count, subset=[c])
        else:
            styler = styler.format(functools.partial(_cell, ratio=_is_ratio(c)), subset=[c])
    return (
        styler.format_index(_words, axis=1)
        .set_properties(subset=text, **{"text-align": "left"})
        .set_properties(subset=numbers, **{"white-space": "nowrap"})
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
    # Ratios have four decimals (table_styler): tests/browser/test_intro_numbers.py reads them back to 6e-5.
    return table_styler(table, cols, table_id="samedge-summary")


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
