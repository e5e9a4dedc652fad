"""The paper's figures, one call each, for one run or several. Every function returns the
matplotlib Figure; ``save_figure`` writes it as PNG and SVG."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from .analysis import run_label
from .record import ALIGN_GRAD, ALIGN_SAM_GRAD, EDGE, EVAL_OP_NORM, OP_NORM, RATIO, SHARPNESS_AND_EDGE, STEP, TRAIN_LOSS, RunRecord

__all__ = ["plot_sharpness", "plot_sam_edge_only", "plot_edge_ratio", "plot_alignment", "plot_loss", "save_figure", "LOSS_NOTE"]

# What the edge column holds, by update rule (samedge.edge.edge).
EDGE_LABELS = {"gd": "$2/\\eta$", "sam": "SAM-edge", "usam": "unnormalized-SAM edge"}
LOSS_NOTE = "squared loss = mean over examples and classes; Cohen et al.'s 0.5*sum is 5x larger"


def _as_list(records: RunRecord | Sequence[RunRecord]) -> list:
    return [records] if isinstance(records, RunRecord) else list(records)


def _grid(n: int, width: float = 4.2, height: float = 3.2):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, constrained_layout=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _mark_divergence(ax, rec: RunRecord) -> None:
    if rec.diverged:
        ax.axvline(rec.summary.get("diverged_at", 0), color="red", lw=1, ls=":")
        ax.text(0.02, 0.95, f"diverged at step {rec.summary.get('diverged_at')}", transform=ax.transAxes,
                color="red", va="top", fontsize=9)


def plot_sharpness(records: RunRecord | Sequence[RunRecord], column: str = OP_NORM, title: Optional[str] = None,
                   edge_column: Optional[str] = None, show_gd_edge: bool = True) -> Figure:
    """||H||_op, the SAM-edge and 2/eta over training steps, one panel per run.

    ``column`` picks the sharpness (``"eval_op_norm"``: on the fixed evaluation batch) and
    ``edge_column`` its edge (default: ``eval_edge`` for ``eval_*`` columns, else ``edge``)."""
    recs = _as_list(records)
    if edge_column is None:
        edge_column = dict(SHARPNESS_AND_EDGE.values()).get(column, EDGE)
    fig, axes = _grid(len(recs))
    for ax, r in zip(axes, recs):
        df = r.frame
        if not df.empty:
            ax.plot(df[STEP], df[column], color="C0", lw=1.6, label={OP_NORM: "$\\|H\\|_{op}$", EVAL_OP_NORM: "$\\|H\\|_{op}$ (eval batch)"}.get(column, column))
            if r.config.rho > 0:
                ax.plot(df[STEP], df[edge_column], color="C1", lw=1.2, label=EDGE_LABELS[r.config.rule])
        if show_gd_edge or r.config.rho == 0:
            ax.axhline(2 / r.config.eta, color="k", ls="--", lw=1, label="$2/\\eta$")
        ax.set_title(f"{run_label(r)}, $\\eta$={r.config.eta:g}")
        ax.set_xlabel("step")
        ax.set_ylabel("sharpness")
        if show_gd_edge:
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        _mark_divergence(ax, r)
    fig.suptitle(title or f"Sharpness vs the SAM-edge ({LOSS_NOTE})", fontsize=10)
    return fig


def plot_sam_edge_only(records: RunRecord | Sequence[RunRecord], column: str = OP_NORM) -> Figure:
    """The SAM runs' ||H||_op and SAM-edge alone, zoomed to them (2/eta left out), one panel per run."""
    sam = [r for r in _as_list(records) if r.config.rho > 0]
    if not sam:  # e.g. rhos=[0.0]: say so in the figure rather than fail the notebook
        fig, ax = plt.subplots(figsize=(5, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no SAM run (rho > 0) in these records", ha="center", va="center")
        return fig
    return plot_sharpness(sam, column=column, show_gd_edge=False, title="Sharpness and the SAM-edge, zoomed (2/eta not shown)")


def plot_edge_ratio(records: RunRecord | Sequence[RunRecord], column: str = RATIO) -> Figure:
    """||H||_op / SAM-edge over steps, all runs on one axes (1 = at the edge; 2/eta for GD)."""
    recs = _as_list(records)
    fig, ax = plt.subplots(figsize=(6.5, 3.8), constrained_layout=True)
    for i, r in enumerate(recs):
        df = r.frame
        if not df.empty:
            ax.plot(df[STEP], df[column], lw=1.3, color=f"C{i}", label=run_label(r))
    ax.axhline(1, color="k", ls="--", lw=1)
    ax.axvspan(recs[0].config.steps / 2, recs[0].config.steps, color="0.9", zorder=-1, label="second half")
    ax.set_xlabel("step")
    ax.set_ylabel("$\\|H\\|_{op}$ / edge")
    ax.set_title("Sharpness relative to its edge (SAM-edge for SAM, 2/$\\eta$ for GD)")
    ax.set_ylim(0, 2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_alignment(records: RunRecord | Sequence[RunRecord]) -> Figure:
    """|cos| between the top Hessian eigenvector and the gradient / the SAM gradient, per run."""
    recs = _as_list(records)
    fig, axes = _grid(len(recs))
    for ax, r in zip(axes, recs):
        df = r.frame
        if not df.empty:
            ax.plot(df[STEP], df[ALIGN_GRAD], lw=1.2, label="gradient $g$")
            if r.config.rho > 0:
                ax.plot(df[STEP], df[ALIGN_SAM_GRAD], lw=1.2, label="SAM gradient")
        ax.set_ylim(0, 1)
        ax.set_title(run_label(r))
        ax.set_xlabel("step")
        ax.set_ylabel("|cos| with top eigenvector")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def plot_loss(records: RunRecord | Sequence[RunRecord]) -> Figure:
    """Training loss over steps (log scale), all runs on one axes."""
    recs = _as_list(records)
    fig, ax = plt.subplots(figsize=(6.5, 3.8), constrained_layout=True)
    for i, r in enumerate(recs):
        df = r.frame
        if not df.empty:
            ax.plot(df[STEP], df[TRAIN_LOSS], lw=1.3, color=f"C{i}", label=run_label(r))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def save_figure(fig: Figure, directory: str | os.PathLike, name: str) -> Path:
    """Save ``fig`` as <directory>/<name>.png and .svg; returns the PNG path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    fig.savefig(d / f"{name}.png", dpi=120)
    fig.savefig(d / f"{name}.svg")
    return d / f"{name}.png"
