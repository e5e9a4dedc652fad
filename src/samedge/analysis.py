"""Tables and sentences computed from run records (never typed by hand)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import pandas as pd

from .columns import (
    ALIGN_GRAD,
    ALIGN_SAM_GRAD,
    ASCENT_OP_NORM,
    EDGE,
    GRAD_NORM,
    OP_NORM,
    RATIO,
    SHARPNESS_AND_EDGE,
    STEP,
    TRAIN_LOSS,
)
from .monitor_record import MonitorRecord
from .record import RunRecord, second_half

__all__ = [
    "AnyRecord",
    "MEDIAN_H",
    "MEDIAN_EDGE",
    "MEDIAN_RATIO",
    "RATIO_MIN",
    "RATIO_MAX",
    "RATIO_SD",
    "FINAL_TRAIN_LOSS",
    "TEST_LOSS",
    "TRAIN_ACCURACY",
    "TEST_ACCURACY",
    "TWO_OVER_ETA",
    "DIVERGED_AT",
    "RUNS_DIVERGED",
    "SEEDS_IN_BAND",
    "IN_BAND",
    "BAND_LOW",
    "BAND_HIGH",
    "BANDS",
    "DEFAULT_BAND",
    "band_of",
    "batching_of",
    "ratio_table",
    "seed_table",
    "interpret_ratios",
    "run_label",
    "setting_table",
    "first_seed",
    "per_seed_ratios",
    "edge_facts",
    "edge_facts_sentence",
    "EDGE_NAMES",
    "LOSS_NOTE",
    "RULE",
    "edge_name",
    "loss_note",
    "unique_labels",
]

# A run's record or a monitor's: both have frame, label, steps, eta, rho, seed, rule, diverged_at.
AnyRecord = Union[RunRecord, MonitorRecord]

# The display names of the tables' columns, one constant each (tables, plots, notebooks and tests
# use these names).
MEDIAN_H = "median ||H|| (2nd half)"
MEDIAN_EDGE = "median edge (2nd half)"  # each run's own edge: its "rule" column says which
RULE = "rule"
MEDIAN_RATIO = "median ratio (2nd half)"
RATIO_MIN = "ratio min"
RATIO_MAX = "ratio max"
RATIO_SD = "ratio sd"
FINAL_TRAIN_LOSS = "final train loss"
TEST_LOSS = "test loss"
TRAIN_ACCURACY = "train accuracy"
TEST_ACCURACY = "test accuracy"
TWO_OVER_ETA = "2/eta"
DIVERGED_AT = "diverged at"
RUNS_DIVERGED = "runs diverged"
SEEDS_IN_BAND = "seeds in band"
IN_BAND = "in band"
BAND_LOW = "band low"
BAND_HIGH = "band high"

# Where a median ratio (||H||_op / the run's own edge, median over the second half) counts as
# "at the edge", fixed before the runs of this version, for every task and for SAM and GD alike;
# only the kind of gradient decides. book/methods.md ("What counts as at the edge") says why.
BANDS = {"full batch": (0.9, 1.15), "minibatch": (0.8, 1.25)}
DEFAULT_BAND = BANDS["full batch"]


def batching_of(rec: AnyRecord) -> str:
    """'full batch' or 'minibatch': whether the run's gradients came from the whole training set."""
    return rec.batching


def band_of(records: Sequence[AnyRecord]) -> Tuple[float, float]:
    """The band of these runs (``BANDS`` by their batching), which must all be of one kind."""
    kinds = {batching_of(r) for r in records}
    if len(kinds) != 1:
        raise ValueError(f"records mix {sorted(kinds)} runs; give runs of one kind, or call band_of per kind")
    return BANDS[kinds.pop()]


def run_label(rec: AnyRecord) -> str:
    """'GD', 'SAM rho=0.05' (with 'unnormalized' when so), or a monitor record's own label."""
    return rec.label


