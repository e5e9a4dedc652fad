"""The GD edge, the SAM-edge and the unnormalized SAM edge.

References: real SAM steps (``sam_step``) on explicit quadratics 0.5 w^T A w started on the
top eigenvector, the paper's written formula, the defining quadratic equations, and series
expansions in the limits.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from samedge.edge import (
    RULES,
    adam_edge,
    adamw_edge,
    edge,
    gd_edge,
    momentum_edge,
    rmsprop_edge,
    sam_edge,
    sam_sgd_edge,
    sgd_edge,
    unnormalized_sam_edge,
)
from samedge.sam import sam_step

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")


def paper_sam_edge(eta: float, rho: float, g: float) -> float:
    """The paper's written form (||g|| / (2 rho)) (sqrt(1 + 8 rho / (eta ||g||)) - 1)."""
    return g / (2 * rho) * (math.sqrt(1 + 8 * rho / (eta * g)) - 1)


def _random_quadratic_on_edge(rng: np.random.Generator, lam_edge_of_scale):
    """A random symmetric A (dimension 2..10, top eigenvalue positive, others in
    [-1.5, 0.99] times it, so indefinite as often as not) with its top eigenvalue set to
    ratio * lam_edge, ratio uniform in [0.5, 1.5]; returns A, ratio."""
    d = int(rng.integers(2, 11))
    rest = rng.uniform(-1.5, 0.99, d - 1)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    B = Q @ np.diag(np.concatenate([[1.0], rest])) @ Q.T
    B = 0.5 * (B + B.T)
    ratio = rng.uniform(0.5, 1.5)
    return torch.tensor(B * ratio * lam_edge_of_scale, dtype=F64), ratio


def _quadratic_closure(A):
    return lambda p: 0.5 * p["w"] @ A @ p["w"]


def test_sam_edge_predicts_growth_of_real_sam_steps_on_quadratics():
    """On 300 random quadratics, one real normalized SAM step from w = c u_top grows |w|
    exactly when lambda_max > sam_edge(eta, rho, ||A w||); both sides well represented."""
    rng = np.random.default_rng(12345)
    grows_count = stable_count = 0
    for _ in range(300):
        eta = 10 ** rng.uniform(-3, 0)
        rho = 10 ** rng.uniform(-3, 0)
        c = rng.choice([-1.0, 1.0]) * 10 ** rng.uniform(-2, 1)
        # Along u_top the step multiplies c by 1 - eta lam (1 + rho/|c|): unstable iff
        # lam > 2 / (eta (1 + rho/|c|)). Scale A so lambda_max straddles that value.
        A, ratio = _random_quadratic_on_edge(rng, 2 / (eta * (1 + rho / abs(c))))
        evals, evecs = torch.linalg.eigh(A)
        lam_max, u = float(evals[-1]), evecs[:, -1]
        w = c * u
        edge = sam_edge(eta, rho, float(torch.linalg.vector_norm(A @ w)))
        if abs(lam_max / edge - 1) < 1e-6:
            continue
        new = sam_step(_quadratic_closure(A), {"w": w}, eta, rho).params["w"]
        grows = bool(torch.linalg.vector_norm(new) > torch.linalg.vector_norm(w))
        assert grows == (lam_max > edge), (eta, rho, c, lam_max, edge)
        assert grows == (ratio > 1)
        grows_count += grows
        stable_count += not grows
    assert grows_count >= 90 and stable_count >= 90


def test_unnormalized_edge_predicts_growth_of_real_steps_on_quadratics():
    """Same for unnormalized SAM (w~ = w + rho g): |w| grows exactly when
    lambda_max > unnormalized_sam_edge(eta, rho), i.e. when eta lam (1 + rho lam) > 2."""
    rng = np.random.default_rng(54321)
    grows_count = stable_count = 0
    for _ in range(200):
        eta = 10 ** rng.uniform(-3, 0)
        rho = 10 ** rng.uniform(-3, 1)
        c = rng.choice([-1.0, 1.0]) * 10 ** rng.uniform(-2, 1)
        lam_root = max(np.roots([eta * rho, eta, -2.0]).real)  # eta lam (1 + rho lam) = 2
        A, _ = _random_quadratic_on_edge(rng, lam_root)
        evals, evecs = torch.linalg.eigh(A)
        lam_max, w = float(evals[-1]), c * evecs[:, -1]
        edge = unnormalized_sam_edge(eta, rho)
        if abs(lam_max / edge - 1) < 1e-6:
            continue
        new = sam_step(_quadratic_closure(A), {"w": w}, eta, rho, normalize=False).params["w"]
        grows = bool(torch.linalg.vector_norm(new) > torch.linalg.vector_norm(w))
        assert grows == (lam_max > edge), (eta, rho, c, lam_max, edge)
        assert grows == (eta * lam_max * (1 + rho * lam_max) > 2)
        grows_count += grows
        stable_count += not grows
    assert grows_count >= 60 and stable_count >= 60


