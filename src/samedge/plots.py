"""The paper's figures, one call each, for one run or several. Every function returns the
matplotlib Figure; ``save_figure`` writes it as PNG and SVG.

Figures are sized for the book's content column: ``WIDTH`` inches wide (about 720 px at the
inline backend's 100 dpi, so they are shown at their natural size), at most two panels per row,
no text below 9 pt, and one legend per figure outside the axes (in a free panel slot when there
is one, else below the panels)."""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from .analysis import (
    ACCOUNT_FORMULA_AT_ACCOUNTS,
    ACCOUNTS,
    LOSS_NOTE,
    AnyRecord,
    loss_note,
    setting_table,
    unique_labels,
)
from .columns import (
    ALIGN_GRAD,
    ALIGN_SAM_GRAD,
    EDGE,
    EVAL_OP_NORM,
    OP_NORM,
    RATIO,
    SHARPNESS_AND_EDGE,
    STEP,
    TRAIN_LOSS,
)

__all__ = [
    "plot_sharpness",
    "plot_sam_edge_only",
    "plot_edge_ratio",
    "plot_alignment",
    "plot_loss",
    "save_figure",
    "plot_predicted_vs_measured",
    "plot_accounts_vs_rho",
    "panel_grid",
    "shared_legend",
    "book_style",
    "transient_ylim",
    "LOSS_NOTE",
    "EDGE_LABELS",
    "edge_label",
    "WIDTH",
    "TRANSIENT",
]

# What the edge column holds, by update rule (samedge.edge.edge; "user": EdgeMonitor(edge=...)).
EDGE_LABELS = {
    "gd": "$2/\\eta$",
    "momentum": "$2(1+\\beta)/\\eta$",
    "sgd": "SGD edge",
    "sam": "SAM-edge",
    "usam": "unnormalized-SAM edge",
    "sam_sgd": "SAM-over-SGD edge",
    "adam": "Adam edge",
    "adamw": "AdamW edge",
    "rmsprop": "RMSprop edge",
    "user": "your edge",
}
# The curve of each kind of sharpness a record holds (MonitorRecord.meta["sharpness"]).
SHARPNESS_LABELS = {"||H||_op": "$\\|H\\|_{op}$", "lambda_max(P^-1 H)": "$\\lambda_{max}(P^{-1}H)$"}
WIDTH = 7.2  # inches: the book's content column at 100 dpi, so figures are not scaled down
PANEL_HEIGHT = 2.9  # inches per row of panels
TRANSIENT = 0.1  # zoomed views fit their y-range to the steps after this fraction of training
# The smallest text is 9 pt at natural size (ticks, legends); titles and labels 10 pt.
STYLE = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 10,
}


@contextmanager
def book_style() -> Iterator[None]:
    """Matplotlib settings of the book's figures (font sizes); text made inside keeps them."""
    with plt.rc_context(STYLE):
        yield


def _as_list(records: AnyRecord | Sequence[AnyRecord]) -> list:
    return list(records) if isinstance(records, (list, tuple)) else [records]


def panel_grid(n: int, height: float = PANEL_HEIGHT, sharex: bool = False) -> Tuple[Figure, List[Axes], Optional[Axes]]:
    """A figure of ``n`` panels, two per row (one if ``n == 1``), ``WIDTH`` wide.

    Returns the figure, the ``n`` axes and the free slot of an odd grid (an axes turned off, for
    the legend), or ``None``."""
    if n < 1:
        raise ValueError(f"n={n!r}: a figure needs at least one panel")
    cols = 1 if n == 1 else 2
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(WIDTH, height * rows), squeeze=False, sharex=sharex, constrained_layout=True
    )
    flat = list(axes.flat)
    free = None
    if len(flat) > n:
        free = flat[n]
        free.axis("off")
    return fig, flat[:n], free


