"""The SAM map's Jacobian operator M and its top eigenvalue (``samedge.sam_map``).

References, all float64: M built densely from ``torch.func.hessian`` at w and at w~ (w~ from
``samedge.sam.ascent_point``) with its eigenvalue of largest real part from numpy; closed forms
on quadratics 0.5 w^T A w, where H(w~) = H(w) = A; and central differences of real
``sam_step`` maps. Tolerances: eigenvalues 1e-6 relative (Arnoldi run to tol 1e-10), Jacobian
products 1e-7 relative (central differences with eps 1e-5: truncation about eps^2, round-off
about 1e-16 / eps), closed forms 1e-10.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from samedge.edge import aligned_sam_edge, gd_edge, sam_edge
from samedge.hessian import HessianOperator, sharpness
from samedge.losses import module_loss, parameters_of, squared_loss
from samedge.sam import ascent_point, sam_step
from samedge.sam_map import MIN_KRYLOV, SAMMapOperator, sam_map_sharpness
from samedge.vectors import flatten, unflatten

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")
EIG_RTOL = 1e-6


def tanh_mlp():
    """A 3-8-6-2 tanh MLP (100 parameters) with squared loss on 12 fixed examples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 3, generator=gen, dtype=F64)
    y = torch.randn(12, 2, generator=gen, dtype=F64)
    return module_loss(model, squared_loss, x, y), parameters_of(model)


def quartic(d: int = 10):
    """L = 0.5 w^T A w + 0.25 sum_i c_i (b_i^T w)^4, A indefinite: H(w~) differs from H(w)."""
    gen = torch.Generator().manual_seed(2)
    B = torch.randn(d, d, generator=gen, dtype=F64)
    A = 0.5 * (B + B.T) / d**0.5 + 1.5 * torch.eye(d, dtype=F64)
    C = torch.randn(4, d, generator=gen, dtype=F64) / d**0.5
    c = torch.rand(4, generator=gen, dtype=F64) + 0.5
    w = 0.5 * torch.randn(d, generator=gen, dtype=F64)
    return (lambda p: 0.5 * p["w"] @ A @ p["w"] + 0.25 * (c * (C @ p["w"]) ** 4).sum()), {"w": w}


def complex_quartic():
    """A 4-parameter quadratic-plus-quartic loss (found by a search over seeds) at which the
    normalized-SAM M with rho = 0.5 has a complex conjugate pair as its top eigenvalues."""
    gen = torch.Generator().manual_seed(344)
    B = torch.randn(4, 4, generator=gen, dtype=F64)
    C = torch.randn(3, 4, generator=gen, dtype=F64)
    c = torch.rand(3, generator=gen, dtype=F64)
    w = torch.randn(4, generator=gen, dtype=F64)
    A = 0.5 * (B + B.T)
    return (lambda p: 0.5 * p["w"] @ A @ p["w"] + 0.25 * (c * (C @ p["w"]) ** 4).sum()), {"w": w}


PROBLEMS = {"mlp": tanh_mlp, "quartic": quartic}
# (rho, normalize): radii that make the SAM term of M comparable to H on both problems.
MODES = {"sam": (0.05, True), "usam": (0.3, False), "gd": (0.0, True)}


def dense_map(loss_fn, params, rho: float, normalize: bool) -> np.ndarray:
    """M = H(w~) (I + rho P H(w) / ||g||) (P = I - ghat ghat^T), or H(w~) (I + rho H(w)), densely."""
    keys = list(params)
    flat = flatten({k: params[k].detach() for k in keys})
    f = lambda x: loss_fn(unflatten(x, params))
    H = torch.func.hessian(f)(flat)
    g = torch.func.grad(f)(flat)
    w_tilde = ascent_point(params, unflatten(g, params), rho, normalize)
    H_t = torch.func.hessian(f)(flatten(w_tilde))
    eye = torch.eye(len(flat), dtype=F64)
    if normalize:
        ghat = g / torch.linalg.vector_norm(g)
        inner = eye + rho * (eye - torch.outer(ghat, ghat)) @ H / torch.linalg.vector_norm(g)
    else:
        inner = eye + rho * H
    return (H_t @ inner).numpy()


