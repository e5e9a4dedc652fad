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
    "PRECONDITIONED",
    "rule_of",
    "edge",
    "gd_edge",
    "momentum_edge",
    "sam_edge",
    "unnormalized_sam_edge",
    "sgd_edge",
    "sam_sgd_edge",
    "adam_edge",
    "adamw_edge",
    "rmsprop_edge",
    "aligned_sam_edge",
]

# The update rules whose edges this module knows: the names runs, monitors and records use.
# gd: 2/eta; momentum: heavy-ball GD; sam / usam: normalized / unnormalized SAM over plain SGD;
# sgd: torch.optim.SGD with dampening, Nesterov or weight decay; sam_sgd: samedge.SAM over it;
# adam, adamw, rmsprop: torch.optim's, on the preconditioned sharpness.
RULES = ("gd", "momentum", "sam", "usam", "sgd", "sam_sgd", "adam", "adamw", "rmsprop")
# The rules whose edge bounds the preconditioned sharpness lambda_max(P^-1 H), not ||H||.
PRECONDITIONED = ("adam", "adamw", "rmsprop")


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
        te, tr, ts = (torch.as_tensor(x, dtype=dtype, device=ref.device) for x in (eta, rho, scale))
        # t = 8 rho / (eta * scale): 0 when rho = 0 (GD), +inf when scale = 0 < rho.
        tt = torch.where(tr == 0, torch.zeros_like(tr * ts), 8 * tr / (te * ts))
        return (4 / te) / (1 + torch.sqrt(1 + tt))
    scalar = all(np.ndim(x) == 0 for x in (eta, rho, scale))
    ae, ar, as_ = (np.asarray(x, dtype=float) for x in (eta, rho, scale))
    with np.errstate(divide="ignore", invalid="ignore"):
        at = np.where(ar == 0, 0.0, 8 * ar / (ae * as_))
    out = (4 / ae) / (1 + np.sqrt(1 + at))
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


def edge(
    rule: str,
    eta: Number,
    rho: Number = 0.0,
    grad_norm: Optional[Number] = None,
    beta: Number = 0.0,
    dampening: Number = 0.0,
    nesterov: bool = False,
    weight_decay: Number = 0.0,
    normalize: bool = True,
) -> Number:
    """The edge a sharpness is compared with, by update rule (``RULES``): 2/eta for 'gd',
    2(1+beta)/eta for 'momentum', the SAM-edge from ||grad L(w)|| for 'sam', the
    gradient-independent edge for 'usam'; ``sgd_edge`` for 'sgd', ``sam_sgd_edge`` for 'sam_sgd'
    (``beta`` the momentum), and on the preconditioned sharpness ``adam_edge`` for 'adam' and
    ``adamw_edge`` for 'adamw' (``beta`` = beta1), ``rmsprop_edge`` for 'rmsprop'."""
    if rule == "gd":
        return gd_edge(eta)
    if rule == "momentum":
        return momentum_edge(eta, beta)
    if rule == "sam":
        if grad_norm is None:
            raise ValueError("the SAM-edge of normalized SAM needs grad_norm = ||grad L(w)|| at the measured point")
        return sam_edge(eta, rho, grad_norm)
    if rule == "usam":
        return unnormalized_sam_edge(eta, rho)
    if rule == "sgd":
        return sgd_edge(eta, beta, dampening, nesterov, weight_decay)
    if rule == "sam_sgd":
        return sam_sgd_edge(eta, rho, grad_norm, beta, dampening, nesterov, weight_decay, normalize)
    if rule == "adam":
        return adam_edge(eta, beta)
    if rule == "adamw":
        return adamw_edge(eta, beta, weight_decay)
    if rule == "rmsprop":
        return rmsprop_edge(eta, beta)
    raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")


# --- The edges of the optimizers that actually run (torch.optim.SGD, samedge.SAM over it, Adam,
# AdamW, RMSprop). Derivations: book/derivation.md, section "Optimizers beyond GD". These take
# numbers, NumPy arrays or torch tensors (a tensor in gives a tensor out, computed in NumPy: no
# autograd through them).


def _arr(value: Number) -> np.ndarray:
    return value.detach().cpu().double().numpy() if isinstance(value, torch.Tensor) else np.asarray(value, dtype=float)


