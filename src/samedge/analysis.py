"""Tables and sentences computed from run records (never typed by hand)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import pandas as pd

from .record import (
    ASCENT_OP_NORM,
    EDGE,
    GRAD_NORM,
    OP_NORM,
    RATIO,
    SHARPNESS_AND_EDGE,
    TRAIN_LOSS,
    RunRecord,
    second_half,
)

__all__ = ["BANDS", "DEFAULT_BAND", "ratio_table", "interpret_ratios", "run_label", "setting_table"]

# Where a median ratio counts as "at the edge": full-batch runs within [0.9, 1.15]; minibatch
# noise widens the Transformer's band (SAM and GD alike).
DEFAULT_BAND = (0.9, 1.15)
BANDS = {"mnist": DEFAULT_BAND, "cifar10": DEFAULT_BAND, "shakespeare": (0.8, 1.25)}


def run_label(rec: RunRecord) -> str:
    """'GD' or 'SAM rho=0.05' (with 'unnormalized' when so); a monitor's record carries its own label."""
    if "label" in rec.summary:
        return str(rec.summary["label"])
    c = rec.config
    if c.rho == 0:
        return "GD"
    return f"{'SAM' if c.normalize else 'unnormalized SAM'} rho={c.rho:g}"


def ratio_table(records: Sequence[RunRecord], column: str = RATIO) -> pd.DataFrame:
    """Per run: median sharpness/SAM-edge over the second half of training, and context.

    ``column="eval_ratio"`` reports the fixed evaluation batch instead (its ||H|| and SAM-edge too)."""
    if column not in SHARPNESS_AND_EDGE:
        raise ValueError(f"column must be one of {sorted(SHARPNESS_AND_EDGE)}, got {column!r}")
    rows = []
    for r in records:
        df = r.frame
        half = second_half(df, r.config.steps)
        # A record without the eval columns (a full-batch run) falls back to the training ones.
        h_col, e_col = SHARPNESS_AND_EDGE[column if column in df else RATIO]
        rows.append(
            {
                "run": run_label(r),
                "rho": r.config.rho,
                "eta": r.config.eta,
                "2/eta": 2 / r.config.eta,
                "median ||H|| (2nd half)": float(half[h_col].median()) if len(half) else float("nan"),
                "median SAM-edge (2nd half)": float(half[e_col].median()) if len(half) else float("nan"),
                "median ratio (2nd half)": r.median_ratio(column),
                "final train loss": float(df[TRAIN_LOSS].iloc[-1]) if len(df) else float("nan"),
                "test loss": r.summary.get("test_loss", float("nan")),
                "train accuracy": r.summary.get("final_train_accuracy", float("nan")),
                "test accuracy": r.summary.get("test_accuracy", float("nan")),
                "diverged": r.diverged,
                "diverged at": r.summary.get("diverged_at"),
            }
        )
    return pd.DataFrame(rows)


def interpret_ratios(
    table: pd.DataFrame, band: Tuple[float, float] = DEFAULT_BAND, gd_band: Optional[Tuple[float, float]] = None
) -> str:
    """One sentence saying, from the numbers, how closely sharpness tracked its edge.

    SAM runs count as at their edge when the median ratio lies in ``band``; GD when its median
    ||H|| / (2/eta) lies in ``gd_band`` (default: within 0.1 of 1)."""
    lo, hi = band
    parts: List[str] = []
    bad = table[table["diverged"]]
    ok = table[~table["diverged"]]
    sam = ok[ok["rho"] > 0]
    gd = ok[ok["rho"] == 0]
    if len(sam):
        inside = sam[(sam["median ratio (2nd half)"] >= lo) & (sam["median ratio (2nd half)"] <= hi)]
        rng = (sam["median ratio (2nd half)"].min(), sam["median ratio (2nd half)"].max())
        parts.append(
            f"For {len(inside)} of {len(sam)} SAM runs the median of ||H||/SAM-edge over the second half of training "
            f"lies in [{lo:g}, {hi:g}] (range {rng[0]:.3f} to {rng[1]:.3f})"
            + (
                ", so the operator norm of the Hessian tracks the SAM-edge, not 2/eta"
                if len(inside) == len(sam)
                else "; where it falls outside, the sharpness did not settle at the SAM-edge in this run"
            )
        )
    if len(gd):
        g = gd.iloc[0]
        ratio_gd = g["median ||H|| (2nd half)"] / g["2/eta"]
        parts.append(
            f"GD's sharpness settles at {ratio_gd:.3f} x 2/eta"
            + (
                " (the classical edge of stability)"
                if (gd_band[0] <= ratio_gd <= gd_band[1] if gd_band else abs(ratio_gd - 1) <= 0.1)
                else " (not at the edge of stability in this run)"
            )
        )
    for _, b in bad.iterrows():
        parts.append(
            f"{b['run']} diverged at step {b['diverged at']} (a non-finite loss, gradient or sharpness); "
            "its curves stop there and its medians use only the finite measurements"
        )
    return "; ".join(parts) + "."


def _median(half: pd.DataFrame, values: Optional[pd.Series]) -> float:
    """The median of ``values`` (a column of ``half``), NaN when there are none."""
    return float(values.median()) if values is not None and len(half) else float("nan")


def setting_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per setting (eta, rho): each run's medians over the second half, then their mean,
    min and max over the seeds.

    Per run: the median of ``ratio``, of ``op_norm``, of ``edge`` (the run's own edge: SAM-edge,
    or 2/eta for GD), of ``grad_norm`` and, for ``measure_ascent`` runs, of
    ``ascent_op_norm / edge`` (NaN otherwise). Rows are sorted by eta, then rho."""
    per_run = []
    for r in records:
        half = second_half(r.frame, r.config.steps)
        ascent = half[ASCENT_OP_NORM] / half[EDGE] if ASCENT_OP_NORM in half else None
        per_run.append(
            {
                "eta": r.config.eta,
                "rho": r.config.rho,
                "seed": r.config.seed,
                "ratio": _median(half, half.get(RATIO)),
                "op_norm": _median(half, half.get(OP_NORM)),
                "edge": _median(half, half.get(EDGE)),
                "grad_norm": _median(half, half.get(GRAD_NORM)),
                "ascent": _median(half, ascent),
            }
        )
    if not per_run:
        raise ValueError("records is empty; give at least one RunRecord")
    runs = pd.DataFrame(per_run)
    rows = []
    for (eta, rho), g in runs.groupby(["eta", "rho"], sort=True):
        rows.append(
            {
                "eta": float(eta),
                "rho": float(rho),
                "seeds": int(len(g)),
                "median ratio mean": float(g["ratio"].mean()),
                "median ratio min": float(g["ratio"].min()),
                "median ratio max": float(g["ratio"].max()),
                "median ||H||": float(g["op_norm"].mean()),
                "median ||H|| min": float(g["op_norm"].min()),
                "median ||H|| max": float(g["op_norm"].max()),
                "median edge": float(g["edge"].mean()),
                "median edge min": float(g["edge"].min()),
                "median edge max": float(g["edge"].max()),
                "median grad norm": float(g["grad_norm"].mean()),
                "median ascent ratio": float(g["ascent"].mean()),
            }
        )
    return pd.DataFrame(rows)