def top_eig(M: np.ndarray) -> complex:
    """The eigenvalue with the largest real part (of a conjugate pair, the upper one)."""
    ev = np.linalg.eigvals(M)
    return complex(ev[np.lexsort((ev.imag, ev.real))[-1]])


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_matches_dense_eigenvalue_with_largest_real_part(name, mode):
    """.value/.imag against numpy's eigenvalues of the dense M; the residual, the eigenvector and
    the HVP count are what they claim."""
    loss_fn, params = PROBLEMS[name]()
    rho, normalize = MODES[mode]
    M = dense_map(loss_fn, params, rho, normalize)
    ref = top_eig(M)
    r = sam_map_sharpness(loss_fn, params, rho, normalize, tol=1e-10, max_iter=M.shape[0])
    assert r.converged
    assert abs(r.value - ref.real) <= EIG_RTOL * abs(ref)
    assert abs(r.imag - ref.imag) <= EIG_RTOL * abs(ref)
    assert r.residual <= 1e-10
    assert r.num_hvps == (1 if rho == 0 else 2) * r.krylov_dim
    x = r.eigenvector.numpy()
    assert abs(np.linalg.norm(x) - 1) < 1e-12
    if abs(ref.imag) <= EIG_RTOL * abs(ref):  # a real eigenvalue: the real eigenvector is exact
        assert np.linalg.norm(M @ x - r.value * x) <= 1e-5 * abs(r.value)
    early = sam_map_sharpness(loss_fn, params, rho, normalize)  # tol 1e-3: a residual well above round-off
    if abs(ref.imag) <= EIG_RTOL * abs(ref):  # .residual is the Ritz pair's true relative residual
        x = early.eigenvector.numpy()
        true = np.linalg.norm(M @ x - early.value * x) / abs(early.value)
        assert early.converged and early.residual <= 1e-3 and early.residual == pytest.approx(true, rel=1e-6)
    g = torch.func.grad(loss_fn)(params)
    assert r.grad_norm == pytest.approx(float(torch.linalg.vector_norm(flatten(g))), rel=1e-12)


def test_complex_top_pair():
    """A top conjugate pair: .value its real part, .imag the positive imaginary part."""
    loss_fn, params = complex_quartic()
    ref = top_eig(dense_map(loss_fn, params, 0.5, True))
    assert ref.imag > 0.1 * abs(ref)
    r = sam_map_sharpness(loss_fn, params, 0.5, tol=1e-10)
    assert r.converged and r.residual <= 1e-10
    assert abs(r.value - ref.real) <= EIG_RTOL * abs(ref) and abs(r.imag - ref.imag) <= EIG_RTOL * abs(ref)


@pytest.mark.parametrize("mode", ["sam", "usam"])
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_operator_is_the_dense_map_at_two_hvps_per_product(name, mode):
    """M v from the operator equals the dense M v, and costs one HVP at w and one at w~."""
    loss_fn, params = PROBLEMS[name]()
    rho, normalize = MODES[mode]
    M = torch.from_numpy(dense_map(loss_fn, params, rho, normalize))
    for method in ("double_backward", "forward_over_reverse"):
        op = SAMMapOperator(loss_fn, params, rho, normalize, method=method)
        v = torch.randn(op.size, generator=torch.Generator().manual_seed(3), dtype=F64)
        for k in range(3):
            assert torch.allclose(op(v), M @ v, rtol=1e-10, atol=1e-12 * float(M.abs().max()))
            assert op.calls == 2 * (k + 1)


def test_rho_zero_is_lambda_max_not_the_largest_magnitude():
    """rho = 0: M = H and the result is its largest eigenvalue, here 3 while the most negative is -5."""
    evals = torch.tensor([3.0, 1.0, 0.5, -0.2, -2.0, -5.0], dtype=F64)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(4), dtype=F64))
    A = Q @ torch.diag(evals) @ Q.T
    w = torch.randn(6, generator=torch.Generator().manual_seed(5), dtype=F64)
    r = sam_map_sharpness(lambda p: 0.5 * p["w"] @ A @ p["w"], {"w": w}, 0.0, tol=1e-10)
    assert r.converged and r.value == pytest.approx(3.0, rel=1e-10) and r.imag == 0


def test_rho_zero_matches_lanczos_sharpness_on_the_mlp():
    """rho = 0 on the tanh MLP: dense eigvalsh's largest eigenvalue and Lanczos (samedge.sharpness)."""
    loss_fn, params = tanh_mlp()
    H = torch.func.hessian(lambda x: loss_fn(unflatten(x, params)))(flatten(params))
    lam_max = float(torch.linalg.eigvalsh(0.5 * (H + H.T))[-1])
    r = sam_map_sharpness(loss_fn, params, 0.0, tol=1e-10, max_iter=H.shape[0])
    assert r.value == pytest.approx(lam_max, rel=EIG_RTOL) and r.imag == 0
    s = sharpness(HessianOperator(loss_fn, params), tol=1e-10, max_iter=H.shape[0])
    assert lam_max > 0 and s.op_norm == pytest.approx(lam_max, rel=1e-8)  # the top end dominates here
    assert r.value == pytest.approx(s.lambda_max, rel=EIG_RTOL)


