"""The exact linear stability of one SAM step: the top eigenvalue of the SAM map's Jacobian.

The SAM map F(w) = w - eta grad L(w~) with w~ = w + rho g/||g|| (normalized) or w + rho g
(unnormalized), g = grad L(w), has the Jacobian I - eta M with

    normalized:    M = H(w~) (I + rho (I - ghat ghat^T) H(w) / ||g||),   ghat = g/||g||
    unnormalized:  M = H(w~) (I + rho H(w))

(the derivative of g/||g|| is (I - ghat ghat^T) H(w)/||g||). Along an eigenvector of M with a
real eigenvalue mu > 0 one linearized step multiplies the coordinate by 1 - eta mu: unstable when
eta mu > 2. The SAM-edge is the special case H(w~) = H(w) with g orthogonal to the top
eigenvector (``samedge.edge.sam_edge``; ``aligned_sam_edge`` keeps the alignment).
M is not symmetric in general, so its top eigenvalue (largest real part) is found by Arnoldi,
not Lanczos: ``sam_map_sharpness``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch.func import grad as func_grad

from .hessian import WARM_MIX, HessianOperator, HVPMethod, LossFn, _start_vector, guarded_start
from .sam import ascent_point, sam_step
from .vectors import Params, add_scaled, flatten, norm, unflatten

__all__ = [
    "SAMMapOperator",
    "SAMMapSharpness",
    "sam_map_sharpness",
    "MIN_KRYLOV",
    "GROWTH_EPS",
    "SAMMapAccounts",
    "two_step_growth",
    "sam_map_accounts",
]

# The smallest Krylov dimension at which ``sam_map_sharpness`` may stop (a breakdown, i.e. an
# exactly invariant subspace, included): one or two Arnoldi steps can sit on a lower eigenvalue
# with a tiny residual when the start vector is close to its eigenvector.
MIN_KRYLOV = 5


class SAMMapOperator:
    """v -> M v with I - eta M the Jacobian of the SAM map at ``params``: one HVP at w, one at w~."""

    def __init__(
        self,
        loss_fn: LossFn,
        params: Params,
        rho: float,
        normalize: bool = True,
        method: HVPMethod = "double_backward",
    ):
        if not (isinstance(rho, (int, float)) and 0 <= rho < float("inf")):
            raise ValueError(f"rho must be a finite number >= 0, got {rho!r}")
        self.at_w = HessianOperator(loss_fn, params, method=method)
        if method == "double_backward":
            # The gradient from the graph the HVPs at w reuse: no extra backward.
            _, grad = self.at_w.loss_and_gradient()
        else:
            grad = {k: t.detach() for k, t in func_grad(loss_fn)(self.at_w.params).items()}
        gn = norm(grad)
        self.grad = grad
        self.grad_norm = float(gn)
        self.rho, self.normalize = float(rho), normalize
        self.size, self.dtype, self.device = self.at_w.size, self.at_w.dtype, self.at_w.device
        self.ascent_params = ascent_point(self.at_w.params, grad, rho, normalize, gn)
        # At rho = 0 (GD), or at g = 0 for normalized SAM (no ascent direction: sam_step takes a
        # GD step there), w~ = w and M = H(w): one HVP per product.
        self.direction: Optional[torch.Tensor] = None
        if rho == 0 or (normalize and gn == 0):
            self.scale = 0.0
        elif normalize:
            self.scale = float(rho / gn)
            self.direction = flatten(grad) / gn
        else:
            self.scale = float(rho)
        same = rho == 0 or gn == 0
        self.at_ascent = self.at_w if same else HessianOperator(loss_fn, self.ascent_params, method=method)

    @property
    def calls(self) -> int:
        """HVPs so far, at both points."""
        return self.at_w.calls + (0 if self.at_ascent is self.at_w else self.at_ascent.calls)

    def __call__(self, vec: torch.Tensor) -> torch.Tensor:
        """M vec on flat vectors."""
        v = vec.to(self.dtype)
        if self.scale == 0.0:
            return self.at_ascent(v)
        a = self.at_w(v)
        if self.direction is not None:
            # d(g/||g||)/dw = (I - ghat ghat^T) H / ||g||: the ascent cannot change its length.
            a = a - torch.dot(self.direction, a) * self.direction
        return self.at_ascent(v + self.scale * a)


@dataclass
class SAMMapSharpness:
    """The eigenvalue of M with the largest real part, from one Arnoldi run, and its certificate."""

    value: float  # real part of the selected Ritz value mu: eta * value > 2 means unstable along it
    imag: float  # its imaginary part (>= 0: of a conjugate pair, the upper one)
    num_hvps: int  # HVPs at w and at w~ together
    converged: bool
    residual: float  # ||M x - mu x|| / |mu| of the (complex, unit) Ritz pair; 0 after a breakdown
    eigenvector: torch.Tensor  # flat unit vector: the Ritz vector's real part (phase chosen to maximize it)
    grad_norm: float  # ||grad L(w)||
    krylov_dim: int  # Arnoldi steps taken


def _ritz_top(h: np.ndarray) -> tuple:
    """(theta, unit y, max |Ritz value|) of the Hessenberg matrix ``h``: theta the eigenvalue with
    the largest real part (of a conjugate pair, the one with positive imaginary part)."""
    theta, Y = np.linalg.eig(h)
    i = int(np.lexsort((theta.imag, theta.real))[-1])
    y = Y[:, i]
    return complex(theta[i]), y / np.linalg.norm(y), float(np.abs(theta).max())


def _real_part(y: np.ndarray) -> np.ndarray:
    """Re(e^{-i phi} y) for the phase phi that makes it longest (y itself when real)."""
    a, b = y.real, y.imag
    gram = np.array([[a @ a, a @ b], [a @ b, b @ b]])
    c = np.linalg.eigh(gram)[1][:, -1]  # (cos phi, sin phi) maximizing ||a cos phi + b sin phi||
    return c[0] * a + c[1] * b


def _arnoldi_top(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    q: torch.Tensor,
    tol: float,
    max_iter: int,
    min_iter: int,
    seed: int,
) -> tuple:
    """Arnoldi from unit ``q`` until the top Ritz pair passes the stopping test; returns
    (theta, Ritz vector's real part, residual, steps, converged)."""
    size, dtype, device = q.numel(), q.dtype, q.device
    max_iter = min(max_iter, size)
    min_iter = min(max(min_iter, 1), max_iter)
    Q = torch.empty(max_iter + 1, size, dtype=dtype, device=device)
    Hs = np.zeros((max_iter + 1, max_iter))  # the Hessenberg matrix, float64 whatever the vectors
    Q[0] = q
    prev: Optional[complex] = None
    theta, y, res, m, converged = complex("nan"), np.ones(1), float("nan"), 0, False
    for j in range(max_iter):
        m = j + 1
        w = matvec(Q[j]).to(dtype)
        basis = Q[:m]
        # Classical Gram-Schmidt twice ("twice is enough"): orthogonal to round-off at any dimension.
        h = basis @ w
        w = w - h @ basis
        h2 = basis @ w
        w = w - h2 @ basis
        hv = (h + h2).double().cpu().numpy()
        beta = float(torch.linalg.vector_norm(w))
        if not (np.all(np.isfinite(hv)) and math.isfinite(beta)):
            return complex("nan"), Q[j], float("nan"), m, False  # a non-finite HVP (a diverged run)
        Hs[:m, j] = hv
        theta, y, ritz_scale = _ritz_top(Hs[:m, :m])
        breakdown = beta <= 1e-10 * max(ritz_scale, 1e-300)
        # Arnoldi relation M Q_m = Q_m H_m + beta q_{m+1} e_m^T: for unit y the Ritz pair
        # (theta, Q_m y) has ||M x - theta x|| = beta |y_m| exactly.
        res = 0.0 if breakdown else beta * abs(y[-1]) / max(abs(theta), 1e-300)
        stable = prev is not None and abs(theta - prev) <= tol * abs(theta)
        prev = theta
        if m >= min_iter and (breakdown or (res <= tol and stable)):
            converged = True
            break
        if m == max_iter:
            break
        if breakdown:
            # An invariant subspace before MIN_KRYLOV steps (e.g. a start on an eigenvector):
            # continue from a random vector orthogonal to it (H stays block upper triangular).
            w = _start_vector(size, None, dtype, device, seed + m)
            for _ in range(2):
                w = w - (Q[:m] @ w) @ Q[:m]
            Hs[m, j] = 0.0
            Q[m] = w / torch.linalg.vector_norm(w)
        else:
            Hs[m, j] = beta
            Q[m] = w / beta
    x = torch.from_numpy(_real_part(y)).to(dtype=dtype, device=device) @ Q[:m]
    x = x / torch.linalg.vector_norm(x)
    return theta, x, res, m, converged


def sam_map_sharpness(
    loss_fn: LossFn,
    params: Params,
    rho: float,
    normalize: bool = True,
    v0: Optional[torch.Tensor] = None,
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    method: HVPMethod = "double_backward",
    min_iter: int = MIN_KRYLOV,
) -> SAMMapSharpness:
    """The eigenvalue mu of M (``SAMMapOperator``) with the largest real part, by Arnoldi.

    rho = 0 gives lambda_max of the Hessian (the largest eigenvalue, not the largest in magnitude).
    Arnoldi keeps the full basis, orthogonalized twice; the Ritz values are the eigenvalues of the
    float64 Hessenberg matrix, and the one with the largest real part is selected. It stops after
    Krylov dimension m when m >= ``min_iter`` (``MIN_KRYLOV`` = 5) and both

        h_{m+1,m} |e_m^T y| / |theta| <= tol      (relative residual of the unit Ritz pair), and
        |theta_m - theta_{m-1}| <= tol |theta_m|  (the selected Ritz value stable over two steps),

    or at a breakdown (an invariant Krylov subspace: its Ritz values are exact eigenvalues) once
    m >= ``min_iter``; ``max_iter`` caps m (2 HVPs per step, 1 when rho = 0).

    What this certifies: a residual r means theta is an exact eigenvalue of M + E with
    ||E|| = r |theta|, i.e. theta lies in the (r |theta|)-pseudospectrum of M. M is not normal
    (it is symmetric only when H(w~) = H(w)), so the distance from theta to an eigenvalue of M
    can exceed r |theta| by the eigenvalue's condition number, which Arnoldi does not know. Nor
    does the residual exclude an eigenvalue further right that the Krylov space has not yet
    captured (for symmetric H, ``samedge.hessian.miss_bound`` bounds that; its analogue here would
    carry the unknown condition number of M's eigenvectors). Against that, the stability test
    asks the top Ritz value to stop moving, ``min_iter`` forbids stopping in the first steps, and a
    warm start ``v0`` (e.g. the previous ``.eigenvector``) is mixed with a seeded random vector of
    equal weight (``samedge.hessian.guarded_start``) so every eigenvector has a component in the
    start vector that v0 cannot cancel: a start at a lower eigenvector does not pass at once.
    These make a miss unlikely, not impossible.
    """
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    op = SAMMapOperator(loss_fn, params, rho, normalize, method)
    start = guarded_start(v0, op.size, op.dtype, op.device, seed, WARM_MIX) if v0 is not None else None
    if start is None:
        start = _start_vector(op.size, None, op.dtype, op.device, seed)
    else:
        start = start / torch.linalg.vector_norm(start)
    theta, x, res, m, converged = _arnoldi_top(op, start, tol, max_iter, min_iter, seed)
    return SAMMapSharpness(theta.real, abs(theta.imag), op.calls, converged, res, x, op.grad_norm, m)


# The small perturbation of ``two_step_growth``'s linear account, in parameter units: small against
# the oscillation along u of the book's runs (its half-step, ``SAMMapAccounts.amplitude``, is
# about 1e-2 to 1e-1) and large against the float32 round-off of the projected difference (~1e-8).
GROWTH_EPS = 1e-3


def two_step_growth(step: Callable[[Params], Params], params: Params, u: torch.Tensor, eps: float) -> float:
    """<F(F(w + eps u)) - F(F(w - eps u)), u> / (2 eps) for the map ``step`` = F and unit ``u``:
    how much a perturbation along u grows over two steps (a central difference: its linear part is
    u^T J(F(w)) J(w) u, the two-step Jacobian along u, with the error O(eps^2))."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    d = unflatten(u.to(next(iter(params.values())).dtype), params)
    plus = step(step(add_scaled(params, d, eps)))
    minus = step(step(add_scaled(params, d, -eps)))
    return float(torch.dot(flatten(plus) - flatten(minus), u.to(flatten(plus).dtype)) / (2 * eps))


@dataclass
class SAMMapAccounts:
    """``sam_map_accounts`` at w: the SAM map's linear criterion and the two-step growth along u."""

    sharpness: SAMMapSharpness  # mu, the top real eigenvalue of M: linearly unstable when eta mu > 2
    growth: float  # two_step_growth along u of a small perturbation (eps = GROWTH_EPS): the cycle's linear account
    growth_at_amplitude: float  # the same for a perturbation of max(amplitude, eps): the non-linear account
    amplitude: float  # |<F(w) - w, u>| / 2: half the step along u, the size of a period-2 oscillation


def sam_map_accounts(
    loss_fn: LossFn,
    params: Params,
    eta: float,
    rho: float,
    u: torch.Tensor,
    normalize: bool = True,
    v0: Optional[torch.Tensor] = None,
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    eps: float = GROWTH_EPS,
    method: HVPMethod = "double_backward",
    kernels: str = "default",
) -> SAMMapAccounts:
    """The accounts of the SAM map F(w) = w - eta grad L(w~) at ``params`` along the unit vector
    ``u`` (the top Hessian eigenvector): ``sam_map_sharpness`` (warm-started from ``v0``), and
    the growth over two real SAM steps (``samedge.sam_step``, on ``loss_fn``'s batch both times)
    of a perturbation along u, small (``eps``) and as large as the oscillation along u.

    Why two steps: at the edge of stability the iterate oscillates with period 2 along u, and a
    period-2 orbit is stable when the two-step map contracts along it, u^T J(F(w)) J(w) u <= 1 in
    the linear limit, whatever the one-step criterion eta mu says at w alone: the curvature and
    SAM's ascent direction differ at the orbit's two points. For GD on a quadratic with u an
    eigenvector of eigenvalue lam both growths are (1 - eta lam)^2."""
    u = u.reshape(-1) / torch.linalg.vector_norm(u)
    sh = sam_map_sharpness(loss_fn, params, rho, normalize, v0=v0, tol=tol, max_iter=max_iter, seed=seed, method=method)

    def step(w: Params) -> Params:
        return sam_step(loss_fn, w, eta, rho, normalize, kernels=kernels).params

    w = {k: t.detach() for k, t in params.items()}
    moved = flatten(step(w)) - flatten(w)
    amplitude = float(torch.dot(moved, u.to(moved.dtype)).abs()) / 2
    return SAMMapAccounts(
        sh,
        two_step_growth(step, w, u, eps),
        two_step_growth(step, w, u, max(amplitude, eps)),
        amplitude,
    )