def test_gd_edge_predicts_growth_of_gd_steps():
    """rho = 0 (a GD step): |w| grows on the top eigenvector exactly when lam > gd_edge = 2/eta."""
    rng = np.random.default_rng(7)
    for _ in range(50):
        eta = 10 ** rng.uniform(-3, 0)
        A, ratio = _random_quadratic_on_edge(rng, 2 / eta)
        evals, evecs = torch.linalg.eigh(A)
        w = 0.3 * evecs[:, -1]
        new = sam_step(_quadratic_closure(A), {"w": w}, eta, 0.0).params["w"]
        grows = bool(torch.linalg.vector_norm(new) > torch.linalg.vector_norm(w))
        assert grows == (float(evals[-1]) > gd_edge(eta)) == (ratio > 1)


def test_gd_edge_value():
    """gd_edge is 2/eta on floats, arrays and tensors."""
    assert gd_edge(0.01) == pytest.approx(200.0, rel=1e-15)
    assert np.allclose(gd_edge(np.array([0.1, 2.0])), [20.0, 1.0], rtol=1e-15)
    assert torch.allclose(gd_edge(torch.tensor([0.5, 4.0], dtype=F64)), torch.tensor([4.0, 0.5], dtype=F64))


@pytest.mark.parametrize("eta", [1e-3, 0.05, 0.7])
@pytest.mark.parametrize("rho", [1e-3, 0.05, 1.0])
@pytest.mark.parametrize("g", [1e-2, 0.3, 10.0])
def test_sam_edge_matches_paper_formula_and_solves_the_edge_equation(eta, rho, g):
    """For moderate values the SAM-edge equals the paper's written form, solves
    eta lam (1 + rho lam / ||g||) = 2, and lies strictly below 2/eta."""
    edge = sam_edge(eta, rho, g)
    assert isinstance(edge, float)
    assert edge == pytest.approx(paper_sam_edge(eta, rho, g), rel=1e-10)
    assert eta * edge * (1 + rho * edge / g) == pytest.approx(2.0, rel=1e-12)
    assert 0 < edge < 2 / eta


@pytest.mark.parametrize("eta", [1e-3, 0.05, 0.7])
@pytest.mark.parametrize("rho", [1e-3, 0.05, 1.0, 30.0])
def test_unnormalized_edge_solves_its_equation(eta, rho):
    """unnormalized_sam_edge solves eta lam (1 + rho lam) = 2 and is below 2/eta."""
    lam = unnormalized_sam_edge(eta, rho)
    assert eta * lam * (1 + rho * lam) == pytest.approx(2.0, rel=1e-12)
    assert 0 < lam < 2 / eta
    assert unnormalized_sam_edge(eta, 0.0) == pytest.approx(2 / eta, rel=1e-15)


def test_sam_edge_rho_to_zero_is_the_gd_edge():
    """rho = 0 gives exactly 2/eta (even with grad_norm 0); small rho approaches it from below
    as (2/eta)(1 - 2 rho/(eta g)) (series of the root), with no cancellation."""
    eta, g = 0.1, 2.0
    assert sam_edge(eta, 0.0, g) == pytest.approx(2 / eta, rel=1e-15)
    assert sam_edge(eta, 0.0, 0.0) == pytest.approx(2 / eta, rel=1e-15)
    for rho in [1e-7, 1e-10, 1e-13, 1e-16]:
        t = 8 * rho / (eta * g)
        series = (2 / eta) * (1 - t / 4 + t**2 / 8)
        edge = sam_edge(eta, rho, g)
        assert edge == pytest.approx(series, rel=1e-11)
        assert edge < 2 / eta or rho < 1e-15
    rhos = [1.0, 0.1, 0.01, 1e-3]
    edges = [sam_edge(eta, r, g) for r in rhos]
    assert edges == sorted(edges)  # increasing towards 2/eta as rho shrinks


def test_sam_edge_below_gd_edge_for_positive_rho():
    """For every rho > 0 and grad_norm >= 0 the SAM-edge is strictly below 2/eta."""
    rng = np.random.default_rng(3)
    eta = 10 ** rng.uniform(-3, 0, 200)
    rho = 10 ** rng.uniform(-6, 1, 200)
    g = 10 ** rng.uniform(-6, 2, 200)
    edge = sam_edge(eta, rho, g)
    assert np.all(edge < 2 / eta) and np.all(edge > 0)


def test_sam_edge_vanishing_gradient():
    """grad_norm -> 0 sends the SAM-edge to 0 like sqrt(2 ||g|| / (eta rho)), never NaN."""
    eta, rho = 0.1, 0.05
    assert sam_edge(eta, rho, 0.0) == 0.0
    for g in [1e-10, 1e-14, 1e-300]:
        edge = sam_edge(eta, rho, g)
        assert math.isfinite(edge)
        assert edge == pytest.approx(math.sqrt(2 * g / (eta * rho)), rel=1e-4)
    arr = sam_edge(eta, rho, np.array([0.0, 1e-300, 1.0]))
    assert np.all(np.isfinite(arr)) and arr[0] == 0.0
    ten = sam_edge(torch.tensor(eta, dtype=F64), rho, torch.tensor([0.0, 1e-20, 1.0], dtype=F64))
    assert torch.isfinite(ten).all() and ten[0] == 0.0


