"""The losses of the paper's three tasks, and the loss closures the library differentiates.

Squared loss convention (the authors'): mean over examples *and* classes,
    L = (1/(n C)) sum_i sum_c (f_c(x_i) - y_ic)^2.
Cohen et al. (2021) use 0.5 * sum over classes, mean over examples: L_Cohen = (C/2) L,
so with C = 10 classes their Hessian, and every sharpness they plot, is 5x ours.
The edges 2/eta and the SAM-edge are drawn for *this* loss throughout the book.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call

from .vectors import Params

__all__ = [
    "squared_loss",
    "masked_cross_entropy",
    "module_loss",
    "batch_loss",
    "parameters_of",
    "cohen_factor",
]


def cohen_factor(num_classes: int) -> float:
    """Factor by which Cohen et al.'s 0.5*sum-over-classes loss (and Hessian) exceeds ours."""
    return num_classes / 2


def squared_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared error averaged over examples and classes; ``targets`` one-hot like ``outputs``."""
    if outputs.shape != targets.shape:
        raise ValueError(f"outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} differ in shape")
    return ((outputs - targets) ** 2).mean()


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose target is not ``pad``."""
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    mask = (targets.reshape(-1) != pad).to(losses.dtype)
    return (losses * mask).sum() / mask.sum().clamp_min(1)


def parameters_of(model: torch.nn.Module) -> Params:
    """A detached copy of a module's parameters as a dict (the state SAM updates)."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def module_loss(
    model: torch.nn.Module,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
) -> Callable[[Params], torch.Tensor]:
    """The loss closure params -> loss(model_params(inputs), targets) on one fixed batch."""
    buffers = dict(model.named_buffers())

    def loss_fn(params: Params) -> torch.Tensor:
        return loss(functional_call(model, {**params, **buffers}, (inputs,)), targets)

    return loss_fn


class _LossOfBatch(torch.nn.Module):
    """``fn(model, batch)`` as a module, so that ``functional_call`` can swap the model's parameters."""

    def __init__(self, model: torch.nn.Module, fn: Callable[[torch.nn.Module, Any], torch.Tensor]):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.fn(self.model, batch)


def batch_loss(
    model: torch.nn.Module, fn: Callable[[torch.nn.Module, Any], torch.Tensor], batch: Any
) -> Callable[[Params], torch.Tensor]:
    """The loss closure params -> fn(model_params, batch) for a user's ``fn(model, batch)``: any
    batch format (dicts, ``(x, y, extra)`` tuples, several inputs), one fixed batch."""
    wrapper = _LossOfBatch(model, fn)
    buffers = {f"model.{k}": b for k, b in model.named_buffers()}

    def loss_fn(params: Params) -> torch.Tensor:
        return functional_call(wrapper, {**{f"model.{k}": v for k, v in params.items()}, **buffers}, (batch,))

    return loss_fn