def _quadratic(lams, seed: int):
    Q, _ = torch.linalg.qr(torch.randn(len(lams), len(lams), generator=torch.Generator().manual_seed(seed), dtype=F64))
    A = Q @ torch.diag(torch.tensor(lams, dtype=F64)) @ Q.T
    return A, Q


def test_gradient_orthogonal_to_top_eigenvector_gives_the_sam_edge_exactly():
    """L = 0.5 w^T A w with w (so g) orthogonal to u: mu = lam (1 + rho lam / ||g||), and with
    lam = sam_edge(eta, rho, ||g||) eta mu = 2; aligned_sam_edge at cos2 = 0 is the SAM-edge."""
    eta, rho = 0.4, 0.05
    rest = [2.0, 1.2, 0.7, 0.3, 0.1]  # below the top eigenvalue set next
    A, Q = _quadratic([1.0] + rest, seed=6)
    w = Q[:, 1:] @ torch.tensor([0.3, -0.2, 0.5, 0.1, -0.4], dtype=F64)  # no component on u = Q[:, 0]
    gn = float(torch.linalg.vector_norm(A @ w))
    lam = sam_edge(eta, rho, gn)
    assert lam > rest[0]  # u stays the top eigenvector after rescaling its eigenvalue
    A = A + (lam - 1.0) * torch.outer(Q[:, 0], Q[:, 0])  # g = A w does not depend on lam
    r = sam_map_sharpness(lambda p: 0.5 * p["w"] @ A @ p["w"], {"w": w}, rho, tol=1e-12)
    assert r.value == pytest.approx(lam * (1 + rho * lam / gn), rel=1e-10)
    assert eta * r.value == pytest.approx(2.0, rel=1e-10)
    assert abs(abs(float(r.eigenvector @ Q[:, 0])) - 1) < 1e-8
    assert aligned_sam_edge(eta, rho, gn, 0.0) == pytest.approx(lam, rel=1e-14)


def test_gradient_along_top_eigenvector_removes_the_correction():
    """g along u (cos2 = 1): the projection kills the SAM term along u, M u = lam u, and the
    aligned edge is 2/eta."""
    eta, rho = 0.4, 0.05
    A, Q = _quadratic([4.0, 2.0, 1.0, 0.5], seed=7)
    u = Q[:, 0]
    op = SAMMapOperator(lambda p: 0.5 * p["w"] @ A @ p["w"], {"w": 0.3 * u}, rho)
    assert torch.allclose(op(u), 4.0 * u, rtol=0, atol=1e-12)
    assert aligned_sam_edge(eta, rho, op.grad_norm, 1.0) == gd_edge(eta)


def test_rayleigh_quotient_along_u_is_the_aligned_factor():
    """Any gradient on a quadratic: u^T M u = lam (1 + rho (1 - cos2) lam / ||g||), and the aligned
    edge solves eta lam (1 + rho (1 - cos2) lam / ||g||) = 2."""
    eta, rho = 0.3, 0.1
    A, Q = _quadratic([5.0, 2.0, 1.0, 0.5, 0.2], seed=8)
    u = Q[:, 0]
    w = Q @ torch.tensor([0.1, 0.3, -0.4, 0.2, 0.5], dtype=F64)  # g's coordinates: 0.5, 0.6, -0.4, 0.1, 0.1
    op = SAMMapOperator(lambda p: 0.5 * p["w"] @ A @ p["w"], {"w": w}, rho)
    g = A @ w
    cos2 = float((u @ g) ** 2 / (g @ g))
    assert 0.05 < cos2 < 0.95
    assert float(u @ op(u)) == pytest.approx(5.0 * (1 + rho * (1 - cos2) * 5.0 / op.grad_norm), rel=1e-12)
    lam = aligned_sam_edge(eta, rho, op.grad_norm, cos2)
    assert eta * lam * (1 + rho * (1 - cos2) * lam / op.grad_norm) == pytest.approx(2.0, rel=1e-14)
    assert sam_edge(eta, rho, op.grad_norm) < lam < gd_edge(eta)