def shared_legend(fig: Figure, axes: Sequence[Axes], free: Optional[Axes] = None, ncols: Optional[int] = None) -> None:
    """One legend for all ``axes`` (labels deduplicated): in ``free`` if given, else below the panels."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
    if not handles:
        return
    if free is not None:
        free.legend(handles, labels, loc="center", frameon=False)
    else:
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols or min(len(labels), 4), frameon=False)


def transient_ylim(
    series: Sequence[Tuple[np.ndarray, np.ndarray]], steps: int, floor: Optional[float] = None, pad: float = 0.08
) -> Optional[Tuple[float, float, float]]:
    """y-limits that fit the values of ``series`` ((step, value) pairs) after the first
    ``TRANSIENT`` of ``steps``: (low, high, largest value left out), or None without data."""
    kept, early = [], []
    for step, value in series:
        step, value = np.asarray(step, dtype=float), np.asarray(value, dtype=float)
        ok = np.isfinite(value)
        kept.append(value[ok & (step >= TRANSIENT * steps)])
        early.append(value[ok])
    kept_all = np.concatenate(kept) if kept else np.array([])
    if kept_all.size == 0:
        return None
    lo, hi = float(kept_all.min()), float(kept_all.max())
    if floor is not None:
        lo = min(lo, floor)
    span = max(hi - lo, 1e-12 * max(abs(hi), 1.0))
    all_max = float(np.concatenate(early).max())
    return lo - pad * span if floor is None else floor, hi + pad * span, all_max


def _mark_divergence(ax: Axes, rec: AnyRecord) -> None:
    if rec.diverged:
        ax.axvline(rec.diverged_at or 0, color="red", lw=1, ls=":")
        ax.text(
            0.02,
            0.95,
            f"diverged at step {rec.diverged_at}",
            transform=ax.transAxes,
            color="red",
            va="top",
            fontsize=9,
        )


def edge_label(rule: Optional[str]) -> str:
    """The legend entry of a rule's edge (``EDGE_LABELS``; the rule's name for an unknown one)."""
    return EDGE_LABELS.get(rule or "", f"{rule} edge")


def _sharpness_kind(rec: AnyRecord) -> str:
    """'||H||_op', or a monitor's 'lambda_max(P^-1 H)' (Adam, AdamW, RMSprop)."""
    meta = getattr(rec, "meta", None)
    return str(meta.get("sharpness", "||H||_op")) if meta is not None else "||H||_op"


def _edges_in_words(recs: Sequence[AnyRecord]) -> str:
    """'the SAM-edge' when every run has that edge, else "each run's own edge"."""
    rules = {r.rule for r in recs}
    if len(rules) == 1 and None not in rules:
        rule = rules.pop()
        return edge_label(rule) if rule in ("gd", "momentum") else f"the {edge_label(rule)}"
    return "each run's own edge"


def _with_note(title: str, recs: Sequence[AnyRecord], note: Optional[str]) -> str:
    """``title`` and, on a second line, the loss note: ``note`` if given, else the records' own
    (``analysis.loss_note``) when they all share one; a monitor's record has none."""
    if note is None:
        notes = {loss_note(r) for r in recs}
        note = notes.pop() if len(notes) == 1 else None
    return f"{title}\n({note})" if note else title


