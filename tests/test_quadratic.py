"""samedge.quadratic: real SAM steps on quadratics against the closed forms of the derivation.

References are typed formulas (``1 - eta lam (1 + rho lam/||g||)``, the two-cycle amplitude
``eta rho lam / (2 - eta lam)``) or the library's edges, which tests/test_edge.py checks on
their own; the quantities under test come from stepping ``samedge.sam_step``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samedge import gd_edge, sam_edge, unnormalized_sam_edge
from samedge.edge import edge, rule_of
from samedge.quadratic import (
    Quadratic,
    growth_map,
    run_sam,
    sharpening_loss,
    stepped_edge,
    top_component_factor,
    two_cycle,
)

pytestmark = pytest.mark.usefixtures("single_thread")
F64 = torch.float64


def test_quadratic_hessian_gradient_and_placement():
    """H = Q diag Q^T has the requested eigenpairs; point_with_gradient puts the gradient
    (by autograd) at the requested norm and alignment with u1."""
    q = Quadratic((7.0, 2.0), theta=0.3)
    H, Q = q.hessian, q.eigenvectors
    assert torch.allclose(H @ Q, Q * torch.tensor([7.0, 2.0], dtype=F64), atol=1e-14)
    w = q.point_with_gradient(3.0, alignment=0.6)
    x = w["w"].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(q.loss({"w": x}), x)
    assert float(g.norm()) == pytest.approx(3.0, rel=1e-14)
    assert float(Q[:, 0] @ g / g.norm()) == pytest.approx(0.6, rel=1e-14)
    assert torch.allclose(q.components(q.point([0.5, -1.5])), torch.tensor([0.5, -1.5], dtype=F64), atol=1e-15)
    with pytest.raises(ValueError, match="alignment"):
        q.point_with_gradient(1.0, alignment=1.5)
    with pytest.raises(ValueError, match="theta"):
        Quadratic((1.0, 2.0, 3.0), theta=0.1)


@pytest.mark.parametrize(
    "eta,rho,lam,gn,alignment,theta",
    [
        (0.1, 0.05, 12.0, 1.0, 0.8, 0.5),
        (0.01, 0.1, 150.0, 0.02, 1.0, 0.0),
        (0.3, 0.01, 3.0, 5.0, 0.3, 1.2),
        (0.05, 0.2, 35.0, 0.7, 0.95, -0.4),
    ],
)
def test_one_step_factor_matches_closed_form(eta, rho, lam, gn, alignment, theta):
    """One real step multiplies the top coordinate by 1 - eta lam (1 + rho lam/||g||) (normalized),
    1 - eta lam (1 + rho lam) (unnormalized) and 1 - eta lam (GD), whatever the alignment and the
    rotation: the normalized factor uses the whole ||g||."""
    kw = dict(alignment=alignment, theta=theta)
    got = top_component_factor(lam, gn, eta, rho, **kw)
    assert got == pytest.approx(1 - eta * lam * (1 + rho * lam / gn), rel=1e-12, abs=1e-13)
    got_u = top_component_factor(lam, gn, eta, rho, normalize=False, **kw)
    assert got_u == pytest.approx(1 - eta * lam * (1 + rho * lam), rel=1e-12, abs=1e-13)
    assert top_component_factor(lam, gn, eta, 0.0, **kw) == pytest.approx(1 - eta * lam, rel=1e-12, abs=1e-13)


@pytest.mark.parametrize("eta,rho", [(0.1, 0.05), (0.01, 0.1), (0.3, 0.002)])
@pytest.mark.parametrize("gn", [1e-3, 0.1, 1.0, 30.0])
def test_stepped_edge_is_the_sam_edge(eta, rho, gn):
    """The largest curvature a real step keeps stable equals sam_edge(eta, rho, ||g||) (rel 1e-10),
    unnormalized_sam_edge(eta, rho) for unnormalized SAM and 2/eta for GD."""
    assert stepped_edge(eta, rho, gn) == pytest.approx(sam_edge(eta, rho, gn), rel=1e-10)
    assert stepped_edge(eta, rho, gn, normalize=False) == pytest.approx(unnormalized_sam_edge(eta, rho), rel=1e-10)
    assert stepped_edge(eta, 0.0, gn) == pytest.approx(gd_edge(eta), rel=1e-10)


def test_growth_map_boundary_is_the_sam_edge():
    """On a grid, the points where one step grows the top component (|factor| > 1) are exactly
    those above the SAM-edge of their gradient norm (grid points within 1e-9 of it excluded)."""
    eta, rho = 0.1, 0.05
    lams, gns = np.linspace(0.5, 25.0, 14), np.geomspace(1e-2, 1e2, 11)
    m = growth_map(lams, gns, eta, rho)
    assert m.shape == (14, 11)
    edge = sam_edge(eta, rho, gns)[None, :]
    clear = np.abs(lams[:, None] / edge - 1) > 1e-9
    grows = np.abs(m) > 1
    assert np.array_equal(grows[clear], (lams[:, None] > edge)[clear])
    assert grows.any() and (~grows).any()


def test_sam_on_a_quadratic_settles_on_the_two_cycle():
    """From a generic start on a rotated 2-D quadratic (lam1 < 2/eta), normalized SAM converges
    to the period-two orbit of eq. sam-two-cycle: the top coordinate alternates with amplitude
    eta rho lam1/(2 - eta lam1), the second one dies out, and the SAM-edge of the orbit's
    gradient norm equals lam1; GD converges to the minimum."""
    eta, rho, lam1, lam2 = 0.1, 0.05, 15.0, 4.0
    q = Quadratic((lam1, lam2), theta=0.5)
    df = run_sam(q.loss, q.point([1.0, 1.0]), eta, rho, 400, components=q.components)
    amp, gn = two_cycle(eta, rho, lam1)
    last = df.iloc[-2:]
    assert np.allclose(np.abs(last["c0"]), amp, rtol=1e-9)
    assert np.sign(last["c0"].iloc[0]) == -np.sign(last["c0"].iloc[1])
    assert np.all(np.abs(last["c1"]) < 1e-12)
    assert np.allclose(last["grad_norm"], gn, rtol=1e-9)
    assert np.allclose(last["edge"], lam1, rtol=1e-9) and np.allclose(last["ratio"], 1.0, rtol=1e-9)
    assert np.allclose(df["op_norm"], lam1, rtol=1e-12)  # the Hessian of a quadratic does not move
    gd = run_sam(q.loss, q.point([1.0, 1.0]), eta, 0.0, 400)
    assert gd["grad_norm"].iloc[-1] < 1e-12 and np.all(gd["edge"] == 2 / eta)


def test_unnormalized_sam_on_a_quadratic_is_linear():
    """Unnormalized SAM multiplies the top coordinate by the same factor every step: it decays
    below the unnormalized edge and grows above it; it never settles at the edge."""
    eta, lam1 = 0.1, 15.0
    q = Quadratic((lam1, 4.0), theta=0.5)
    for rho in (0.01, 0.05):  # unnormalized edges 17.08 (> lam1) and 12.36 (< lam1)
        m = 1 - eta * lam1 * (1 + rho * lam1)
        df = run_sam(q.loss, q.point([0.1, 0.1]), eta, rho, 40, normalize=False, components=q.components)
        assert np.allclose(df["c0"].to_numpy(), 0.1 * m ** df["step"].to_numpy(), rtol=1e-9)
        assert np.all(df["edge"] == unnormalized_sam_edge(eta, rho))
        assert (abs(m) > 1) == (lam1 > unnormalized_sam_edge(eta, rho))


def test_two_cycle_closed_form_and_errors():
    """two_cycle's gradient norm puts lam exactly at the SAM-edge; out-of-range inputs raise."""
    for eta, rho, lam in [(0.1, 0.05, 15.0), (0.01, 0.3, 120.0), (0.5, 1e-3, 0.2)]:
        amp, gn = two_cycle(eta, rho, lam)
        assert amp == pytest.approx(eta * rho * lam / (2 - eta * lam)) and gn == pytest.approx(lam * amp)
        assert sam_edge(eta, rho, gn) == pytest.approx(lam, rel=1e-12)
    with pytest.raises(ValueError, match="eta\\*lam < 2"):
        two_cycle(0.1, 0.05, 20.0)
    with pytest.raises(ValueError, match="rho"):
        two_cycle(0.1, -1.0, 5.0)