def test_quadratic_sandwich_between_the_two_edges():
    """On random positive definite quadratics (lam_1 = ||H||): u^T M u <= mu <= lam (1 + rho lam / ||g||),
    so eta mu <= 2 below the SAM-edge and eta mu > 2 above the aligned edge."""
    rng = np.random.default_rng(12)
    for seed in range(20):
        lams = np.sort(rng.uniform(0.1, 3.0, 6))[::-1].tolist()
        A, Q = _quadratic(lams, seed=100 + seed)
        w = torch.from_numpy(rng.standard_normal(6))
        rho = float(10 ** rng.uniform(-2, 0))
        op = SAMMapOperator(lambda p, A=A: 0.5 * p["w"] @ A @ p["w"], {"w": w}, rho)
        mu = sam_map_sharpness(lambda p, A=A: 0.5 * p["w"] @ A @ p["w"], {"w": w}, rho, tol=1e-12).value
        u, lam, gn = Q[:, 0], lams[0], op.grad_norm
        cos2 = float((u @ A @ w) ** 2) / gn**2
        assert lam * (1 + rho * (1 - cos2) * lam / gn) <= mu * (1 + 1e-10)
        assert mu <= lam * (1 + rho * lam / gn) * (1 + 1e-10)
        for eta in (0.999 * 2 / (lam * (1 + rho * lam / gn)), 1.001 * 2 / (lam * (1 + rho * (1 - cos2) * lam / gn))):
            below = lam <= sam_edge(eta, rho, gn)
            above = lam > aligned_sam_edge(eta, rho, gn, cos2)
            assert below != above and (eta * mu <= 2 if below else eta * mu > 2)


def test_aligned_sam_edge_types_and_validation():
    """Scalars, arrays and tensors, equal to sam_edge with rho (1 - cos2); cos2 outside [0, 1] fails."""
    cos2 = np.array([0.0, 0.25, 1.0])
    out = aligned_sam_edge(0.1, 0.05, 0.2, cos2)
    assert np.allclose(out, [sam_edge(0.1, 0.05 * (1 - c), 0.2) for c in cos2], rtol=1e-15)
    t = aligned_sam_edge(torch.tensor(0.1, dtype=F64), 0.05, 0.2, torch.tensor(0.25, dtype=F64))
    assert isinstance(t, torch.Tensor) and float(t) == pytest.approx(float(out[1]), rel=1e-15)
    assert aligned_sam_edge(0.1, 0.0, 0.2, 0.5) == 20.0
    for bad in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError, match="cos2"):
            aligned_sam_edge(0.1, 0.05, 0.2, bad)
    with pytest.raises(ValueError, match="grad_norm"):
        aligned_sam_edge(0.1, 0.05, -1.0, 0.5)


@pytest.mark.parametrize("mode", ["sam", "usam"])
def test_jacobian_of_a_real_sam_step(mode):
    """(F(w + eps v) - F(w - eps v)) / (2 eps) of the real sam_step map equals v - eta M v."""
    loss_fn, params = tanh_mlp()
    rho, normalize = MODES[mode]
    eta, eps = 0.5, 1e-5
    op = SAMMapOperator(loss_fn, params, rho, normalize)
    w = flatten(params)
    F = lambda x: flatten(sam_step(loss_fn, unflatten(x, params), eta, rho, normalize).params)
    for seed in range(3):
        v = torch.randn(op.size, generator=torch.Generator().manual_seed(10 + seed), dtype=F64)
        jv = (F(w + eps * v) - F(w - eps * v)) / (2 * eps)
        expected = v - eta * op(v)
        assert float(torch.linalg.vector_norm(jv - expected) / torch.linalg.vector_norm(v - expected)) < 1e-7


def test_warm_start_at_a_lower_eigenvector_finds_the_top():
    """v0 near the eigenvector of M's second eigenvalue and exactly in the invariant subspace of
    all but the top one (so a Krylov space from v0 alone never contains the top eigenvector, but
    for round-off): the result is still the top eigenvalue (the guarded start); the returned
    eigenvector, as a warm start, gives the same value."""
    loss_fn, params = tanh_mlp()
    rho, normalize = MODES["sam"]
    M = dense_map(loss_fn, params, rho, normalize)
    ev, V = np.linalg.eig(M)
    order = np.argsort(-ev.real)
    assert np.abs(ev.imag).max() < 1e-12 and ev[order[0]].real - ev[order[1]].real > 1e-3 * abs(ev[order[0]])
    V = V.real
    u1 = V[:, order[0]]
    l1 = np.linalg.inv(V)[order[0]]  # the left eigenvector with l1 @ u1 = 1
    x = V[:, order[1]] + 1e-3 * np.random.default_rng(11).standard_normal(len(u1))
    lower = torch.from_numpy(x - u1 * (l1 @ x))  # the top component removed by the spectral projector
    r = sam_map_sharpness(loss_fn, params, rho, normalize, v0=lower)
    assert r.converged and r.krylov_dim >= MIN_KRYLOV
    assert r.value == pytest.approx(ev[order[0]].real, rel=1e-3)
    again = sam_map_sharpness(loss_fn, params, rho, normalize, v0=r.eigenvector, tol=1e-8, seed=1)
    assert again.converged and again.value == pytest.approx(ev[order[0]].real, rel=1e-6)