def unique_labels(records: Sequence[AnyRecord]) -> List[str]:
    """The runs' labels, a repeated one suffixed by its occurrence ('SGD', 'SGD #2'), so that a
    legend or table keeps one entry per run."""
    labels = [run_label(r) for r in records]
    seen: dict = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} #{seen[lab]}")
    return out


# What a record's edge column holds, in words, by update rule (``samedge.edge.RULES``, and "user"
# for an ``EdgeMonitor(edge=...)``); plain text, for tables and sentences (``plots.EDGE_LABELS``
# has the same in mathtext).
EDGE_NAMES = {
    "gd": "2/eta",
    "momentum": "2(1+beta)/eta",
    "sgd": "the SGD edge",
    "sam": "the SAM-edge",
    "usam": "the unnormalized-SAM edge",
    "sam_sgd": "the SAM-over-SGD edge",
    "adam": "the Adam edge",
    "adamw": "the AdamW edge",
    "rmsprop": "the RMSprop edge",
    "user": "your edge",
}


def edge_name(rule: Optional[str]) -> str:
    """The edge of an update rule in words ('2/eta', 'the SAM-edge', ...); 'no edge' for None."""
    if rule is None:
        return "no edge"
    return EDGE_NAMES.get(rule, f"the {rule} edge")


# The loss convention of the paper's squared-loss tasks (10 classes), for the figures' notes.
LOSS_NOTE = "squared loss = mean over examples and classes; Cohen et al.'s 0.5*sum is 5x larger"


def loss_note(rec: AnyRecord) -> Optional[str]:
    """The note on the loss a figure of ``rec`` carries: ``LOSS_NOTE`` for a run of a squared-loss
    task, None otherwise; a monitor's record holds the user's loss, which samedge does not know
    (None: pass your own note)."""
    if isinstance(rec, RunRecord):
        from .tasks import get_task

        return LOSS_NOTE if get_task(rec.config.task).loss_name == "squared" else None
    return None


def ratio_table(records: Sequence[AnyRecord], column: str = RATIO) -> pd.DataFrame:
    """Per run: median sharpness / its own edge over the second half of training, and context.

    The edge is the run's (``RULE`` column: 'gd' for 2/eta, 'sam' for the SAM-edge, 'momentum',
    'adam', ...; ``MEDIAN_EDGE`` its median). ``column="eval_ratio"`` reports the fixed
    evaluation batch instead (its ||H|| and edge too)."""
    if column not in SHARPNESS_AND_EDGE:
        raise ValueError(f"column must be one of {sorted(SHARPNESS_AND_EDGE)}, got {column!r}")
    rows = []
    for r in records:
        df = r.frame
        half = second_half(df, r.steps)
        # A record without the eval columns (a full-batch run) falls back to the training ones.
        h_col, e_col = SHARPNESS_AND_EDGE[column if column in df else RATIO]
        rows.append(
            {
                "run": run_label(r),
                RULE: r.rule,
                "rho": r.rho,
                "eta": r.eta,
                "seed": r.seed,
                TWO_OVER_ETA: 2 / r.eta,
                MEDIAN_H: float(half[h_col].median()) if len(half) else float("nan"),
                MEDIAN_EDGE: float(half[e_col].median()) if len(half) else float("nan"),
                MEDIAN_RATIO: r.median_ratio(column),
                FINAL_TRAIN_LOSS: float(df[TRAIN_LOSS].iloc[-1]) if len(df) else float("nan"),
                TEST_LOSS: r.summary.get("test_loss", float("nan")),
                TRAIN_ACCURACY: r.summary.get("final_train_accuracy", float("nan")),
                TEST_ACCURACY: r.summary.get("test_accuracy", float("nan")),
                "diverged": r.diverged,
                DIVERGED_AT: r.diverged_at,
            }
        )
    return pd.DataFrame(rows)