def test_sam_edge_broadcasts_over_numpy_and_torch():
    """Arrays and tensors broadcast; each entry equals the scalar paper formula; python floats
    give floats, arrays give arrays, tensors give tensors (dtype kept)."""
    etas = [0.01, 0.1, 0.5]
    gs = [0.1, 1.0, 3.0, 20.0]
    rho = 0.05
    expected = np.array([[paper_sam_edge(e, rho, g) for g in gs] for e in etas])
    out = sam_edge(np.array(etas)[:, None], rho, np.array(gs)[None, :])
    assert isinstance(out, np.ndarray) and out.shape == (3, 4)
    assert np.allclose(out, expected, rtol=1e-12, atol=0)
    t = sam_edge(
        torch.tensor(etas, dtype=F64)[:, None], torch.tensor(rho, dtype=F64), torch.tensor(gs, dtype=F64)[None, :]
    )
    assert isinstance(t, torch.Tensor) and t.shape == (3, 4) and t.dtype == F64
    assert np.allclose(t.numpy(), expected, rtol=1e-12, atol=0)
    t32 = sam_edge(torch.tensor(etas)[:, None], rho, np.array(gs)[None, :])  # mixed inputs
    assert t32.dtype == torch.float32 and np.allclose(t32.numpy(), expected, rtol=1e-5)
    u = unnormalized_sam_edge(np.array(etas), np.array([0.0, 0.1, 1.0]))
    assert np.allclose(
        u, [2 / 0.01] + [max(np.roots([e * r, e, -2.0]).real) for e, r in [(0.1, 0.1), (0.5, 1.0)]], rtol=1e-12
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(eta=0.0, rho=0.1, grad_norm=1.0), "eta"),
        (dict(eta=-0.1, rho=0.1, grad_norm=1.0), "eta"),
        (dict(eta=float("nan"), rho=0.1, grad_norm=1.0), "eta"),
        (dict(eta=float("inf"), rho=0.1, grad_norm=1.0), "eta"),
        (dict(eta=np.array([0.1, -0.1]), rho=0.1, grad_norm=1.0), "eta"),
        (dict(eta=0.1, rho=-1e-3, grad_norm=1.0), "rho"),
        (dict(eta=0.1, rho=float("nan"), grad_norm=1.0), "rho"),
        (dict(eta=0.1, rho=0.1, grad_norm=-1.0), "grad_norm"),
        (dict(eta=0.1, rho=0.1, grad_norm=float("inf")), "grad_norm"),
        (dict(eta=0.1, rho=0.1, grad_norm=float("nan")), "grad_norm"),
        (dict(eta=0.1, rho=0.1, grad_norm=torch.tensor([1.0, -2.0])), "grad_norm"),
    ],
)
def test_sam_edge_rejects_invalid_arguments(kwargs, name):
    """Invalid eta, rho or grad_norm raise a ValueError whose message names the argument."""
    with pytest.raises(ValueError, match=rf"^{name} must"):
        sam_edge(**kwargs)


def test_other_edges_reject_invalid_arguments():
    """gd_edge and unnormalized_sam_edge validate eta and rho the same way."""
    with pytest.raises(ValueError, match=r"^eta must"):
        gd_edge(0.0)
    with pytest.raises(ValueError, match=r"^eta must"):
        gd_edge(torch.tensor(float("nan")))
    with pytest.raises(ValueError, match=r"^eta must"):
        unnormalized_sam_edge(-1.0, 0.1)
    with pytest.raises(ValueError, match=r"^rho must"):
        unnormalized_sam_edge(0.1, -0.1)


def test_edge_dispatches_on_every_rule():
    """edge(rule, ...) is the formula of its rule, for each name of RULES (momentum included)."""
    eta, rho, g, beta = 0.1, 0.05, 2.0, 0.9
    want = {
        "gd": gd_edge(eta),
        "momentum": momentum_edge(eta, beta),
        "sam": sam_edge(eta, rho, g),
        "usam": unnormalized_sam_edge(eta, rho),
        "sgd": sgd_edge(eta, beta, 0.1, False, 0.01),
        "sam_sgd": sam_sgd_edge(eta, rho, g, beta, 0.1, False, 0.01),
        "adam": adam_edge(eta, beta),
        "adamw": adamw_edge(eta, beta, 0.01),
        "rmsprop": rmsprop_edge(eta, beta),
    }
    assert set(want) == set(RULES)
    for rule, value in want.items():
        assert edge(rule, eta, rho, g, beta, dampening=0.1, weight_decay=0.01) == value, rule
    assert edge("momentum", eta, beta=beta) == pytest.approx(2 * (1 + beta) / eta, rel=1e-15)
    assert edge("momentum", eta) == gd_edge(eta)  # beta = 0: plain GD
    with pytest.raises(ValueError, match="grad_norm"):
        edge("sam", eta, rho)
    with pytest.raises(ValueError, match="rmsprop"):
        edge("adagrad", eta)