def plot_sharpness(
    records: AnyRecord | Sequence[AnyRecord],
    column: str = OP_NORM,
    title: Optional[str] = None,
    edge_column: Optional[str] = None,
    show_gd_edge: Optional[bool] = None,
    note: Optional[str] = None,
) -> Figure:
    """The sharpness and the edge the run was compared with over training steps, one panel per run.

    The edge is the record's own edge column (``edge_column``; default ``eval_edge`` for
    ``eval_*`` columns, else ``edge``), labelled by its rule (``EDGE_LABELS``: 2/eta for GD,
    2(1+beta)/eta for momentum, the SAM-edge, the Adam edge, ...). ``show_gd_edge=True`` also
    draws 2/eta (dashed) for runs of another rule; by default only GD's edge is 2/eta. The
    sharpness is ||H||_op, or lambda_max(P^-1 H) for a monitor of Adam, AdamW or RMSprop. The
    default title names the edge and carries the records' loss note (``note`` overrides it).
    The y-range fits the curves after the first ``TRANSIENT`` of training; a panel whose early
    values lie above it says so."""
    recs = _as_list(records)
    if edge_column is None:
        edge_column = dict(SHARPNESS_AND_EDGE.values()).get(column, EDGE)
    names = unique_labels(recs)
    with book_style():
        fig, axes, free = panel_grid(len(recs))
        for ax, r, run in zip(axes, recs, names):
            df = r.frame
            series = []
            drew_gd = False
            if not df.empty:
                label = SHARPNESS_LABELS.get(_sharpness_kind(r), _sharpness_kind(r))
                if column == EVAL_OP_NORM:
                    label += " (eval batch)"
                elif column != OP_NORM:
                    label = column
                ax.plot(df[STEP], df[column], color="C0", lw=1.5, label=label)
                series.append((df[STEP], df[column]))
                if r.rule is not None and edge_column in df:  # the edge the run was compared with
                    gd = r.rule == "gd"
                    style = dict(color="k", ls="--", lw=1) if gd else dict(color="C1", lw=1.2)
                    ax.plot(df[STEP], df[edge_column], label=edge_label(r.rule), **style)
                    series.append((df[STEP], df[edge_column]))
                    drew_gd = gd
            two_over_eta = 2 / r.eta
            if show_gd_edge and not drew_gd and two_over_eta == two_over_eta:
                ax.axhline(two_over_eta, color="k", ls="--", lw=1, label=EDGE_LABELS["gd"])
                series.append((np.array([r.steps]), np.array([two_over_eta])))
            lim = transient_ylim(series, r.steps, floor=0.0 if show_gd_edge or drew_gd else None)
            name = f"{run}, $\\eta$={r.eta:g}"
            if lim is not None:
                ax.set_ylim(lim[0], lim[1])
                if lim[2] > lim[1]:  # the initial transient is off the top: say how far
                    name += f"\n(early values up to {lim[2]:.4g} clipped)"
            ax.set_title(name)
            ax.set_xlabel("step")
            ax.set_ylabel("sharpness")
            ax.grid(alpha=0.3)
            _mark_divergence(ax, r)
        shared_legend(fig, axes, free)
        fig.suptitle(title or _with_note(f"Sharpness against {_edges_in_words(recs)}", recs, note))
    return fig


def plot_sam_edge_only(records: AnyRecord | Sequence[AnyRecord], column: str = OP_NORM) -> Figure:
    """The SAM runs' ||H||_op and SAM-edge alone, zoomed to them (2/eta and the initial transient
    left out of the y-range), one panel per run."""
    sam = [r for r in _as_list(records) if r.rho > 0]
    if not sam:  # e.g. rhos=[0.0]: say so in the figure rather than fail the notebook
        with book_style():
            fig, ax = plt.subplots(figsize=(WIDTH, 1.0))
            ax.axis("off")
            ax.text(0.5, 0.5, "no SAM run (rho > 0) in these records", ha="center", va="center")
        return fig
    return plot_sharpness(
        sam,
        column=column,
        show_gd_edge=False,
        title=f"Zoomed: y-range fitted after the first {TRANSIENT:.0%} of steps; 2/$\\eta$ not shown",
    )


def _line_per_run(ax, recs: Sequence[AnyRecord], column: str) -> None:
    """One curve of ``column`` over steps per run, in the runs' colours, labelled by run (a
    repeated label suffixed '#2', '#3', so every run keeps its legend entry)."""
    for i, (r, name) in enumerate(zip(recs, unique_labels(recs))):
        df = r.frame
        if not df.empty:
            ax.plot(df[STEP], df[column], lw=1.3, color=f"C{i}", label=name)


def plot_edge_ratio(records: AnyRecord | Sequence[AnyRecord], column: str = RATIO) -> Figure:
    """Sharpness / the run's own edge over steps, all runs on one axes (1 = at the edge)."""
    recs = _as_list(records)
    with book_style():
        fig, ax = plt.subplots(figsize=(WIDTH, 3.4), constrained_layout=True)
        _line_per_run(ax, recs, column)
        ax.axhline(1, color="k", ls="--", lw=1)
        ax.axvspan(recs[0].steps / 2, recs[0].steps, color="0.9", zorder=-1, label="second half")
        ax.set_xlabel("step")
        ax.set_ylabel("sharpness / edge")
        ax.set_title(f"Sharpness relative to {_edges_in_words(recs)}; y clipped to [0, 2]")
        ax.set_ylim(0, 2)
        ax.grid(alpha=0.3)
        shared_legend(fig, [ax])
    return fig


