"""Sharpness-aware minimization (SAM) as a pure update over a parameter dict, and an Optimizer.

Normalized SAM (the paper's):   w~ = w + rho g/||g||,   w <- w - eta grad L(w~)
Unnormalized SAM:               w~ = w + rho g,         w <- w - eta grad L(w~)
with g = grad L(w) and both gradients on the same batch; rho = 0 is plain gradient descent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch

from .kernels import check_kernels, kernel_mode
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


def ascent_point(
    params: Params, grad: Params, rho: float, normalize: bool = True, grad_norm: Optional[torch.Tensor] = None
) -> Params:
    """The SAM ascent point w + rho g/||g|| (or w + rho g); w itself when rho = 0 or g = 0.

    ``grad_norm``: ||g|| when the caller has it already."""
    if rho == 0:
        return dict(params)
    if normalize:
        gn = norm(grad) if grad_norm is None else grad_norm
        if gn == 0:  # no ascent direction: SAM reduces to a GD step at w
            return dict(params)
        return add_scaled(params, grad, rho / gn)
    return add_scaled(params, grad, rho)


def _loss_and_grad(loss_fn: LossFn, keys: list, values: list, kernels: str) -> tuple:
    """(L(w), grad L(w) as a list in ``keys`` order) by one backward pass, both detached."""
    w = [v.detach().requires_grad_() for v in values]
    with torch.enable_grad():
        with kernel_mode(kernels):  # the forward only: the backward needs no routing
            loss = loss_fn(dict(zip(keys, w)))
        # Plain autograd, not torch.func: the same kernels, without functorch's per-op wrapping.
        grads = torch.autograd.grad(loss, w, allow_unused=True, materialize_grads=True)
    return loss.detach(), list(grads)


def sam_step(
    loss_fn: LossFn,
    params: Params,
    eta: float,
    rho: float,
    normalize: bool = True,
    loss_and_grad: Optional[tuple] = None,
    kernels: str = "default",
) -> SAMStep:
    """One SAM step (GD when rho = 0); ``loss_fn`` closes over the batch, so both gradients share it.

    ``loss_and_grad`` = (L(w), grad L(w)) already computed on the same batch skips that gradient.
    ``kernels``: ``"default"`` (PyTorch's) or ``"onednn"`` (``samedge.kernels``: large CPU float32
    linear layers through oneDNN, the same math to float32 round-off).
    """
    _validate(eta, rho)
    check_kernels(kernels)
    keys = list(params)
    values = [params[k].detach() for k in keys]
    params = dict(zip(keys, values))
    if loss_and_grad is not None:
        loss, grad = loss_and_grad[0], dict(loss_and_grad[1])
    else:
        loss, g = _loss_and_grad(loss_fn, keys, values, kernels)
        grad = dict(zip(keys, g))
    gn = norm(grad)
    if rho == 0 or gn == 0:  # GD, or no ascent direction: one gradient suffices
        w_tilde, sam_grad = dict(params), grad
    else:
        w_tilde = ascent_point(params, grad, rho, normalize, gn)
        sam_grad = dict(zip(keys, _loss_and_grad(loss_fn, keys, [w_tilde[k] for k in keys], kernels)[1]))
    # foreach: one call for all tensors instead of a Python loop (same two roundings as w - eta*g)
    new = dict(zip(keys, torch._foreach_sub(values, torch._foreach_mul([sam_grad[k] for k in keys], eta))))
    return SAMStep(new, loss.detach(), grad, gn, w_tilde, sam_grad)


class SAM(torch.optim.Optimizer):
    """SAM with the interface of davda54/sam (the PyTorch SAM most code uses), plus ``normalize``.

    ``SAM(params, base_optimizer, rho=0.05, adaptive=False, normalize=True, **kwargs)`` makes
    ``base_optimizer(self.param_groups, **kwargs)`` (e.g. ``torch.optim.SGD, lr=0.1``) and shares
    its param groups and state (so schedulers and ``lr`` edits reach both, and ``state_dict()``
    holds the base optimizer's state, e.g. momentum buffers). Per step, on one batch::

        loss_fn(model(x), y).backward()       # g = grad L(w)
        optimizer.first_step(zero_grad=True)   # w -> w~ = w + rho g/||g||  (w + rho g if not normalize)
        loss_fn(model(x), y).backward()       # grad L(w~)
        optimizer.second_step(zero_grad=True)  # back to w, then the base step with grad L(w~)

    or ``loss.backward(); optimizer.step(closure)`` with a closure that recomputes the loss on the
    same batch and calls ``backward()`` (called once, at w~). ||g|| is global over all param
    groups; ``adaptive=True`` is ASAM (the ascent scaled by w^2, the norm by |w|). At g = 0 there
    is no ascent direction: w~ = w, and the base optimizer steps with the gradient at w. With
    ``torch.optim.SGD`` without momentum this is the paper's SAM, ``sam_step``.
    """

    def __init__(
        self,
        params: Iterable,
        base_optimizer: Callable[..., torch.optim.Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        normalize: bool = True,
        **kwargs,
    ):
        if not (isinstance(rho, (int, float)) and not isinstance(rho, bool) and 0 <= rho < float("inf")):
            raise ValueError(f"rho must be a finite number >= 0, got {rho!r}")
        if "lr" in kwargs and not (isinstance(kwargs["lr"], (int, float)) and 0 < kwargs["lr"] < float("inf")):
            raise ValueError(f"lr must be a finite number > 0, got {kwargs['lr']!r}")
        if not callable(base_optimizer):
            raise TypeError(
                f"base_optimizer must be an optimizer class such as torch.optim.SGD, got {base_optimizer!r}"
            )
        super().__init__(params, dict(rho=rho, adaptive=adaptive, normalize=normalize, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        # One state too, so state_dict() carries the base optimizer's (e.g. momentum buffers).
        self.state = self.base_optimizer.state
        self.defaults.update(self.base_optimizer.defaults)

    def _grad_norm(self) -> torch.Tensor:
        """||g|| over every parameter with a gradient (|w| g for adaptive groups), on one device."""
        device = self.param_groups[0]["params"][0].device
        norms = [
            ((p.abs() if g["adaptive"] else 1.0) * p.grad).norm(p=2).to(device)
            for g in self.param_groups
            for p in g["params"]
            if p.grad is not None
        ]
        if not norms:
            raise ValueError(
                "no parameter has a gradient: call loss.backward() at w before first_step() / step(closure)"
            )
        return torch.linalg.vector_norm(torch.stack(norms))

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to the ascent point w~ (remembering w); ``zero_grad`` clears g afterwards."""
        grad_norm = self._grad_norm()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.detach().clone()
                if group["rho"] == 0 or (group["normalize"] and grad_norm == 0):
                    continue  # no ascent: w~ = w (GD, or no direction at a stationary point)
                scale = group["rho"] / grad_norm.to(p) if group["normalize"] else group["rho"]
                p.add_((torch.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Return to w and take the base optimizer's step with the gradient at w~."""
        for group in self.param_groups:
            for p in group["params"]:
                if "old_p" in self.state[p]:  # even if no gradient reached p at w~
                    p.copy_(self.state[p].pop("old_p"))
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None) -> None:  # type: ignore[override]
        """One SAM step after the caller's own backward at w: ``closure`` (forward and backward
        on the same batch) is called once, at w~."""
        if closure is None:
            raise ValueError("SAM.step needs a closure that recomputes the loss on the same batch and calls backward()")
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            closure()
        self.second_step()

    def load_state_dict(self, state_dict: dict) -> None:
        """Load state and keep the base optimizer on the shared param groups and state."""
        super().load_state_dict(state_dict)
        self.base_optimizer.param_groups = self.param_groups
        self.base_optimizer.state = self.state
