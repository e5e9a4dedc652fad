"""One measurement at w_t, shared by ``samedge.loop.run`` and ``samedge.EdgeMonitor``.

``prepare`` builds the exact HVP operator of a loss at the current weights together with its
loss and gradient (for one closure with double backward, from the same retained graph, so a SAM
step at a measured point reuses that gradient); ``measure`` turns it into a row (columns of
``samedge.columns``): ||H||_op by Lanczos warm-started from the previous eigenvector,
lambda_max/lambda_min, the edge and the ratio, alignments, HVP count and convergence, and the
same for an evaluation batch and the ascent point when given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch.func import grad_and_value

from .columns import (
    ALIGN_GRAD,
    ALIGN_SAM_GRAD,
    ASCENT_OF,
    CONVERGED,
    EDGE,
    EVAL_OF,
    GD_EDGE,
    GRAD_NORM,
    HVPS,
    LAMBDA_MAX,
    LAMBDA_MIN,
    OP_NORM,
    RATIO,
    STEP,
    TRAIN_LOSS,
)
from .hessian import HessianOperator, HVPMethod, LossFn, PreconditionedOperator, sharpness
from .vectors import Params, alignment, flatten, norm

__all__ = ["Point", "WarmStart", "prepare", "loss_and_grad", "measure"]


@dataclass
class Point:
    """A loss at fixed weights: its exact HVP operator, the loss and its gradient there."""

    op: HessianOperator
    loss: torch.Tensor
    grad: Params


@dataclass
class WarmStart:
    """The previous measurement's top eigenvectors (None: cold start): of the training loss,
    of the evaluation batch, at the SAM ascent point, and of the SAM map's M (its accounts)."""

    train: Optional[torch.Tensor] = None
    eval: Optional[torch.Tensor] = None
    ascent: Optional[torch.Tensor] = None
    sam_map: Optional[torch.Tensor] = None


def prepare(
    loss_fns: LossFn | Sequence[LossFn],
    params: Params,
    method: HVPMethod = "double_backward",
    weights: Optional[Sequence[float]] = None,
    kernels: str = "default",
) -> Point:
    """The operator, loss and gradient at ``params``: for one closure with double backward the
    gradient comes from the graph the HVPs reuse (no extra backward); otherwise the weighted
    sum of each closure's ``torch.func`` gradient."""
    op = HessianOperator(loss_fns, params, method, weights, kernels=kernels)
    if op.single and method == "double_backward":
        loss, grad = op.loss_and_gradient()
        return Point(op, loss, grad)
    return Point(op, *loss_and_grad(op.loss_fns, op.params, op.weights))


def loss_and_grad(loss_fns: Sequence[LossFn], params: Params, weights: Sequence[float]) -> tuple:
    """(sum_i w_i L_i, sum_i w_i grad L_i) at ``params`` by ``torch.func``, detached."""
    loss, grad = None, None
    for fn, w in zip(loss_fns, weights):
        g, val = grad_and_value(fn)(params)
        if w != 1.0:
            g, val = {k: w * t for k, t in g.items()}, w * val
        loss = val if loss is None else loss + val
        grad = g if grad is None else {k: grad[k] + g[k] for k in grad}
    assert loss is not None and grad is not None  # HessianOperator refuses an empty list
    return loss.detach(), {k: t.detach() for k, t in grad.items()}


def _ratio(op_norm: float, edge: Optional[float]) -> Optional[float]:
    if edge is None:
        return None
    return op_norm / edge if edge > 0 else math.inf


EdgeAt = Callable[[float], Optional[float]]  # the edge at a point, from its gradient norm


def measure(
    step: int,
    train: Point,
    edge_at: Optional[EdgeAt],
    base_edge: Optional[float],
    warm: WarmStart,
    tol: float,
    max_iter: int,
    seed: int,
    sam_grad: Optional[Params] = None,
    eval_point: Optional[Point] = None,
    ascent_params: Optional[Params] = None,
    ascent_loss: Optional[LossFn] = None,
    precondition: Optional[tuple] = None,
) -> tuple[Dict[str, Any], WarmStart]:
    """(row, warm start): the record row at w_t and the eigenvectors the next measurement starts from.

    ``edge_at(grad_norm)`` is the edge (None: unknown, so no ratio); ``base_edge`` fills the
    ``gd_edge`` column (the base rule's edge without SAM: 2/eta for GD). ``precondition`` =
    (P, shift) measures lambda_max(P^-1 (H + shift I)) instead of ||H|| (Adam, AdamW, RMSprop;
    ``samedge.hessian.PreconditionedOperator``). ``sam_grad`` adds its alignment with the top eigenvector, ``eval_point`` the eval
    columns, ``ascent_params`` (with ``ascent_loss``) ||H||_op at the SAM ascent point.
    Lanczos seeds: ``seed`` for the training loss, +1 for the eval batch, +2 for the ascent point."""
    gn = float(norm(train.grad))
    op = train.op if precondition is None else PreconditionedOperator(train.op, *precondition)
    sh = sharpness(op, v0=warm.train, tol=tol, max_iter=max_iter, seed=seed)
    edge = edge_at(gn) if edge_at is not None else None
    row: Dict[str, Any] = {
        STEP: step,
        TRAIN_LOSS: float(train.loss),
        GRAD_NORM: gn,
        OP_NORM: sh.op_norm,
        LAMBDA_MAX: sh.lambda_max,
        LAMBDA_MIN: sh.lambda_min,
        EDGE: edge,
        GD_EDGE: base_edge,
        RATIO: _ratio(sh.op_norm, edge),
        ALIGN_GRAD: alignment(flatten(train.grad), sh.eigenvector),
    }
    if sam_grad is not None:
        row[ALIGN_SAM_GRAD] = alignment(flatten(sam_grad), sh.eigenvector)
    row.update({HVPS: sh.num_hvps, CONVERGED: sh.converged})
    new = WarmStart(train=sh.eigenvector)
    if eval_point is not None:
        egn = float(norm(eval_point.grad))
        esh = sharpness(eval_point.op, v0=warm.eval, tol=tol, max_iter=max_iter, seed=seed + 1)
        eedge = edge_at(egn) if edge_at is not None else None
        values = {
            TRAIN_LOSS: float(eval_point.loss),
            GRAD_NORM: egn,
            OP_NORM: esh.op_norm,
            EDGE: eedge,
            RATIO: _ratio(esh.op_norm, eedge),
            HVPS: esh.num_hvps,
        }
        row.update({EVAL_OF[k]: v for k, v in values.items()})
        new.eval = esh.eigenvector
    if ascent_params is not None:
        if ascent_loss is None:
            raise ValueError("ascent_params needs ascent_loss, the loss closure to measure there")
        aop = HessianOperator(ascent_loss, ascent_params, train.op.method, kernels=train.op.kernels)
        ash = sharpness(aop, v0=warm.ascent, tol=tol, max_iter=max_iter, seed=seed + 2)
        row.update({ASCENT_OF[OP_NORM]: ash.op_norm, ASCENT_OF[HVPS]: ash.num_hvps})
        new.ascent = ash.eigenvector
    return row, new