def plot_alignment(records: AnyRecord | Sequence[AnyRecord]) -> Figure:
    """|cos| between the top Hessian eigenvector and the gradient / the SAM gradient, per run."""
    recs = _as_list(records)
    with book_style():
        fig, axes, free = panel_grid(len(recs))
        for ax, r, name in zip(axes, recs, unique_labels(recs)):
            df = r.frame
            if not df.empty:
                ax.plot(df[STEP], df[ALIGN_GRAD], lw=1.2, color="C0", label="gradient $g$")
                if r.rho > 0 and ALIGN_SAM_GRAD in df:
                    ax.plot(df[STEP], df[ALIGN_SAM_GRAD], lw=1.2, color="C1", label="SAM gradient")
            ax.set_ylim(0, 1)
            ax.set_title(name)
            ax.set_xlabel("step")
            ax.set_ylabel("|cos| with top eigenvector")
            ax.grid(alpha=0.3)
        shared_legend(fig, axes, free)
    return fig


def plot_loss(records: AnyRecord | Sequence[AnyRecord], baseline: Optional[tuple] = None) -> Figure:
    """Training loss over steps (log scale), all runs on one axes; ``baseline`` = (value, label)
    draws a reference level, e.g. the loss of predicting all zeros."""
    recs = _as_list(records)
    with book_style():
        fig, ax = plt.subplots(figsize=(WIDTH, 3.4), constrained_layout=True)
        _line_per_run(ax, recs, TRAIN_LOSS)
        if baseline is not None:
            ax.axhline(baseline[0], color="0.4", ls=":", lw=1.2, label=baseline[1])
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title("Training loss")
        ax.grid(alpha=0.3, which="both")
        shared_legend(fig, [ax])
    return fig