def _out(value: np.ndarray, *inputs: Number) -> Number:
    """``value`` as the inputs came: a tensor like the first tensor input, else float or ndarray."""
    ref = next((x for x in inputs if isinstance(x, torch.Tensor)), None)
    if ref is not None:
        dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
        return torch.as_tensor(value, dtype=dtype, device=ref.device)
    return float(value) if all(np.ndim(x) == 0 for x in inputs) else np.asarray(value, dtype=float)


def _check_below_one(name: str, value: Number, why: str) -> None:
    _check(name, value, nonnegative=True)
    if not np.all(_arr(value) < 1):
        raise ValueError(f"{name} must be in [0, 1) ({why}), got {value!r}")


def _larger_root(base: np.ndarray, rho: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Largest lam with lam (1 + (rho/scale) lam) <= base: the larger root of
    (rho/scale) lam^2 + lam - base, as 2 base / (1 + sqrt(1 + 4 (rho/scale) base)).

    rho = 0 gives ``base``; scale = 0 < rho gives 0 for base >= 0 (the limit, as in ``sam_edge``);
    no real root (base < -scale/(4 rho): no curvature is stable) gives -inf."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a = np.where(rho == 0, 0.0, rho / scale)
        t = np.where((a == 0) | (base == 0), 0.0, 4 * a * base)
        out = 2 * base / (1 + np.sqrt(np.maximum(1 + t, 0.0)))
    return np.where(1 + t < 0, -np.inf, out)


def sgd_edge(
    eta: Number, momentum: Number = 0.0, dampening: Number = 0.0, nesterov: bool = False, weight_decay: Number = 0.0
) -> Number:
    """Largest stable curvature of the loss Hessian for ``torch.optim.SGD`` with these settings.

    torch's step is g' = g + wd w, v <- beta v + (1 - d) g', w <- w - eta v (Nesterov:
    w <- w - eta (g' + beta v)); dampening is ignored when momentum = 0 (no buffer). Along an
    eigenvector of curvature lam the effective curvature is mu = lam + wd and, with a = eta mu:
    heavy ball x+ = (1 + beta - (1 - d) a) x - beta x-, stable iff 0 < (1 - d) a < 2 (1 + beta);
    Nesterov x+ = (1 + beta)(1 - a) x - beta (1 - a) x-, stable iff 0 < a < (2 + 2 beta)/(1 + 2 beta).
    So the edge is 2 (1 + beta)/((1 - d) eta) - wd, or (2 + 2 beta)/((1 + 2 beta) eta) - wd.

    The stable curvatures are the interval (-wd, edge]. The value is returned as is, also when
    weight decay makes it <= 0: then no direction of nonnegative curvature is stable, and a ratio
    lam/edge is not meaningful (the monitor reports it as inf)."""
    _check("eta", eta, positive=True)
    _check_below_one("momentum", momentum, "heavy ball diverges for momentum >= 1")
    _check_below_one("dampening", dampening, "1 - dampening scales the gradient into the buffer")
    _check("weight_decay", weight_decay, nonnegative=True)
    beta, d, wd = _arr(momentum), _arr(dampening), _arr(weight_decay)
    if nesterov:
        if not (np.all(beta > 0) and np.all(d == 0)):
            raise ValueError(
                "Nesterov momentum requires momentum > 0 and dampening = 0 (torch.optim.SGD's rule), "
                f"got momentum={momentum!r}, dampening={dampening!r}"
            )
        base = (2 + 2 * beta) / ((1 + 2 * beta) * _arr(eta))
    else:
        d = np.where(beta == 0, 0.0, d)  # torch applies dampening only inside the momentum buffer
        base = 2 * (1 + beta) / ((1 - d) * _arr(eta))
    return _out(base - wd, eta, momentum, dampening, weight_decay)


def sam_sgd_edge(
    eta: Number,
    rho: Number,
    grad_norm: Optional[Number] = None,
    momentum: Number = 0.0,
    dampening: Number = 0.0,
    nesterov: bool = False,
    weight_decay: Number = 0.0,
    normalize: bool = True,
) -> Number:
    """Edge of ``samedge.SAM(params, torch.optim.SGD, rho, ...)``: SAM's ascent over ``sgd_edge``'s rule.

    On the quadratic the gradient at the ascent point w + rho g/||g|| is g + (rho/||g||) H g, so
    along an eigenvector the loss curvature lam becomes lam (1 + rho lam/||g||) (1 + rho lam
    unnormalized); the base step then adds wd w at the restored w, outside that factor. With
    ||g|| frozen over the step (the norm the ascent used: of the loss gradient, without the
    weight-decay term) the base rule's condition on mu = lam (1 + rho lam/||g||) + wd gives the edge
    as the larger root of (rho/||g||) lam^2 + lam = sgd_edge(eta, momentum, dampening, nesterov, wd).
    ``grad_norm`` is needed for normalized SAM only. When sgd_edge <= 0 so is this (-inf when no
    curvature at all is stable)."""
    _check("rho", rho, nonnegative=True)
    base = sgd_edge(eta, momentum, dampening, nesterov, weight_decay)
    if normalize:
        if grad_norm is None:
            raise ValueError("normalized SAM's edge needs grad_norm = ||grad L(w)||, the norm its ascent used")
        _check("grad_norm", grad_norm, nonnegative=True)
        scale: Number = grad_norm
    else:
        scale = 1.0
    root = _larger_root(_arr(base), _arr(rho), _arr(scale))
    return _out(root, eta, rho, scale, momentum, dampening, weight_decay)


def adam_edge(eta: Number, beta1: Number = 0.9) -> Number:
    """Edge of Adam on the preconditioned sharpness lambda_max(P^-1 H): (2 + 2 beta1)/((1 - beta1) eta).

    With P = diag(sqrt(v_hat) + eps) frozen and the bias corrections near 1, Adam is
    m <- beta1 m + (1 - beta1) g, w <- w - eta P^-1 m; in y = P^(1/2) w this is heavy ball with
    dampening beta1 on S = P^-1/2 H P^-1/2, so ``sgd_edge(eta, beta1, dampening=beta1)`` on the
    eigenvalues of S, which are those of P^-1 H (Cohen et al. 2022: 38/eta at beta1 = 0.9).
    Adam's coupled weight_decay adds wd w to g: then the edge is on lambda_max(P^-1 (H + wd I))."""
    _check("eta", eta, positive=True)
    _check_below_one("beta1", beta1, "torch.optim.Adam's range")
    b = _arr(beta1)
    return _out((2 + 2 * b) / ((1 - b) * _arr(eta)), eta, beta1)


def adamw_edge(eta: Number, beta1: Number = 0.9, weight_decay: Number = 0.01) -> Number:
    """Edge of AdamW on lambda_max(P^-1 H): (1 + beta1)(2 - eta wd)/((1 - beta1) eta).

    The decoupled decay multiplies w by q = 1 - eta wd before the Adam step: in y = P^(1/2) w along
    an eigenvalue sigma of P^-1/2 H P^-1/2, y+ = (q + beta1 - a) y - beta1 q y- with
    a = (1 - beta1) eta sigma, stable iff -(1 - q)(1 - beta1) < a < (1 + q)(1 + beta1) (and
    |beta1 q| < 1). The decay is not a shift of the preconditioned curvature: the edge is
    ``adam_edge`` minus wd (1 + beta1)/(1 - beta1), <= 0 once eta wd >= 2 (returned as is)."""
    _check("eta", eta, positive=True)
    _check_below_one("beta1", beta1, "torch.optim.AdamW's range")
    _check("weight_decay", weight_decay, nonnegative=True)
    b, e = _arr(beta1), _arr(eta)
    return _out((1 + b) * (2 - e * _arr(weight_decay)) / ((1 - b) * e), eta, beta1, weight_decay)


def rmsprop_edge(eta: Number, momentum: Number = 0.0) -> Number:
    """Edge of ``torch.optim.RMSprop`` on lambda_max(P^-1 H), P = diag(sqrt(v) + eps): 2 (1 + beta)/eta.

    torch's RMSprop has no bias correction and no dampening: buf <- beta buf + P^-1 g,
    w <- w - eta buf (w <- w - eta P^-1 g without momentum). With P frozen, in y = P^(1/2) w this is
    heavy ball on P^-1/2 H P^-1/2, so ``momentum_edge`` on its eigenvalues. Coupled weight_decay
    adds wd w to g: then the edge is on lambda_max(P^-1 (H + wd I))."""
    _check("eta", eta, positive=True)
    _check_below_one("momentum", momentum, "heavy ball diverges for momentum >= 1")
    return _out(2 * (1 + _arr(momentum)) / _arr(eta), eta, momentum)
