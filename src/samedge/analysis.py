"""Tables and sentences computed from run records (never typed by hand)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import pandas as pd

from .columns import (
    ALIGN_GRAD,
    ALIGN_SAM_GRAD,
    AMPLITUDE_U,
    ASCENT_OP_NORM,
    EDGE,
    GRAD_NORM,
    GROWTH_U,
    GROWTH_U_AT_AMPLITUDE,
    OP_NORM,
    RATIO,
    SAM_MAP_MU,
    SHARPNESS_AND_EDGE,
    STEP,
    TRAIN_LOSS,
)
from .edge import aligned_sam_edge
from .monitor_record import MonitorRecord
from .record import RunRecord, second_half
from .sam_map import GROWTH_EPS

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
    "ratio_verdict",
    "sam_bias_sentence",
    "DRIFT_NOTE",
    "run_label",
    "setting_table",
    "first_seed",
    "per_seed_ratios",
    "edge_facts",
    "edge_facts_sentence",
    "PHASE_EVEN",
    "PHASE_ODD",
    "PAIR_RATIO",
    "PHASE_GAP",
    "PAIRS",
    "pair_means",
    "phase_medians",
    "phase_table",
    "phase_sentence",
    "ACCOUNT_FORMULA",
    "ACCOUNT_FORMULA_AT_ACCOUNTS",
    "ACCOUNT_ALIGNED",
    "ACCOUNT_ASCENT",
    "ACCOUNT_EXACT",
    "ACCOUNT_CYCLE",
    "ACCOUNT_CYCLE_AMPLITUDE",
    "ACCOUNTS",
    "EXPLAINS_FRACTION",
    "growth_as_ratio",
    "account_frame",
    "run_accounts",
    "accounts_table",
    "drift_table",
    "drift_sentence",
    "AMPLITUDE",
    "amplitude_sentence",
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
# Short, so that a table's headers wrap between words only; "over the second half of training" is
# said by every table's caption or the text above it.
MEDIAN_H = "median ||H||"
MEDIAN_EDGE = "median edge"  # each run's own edge: its "rule" column says which
RULE = "rule"
MEDIAN_RATIO = "median ratio"
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


# Where a chapter's sentence points for the analysis of a ratio that drifts with rho (the grid
# chapter's drift section; a MyST role, rendered where the sentence is shown as MyST Markdown).
DRIFT_NOTE = "{doc}`grid` analyses this drift"


def ratio_verdict(table: pd.DataFrame, band: Tuple[float, float] = DEFAULT_BAND) -> dict:
    """What the medians of ``table`` (a ``ratio_table`` or ``seed_table``) say, as numbers and flags.

    Keys: ``sam`` (SAM rows that did not diverge, sorted by rho), ``inside`` (how many in ``band``),
    ``low``/``high`` (their ratio range), ``of_gd_low``/``of_gd_high`` (their sharpness over 2/eta),
    ``far`` (that sharpness below the band's low end: the SAM-edge is told apart from 2/eta),
    ``above``/``below`` (every SAM ratio above / below 1), ``rising`` (at least two radii and the
    ratio strictly increasing with rho), ``gd`` (GD's ratio or None) and ``gd_in_band``."""
    lo, hi = band
    ok = table[~table["diverged"]]
    # By rule where the table has one (a monitor's records); else the paper's runs: rho > 0 is SAM.
    rule = ok[RULE] if RULE in ok else pd.Series(["sam" if x > 0 else "gd" for x in ok["rho"]], index=ok.index)
    sam = ok[rule.isin(["sam", "usam"])].sort_values("rho", kind="stable")
    gd = ok[rule == "gd"]
    r = sam[MEDIAN_RATIO].to_numpy(dtype=float)
    of_gd = (sam[MEDIAN_H] / sam[TWO_OVER_ETA]).to_numpy(dtype=float)
    per_rho = sam.groupby("rho", sort=True)[MEDIAN_RATIO].mean().to_numpy(dtype=float)
    gd_ratio = float(gd[MEDIAN_RATIO].iloc[0]) if len(gd) else None
    return {
        "sam": sam,
        "inside": int(((r >= lo) & (r <= hi)).sum()),
        "low": float(r.min()) if len(r) else float("nan"),
        "high": float(r.max()) if len(r) else float("nan"),
        "of_gd_low": float(of_gd.min()) if len(r) else float("nan"),
        "of_gd_high": float(of_gd.max()) if len(r) else float("nan"),
        "far": bool(len(r)) and float(of_gd.max()) < lo,
        "above": bool(len(r)) and bool((r > 1).all()),
        "below": bool(len(r)) and bool((r < 1).all()),
        "rising": len(per_rho) >= 2 and bool((per_rho[1:] > per_rho[:-1]).all()),
        "gd": gd_ratio,
        "gd_row": gd.iloc[0] if len(gd) else None,
        "gd_in_band": gd_ratio is not None and lo <= gd_ratio <= hi,
        "other": ok[~rule.isin(["sam", "usam", "gd"])],
    }


def _pct(x: float) -> str:
    """A ratio's offset from 1 as a signed percentage: 1.049 -> '+4.9%'."""
    return f"{100 * (x - 1):+.1f}%"


def _pct_span(low: float, high: float) -> str:
    """'+0.9% to +4.9%', or one percentage when both ends print the same."""
    a, b = _pct(low), _pct(high)
    return a if a == b else f"{a} to {b}"


def sam_bias_sentence(v: dict, drift_note: str = DRIFT_NOTE) -> str:
    """How the SAM ratios sit relative to 1 and to rho (from ``ratio_verdict``): a systematic offset
    that grows with rho, an offset of one sign, or a scatter about 1."""
    sam = v["sam"]
    if not len(sam):
        return ""
    first, last = sam.iloc[0], sam.iloc[-1]
    if v["above"] and v["rising"]:
        return (
            f"the sharpness sits above the SAM-edge in every SAM setting, by a bias that grows with rho "
            f"({_pct(first[MEDIAN_RATIO])} at rho = {first['rho']:g} to {_pct(last[MEDIAN_RATIO])} at rho = "
            f"{last['rho']:g}): a systematic offset, not exact tracking; {drift_note}"
        )
    side = "above" if v["above"] else "below" if v["below"] else None
    if side:
        return (
            f"the sharpness sits {side} the SAM-edge in every SAM setting ({_pct_span(v['low'], v['high'])}), "
            "without a bias that grows with rho"
        )
    return f"the sharpness lies on both sides of the SAM-edge ({_pct_span(v['low'], v['high'])})"


def interpret_ratios(
    table: pd.DataFrame, band: Tuple[float, float] = DEFAULT_BAND, drift_note: str = DRIFT_NOTE
) -> str:
    """Sentences saying, from the numbers, where the sharpness sat: how close to the SAM-edge and
    how far from 2/eta, whether its offset from the SAM-edge grows with rho, and whether GD sat at
    its edge.

    A run (or, in a ``seed_table``, a setting by its mean over the seeds) counts as at its edge
    when its median ratio lies in ``band``: SAM against the SAM-edge, GD against 2/eta."""
    lo, hi = band
    seeds = "seeds" in table and bool((table["seeds"] > 1).any())
    what = "setting" if seeds else "run"
    parts: List[str] = []
    bad = table[table["diverged"]]
    v = ratio_verdict(table, band)
    sam, other = v["sam"], v["other"]

    def spread(t: pd.DataFrame) -> str:
        if not seeds:
            return ""
        lo_n, hi_n = int(t["seeds"].min()), int(t["seeds"].max())
        n = f"{lo_n}" if lo_n == hi_n else f"{lo_n}-{hi_n}"
        width = float((t[RATIO_MAX] - t[RATIO_MIN]).max())
        return f"; over {n} seeds per setting the ratio spans at most {width:.4f}, max minus min"

    if len(sam):
        rng = f"range {v['low']:.4f} to {v['high']:.4f}" if len(sam) > 1 else f"{v['low']:.4f}"
        of_gd = (
            f"{v['of_gd_low']:.2f} to {v['of_gd_high']:.2f}" if len(sam) > 1 else f"{v['of_gd_low']:.2f}"
        ) + " x 2/eta"
        head = (
            f"For {v['inside']} of {len(sam)} SAM {what}s the median of ||H||/SAM-edge over the second half of training "
            + ("(mean over seeds) " if seeds else "")
            + f"lies in [{lo:g}, {hi:g}] ({rng}{spread(sam)})"
        )
        if v["inside"] == len(sam):
            where = (
                f"so the sharpness is close to the SAM-edge and far from 2/eta (it sits at {of_gd})"
                if v["far"]
                else f"but the SAM-edge is too close to 2/eta here to tell the two apart (the sharpness sits at {of_gd})"
            )
        else:
            where = "where it falls outside, the sharpness did not settle at the SAM-edge"
        parts.append(f"{head}: {where}; {sam_bias_sentence(v, drift_note)}")
    if v["gd"] is not None:
        g = v["gd_row"]
        extra = f", seeds {g[RATIO_MIN]:.4f} to {g[RATIO_MAX]:.4f}" if seeds and g["seeds"] > 1 else ""
        parts.append(
            f"GD's sharpness settles at {v['gd']:.4f} x 2/eta{extra}"
            + (
                f": at its edge of stability (inside [{lo:g}, {hi:g}], {_pct(v['gd'])} from 2/eta)"
                if v["gd_in_band"]
                else f": outside [{lo:g}, {hi:g}], not at its edge of stability here"
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
    return ". ".join(p[0].upper() + p[1:] for p in parts) + "."


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


# --- Phases: a period-2 oscillation measured at both of its steps (RunConfig.measure_pairs) ---

PHASE_EVEN = "median ratio, even steps (2nd half)"
PHASE_ODD = "median ratio, odd steps (2nd half)"
PAIR_RATIO = "median pair-mean ratio (2nd half)"
PHASE_GAP = "even minus odd"
PAIRS = "pairs (2nd half)"


def pair_means(steps: pd.Series, values: pd.Series) -> pd.Series:
    """The mean of ``values`` at t and t + 1 for every t whose next step is also in ``steps``
    (indexed by t): over a period-2 oscillation, a number that does not depend on the phase."""
    s = pd.Series(values.to_numpy(dtype=float), index=steps.to_numpy())
    s = s[s.notna()]
    t = [i for i in s.index if i + 1 in s.index]
    return pd.Series([(s[i] + s[i + 1]) / 2 for i in t], index=t, dtype=float)


def phase_medians(rec: AnyRecord, values: Optional[pd.Series] = None) -> dict:
    """Over the second half of ``rec``: the median of ``values`` (default: the ratio column) at
    even steps, at odd steps, over the pair means (``pair_means``) and the number of pairs."""
    df = rec.frame
    vals = df[RATIO] if values is None else values
    half = (df[STEP] >= rec.steps / 2) & vals.notna() if len(df) else pd.Series(dtype=bool)
    steps, v = df[STEP][half], vals[half].astype(float)
    pairs = pair_means(steps, v)

    def med(x: pd.Series) -> float:
        return float(x.median()) if len(x) else float("nan")

    return {
        PHASE_EVEN: med(v[steps % 2 == 0]),
        PHASE_ODD: med(v[steps % 2 == 1]),
        PAIR_RATIO: med(pairs),
        PAIRS: int(len(pairs)),
    }


def phase_table(records: Sequence[AnyRecord], column: str = RATIO) -> pd.DataFrame:
    """Per setting (run label): the mean over the seeds of today's median ratio (all measurements of
    the second half), of the even- and odd-step medians, and of the median pair mean, of ``column``
    (default the ratio; the Transformer's ``eval_ratio`` is the ratio on its fixed batch)."""
    rows = []
    for r in records:
        values = None if column == RATIO else r.frame[column]
        rows.append(
            {
                "run": run_label(r),
                "rho": r.rho,
                "eta": r.eta,
                MEDIAN_RATIO: r.median_ratio(column),
                **phase_medians(r, values),
            }
        )
    if not rows:
        raise ValueError("records is empty; give at least one RunRecord")
    t = pd.DataFrame(rows)
    out = t.groupby(["run", "rho", "eta"], sort=False).mean(numeric_only=True).reset_index()
    out.insert(3, "seeds", t.groupby(["run", "rho", "eta"], sort=False).size().to_numpy())
    out[PHASE_GAP] = out[PHASE_EVEN] - out[PHASE_ODD]
    return out


def phase_sentence(table: pd.DataFrame) -> str:
    """What ``phase_table`` says, in words computed from it: how far the phases differ and how far
    the phase-free ratio (the median pair mean) lies from today's median."""
    ok = table.dropna(subset=[PAIR_RATIO])
    if ok.empty:
        return "No run has consecutive measurements in its second half, so no phase-free ratio is available."
    gap = ok[PHASE_GAP].abs()
    worst = ok.loc[gap.idxmax()]
    shift = (ok[PAIR_RATIO] - ok[MEDIAN_RATIO]).abs()
    return (
        f"Measured at both steps of each pair, the even- and odd-step medians of the ratio differ by at most "
        f"{gap.max():.3f} ({worst['run']}: {worst[PHASE_EVEN]:.3f} at even steps, {worst[PHASE_ODD]:.3f} at odd "
        f"ones); the median over the second half of the mean of each pair, a ratio that does not depend on the "
        f"phase, is {ok[PAIR_RATIO].min():.3f} to {ok[PAIR_RATIO].max():.3f} over the settings, and differs from "
        f"the median of all measurements by at most {shift.max():.3f}."
    )


# --- Accounts of the ratio: what each candidate explanation makes of it, on the ratio's scale ---

ACCOUNT_FORMULA = "||H|| / SAM-edge"
ACCOUNT_FORMULA_AT_ACCOUNTS = "||H|| / SAM-edge (account steps)"
ACCOUNT_ALIGNED = "||H|| / aligned edge"
ACCOUNT_ASCENT = "||H(w~)|| / SAM-edge"
ACCOUNT_EXACT = "eta mu / 2"
ACCOUNT_CYCLE = "two-step growth (small)"
ACCOUNT_CYCLE_AMPLITUDE = "two-step growth (at amplitude)"
# In this order in the tables and the figure; each is 1 at the edge its account predicts.
ACCOUNTS = [
    ACCOUNT_FORMULA,
    ACCOUNT_FORMULA_AT_ACCOUNTS,
    ACCOUNT_ALIGNED,
    ACCOUNT_ASCENT,
    ACCOUNT_EXACT,
    ACCOUNT_CYCLE,
    ACCOUNT_CYCLE_AMPLITUDE,
]
# An account explains the drift of the ratio with rho when its own drift is at most this fraction
# of the formula ratio's (in magnitude), i.e. it removes three quarters of it or more, and its value
# lies in the band of "at the edge" (``BANDS``) at every rho: an account flat far from 1 explains nothing.
EXPLAINS_FRACTION = 0.25


def growth_as_ratio(growth: pd.Series) -> pd.Series:
    """A two-step growth factor G on the ratio's scale: (1 + sqrt(G)) / 2, NaN for G < 0.

    For GD on a quadratic with sharpness lam, G = (1 - eta lam)^2, and on the branch eta lam >= 1
    (where the edge lies) eta lam / 2 = (1 + sqrt(G)) / 2: 1 exactly at the edge, like a ratio.
    Below eta lam = 1 it reads 1 - eta lam / 2, between 1/2 and 1: below 1 still means stable."""
    g = growth.astype(float)
    return (1 + g.where(g >= 0).pow(0.5)) / 2


def account_frame(rec: AnyRecord) -> pd.DataFrame:
    """Per measurement of ``rec``: its step and every account of ``ACCOUNTS`` (NaN where not measured).

    The formula ratio ||H||/SAM-edge; the same at the rows that carry the SAM map's accounts;
    ||H|| over the aligned edge (``samedge.edge.aligned_sam_edge`` with cos^2 = align_grad^2;
    NaN for unnormalized SAM); ||H(w~)||/SAM-edge (measure_ascent runs); eta mu / 2 with mu the
    top real eigenvalue of the SAM map's M; and the two-step growths along u as ratios
    (``growth_as_ratio``)."""
    df = rec.frame
    nan = pd.Series(float("nan"), index=df.index)
    out = pd.DataFrame({STEP: df[STEP]})
    out[ACCOUNT_FORMULA] = df[RATIO].astype(float)
    mu = df[SAM_MAP_MU].astype(float) if SAM_MAP_MU in df else nan
    out[ACCOUNT_FORMULA_AT_ACCOUNTS] = out[ACCOUNT_FORMULA].where(mu.notna())
    if rec.rule in ("gd", "sam"):
        cos2 = (df[ALIGN_GRAD].astype(float) ** 2).clip(upper=1.0)  # round-off can put |cos| a hair above 1
        edge = aligned_sam_edge(rec.eta, rec.rho, df[GRAD_NORM].to_numpy(dtype=float), cos2.to_numpy())
        out[ACCOUNT_ALIGNED] = df[OP_NORM].astype(float) / edge
    else:
        out[ACCOUNT_ALIGNED] = nan
    out[ACCOUNT_ASCENT] = df[ASCENT_OP_NORM] / df[EDGE] if ASCENT_OP_NORM in df else nan
    out[ACCOUNT_EXACT] = rec.eta * mu / 2
    out[ACCOUNT_CYCLE] = growth_as_ratio(df[GROWTH_U]) if GROWTH_U in df else nan
    out[ACCOUNT_CYCLE_AMPLITUDE] = growth_as_ratio(df[GROWTH_U_AT_AMPLITUDE]) if GROWTH_U_AT_AMPLITUDE in df else nan
    return out


AMPLITUDE = "amplitude along u (median)"


def run_accounts(records: Sequence[AnyRecord]) -> pd.DataFrame:
    """One row per run (eta, rho, seed) and account: the median over the second half of its pair
    means (the phase-free value), and its even- and odd-step medians; ``AMPLITUDE``, the run's
    median half-step along u on its account steps (NaN without them), on each of its rows."""
    rows = []
    for r in records:
        acc = account_frame(r)
        amp = r.frame[AMPLITUDE_U].astype(float).median() if AMPLITUDE_U in r.frame else float("nan")
        for name in ACCOUNTS:
            ph = phase_medians(r, acc[name])
            rows.append(
                {
                    "eta": r.eta,
                    "rho": r.rho,
                    "seed": r.seed,
                    "account": name,
                    "value": ph[PAIR_RATIO],
                    "even": ph[PHASE_EVEN],
                    "odd": ph[PHASE_ODD],
                    PAIRS: ph[PAIRS],
                    AMPLITUDE: float(amp),
                }
            )
    if not rows:
        raise ValueError("records is empty; give at least one RunRecord")
    return pd.DataFrame(rows)


def amplitude_sentence(runs: pd.DataFrame, eps: float = GROWTH_EPS) -> str:
    """The size of the oscillation along u per rho (``run_accounts``' ``AMPLITUDE``, mean over the
    runs), in words, and what it means for the two-step growth accounts: below ``eps`` (the small
    perturbation) "at amplitude" is measured at ``eps``, so the two accounts coincide."""
    if AMPLITUDE not in runs or runs[AMPLITUDE].isna().all():
        return "These runs carry no SAM map accounts, so no amplitude of the oscillation along u was measured."
    amp = runs.drop_duplicates(["eta", "rho", "seed"]).groupby("rho")[AMPLITUDE].agg(["mean", "min", "max"])
    parts = [
        f"rho={rho:g}: {a['mean']:.1e}"
        + ("" if f"{a['min']:.1e}" == f"{a['max']:.1e}" else f" ({a['min']:.1e} to {a['max']:.1e} over the runs)")
        for rho, a in amp.iterrows()
    ]
    below = [f"{rho:g}" for rho, a in amp.iterrows() if a["max"] < eps]
    text = (
        "The half-step of the period-two oscillation along u, the median over each run's account steps, is "
        + "; ".join(parts)
        + f". The two-step growth's small perturbation is {eps:g}"
    )
    if below:
        return (
            text + f": at rho={', '.join(below)} every run's oscillation along u is smaller than that, so there is "
            "no oscillation along u to measure at its own size, the growth at amplitude is the small-perturbation "
            "growth, and a growth below 1 says that SAM contracts along u."
        )
    return text + ", below every run's oscillation: the two growths measure at different sizes."


def accounts_table(records: Sequence[AnyRecord]) -> pd.DataFrame:
    """One row per setting (eta, rho): every account's phase-free value (``run_accounts``), the
    mean over the seeds, and the formula ratio's even- and odd-step medians (means over seeds)."""
    runs = run_accounts(records)
    wide = runs.pivot_table(index=["eta", "rho"], columns="account", values="value", aggfunc="mean", dropna=False)
    wide = wide.reindex(columns=ACCOUNTS)
    formula = runs[runs["account"] == ACCOUNT_FORMULA].groupby(["eta", "rho"])
    wide.insert(0, "seeds", formula.size())
    wide[PHASE_EVEN] = formula["even"].mean()
    wide[PHASE_ODD] = formula["odd"].mean()
    wide.columns.name = None
    return wide.reset_index().sort_values(["eta", "rho"], ignore_index=True)


def drift_table(runs: pd.DataFrame, band: Tuple[float, float] = DEFAULT_BAND) -> pd.DataFrame:
    """Per account: its value at every rho (mean over eta, then over seeds) and its drift, the
    value at the largest rho minus that at rho = 0, with the drift's min and max over the seeds
    (each seed's drift from its own means over eta), and whether it explains the formula ratio's
    drift (``EXPLAINS_FRACTION``: a small drift, and every rho's value in ``band``). ``runs`` is ``run_accounts(records)`` (or that table read back
    from a file)."""
    per_seed = runs.groupby(["account", "rho", "seed"])["value"].mean().unstack("rho")
    rhos = sorted(runs["rho"].unique())
    if len(rhos) < 2 or rhos[0] != 0:
        raise ValueError(f"a drift needs rho = 0 and a larger rho, got rhos {rhos}")
    drift = per_seed[rhos[-1]] - per_seed[rhos[0]]
    rows = []
    for name in ACCOUNTS:
        if name not in per_seed.index.get_level_values("account"):
            continue
        row: dict = {"account": name}
        row.update({f"rho={rho:g}": float(per_seed.loc[name][rho].mean()) for rho in rhos})
        d = drift.loc[name]
        row.update(drift=float(d.mean()), **{"drift seed min": float(d.min()), "drift seed max": float(d.max())})
        rows.append(row)
    out = pd.DataFrame(rows)
    base = float(out.loc[out["account"] == ACCOUNT_FORMULA, "drift"].iloc[0])
    out["drift / formula drift"] = out["drift"] / base
    values = out[[f"rho={rho:g}" for rho in rhos]]
    at_edge = ((values >= band[0]) & (values <= band[1])).all(axis=1)
    out["explains"] = (out["drift / formula drift"].abs() <= EXPLAINS_FRACTION) & at_edge
    return out


def drift_sentence(drift: pd.DataFrame) -> str:
    """Which accounts explain the drift of the ratio with rho, in words computed from ``drift_table``."""
    rhos = [c for c in drift.columns if c.startswith("rho=")]
    lo, hi = rhos[0], rhos[-1]
    f = drift[drift["account"] == ACCOUNT_FORMULA].iloc[0]
    parts = [
        f"From {lo} to {hi} the formula ratio moves from {f[lo]:.3f} to {f[hi]:.3f} (drift {f['drift']:+.3f}, "
        f"seeds {f['drift seed min']:+.3f} to {f['drift seed max']:+.3f})"
    ]
    rest = drift[drift["account"] != ACCOUNT_FORMULA].dropna(subset=["drift"])
    for _, a in rest.iterrows():
        parts.append(
            f"{a['account']}: {a[lo]:.3f} to {a[hi]:.3f}, drift {a['drift']:+.3f} "
            f"({a['drift / formula drift']:+.0%} of the formula's)"
        )
    good = rest[rest["explains"] & (rest["account"] != ACCOUNT_FORMULA_AT_ACCOUNTS)]["account"].tolist()
    bad = rest[~rest["explains"] & (rest["account"] != ACCOUNT_FORMULA_AT_ACCOUNTS)]["account"].tolist()
    verdict = (
        f"An account explains the drift if its own drift is at most {EXPLAINS_FRACTION:.0%} of the formula's "
        "and its value lies in the band of the edge at every rho: "
        + (f"{', '.join(good)} {'does' if len(good) == 1 else 'do'}" if good else "none does")
        + (f"; {', '.join(bad)} {'does' if len(bad) == 1 else 'do'} not" if bad else "")
        + "."
    )
    return "; ".join(parts) + ". " + verdict


# --- The authors' method beside ours (benchmarks/authors_method.py's committed results) ---

AUTHORS_FILE = "authors_method_{task}.csv"
AUTHORS_COMMAND = (
    "PYTHONPATH=src:$HOME/jax-site OMP_NUM_THREADS=1 python benchmarks/authors_method.py --authors-dir DIR"
)
AUTHORS_FACTS = (
    "commit",
    "seed",
    "n_train",
    "every",
    "n-half",
    "step0",
    "err-min",
    "err-max",
    "err-median",
    "last-loss-diff",
    "minutes",
    "cpu-minutes",
    "jax",
    "date",
)


def authors_method_command(task: str) -> str:
    """The command that regenerates ``task``'s results file (from the repository root)."""
    return AUTHORS_COMMAND + ("" if task == "mnist" else f" --task {task}")


def authors_method_missing(task: str) -> str:
    """What a chapter says where ``task``'s results file is absent: how to make it."""
    return (
        f"The results file `book/data/{AUTHORS_FILE.format(task=task)}` is absent. To make it: `git clone "
        "https://github.com/google-deepmind/sam_edge DIR`, install JAX apart (`pip install --target ~/jax-site "
        f"--no-deps jax jaxlib ml_dtypes opt_einsum`) and run `{authors_method_command(task)}` from the repository root."
    )


def load_authors_method(task: str, where: Sequence[str] = ("data", "book/data")) -> Optional[tuple]:
    """(results, sidecar dict) of ``benchmarks/authors_method.py --task <task>``, read from the first
    of ``where`` (relative to the working directory) that holds the file; None if none does."""
    import json
    from pathlib import Path

    for d in where:
        path = Path(d) / AUTHORS_FILE.format(task=task)
        if path.is_file():
            return pd.read_csv(path), json.loads(path.with_suffix(".json").read_text())
    return None


def authors_method_table(results: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """Per rho, medians over the second half of the compared steps: their estimate over their edge,
    our exact ||H||_op at their weights over it, our run at the same steps and over all its
    measurements, and the estimator's error (over every compared step)."""
    steps = meta["config"]["steps"]
    half = results[results["step"] >= steps / 2]  # as samedge.record.second_half
    ours_every = {c["rho"]: c["our_median_ratio_all_measurements"] for c in meta["checks"]}
    return pd.DataFrame(
        [
            {
                "run": "GD" if rho == 0 else f"SAM rho={rho:g}",
                "theirs: estimate / edge": g["their_ratio"].median(),
                "exact ||H|| at their weights / edge": g["exact_ratio"].median(),
                "ours / edge, same steps": g["our_ratio"].median(),
                "ours / edge, every measurement": ours_every[rho],
                "estimator error (median)": results.loc[results["rho"] == rho, "estimator_error"].median(),
            }
            for rho, g in half.groupby("rho")
        ]
    )


def authors_method_facts(results: pd.DataFrame, meta: dict) -> dict:
    """The numbers a chapter's text quotes about the comparison, formatted, by glue name suffix."""
    steps = meta["config"]["steps"]
    err = results["estimator_error"]
    last = results[results["step"] == results["step"].max()]
    return {
        "commit": meta["authors_commit"][:7],
        "seed": str(meta["seed"]),
        "n_train": f"{meta['config']['n_train']:,}",
        "every": str(meta["compare_every"]),
        "n-half": str(results.loc[results["step"] >= steps / 2, "step"].nunique()),
        "step0": f"{max(c['step0_loss_rel_diff'] for c in meta['checks']):.1g}",
        "err-min": f"{err.min():+.2%}",
        "err-max": f"{err.max():+.2%}",
        "err-median": f"{err.median():+.2%}",
        "last-loss-diff": f"{(last['their_loss'] / last['our_loss'] - 1).abs().max():.1%}",
        "minutes": f"{meta['seconds'] / 60:.0f}",
        "cpu-minutes": f"{meta['cpu_seconds'] / 60:.0f}",
        "jax": meta["jax_version"],
        "date": meta["date"][:10],
    }
