"""The edges checked numerically: real SAM steps (``samedge.sam_step``) on small problems whose
answers are known in closed form.

- ``Quadratic``: ``L(w) = 1/2 w^T H w`` with ``H = Q diag(eigenvalues) Q^T`` (minimizer at 0),
  and ``Quadratic.point_with_gradient`` to place the iterate where the gradient has a chosen
  norm and alignment with the top eigenvector.
- ``top_component_factor``: the factor by which one real SAM step multiplies the iterate's
  component along the top eigenvector; ``growth_map`` evaluates it on a grid of
  (curvature, gradient norm), and ``stepped_edge`` finds, by bisection on real steps, the
  largest curvature at which that component does not grow. On a quadratic the factor is
  ``1 - eta lam (1 + rho lam/||g||)`` and ``stepped_edge`` is ``sam_edge`` (see the derivation).
- ``run_sam``: a trajectory of SAM (GD, unnormalized SAM) with the exact Hessian's operator norm,
  the gradient norm and the run's edge at every iterate.
- ``two_cycle``: the period-two orbit of normalized SAM along one eigendirection, on which the
  curvature sits exactly at the SAM-edge of the orbit's own gradient norm.
- ``sharpening_loss``: ``L(x, y) = 1/2 y x^2 - a y``, a two-parameter loss whose curvature along
  ``x`` is ``y`` and grows while the iterate descends (progressive sharpening), so the curvature
  itself can move to an edge, as in the networks of the experiments.

Everything is float64 on the CPU; a 2-D SAM step costs about a millisecond.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from .edge import edge as stability_edge
from .edge import rule_of
from .hessian import dense_hessian
from .sam import sam_step
from .vectors import Params, flatten

__all__ = [
    "Quadratic",
    "top_component_factor",
    "growth_map",
    "stepped_edge",
    "run_sam",
    "two_cycle",
    "sharpening_loss",
]

F64 = torch.float64
LossFn = Callable[[Params], torch.Tensor]


def _rotation(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]], dtype=F64)


@dataclass(frozen=True)
class Quadratic:
    """``L(w) = 1/2 w^T H w`` on the parameter dict ``{"w": w}``.

    ``H = Q diag(eigenvalues) Q^T``, with ``Q`` the rotation by ``theta`` in 2-D (so the top
    eigenvector is not a coordinate axis) and the identity in other dimensions. The
    eigenvalues are taken in the order given: ``eigenvalues[0]`` and ``Q[:, 0]`` are "the top"
    pair the checks follow.
    """

    eigenvalues: Tuple[float, ...]
    theta: float = 0.0

    def __post_init__(self) -> None:
        lam = tuple(float(x) for x in self.eigenvalues)
        if len(lam) < 1 or not all(math.isfinite(x) for x in lam):
            raise ValueError(f"eigenvalues must be a non-empty sequence of finite numbers, got {self.eigenvalues!r}")
        if self.theta != 0.0 and len(lam) != 2:
            raise ValueError(f"theta rotates 2-D quadratics only; got {len(lam)} eigenvalues")
        object.__setattr__(self, "eigenvalues", lam)

    @property
    def dim(self) -> int:
        """Number of parameters."""
        return len(self.eigenvalues)

    @cached_property
    def eigenvectors(self) -> torch.Tensor:
        """``Q``: column i is the eigenvector of ``eigenvalues[i]``."""
        return _rotation(self.theta) if self.dim == 2 else torch.eye(self.dim, dtype=F64)

    @cached_property
    def hessian(self) -> torch.Tensor:
        """``H = Q diag(eigenvalues) Q^T``."""
        Q = self.eigenvectors
        return Q @ torch.diag(torch.tensor(self.eigenvalues, dtype=F64)) @ Q.T

    def loss(self, params: Params) -> torch.Tensor:
        """The loss closure for ``sam_step`` and ``HessianOperator``."""
        w = params["w"]
        return 0.5 * w @ (self.hessian.to(w.dtype) @ w)

    def components(self, params: Params) -> torch.Tensor:
        """Coordinates ``Q^T w`` of the iterate along the eigenvectors (displacements from the minimizer)."""
        return self.eigenvectors.T @ params["w"].to(F64)

    def point(self, components: Sequence[float]) -> Params:
        """The iterate with the given coordinates along the eigenvectors."""
        c = torch.tensor([float(x) for x in components], dtype=F64)
        if c.numel() != self.dim:
            raise ValueError(f"need {self.dim} components, got {c.numel()}")
        return {"w": self.eigenvectors @ c}

    def point_with_gradient(self, grad_norm: float, alignment: float = 1.0) -> Params:
        """An iterate whose gradient ``g = H w`` has norm ``grad_norm`` and ``u1^T g / ||g|| = alignment``.

        The rest of the gradient lies along the second eigenvector, so ``alignment < 1``
        needs at least two dimensions and nonzero eigenvalues wherever the gradient has a part.
        """
        if not (grad_norm > 0 and math.isfinite(grad_norm)):
            raise ValueError(f"grad_norm must be a finite number > 0, got {grad_norm!r}")
        if not 0 < alignment <= 1:
            raise ValueError(f"alignment must be in (0, 1], got {alignment!r}")
        g = [0.0] * self.dim
        g[0] = alignment * grad_norm
        if alignment < 1:
            if self.dim < 2:
                raise ValueError("alignment < 1 needs a second eigendirection")
            g[1] = math.sqrt(1 - alignment**2) * grad_norm
        comps = []
        for gi, lam in zip(g, self.eigenvalues):
            if gi != 0 and lam == 0:
                raise ValueError("a gradient component along a zero eigenvalue cannot be produced by H w")
            comps.append(gi / lam if gi != 0 else 0.0)
        return self.point(comps)


def top_component_factor(
    lam: float,
    grad_norm: float,
    eta: float,
    rho: float,
    normalize: bool = True,
    second: float = 0.25,
    alignment: float = 0.8,
    theta: float = 0.5,
) -> float:
    """``x1+ / x1`` for one real SAM step on a 2-D quadratic, ``x1`` the iterate's coordinate along the top eigenvector.

    The quadratic has eigenvalues ``(lam, second * lam)``, rotated by ``theta``, and the step
    starts where ``||g|| = grad_norm`` with ``|u1^T g| / ||g|| = alignment``: the SAM-edge uses
    the whole gradient norm, not only its part along ``u1``. The component grows in magnitude
    when ``|factor| > 1``.
    """
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam!r}")
    q = Quadratic((float(lam), float(second) * float(lam)), theta)
    w = q.point_with_gradient(float(grad_norm), alignment)
    st = sam_step(q.loss, w, float(eta), float(rho), normalize)
    before, after = q.components(w)[0], q.components(st.params)[0]
    return float(after / before)


def growth_map(
    lams: Sequence[float], grad_norms: Sequence[float], eta: float, rho: float, normalize: bool = True, **kw
) -> np.ndarray:
    """``top_component_factor`` at every (lam, grad_norm): an array of shape ``(len(lams), len(grad_norms))``."""
    out = np.empty((len(lams), len(grad_norms)))
    for i, lam in enumerate(lams):
        for j, gn in enumerate(grad_norms):
            out[i, j] = top_component_factor(float(lam), float(gn), eta, rho, normalize, **kw)
    return out


def stepped_edge(eta: float, rho: float, grad_norm: float, normalize: bool = True, rtol: float = 1e-13, **kw) -> float:
    """The largest curvature at which one real SAM step does not grow the top component.

    Bisection on ``|top_component_factor| <= 1`` over ``(0, 4/eta]``: the factor is 1 at
    ``lam -> 0`` and below -1 at ``4/eta`` for every ``rho >= 0``, and it decreases in between,
    so the stable curvatures form one interval ``(0, edge]``. About 45 real steps for ``rtol = 1e-13``.
    """
    lo, hi = 0.0, 4.0 / float(eta)
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if abs(top_component_factor(mid, grad_norm, eta, rho, normalize, **kw)) <= 1.0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def run_sam(
    loss_fn: LossFn,
    params: Params,
    eta: float,
    rho: float,
    steps: int,
    normalize: bool = True,
    components: Optional[Callable[[Params], torch.Tensor]] = None,
) -> pd.DataFrame:
    """``steps`` real SAM steps (GD for ``rho = 0``) from ``params``, one row per iterate ``w_t``.

    Columns: ``step``, ``loss``, ``grad_norm``, ``op_norm`` (``max |eig|`` of the exact Hessian at
    ``w_t``, by ``dense_hessian``: for small problems only), ``lambda_max``, ``edge`` (the run's
    edge from ``samedge.edge.edge`` with ``||g(w_t)||``), ``ratio = op_norm / edge``, the parameters
    ``w0, w1, ...`` and, with ``components``, its values ``c0, c1, ...`` (for example
    ``Quadratic.components``). Stops early at a non-finite loss or gradient.
    """
    rows = []
    p = {k: v.detach().to(F64) for k, v in params.items()}
    for t in range(steps + 1):
        st = sam_step(loss_fn, p, float(eta), float(rho), normalize)
        loss, gn = float(st.loss), float(st.grad_norm)
        if not (math.isfinite(loss) and math.isfinite(gn)):
            break
        ev = torch.linalg.eigvalsh(dense_hessian(loss_fn, p))
        op = float(ev.abs().max())
        edge = stability_edge(rule_of(rho, normalize), eta, rho, gn)
        row = dict(
            step=t,
            loss=loss,
            grad_norm=gn,
            op_norm=op,
            lambda_max=float(ev.max()),
            edge=edge,
            ratio=op / edge if edge > 0 else math.inf,
        )
        row.update({f"w{i}": float(x) for i, x in enumerate(flatten(p))})
        if components is not None:
            row.update({f"c{i}": float(x) for i, x in enumerate(components(p))})
        rows.append(row)
        p = st.params
    return pd.DataFrame(rows)


def two_cycle(eta: float, rho: float, lam: float) -> Tuple[float, float]:
    """Normalized SAM's period-two orbit ``x -> -x`` along an eigendirection of curvature ``lam``:
    ``(|x|, ||g||) = (eta rho lam / (2 - eta lam), lam |x|)``; needs ``0 < eta lam < 2``.

    On it ``lam == sam_edge(eta, rho, ||g||)`` exactly (the derivation, eq. sam-two-cycle).
    """
    if not (lam > 0 and eta > 0 and eta * lam < 2):
        raise ValueError(f"the two-cycle needs lam > 0 and 0 < eta*lam < 2; got eta={eta!r}, lam={lam!r}")
    if not rho >= 0:
        raise ValueError(f"rho must be >= 0, got {rho!r}")
    amp = eta * rho * lam / (2 - eta * lam)
    return amp, lam * amp


def sharpening_loss(drift: float) -> LossFn:
    """``L(x, y) = 1/2 y x^2 - drift * y`` on ``{"w": tensor([x, y])}``.

    The curvature along ``x`` is ``y``. While ``x`` is small the gradient ``(y x, x^2/2 - drift)``
    pushes ``y`` up by about ``eta * drift`` a step (progressive sharpening); once ``y`` passes
    the edge, ``x`` oscillates with growing amplitude and ``x^2/2`` pushes ``y`` back. The
    Hessian is ``[[y, x], [x, 0]]``, so its operator norm exceeds the curvature along ``x`` by
    about ``x^2 / y``. Unbounded below (``y -> -inf`` at ``x = 0``); a model, not a training problem.
    """
    if not (drift > 0 and math.isfinite(drift)):
        raise ValueError(f"drift must be a finite number > 0, got {drift!r}")

    def loss(params: Params) -> torch.Tensor:
        x, y = params["w"][0], params["w"][1]
        return 0.5 * y * x**2 - drift * y

    return loss
