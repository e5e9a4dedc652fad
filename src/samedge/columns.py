"""The names of a measurement row's columns, one constant each: the measurement writes them,
the run records and the monitor's records store them, analysis and plots read them."""

from __future__ import annotations

__all__ = [
    "STEP",
    "TRAIN_LOSS",
    "GRAD_NORM",
    "OP_NORM",
    "LAMBDA_MAX",
    "LAMBDA_MIN",
    "EDGE",
    "GD_EDGE",
    "RATIO",
    "ALIGN_GRAD",
    "ALIGN_SAM_GRAD",
    "HVPS",
    "CONVERGED",
    "TRAIN_SECONDS",
    "MEASURE_SECONDS",
    "COLUMNS",
    "EVAL_OF",
    "EVAL_COLUMNS",
    "ASCENT_OF",
    "ASCENT_COLUMNS",
    "SAM_MAP_MU",
    "SAM_MAP_HVPS",
    "GROWTH_U",
    "GROWTH_U_AT_AMPLITUDE",
    "AMPLITUDE_U",
    "ACCOUNT_COLUMNS",
    "SHARPNESS_AND_EDGE",
    "TIMING_COLUMNS",
    "INT_COLUMNS",
    "BOOL_COLUMNS",
    "FINITE_COLUMNS",
]

STEP, TRAIN_LOSS, GRAD_NORM, OP_NORM = "step", "train_loss", "grad_norm", "op_norm"
LAMBDA_MAX, LAMBDA_MIN, EDGE, GD_EDGE, RATIO = "lambda_max", "lambda_min", "edge", "gd_edge", "ratio"
ALIGN_GRAD, ALIGN_SAM_GRAD, HVPS, CONVERGED = "align_grad", "align_sam_grad", "hvps", "converged"
TRAIN_SECONDS, MEASURE_SECONDS = "train_seconds", "measure_seconds"
EVAL_LOSS, EVAL_GRAD_NORM, EVAL_OP_NORM = "eval_loss", "eval_grad_norm", "eval_op_norm"
EVAL_EDGE, EVAL_RATIO, EVAL_HVPS = "eval_edge", "eval_ratio", "eval_hvps"
ASCENT_OP_NORM, ASCENT_HVPS = "ascent_op_norm", "ascent_hvps"
SAM_MAP_MU, SAM_MAP_HVPS = "sam_map_mu", "sam_map_hvps"
GROWTH_U, GROWTH_U_AT_AMPLITUDE, AMPLITUDE_U = "growth_u", "growth_u_at_amplitude", "amplitude_u"

# Every row has these, in this order; a fixed evaluation batch adds the eval_* columns (after
# CONVERGED), a measurement at the SAM ascent point the ascent_* ones.
COLUMNS = [
    STEP,
    TRAIN_LOSS,
    GRAD_NORM,
    OP_NORM,
    LAMBDA_MAX,
    LAMBDA_MIN,
    EDGE,
    GD_EDGE,
    RATIO,
    ALIGN_GRAD,
    ALIGN_SAM_GRAD,
    HVPS,
    CONVERGED,
    TRAIN_SECONDS,
    MEASURE_SECONDS,
]
# What a fixed evaluation batch records, and under which name (training column -> eval column).
EVAL_OF = {
    TRAIN_LOSS: EVAL_LOSS,
    GRAD_NORM: EVAL_GRAD_NORM,
    OP_NORM: EVAL_OP_NORM,
    EDGE: EVAL_EDGE,
    RATIO: EVAL_RATIO,
    HVPS: EVAL_HVPS,
}
EVAL_COLUMNS = list(EVAL_OF.values())
# What the measurement at the SAM ascent point w~ records.
ASCENT_OF = {OP_NORM: ASCENT_OP_NORM, HVPS: ASCENT_HVPS}
ASCENT_COLUMNS = list(ASCENT_OF.values())
# What the SAM map's accounts of the ratio record (``samedge.sam_map.sam_map_accounts``), on the
# rows of RunConfig.account_steps and NaN on the others: mu, the top real eigenvalue of M (the SAM
# map's Jacobian is I - eta M) and its HVPs; the two-step growth along u of a small perturbation
# and of one the size of the oscillation; that size, half the step along u.
ACCOUNT_COLUMNS = [SAM_MAP_MU, SAM_MAP_HVPS, GROWTH_U, GROWTH_U_AT_AMPLITUDE, AMPLITUDE_U]
# The sharpness and the edge behind each ratio column.
SHARPNESS_AND_EDGE = {RATIO: (OP_NORM, EDGE), EVAL_RATIO: (EVAL_OP_NORM, EVAL_EDGE)}
TIMING_COLUMNS = [TRAIN_SECONDS, MEASURE_SECONDS]  # wall-clock: the only non-reproducible columns
# Column types a saved record must have: integers, booleans, and numbers finite on every row but
# that of a recorded divergence.
INT_COLUMNS = (STEP, HVPS, EVAL_HVPS, ASCENT_HVPS)
BOOL_COLUMNS = (CONVERGED,)
FINITE_COLUMNS = (TRAIN_LOSS, GRAD_NORM, OP_NORM, LAMBDA_MAX, LAMBDA_MIN, EDGE, GD_EDGE, ALIGN_GRAD, ALIGN_SAM_GRAD)
