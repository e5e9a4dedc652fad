"""``samedge.sam_map_accounts``: the SAM map's accounts of the ratio at one point.

References, float64 and independent of samedge: on a quadratic 0.5 w^T A w, GD's two-step growth
along an eigenvector of eigenvalue lam is (1 - eta lam)^2 for any perturbation (the map is
linear); normalized SAM stepped in numpy (w~ = w + rho g/||g||, w <- w - eta A w~) gives the
growth of a small and of an amplitude-sized perturbation and the half-step along u; and mu is
the top eigenvalue of the closed-form M = A (I + rho (I - ghat ghat^T) A / ||g||).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samedge.sam_map import GROWTH_EPS, sam_map_accounts, two_step_growth

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")


def quadratic(d: int = 6):
    """0.5 w^T A w with A = Q diag(lams) Q^T, and a start w with a component along every eigenvector."""
    gen = torch.Generator().manual_seed(5)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    lams = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.2], dtype=F64)[:d]
    A = q @ torch.diag(lams) @ q.T
    w = torch.randn(d, generator=gen, dtype=F64)
    return (lambda p: 0.5 * p["w"] @ A @ p["w"]), {"w": w}, A.numpy(), q[:, 0]


def numpy_sam(A: np.ndarray, w: np.ndarray, eta: float, rho: float) -> np.ndarray:
    """One normalized SAM step on 0.5 w^T A w, written out in numpy."""
    g = A @ w
    return w - eta * A @ (w + rho * g / np.linalg.norm(g))


@pytest.mark.parametrize("eta", [0.3, 0.39, 0.45])
def test_gd_growth_is_one_minus_eta_lam_squared(eta):
    loss, params, A, u = quadratic()
    acc = sam_map_accounts(loss, params, eta, 0.0, u, tol=1e-10)
    want = (1 - eta * 5.0) ** 2
    assert acc.growth == pytest.approx(want, rel=1e-9)
    assert acc.growth_at_amplitude == pytest.approx(want, rel=1e-9)  # a linear map: any size
    assert acc.sharpness.value == pytest.approx(5.0, rel=1e-8)
    # GD's step along u is -eta lam <w, u>: half of it is the amplitude.
    assert acc.amplitude == pytest.approx(abs(eta * 5.0 * float(params["w"] @ u)) / 2, rel=1e-9)


@pytest.mark.parametrize("rho", [0.05, 0.3])
def test_sam_accounts_match_numpy_sam_steps(rho):
    loss, params, A, u = quadratic()
    eta = 0.35
    w, un = params["w"].numpy(), u.numpy()
    acc = sam_map_accounts(loss, params, eta, rho, u, tol=1e-10)
    step = lambda x: numpy_sam(A, x, eta, rho)  # noqa: E731
    amp = abs(un @ (step(w) - w)) / 2
    assert acc.amplitude == pytest.approx(amp, rel=1e-9)
    for eps, got in ((GROWTH_EPS, acc.growth), (amp, acc.growth_at_amplitude)):
        want = un @ (step(step(w + eps * un)) - step(step(w - eps * un))) / (2 * eps)
        assert got == pytest.approx(want, rel=1e-8)
    # The non-linear account differs from the linear one here (normalized SAM is not linear).
    assert abs(acc.growth_at_amplitude - acc.growth) > 1e-6
    g = A @ w
    gh = g / np.linalg.norm(g)
    M = A @ (np.eye(len(w)) + rho * (np.eye(len(w)) - np.outer(gh, gh)) @ A / np.linalg.norm(g))
    mu = np.linalg.eigvals(M)
    assert acc.sharpness.value == pytest.approx(float(mu.real.max()), rel=1e-7)


def test_two_step_growth_is_the_two_step_jacobian_along_u():
    """For a linear map F(w) = B w the central difference is u^T B^2 u exactly."""
    gen = torch.Generator().manual_seed(3)
    B = torch.randn(4, 4, generator=gen, dtype=F64)
    u = torch.randn(4, generator=gen, dtype=F64)
    u = u / u.norm()
    got = two_step_growth(lambda p: {"w": B @ p["w"]}, {"w": torch.randn(4, generator=gen, dtype=F64)}, u, 0.7)
    assert got == pytest.approx(float(u @ B @ B @ u), rel=1e-12)
    with pytest.raises(ValueError, match="eps must be > 0"):
        two_step_growth(lambda p: p, {"w": u}, u, 0.0)