# The per-run numbers seed_table averages over the seeds (the ratio also gets its min and max).
_MEANS = [
    MEDIAN_H,
    MEDIAN_EDGE,
    MEDIAN_RATIO,
    FINAL_TRAIN_LOSS,
    TEST_LOSS,
    TRAIN_ACCURACY,
    TEST_ACCURACY,
]


def seed_table(records: Sequence[AnyRecord], column: str = RATIO) -> pd.DataFrame:
    """``ratio_table`` with one row per setting (run label, rho, eta) instead of per run: the mean
    over the seeds of each run's medians and losses, with the ratio's min, max and standard
    deviation over the seeds, the number of seeds and how many diverged."""
    per_run = ratio_table(records, column)
    if per_run.empty:
        raise ValueError("records is empty; give at least one RunRecord")
    rows = []
    for (label, rho, eta), g in per_run.groupby(["run", "rho", "eta"], sort=False):
        r = g[MEDIAN_RATIO]
        row = {"run": label, RULE: g[RULE].iloc[0], "rho": rho, "eta": eta, TWO_OVER_ETA: 2 / eta, "seeds": int(len(g))}
        row.update({c: float(g[c].mean()) for c in _MEANS})
        row.update(
            {
                RATIO_MIN: float(r.min()),
                RATIO_MAX: float(r.max()),
                RATIO_SD: float(r.std(ddof=1)) if len(g) > 1 else float("nan"),
                "diverged": bool(g["diverged"].any()),
                RUNS_DIVERGED: int(g["diverged"].sum()),
                DIVERGED_AT: min((int(d) for d in g[DIVERGED_AT] if d is not None and d == d), default=None),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def interpret_ratios(table: pd.DataFrame, band: Tuple[float, float] = DEFAULT_BAND) -> str:
    """One sentence saying, from the numbers, how closely sharpness tracked its edge.

    A run (or, in a ``seed_table``, a setting by its mean over the seeds) counts as at its edge
    when its median ratio lies in ``band``: SAM against the SAM-edge, GD against 2/eta."""
    lo, hi = band
    seeds = "seeds" in table and bool((table["seeds"] > 1).any())
    what = "setting" if seeds else "run"
    parts: List[str] = []
    bad = table[table["diverged"]]
    ok = table[~table["diverged"]]
    # By rule where the table has one (a table of the paper's runs: rho > 0 is SAM, rho = 0 GD).
    rule = ok[RULE] if RULE in ok else pd.Series(["sam" if x > 0 else "gd" for x in ok["rho"]], index=ok.index)
    sam = ok[rule.isin(["sam", "usam"])]
    gd = ok[rule == "gd"]
    other = ok[~rule.isin(["sam", "usam", "gd"])]

    def spread(t: pd.DataFrame) -> str:
        if not seeds:
            return ""
        lo_n, hi_n = int(t["seeds"].min()), int(t["seeds"].max())
        n = f"{lo_n}" if lo_n == hi_n else f"{lo_n}-{hi_n}"
        width = float((t[RATIO_MAX] - t[RATIO_MIN]).max())
        return f"; over {n} seeds per setting the ratio spans at most {width:.3f}, max minus min"

    if len(sam):
        inside = sam[(sam[MEDIAN_RATIO] >= lo) & (sam[MEDIAN_RATIO] <= hi)]
        lo_r, hi_r = sam[MEDIAN_RATIO].min(), sam[MEDIAN_RATIO].max()
        rng = f"range {lo_r:.3f} to {hi_r:.3f}" if len(sam) > 1 else f"{lo_r:.3f}"
        parts.append(
            f"For {len(inside)} of {len(sam)} SAM {what}s the median of ||H||/SAM-edge over the second half of training "
            + ("(mean over seeds) " if seeds else "")
            + f"lies in [{lo:g}, {hi:g}] ({rng}{spread(sam)})"
            + (
                ", so the operator norm of the Hessian tracks the SAM-edge, not 2/eta"
                if len(inside) == len(sam)
                else "; where it falls outside, the sharpness did not settle at the SAM-edge"
            )
        )
    if len(gd):
        g = gd.iloc[0]
        ratio_gd = float(g[MEDIAN_RATIO])  # GD's edge is 2/eta
        extra = f", seeds {g[RATIO_MIN]:.3f} to {g[RATIO_MAX]:.3f}" if seeds and g["seeds"] > 1 else ""
        parts.append(
            f"GD's sharpness settles at {ratio_gd:.3f} x 2/eta{extra}"
            + (
                " (the classical edge of stability)"
                if lo <= ratio_gd <= hi
                else f" (outside [{lo:g}, {hi:g}]: not at the edge of stability here)"
            )
        )
    for _, o in other.iterrows():
        ratio = float(o[MEDIAN_RATIO])
        if o.get(RULE) is None or ratio != ratio:
            parts.append(f"{o['run']} has no known edge, so no ratio")
            continue
        where = "inside" if lo <= ratio <= hi else "outside"
        parts.append(
            f"{o['run']}: the median of its sharpness over {edge_name(o[RULE])} over the "
            f"second half is {ratio:.3f}, {where} [{lo:g}, {hi:g}]"
        )
    for _, b in bad.iterrows():
        which = f" (the earliest of {int(b[RUNS_DIVERGED])} of its {int(b['seeds'])} seeds to diverge)" if seeds else ""
        parts.append(
            f"{b['run']} diverged at step {b[DIVERGED_AT]}{which}: a non-finite loss, gradient or sharpness; "
            "its curves stop there and its medians use only the finite measurements"
        )
    return "; ".join(parts) + "."


def _median(half: pd.DataFrame, values: Optional[pd.Series]) -> float:
    """The median of ``values`` (a column of ``half``), NaN when there are none."""
    return float(values.median()) if values is not None and len(half) else float("nan")


def setting_table(records: Sequence[AnyRecord]) -> pd.DataFrame:
    """One row per setting (eta, rho): each run's medians over the second half, then their mean,
    min and max over the seeds.

    Per run: the median of ``ratio``, of ``op_norm``, of ``edge`` (the run's own edge: SAM-edge,
    or 2/eta for GD), of ``grad_norm`` and, for ``measure_ascent`` runs, of
    ``ascent_op_norm / edge`` (NaN otherwise). Rows are sorted by eta, then rho."""
    per_run = []
    for r in records:
        half = second_half(r.frame, r.steps)
        ascent = half[ASCENT_OP_NORM] / half[EDGE] if ASCENT_OP_NORM in half else None
        per_run.append(
            {
                "eta": r.eta,
                "rho": r.rho,
                "seed": r.seed,
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


def first_seed(records: Sequence[AnyRecord]) -> List[AnyRecord]:
    """The runs of the smallest seed among ``records`` (the runs a chapter's per-run figures show)."""
    if not records:
        raise ValueError("records is empty; give at least one RunRecord")
    seed = min(r.seed for r in records)
    return [r for r in records if r.seed == seed]


def per_seed_ratios(records: Sequence[AnyRecord], column: str = RATIO) -> pd.DataFrame:
    """One row per setting (run label), one column ``seed S`` per seed: each run's median ratio
    over the second half (NaN where a seed has no run of that setting)."""
    t = ratio_table(records, column)
    wide = t.pivot_table(index="run", columns="seed", values=MEDIAN_RATIO, sort=False, dropna=False)
    wide = wide.reindex(list(dict.fromkeys(t["run"])))
    wide.columns = [f"seed {s}" for s in wide.columns]
    return wide.reset_index()


def edge_facts(records: Sequence[AnyRecord], band: Tuple[float, float] = DEFAULT_BAND) -> pd.DataFrame:
    """Per setting (run label), means over the seeds of: the run's edge over 2/eta at the first
    measurement and (median) over the second half; the sharpness at the first measurement; the
    first measured step whose ratio lies in ``band`` (NaN for a run that never does); the
    median |cos| of the gradient and of the SAM gradient with the top eigenvector over the run."""
    rows = []
    for r in records:
        df = r.frame
        if df.empty:
            continue
        half = second_half(df, r.steps)
        gd_edge = 2 / r.eta
        inside = (df[RATIO] >= band[0]) & (df[RATIO] <= band[1]) if RATIO in df else None
        reached = df[inside][STEP] if inside is not None else pd.Series(dtype=float)
        rows.append(
            {
                "run": run_label(r),
                "rho": r.rho,
                "edge / (2/eta) at start": float(df[EDGE].iloc[0]) / gd_edge,
                "edge / (2/eta), 2nd half": float(half[EDGE].median()) / gd_edge if len(half) else float("nan"),
                "||H|| at start": float(df[OP_NORM].iloc[0]),
                "||H|| / (2/eta) at start": float(df[OP_NORM].iloc[0]) / gd_edge,
                BAND_LOW: band[0],
                BAND_HIGH: band[1],
                "first step in the band": float(reached.iloc[0]) if len(reached) else float("nan"),
                "|cos(g, u)| median": float(df[ALIGN_GRAD].median()) if ALIGN_GRAD in df else float("nan"),
                "|cos(g_SAM, u)| median": float(df[ALIGN_SAM_GRAD].median()) if ALIGN_SAM_GRAD in df else float("nan"),
            }
        )
    if not rows:
        raise ValueError("no measurements in records; give runs with at least one measurement")
    t = pd.DataFrame(rows)
    out = t.groupby(["run", "rho"], sort=False).mean(numeric_only=True).reset_index()
    out.insert(2, "seeds", t.groupby(["run", "rho"], sort=False).size().to_numpy())
    return out


def edge_facts_sentence(facts: pd.DataFrame) -> str:
    """What ``edge_facts`` says about the paper's observations, in words computed from it: how far
    below 2/eta the SAM-edge starts and ends, when GD first reaches its edge, and whether SAM's
    gradient is more aligned with the top eigenvector than the gradient."""
    sam, gd = facts[facts["rho"] > 0], facts[facts["rho"] == 0]
    parts = []

    def span(col: pd.Series) -> str:  # "0.24" rather than "0.24 to 0.24"
        lo, hi = f"{col.min():.2f}", f"{col.max():.2f}"
        return lo if lo == hi else f"{lo} to {hi}"

    if len(sam):
        a, b = sam["edge / (2/eta) at start"], sam["edge / (2/eta), 2nd half"]
        parts.append(
            f"At the first measurement the SAM-edge is {span(a)} times 2/eta over the SAM "
            f"radii, and {span(b)} times 2/eta over the second half (medians)"
        )
        more = sam["|cos(g_SAM, u)| median"] > sam["|cos(g, u)| median"]
        parts.append(
            f"the SAM gradient is more aligned with the top eigenvector than the gradient in {int(more.sum())} of "
            f"{len(sam)} SAM settings (median |cos| {span(sam['|cos(g_SAM, u)| median'])}, against "
            f"{span(sam['|cos(g, u)| median'])} for the gradient)"
        )
    if len(gd):
        g = gd.iloc[0]
        step = g["first step in the band"]
        band = f"[{g[BAND_LOW]:g}, {g[BAND_HIGH]:g}] x 2/eta"
        reach = (
            f"first measures in the band {band} at step {step:.0f} (mean over seeds)"
            if step == step
            else f"never measures in the band {band}"
        )
        parts.append(
            f"GD starts at a sharpness of {g['||H|| at start']:.3g} = {g['||H|| / (2/eta) at start']:.2f} x 2/eta and {reach}"
        )
    return "; ".join(parts) + "."
