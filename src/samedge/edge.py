"""Stability edges of GD and SAM on a local quadratic model.

Along an eigen-direction with curvature ``lam`` the updates multiply the coordinate by
``1 - eta*lam*c`` with ``c = 1`` for GD, ``c = 1 + rho*lam/||g||`` for normalized SAM and
``c = 1 + rho*lam`` for unnormalized SAM; the step is stable iff ``eta*lam*c <= 2``.
Each edge is the positive root of that quadratic in ``lam``. We use the rationalized root
``(4/eta) / (1 + sqrt(1 + 8 rho/(eta ||g||)))``, algebraically equal to the paper's
``(||g||/(2 rho)) (sqrt(1 + 8 rho/(eta ||g||)) - 1)`` but free of 0/0 at rho = 0 and
of cancellation when rho/||g|| is small.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

Number = Union[float, int, np.ndarray, torch.Tensor]

__all__ = [
    "RULES",
    "rule_of",
    "edge",
    "gd_edge",
    "momentum_edge",
    "sam_edge",
    "unnormalized_sam_edge",
    "aligned_sam_edge",
]

# The update rules whose edges this module knows, as recorded with every run.
RULES = ("gd", "sam", "usam")


def _check(name: str, value: Number, *, positive: bool = False, nonnegative: bool = False) -> None:
    """Raise ValueError naming ``name`` if ``value`` is non-finite or out of range."""
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and not np.all(arr > 0):
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if nonnegative and not np.all(arr >= 0):
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _root(eta: Number, rho: Number, scale: Number) -> Number:
    """Positive root of ``(rho/scale) lam^2 + lam - 2/eta = 0`` with the limits handled."""
    if any(isinstance(x, torch.Tensor) for x in (eta, rho, scale)):
        ref = next(x for x in (eta, rho, scale) if isinstance(x, torch.Tensor))
        dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
        eta, rho, scale = (torch.as_tensor(x, dtype=dtype, device=ref.device) for x in (eta, rho, scale))
        # t = 8 rho / (eta * scale): 0 when rho = 0 (GD), +inf when scale = 0 < rho.
        t = torch.where(rho == 0, torch.zeros_like(rho * scale), 8 * rho / (eta * scale))
        return (4 / eta) / (1 + torch.sqrt(1 + t))
    scalar = all(np.ndim(x) == 0 for x in (eta, rho, scale))
    eta, rho, scale = (np.asarray(x, dtype=float) for x in (eta, rho, scale))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(rho == 0, 0.0, 8 * rho / (eta * scale))
    out = (4 / eta) / (1 + np.sqrt(1 + t))
    return float(out) if scalar else out


def gd_edge(eta: Number) -> Number:
    """The edge of stability of gradient descent, 2/eta."""
    _check("eta", eta, positive=True)
    if isinstance(eta, torch.Tensor):
        return 2 / eta
    return 2 / float(eta) if np.ndim(eta) == 0 else 2 / np.asarray(eta, dtype=float)


def sam_edge(eta: Number, rho: Number, grad_norm: Number) -> Number:
    """The SAM-edge of normalized SAM: largest stable curvature given ||grad L(w)||."""
    _check("eta", eta, positive=True)
    _check("rho", rho, nonnegative=True)
    _check("grad_norm", grad_norm, nonnegative=True)
    return _root(eta, rho, grad_norm)


def aligned_sam_edge(eta: Number, rho: Number, grad_norm: Number, cos2: Number) -> Number:
    """The SAM-edge with the alignment cos2 = cos^2(g, u) of the gradient with the top eigenvector.

    The positive root of eta lam (1 + rho (1 - cos2) lam / ||g||) = 2: the ascent g/||g|| changes
    along u by (1 - cos2) rho lam / ||g|| per unit step, not rho lam / ||g|| (``sam_edge`` is
    cos2 = 0; cos2 = 1 gives 2/eta). See ``samedge.sam_map`` for the exact Jacobian."""
    _check("eta", eta, positive=True)
    _check("rho", rho, nonnegative=True)
    _check("grad_norm", grad_norm, nonnegative=True)
    _check("cos2", cos2, nonnegative=True)
    c = cos2.detach().cpu().numpy() if isinstance(cos2, torch.Tensor) else np.asarray(cos2, dtype=float)
    if not np.all(c <= 1):
        raise ValueError(f"cos2 must be in [0, 1], got {cos2!r}")
    return _root(eta, rho * (1 - cos2), grad_norm)


def unnormalized_sam_edge(eta: Number, rho: Number) -> Number:
    """The edge of unnormalized SAM (w - eta grad L(w + rho g)): root of eta lam (1 + rho lam) = 2."""
    _check("eta", eta, positive=True)
    _check("rho", rho, nonnegative=True)
    return _root(eta, rho, 1.0)


def momentum_edge(eta: Number, beta: Number) -> Number:
    """Edge of heavy-ball GD, v <- beta v + g, w <- w - eta v: 2 (1 + beta) / eta.

    On a quadratic the iteration w_{t+1} = (1 + beta - eta lam) w_t - beta w_{t-1} is stable iff
    0 <= beta < 1 and eta lam <= 2 (1 + beta): the maximal stable sharpness (2 + 2 beta)/eta of
    Cohen et al. (2021) for Polyak momentum, and the update of ``torch.optim.SGD(momentum=beta)``."""
    _check("eta", eta, positive=True)
    _check("beta", beta, nonnegative=True)
    if not np.all(np.asarray(beta.detach().cpu() if isinstance(beta, torch.Tensor) else beta, dtype=float) < 1):
        raise ValueError(f"beta must be < 1 (heavy ball diverges otherwise), got {beta!r}")
    return 2 * (1 + beta) / eta


def rule_of(rho: float, normalize: bool = True) -> str:
    """The update rule a run uses: 'gd' (rho = 0), 'sam' (normalized) or 'usam' (unnormalized)."""
    if rho == 0:
        return "gd"
    return "sam" if normalize else "usam"


def edge(rule: str, eta: Number, rho: Number = 0.0, grad_norm: Optional[Number] = None) -> Number:
    """The edge a run's sharpness is compared with, by update rule: 2/eta for 'gd', the SAM-edge
    from ||grad L(w)|| for 'sam', the gradient-independent edge for 'usam'."""
    if rule == "gd":
        return gd_edge(eta)
    if rule == "sam":
        if grad_norm is None:
            raise ValueError("the SAM-edge of normalized SAM needs grad_norm = ||grad L(w)|| at the measured point")
        return sam_edge(eta, rho, grad_norm)
    if rule == "usam":
        return unnormalized_sam_edge(eta, rho)
    raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