def save_figure(fig: Figure, directory: str | os.PathLike, name: str) -> Path:
    """Save ``fig`` as <directory>/<name>.png and .svg; returns the PNG path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    fig.savefig(d / f"{name}.png", dpi=120)
    fig.savefig(d / f"{name}.svg")
    return d / f"{name}.png"


MARKERS = "osD^vP*X"


def plot_predicted_vs_measured(records: Sequence[AnyRecord]) -> Figure:
    """Per setting (eta, rho): median ||H||_op over the second half against the median predicted
    edge (SAM-edge, 2/eta for GD), mean over seeds with min-max bars, log-log, y = x drawn;
    colour by rho, marker by eta."""
    table = setting_table(records)
    rhos, etas = sorted(table["rho"].unique()), sorted(table["eta"].unique())
    with book_style():
        fig, ax = plt.subplots(figsize=(WIDTH, 4.6), constrained_layout=True)
        for _, row in table.iterrows():
            x, y = row["median edge"], row["median ||H||"]
            ax.errorbar(
                x,
                y,
                # clipped at 0: a mean of equal values (GD's 2/eta) can differ from them by rounding
                xerr=np.clip([[x - row["median edge min"]], [row["median edge max"] - x]], 0, None),
                yerr=np.clip([[y - row["median ||H|| min"]], [row["median ||H|| max"] - y]], 0, None),
                fmt=MARKERS[etas.index(row["eta"]) % len(MARKERS)],
                color=f"C{rhos.index(row['rho'])}",
                ms=6,
                mfc="white",
                capsize=2,
                lw=1,
            )
        finite = table[["median edge", "median ||H|| min", "median ||H|| max"]].to_numpy()
        lo, hi = float(np.nanmin(finite)) / 1.15, float(np.nanmax(finite)) * 1.15
        ax.plot([lo, hi], [lo, hi], color="k", ls="--", lw=1, label="$y = x$ (at the edge)")
        for i, rho in enumerate(rhos):
            ax.plot([], [], "s", color=f"C{i}", label="GD ($\\rho = 0$)" if rho == 0 else f"$\\rho = {rho:g}$")
        for j, eta in enumerate(etas):
            ax.plot([], [], MARKERS[j % len(MARKERS)], color="0.3", mfc="white", label=f"$\\eta = {eta:g}$")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            # plain numbers (0.4, 1, 2) on both decades' ticks, not 4 x 10^-1
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(
                FuncFormatter(
                    lambda v, _: f"{v:g}" if round(v / 10 ** math.floor(math.log10(v)), 6) in (2, 4, 6) else ""
                )
            )
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("predicted edge: median SAM-edge ($2/\\eta$ for GD), 2nd half")
        ax.set_ylabel("measured median $\\|H\\|_{op}$, 2nd half")
        ax.set_title("Measured sharpness against its predicted edge, per setting (bars: min-max over seeds)")
        ax.grid(alpha=0.3, which="both")
        shared_legend(fig, [ax], ncols=min(len(rhos) + len(etas) + 1, 5))
    return fig


def plot_accounts_vs_rho(runs: pd.DataFrame) -> Figure:
    """Every account of the ratio (``samedge.analysis.ACCOUNTS``, from ``run_accounts``) against
    rho: the mean over eta and seeds of each run's phase-free value, with min-max bars over the
    seeds (each seed's mean over eta); 1 is the edge each account predicts."""
    shown = [
        a
        for a in ACCOUNTS
        if a != ACCOUNT_FORMULA_AT_ACCOUNTS and runs.loc[runs["account"] == a, "value"].notna().any()
    ]
    with book_style():
        fig, ax = plt.subplots(figsize=(WIDTH, 4.2), constrained_layout=True)
        rhos = sorted(runs["rho"].unique())
        span = (max(rhos) - min(rhos)) or 1.0
        for i, name in enumerate(shown):
            per_seed = runs[runs["account"] == name].groupby(["rho", "seed"])["value"].mean().unstack("seed")
            mean, lo, hi = per_seed.mean(axis=1), per_seed.min(axis=1), per_seed.max(axis=1)
            x = mean.index.to_numpy() + (i - (len(shown) - 1) / 2) * 0.012 * span  # side by side at each rho
            ax.errorbar(
                x,
                mean.to_numpy(),
                yerr=np.clip([mean - lo, hi - mean], 0, None),
                fmt=MARKERS[i % len(MARKERS)] + "-",
                color=f"C{i}",
                ms=5,
                capsize=2,
                lw=1,
                label=name,
            )
        ax.axhline(1.0, color="k", ls="--", lw=1, label="1: at the edge of the account")
        ax.set_xticks(rhos)
        ax.set_xlabel("$\\rho$ (0: GD)")
        ax.set_ylabel("median over pair means, 2nd half")
        ax.set_title("The ratio and its corrections against $\\rho$ (mean over $\\eta$ and seeds; bars: seeds)")
        ax.grid(alpha=0.3)
        shared_legend(fig, [ax], ncols=3)
    return fig


def plot_authors_method(results: pd.DataFrame, meta: dict) -> Figure:
    """One panel per rho of ``benchmarks/authors_method.py``'s results: their estimate over their
    edge (their trajectory), our exact ||H||_op at their weights over the same edge, our run's ratio."""
    steps = meta["config"]["steps"]
    with book_style():
        fig, axes, free = panel_grid(results["rho"].nunique(), sharex=True)
        for ax, (rho, g) in zip(axes, results.groupby("rho")):
            ax.plot(g["step"], g["their_ratio"], "o-", ms=3, color="C3", label="theirs: their estimate / edge")
            ax.plot(
                g["step"], g["exact_ratio"], "x:", ms=4, color="k", label="exact $\\|H\\|_{op}$ at their weights / edge"
            )
            ax.plot(g["step"], g["our_ratio"], "s-", ms=3, color="C0", label="ours: our run / edge")
            ax.axhline(1, color="k", ls="--", lw=1)
            ax.axvspan(steps / 2, steps, color="0.9", zorder=-1)
            ax.set_title("GD" if rho == 0 else f"SAM $\\rho$ = {rho:g}")
            ax.set_xlabel("step")
            ax.set_ylabel("$\\|H\\|_{op}$ / edge")
            ax.grid(alpha=0.3)
        shared_legend(fig, axes, free)
    return fig