def test_edge_by_rule_of():
    """The edge run_sam compares with: samedge.edge.edge for the rule that (rho, normalize) names."""
    assert edge(rule_of(0.0), 0.1, 0.0, 3.0) == 20.0
    assert edge(rule_of(0.05), 0.1, 0.05, 3.0) == sam_edge(0.1, 0.05, 3.0)
    assert edge(rule_of(0.05, normalize=False), 0.1, 0.05, 3.0) == unnormalized_sam_edge(0.1, 0.05)


def test_sharpening_loss_gradient_hessian_and_sam_settling():
    """The toy's gradient and Hessian are the stated closed forms, and normalized SAM's
    curvature rises from below and settles at its SAM-edge (median ||H||/edge over the second
    half within 1e-2 of 1, from above by about x^2/y)."""
    a = 0.05
    loss = sharpening_loss(a)
    w = torch.tensor([0.3, 7.0], dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(loss({"w": w}), w)
    assert torch.allclose(g, torch.tensor([7.0 * 0.3, 0.5 * 0.09 - a], dtype=F64), atol=1e-15)
    df = run_sam(loss, {"w": torch.tensor([0.3, 15.0], dtype=F64)}, 0.1, 0.05, 600)
    assert df["ratio"].iloc[0] < 0.9  # starts below its edge
    half = df[df["step"] >= 300]
    assert 1.0 <= half["ratio"].median() <= 1.01
    assert np.allclose(
        df["op_norm"],
        np.abs(np.linalg.eigvalsh(np.stack([[df["w1"], df["w0"]], [df["w0"], 0 * df["w0"]]]).transpose(2, 0, 1))).max(
            1
        ),
        rtol=1e-12,
    )
    with pytest.raises(ValueError, match="drift"):
        sharpening_loss(0.0)
