"""Sharpness-aware minimization (SAM) as a pure update over a parameter dict, and an Optimizer.

Normalized SAM (the paper's):   w~ = w + rho g/||g||,   w <- w - eta grad L(w~)
Unnormalized SAM:               w~ = w + rho g,         w <- w - eta grad L(w~)
with g = grad L(w) and both gradients on the same batch; rho = 0 is plain gradient descent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch.func import grad_and_value

from .vectors import Params, add_scaled, norm

LossFn = Callable[[Params], torch.Tensor]

__all__ = ["SAMStep", "sam_step", "ascent_point", "SAM"]


@dataclass
class SAMStep:
    """Everything one SAM step computed, so callers can log it without recomputing."""

    params: Params  # w_{t+1}
    loss: torch.Tensor  # L(w_t)
    grad: Params  # g = grad L(w_t)
    grad_norm: torch.Tensor  # ||g||
    ascent_params: Params  # w~ (equal to w_t when rho = 0 or g = 0)
    sam_grad: Params  # grad L(w~) (equal to g when rho = 0)


def _validate(eta: float, rho: float) -> None:
    if not (isinstance(eta, (int, float)) and eta > 0 and eta < float("inf")):
        raise ValueError(f"eta must be a finite number > 0, got {eta!r}")
    if not (isinstance(rho, (int, float)) and rho >= 0 and rho < float("inf")):
        raise ValueError(f"rho must be a finite number >= 0, got {rho!r}")


def ascent_point(params: Params, grad: Params, rho: float, normalize: bool = True) -> Params:
    """The SAM ascent point w + rho g/||g|| (or w + rho g); w itself when rho = 0 or g = 0."""
    if rho == 0:
        return dict(params)
    if normalize:
        gn = norm(grad)
        if gn == 0:  # no ascent direction: SAM reduces to a GD step at w
            return dict(params)
        return add_scaled(params, grad, rho / gn)
    return add_scaled(params, grad, rho)


def sam_step(
    loss_fn: LossFn, params: Params, eta: float, rho: float, normalize: bool = True,
    loss_and_grad: Optional[tuple] = None,
) -> SAMStep:
    """One SAM step (GD when rho = 0); ``loss_fn`` closes over the batch, so both gradients share it.

    ``loss_and_grad`` = (L(w), grad L(w)) already computed on the same batch skips that gradient.
    """
    _validate(eta, rho)
    params = {k: v.detach() for k, v in params.items()}
    g_and_v = grad_and_value(loss_fn)
    loss, grad = loss_and_grad if loss_and_grad is not None else g_and_v(params)[::-1]
    gn = norm(grad)
    if rho == 0 or gn == 0:  # GD, or no ascent direction: one gradient suffices
        w_tilde, sam_grad = dict(params), grad
    else:
        w_tilde = ascent_point(params, grad, rho, normalize)
        sam_grad = g_and_v(w_tilde)[0]
    new = {k: params[k] - eta * sam_grad[k] for k in params}
    return SAMStep(new, loss.detach(), grad, gn, w_tilde, sam_grad)


class SAM(torch.optim.Optimizer):
    """Closure-based SAM optimizer for ordinary training loops (no momentum, no weight decay).

    ``closure`` must zero the gradients, compute the loss on the *same* batch, call
    ``backward()`` and return the loss; it is called twice per step (at w and at w~)::

        opt = SAM(model.parameters(), lr=0.01, rho=0.1)
        def closure():
            opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward(); return loss
        loss = opt.step(closure)
    """

    def __init__(self, params: Iterable, lr: float, rho: float, normalize: bool = True):
        _validate(lr, rho)
        super().__init__(params, dict(lr=lr, rho=rho, normalize=normalize))

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None) -> torch.Tensor:  # type: ignore[override]
        """Take one SAM step; returns the loss at w (before the step)."""
        if closure is None:
            raise ValueError("SAM.step needs a closure that recomputes the loss on the same batch")
        with torch.enable_grad():
            loss = closure()
        with_grad = [(g, p) for g in self.param_groups for p in g["params"] if p.grad is not None]
        # The normalization is global over all parameters, as in the paper, not per group.
        gn = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for _, p in with_grad])) if with_grad else 0.0
        shifts = []
        for group, p in with_grad:
            if group["rho"] == 0:
                continue
            if group["normalize"]:
                if gn == 0:
                    continue
                e = (group["rho"] / gn) * p.grad
            else:
                e = group["rho"] * p.grad
            p.add_(e)
            shifts.append((p, e))
        if shifts:
            with torch.enable_grad():
                closure()
            for p, e in shifts:
                p.sub_(e)
        for group, p in with_grad:
            p.add_(p.grad, alpha=-group["lr"])
        return loss
