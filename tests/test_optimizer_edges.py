"""Edges of the optimizers that actually run: torch.optim.SGD (heavy ball, dampening, Nesterov,
coupled weight decay), samedge.SAM over it, Adam, AdamW and RMSprop.

References: the real optimizers' iterates on float64 quadratics whose top curvature sits at
0.97x (they converge to the rule's fixed point) and 1.03x (they move away from it) the edge,
diagonal and rotated; typed values from the literature for the closed forms; a dense float64
eigen-solve for the preconditioned operator; the optimizer's own next step for the preconditioner.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from samedge import SAM, HessianOperator, sharpness
from samedge.edge import (
    adam_edge,
    adamw_edge,
    gd_edge,
    momentum_edge,
    rmsprop_edge,
    sam_edge,
    sam_sgd_edge,
    sgd_edge,
    unnormalized_sam_edge,
)
from samedge.hessian import PreconditionedOperator, adam_preconditioner

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")

FACTORS = (0.97, 1.03)
SPREAD = (1.0, 0.6, 0.25)  # the other curvatures, relative to the top one: well inside the edge
STEPS = 400
SHRINK = GROW = 1e3  # inside: the distance falls below 1/SHRINK of its start; outside: it grows GROW-fold

SGD_CONFIGS = [
    dict(momentum=0.0),
    dict(momentum=0.0, dampening=0.5, weight_decay=1.0),  # torch ignores dampening without momentum
    dict(momentum=0.9),
    dict(momentum=0.9, dampening=0.5),
    dict(momentum=0.5, dampening=0.3, weight_decay=2.0),
    dict(momentum=0.9, nesterov=True),
    dict(momentum=0.5, nesterov=True, weight_decay=2.0),
]


def _ids(cfgs: list) -> list:
    return ["-".join(f"{k}={v}" for k, v in c.items()) for c in cfgs]


def _basis(d: int, rotated: bool, seed: int = 0) -> torch.Tensor:
    """An orthogonal matrix: the identity, or a seeded random rotation (a non-diagonal quadratic)."""
    if not rotated:
        return torch.eye(d, dtype=F64)
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    return q


def _run(opt, w: torch.Tensor, loss_fn, distance, sam: bool = False, steps: int = STEPS) -> tuple:
    """(start distance, end distance) over ``steps`` real steps; stops once the distance has grown
    GROW-fold (so a normalized-SAM run stays where its gradient norm is frozen)."""
    start = distance(w.detach())
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(w).backward()
        if sam:
            opt.first_step(zero_grad=True)
            loss_fn(w).backward()
            opt.second_step(zero_grad=True)
        else:
            opt.step()
        end = distance(w.detach())
        if end > GROW * start:
            break
    return start, end


def _assert_stability(factor: float, start: float, end: float) -> None:
    if factor < 1:
        assert end < start / SHRINK, (factor, start, end)
    else:
        assert end > GROW * start, (factor, start, end)


# --- torch.optim.SGD ---------------------------------------------------------------------------


@pytest.mark.parametrize("rotated", [False, True])
@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=_ids(SGD_CONFIGS))
def test_sgd_converges_inside_and_diverges_outside_its_edge(cfg, factor, rotated):
    """Real torch.optim.SGD on 0.5 (w - w*)^T A (w - w*), lambda_max(A) = factor * sgd_edge: the
    distance to the fixed point (A + wd I)^-1 A w* (weight decay moves the minimum; stability is
    about the linear part) shrinks inside the edge and grows outside."""
    eta = 0.1
    edge = sgd_edge(eta, **cfg)
    Q = _basis(3, rotated)
    A = Q @ torch.diag(factor * edge * torch.tensor(SPREAD, dtype=F64)) @ Q.T
    wstar = torch.tensor([0.7, -0.3, 1.1], dtype=F64)
    wd = cfg.get("weight_decay", 0.0)
    fixed = torch.linalg.solve(A + wd * torch.eye(3, dtype=F64), A @ wstar)
    w = torch.nn.Parameter(fixed + torch.tensor([1e-3, -2e-3, 1.5e-3], dtype=F64))
    opt = torch.optim.SGD([w], lr=eta, **cfg)
    loss = lambda x: 0.5 * (x - wstar) @ A @ (x - wstar)
    _assert_stability(factor, *_run(opt, w, loss, lambda x: float(torch.linalg.vector_norm(x - fixed))))


def test_sgd_edge_closed_forms_and_reductions():
    """Heavy ball 2(1+beta)/((1-d) eta) - wd; Nesterov at wd = 0 is the literature's
    (2 + 2 beta)/((1 + 2 beta) eta); the plain cases are gd_edge and momentum_edge."""
    assert sgd_edge(0.1) == gd_edge(0.1)
    assert sgd_edge(0.1, 0.9) == pytest.approx(momentum_edge(0.1, 0.9), rel=1e-15)
    assert sgd_edge(0.1, 0.9, 0.5) == pytest.approx(2 * 1.9 / (0.5 * 0.1), rel=1e-15)
    assert sgd_edge(0.1, 0.9, 0.5, weight_decay=3.0) == pytest.approx(76.0 - 3.0, rel=1e-15)
    for beta in (0.1, 0.5, 0.9, 0.99):
        assert sgd_edge(0.05, beta, nesterov=True) == pytest.approx((2 + 2 * beta) / ((1 + 2 * beta) * 0.05), rel=1e-15)
    assert sgd_edge(0.1, 0.9, nesterov=True, weight_decay=1.5) == pytest.approx(3.8 / 2.8 / 0.1 - 1.5, rel=1e-15)
    # No momentum buffer, no dampening: torch.optim.SGD(momentum=0, dampening=d) is plain GD.
    assert sgd_edge(0.1, 0.0, 0.7) == gd_edge(0.1)


def test_sgd_edge_when_weight_decay_exceeds_it_and_array_inputs():
    """The formula's value is returned when weight decay makes it <= 0 (no nonnegative curvature is
    stable); arrays broadcast and tensors come back as tensors."""
    assert sgd_edge(0.1, weight_decay=25.0) == pytest.approx(-5.0)
    assert sgd_edge(0.1, weight_decay=20.0) == 0.0
    got = sgd_edge(np.array([0.1, 0.2]), np.array([0.0, 0.5]))
    assert isinstance(got, np.ndarray) and np.allclose(got, [20.0, 15.0])
    t = sgd_edge(torch.tensor(0.1, dtype=F64), 0.9, weight_decay=1.0)
    assert isinstance(t, torch.Tensor) and t.dtype == F64 and float(t) == pytest.approx(37.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(eta=0.0), "^eta must"),
        (dict(eta=0.1, momentum=1.0), "^momentum must"),
        (dict(eta=0.1, momentum=-0.1), "^momentum must"),
        (dict(eta=0.1, momentum=0.9, dampening=1.0), "^dampening must"),
        (dict(eta=0.1, weight_decay=-1e-4), "^weight_decay must"),
        (dict(eta=0.1, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov momentum requires"),
        (dict(eta=0.1, momentum=0.0, nesterov=True), "Nesterov momentum requires"),
    ],
)
def test_sgd_edge_rejects_what_torch_rejects_or_cannot_be_stable(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sgd_edge(**kwargs)


# --- samedge.SAM over torch.optim.SGD ----------------------------------------------------------


@pytest.mark.parametrize("rotated", [False, True])
@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=_ids(SGD_CONFIGS))
def test_unnormalized_sam_over_sgd_converges_inside_and_diverges_outside(cfg, factor, rotated):
    """Real samedge.SAM(normalize=False) over torch.optim.SGD: the ascent w + rho g makes the map
    affine, so no assumption beyond the quadratic; fixed point (A + rho A^2 + wd I)^-1 (A + rho A^2) w*."""
    eta, rho = 0.1, 0.02
    edge = sam_sgd_edge(eta, rho, normalize=False, **cfg)
    Q = _basis(3, rotated, seed=1)
    A = Q @ torch.diag(factor * edge * torch.tensor(SPREAD, dtype=F64)) @ Q.T
    wstar = torch.tensor([0.7, -0.3, 1.1], dtype=F64)
    wd = cfg.get("weight_decay", 0.0)
    B = A + rho * A @ A
    fixed = torch.linalg.solve(B + wd * torch.eye(3, dtype=F64), B @ wstar)
    w = torch.nn.Parameter(fixed + torch.tensor([1e-3, -2e-3, 1.5e-3], dtype=F64))
    opt = SAM([w], torch.optim.SGD, rho=rho, normalize=False, lr=eta, **cfg)
    loss = lambda x: 0.5 * (x - wstar) @ A @ (x - wstar)
    dist = lambda x: float(torch.linalg.vector_norm(x - fixed))
    _assert_stability(factor, *_run(opt, w, loss, dist, sam=True))


@pytest.mark.parametrize("rotated", [False, True])
@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=_ids(SGD_CONFIGS))
def test_normalized_sam_over_sgd_converges_inside_and_diverges_outside(cfg, factor, rotated):
    """Real samedge.SAM (normalized) over torch.optim.SGD, with ||g|| frozen by construction: the loss
    0.5 w^T A w + G u_flat^T w has a flat direction u_flat (A u_flat = 0) along which the gradient
    is the constant G, and the curved coordinates stay below 1e-3 G / lambda over the run (the run
    stops at a 1e3-fold growth from 1e-6 G / lambda), so ||g|| = G to a relative 1e-6. The fixed
    point of the curved part is 0 (weight decay does not move it); the flat coordinate drifts and
    is not measured. The edge uses grad_norm = G, the loss gradient's norm (SAM's ascent excludes
    the weight-decay term)."""
    eta, rho, G = 0.1, 0.05, 1.0
    edge = sam_sgd_edge(eta, rho, G, **cfg)
    Q = _basis(3, rotated, seed=2)
    lam = factor * edge * torch.tensor([SPREAD[0], SPREAD[1], 0.0], dtype=F64)
    A = Q @ torch.diag(lam) @ Q.T
    curved, flat = Q[:, :2], Q[:, 2]
    x0 = 1e-6 * G / float(lam[0])
    w = torch.nn.Parameter(curved @ torch.tensor([x0, -x0], dtype=F64))
    opt = SAM([w], torch.optim.SGD, rho=rho, lr=eta, **cfg)
    loss = lambda x: 0.5 * x @ A @ x + G * (flat @ x)
    _assert_stability(factor, *_run(opt, w, loss, lambda x: float(torch.linalg.vector_norm(curved.T @ x)), sam=True))


def test_sam_sgd_edge_reductions():
    """rho = 0 is sgd_edge; momentum = dampening = wd = 0 is sam_edge / unnormalized_sam_edge;
    with momentum the root solves lam (1 + rho lam/||g||) + wd = the base rule's edge."""
    for eta, rho, gn in [(0.1, 0.05, 1.0), (0.01, 0.3, 0.02), (0.5, 1e-9, 3.0)]:
        assert sam_sgd_edge(eta, rho, gn) == pytest.approx(sam_edge(eta, rho, gn), rel=1e-14)
        assert sam_sgd_edge(eta, rho, normalize=False) == pytest.approx(unnormalized_sam_edge(eta, rho), rel=1e-14)
    for cfg in SGD_CONFIGS:
        assert sam_sgd_edge(0.1, 0.0, 2.0, **cfg) == sgd_edge(0.1, **cfg)
        lam = sam_sgd_edge(0.1, 0.05, 0.3, **cfg)
        base = 2 * (1 + cfg["momentum"]) / (0.1 * (1 - (cfg.get("dampening", 0.0) if cfg["momentum"] else 0.0)))
        if cfg.get("nesterov"):
            base = (2 + 2 * cfg["momentum"]) / ((1 + 2 * cfg["momentum"]) * 0.1)
        assert lam * (1 + 0.05 * lam / 0.3) + cfg.get("weight_decay", 0.0) == pytest.approx(base, rel=1e-13)
    t = sam_sgd_edge(torch.tensor([0.1, 0.2], dtype=F64), 0.05, torch.tensor([1.0, 2.0], dtype=F64), momentum=0.9)
    assert isinstance(t, torch.Tensor) and t.shape == (2,)


def test_sam_sgd_edge_limits_and_errors():
    """||g|| = 0 < rho gives 0 (sam_edge's limit); a base edge <= 0 gives <= 0, and -inf when no
    curvature solves the condition; normalized SAM needs the gradient norm."""
    assert sam_sgd_edge(0.1, 0.05, 0.0, momentum=0.9) == 0.0
    assert sam_sgd_edge(0.1, 0.05, 1.0, weight_decay=20.0) == 0.0
    neg = sam_sgd_edge(0.1, 0.05, 1.0, weight_decay=22.0)  # base -2: lam (1 + 0.05 lam) = -2
    assert neg < 0 and neg * (1 + 0.05 * neg) == pytest.approx(-2.0, rel=1e-12)
    assert sam_sgd_edge(0.1, 0.05, 1.0, weight_decay=30.0) == -math.inf  # base -10 < -1/(4 * 0.05)
    with pytest.raises(ValueError, match="grad_norm"):
        sam_sgd_edge(0.1, 0.05)
    with pytest.raises(ValueError, match="^rho must"):
        sam_sgd_edge(0.1, -0.05, 1.0)


# --- Adam, AdamW, RMSprop with a frozen preconditioner --------------------------------------------

ADAPTIVE = [
    ("adam", dict(beta1=0.9, wd=0.0)),
    ("adam", dict(beta1=0.5, wd=50.0)),
    ("adamw", dict(beta1=0.9, wd=20.0)),
    ("adamw", dict(beta1=0.8, wd=60.0)),
    ("rmsprop", dict(beta1=0.0, wd=0.0)),
    ("rmsprop", dict(beta1=0.9, wd=30.0)),
]


def _frozen_adaptive(name: str, w: torch.Tensor, v: torch.Tensor, eta: float, beta1: float, wd: float):
    """The real optimizer with its second moment set to ``v`` and frozen: Adam/AdamW with
    beta2 = 1 - 1e-12 (torch requires beta2 < 1; v then moves by 1e-12 (g^2 - v) a step) and a step
    count of 1e14, so both bias corrections are 1 in double precision; RMSprop with alpha = 1
    (exactly frozen; torch allows it), which has no bias correction."""
    if name == "rmsprop":
        opt = torch.optim.RMSprop([w], lr=eta, alpha=1.0, momentum=beta1, weight_decay=wd)
        opt.state[w].update(step=torch.tensor(0.0), square_avg=v.clone())
        if beta1 > 0:
            opt.state[w]["momentum_buffer"] = torch.zeros_like(w)
        return opt
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    opt = cls([w], lr=eta, betas=(beta1, 1 - 1e-12), weight_decay=wd)
    opt.state[w].update(step=torch.tensor(1e14), exp_avg=torch.zeros_like(w), exp_avg_sq=v.clone())
    return opt


@pytest.mark.parametrize("rotated", [False, True])
@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize(
    "name,cfg", ADAPTIVE, ids=[f"{n}-" + "-".join(f"{k}={v}" for k, v in c.items()) for n, c in ADAPTIVE]
)
def test_adaptive_methods_converge_inside_and_diverge_outside(name, cfg, factor, rotated):
    """Real torch.optim.Adam / AdamW / RMSprop with P = diag(sqrt(v) + eps) frozen, on a quadratic
    with lambda_max(P^-1 (H + wd I)) (coupled decay: Adam, RMSprop) or lambda_max(P^-1 H) (AdamW) at
    factor * edge; the library measures that sharpness (adam_preconditioner, PreconditionedOperator,
    Lanczos) from the optimizer's state, and the distance to the rule's fixed point shrinks inside
    and grows outside. Stated assumption: the preconditioner does not move (set and frozen here)."""
    eta, beta1, wd = 0.01, cfg["beta1"], cfg["wd"]
    if name == "adam":
        edge, shift = adam_edge(eta, beta1), wd
    elif name == "adamw":
        edge, shift = adamw_edge(eta, beta1, wd), 0.0
    else:
        edge, shift = rmsprop_edge(eta, beta1), wd
    rng = np.random.default_rng(3)
    p = torch.tensor(rng.uniform(0.3, 1.0, 3), dtype=F64)  # P's diagonal
    eps = 1e-8
    v = (p - eps) ** 2
    Q = _basis(3, rotated, seed=4)
    S = Q @ torch.diag(factor * edge * torch.tensor(SPREAD, dtype=F64)) @ Q.T  # P^-1/2 (H + shift I) P^-1/2
    A = p.sqrt()[:, None] * S * p.sqrt()[None, :] - shift * torch.eye(3, dtype=F64)
    assert torch.linalg.eigvalsh(A).min() > 0
    # With beta2 < 1 a gradient g moves v by 1e-12 (g^2 - v) a step, and with it the fixed point;
    # at w* = 0 the gradient at the fixed point is 0 and v stays put. RMSprop's alpha = 1 freezes v
    # exactly, so there the minimum can be off the origin (and weight decay moves the fixed point).
    wstar = torch.tensor([0.7, -0.3, 1.1], dtype=F64) if name == "rmsprop" else torch.zeros(3, dtype=F64)
    if name == "adamw":  # w wd + P^-1 A (w - w*) = 0
        fixed = torch.linalg.solve(A + wd * torch.diag(p), A @ wstar)
    else:  # P^-1 (A (w - w*) + wd w) = 0
        fixed = torch.linalg.solve(A + wd * torch.eye(3, dtype=F64), A @ wstar)
    w = torch.nn.Parameter(fixed + torch.tensor([1e-6, -2e-6, 1.5e-6], dtype=F64))
    opt = _frozen_adaptive(name, w, v, eta, beta1, wd)
    loss = lambda x: 0.5 * (x - wstar) @ A @ (x - wstar)

    P = adam_preconditioner(opt, {"w": w})
    assert torch.allclose(P["w"], p, rtol=1e-14)
    op = PreconditionedOperator(HessianOperator(lambda q: loss(q["w"]), {"w": w.detach()}), P, shift=shift)
    measured = sharpness(op, tol=1e-10)
    assert measured.lambda_max == pytest.approx(factor * edge, rel=1e-9)

    _assert_stability(factor, *_run(opt, w, loss, lambda x: float(torch.linalg.vector_norm(x - fixed))))
    if name != "rmsprop":
        assert torch.allclose(opt.state[w]["exp_avg_sq"], v, rtol=1e-9)  # the preconditioner stayed frozen


def test_adaptive_edges_closed_forms_and_reductions():
    """Adam: 38/eta at beta1 = 0.9 (Cohen et al. 2022), heavy ball with dampening beta1; AdamW at wd = 0
    is Adam and loses wd (1 + beta1)/(1 - beta1); RMSprop is heavy ball without dampening."""
    assert adam_edge(0.01, 0.9) == pytest.approx(38 / 0.01, rel=1e-14)
    assert adam_edge(0.01) == adam_edge(0.01, 0.9)
    for b in (0.0, 0.5, 0.9, 0.99):
        assert adam_edge(0.02, b) == pytest.approx(sgd_edge(0.02, b, dampening=b if b else 0.0), rel=1e-14)
        assert adamw_edge(0.02, b, 0.0) == pytest.approx(adam_edge(0.02, b), rel=1e-15)
        assert adamw_edge(0.02, b, 3.0) == pytest.approx(adam_edge(0.02, b) - 3.0 * (1 + b) / (1 - b), rel=1e-13)
        assert rmsprop_edge(0.02, b) == pytest.approx(momentum_edge(0.02, b), rel=1e-15)
    assert rmsprop_edge(0.02) == gd_edge(0.02)
    assert adamw_edge(0.1, 0.9, 20.0) == 0.0 and adamw_edge(0.1, 0.9, 30.0) < 0
    with pytest.raises(ValueError, match="^beta1 must"):
        adam_edge(0.01, 1.0)
    with pytest.raises(ValueError, match="^weight_decay must"):
        adamw_edge(0.01, 0.9, -0.1)
    with pytest.raises(ValueError, match="^momentum must"):
        rmsprop_edge(0.01, 1.0)


# --- PreconditionedOperator and adam_preconditioner -------------------------------------------------


def _nonlinear_loss(X: torch.Tensor):
    return lambda q: (torch.tanh(X @ q["a"]) ** 2).sum() + (q["b"] ** 4).sum() + 0.3 * q["a"].sum() * q["b"].prod()


def test_preconditioned_operator_against_a_dense_eigensolve():
    """The operator's dense matrix is P^-1/2 H P^-1/2; its spectrum is that of P^-1 H (dense float64
    eigen-solves of both); sharpness finds its top; diag as a flat tensor or a dict in any key order."""
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(6, 4, generator=gen, dtype=F64)
    params = {"a": torch.randn(4, generator=gen, dtype=F64), "b": torch.randn(2, 1, generator=gen, dtype=F64)}
    loss = _nonlinear_loss(X)
    flat = torch.cat([params["a"], params["b"].reshape(-1)])
    H = torch.autograd.functional.hessian(lambda x: loss({"a": x[:4], "b": x[4:].reshape(2, 1)}), flat)
    d = torch.exp(torch.randn(6, generator=gen, dtype=F64))
    diag = {"b": d[4:].reshape(2, 1), "a": d[:4]}  # reversed key order on purpose
    for shift in (0.0, 0.7):
        op = PreconditionedOperator(HessianOperator(loss, params), diag, shift=shift)
        M = torch.stack([op(e) for e in torch.eye(6, dtype=F64)], dim=1)
        ref = (H + shift * torch.eye(6, dtype=F64)) / d.sqrt()[:, None] / d.sqrt()[None, :]
        assert torch.allclose(M, ref, rtol=1e-12, atol=1e-12)
        sym = torch.linalg.eigvalsh(ref)
        gen_eigs = np.sort(np.linalg.eigvals(((H + shift * torch.eye(6, dtype=F64)) / d[:, None]).numpy()).real)
        assert np.allclose(sym.numpy(), gen_eigs, rtol=1e-10, atol=1e-10)
        sh = sharpness(op, tol=1e-10)
        assert sh.op_norm == pytest.approx(float(sym.abs().max()), rel=1e-8)
        assert sh.lambda_max == pytest.approx(float(sym.max()), rel=1e-8)
    op_flat = PreconditionedOperator(HessianOperator(loss, params), d)
    v = torch.randn(6, generator=gen, dtype=F64)
    assert torch.allclose(op_flat(v), PreconditionedOperator(HessianOperator(loss, params), diag)(v), rtol=1e-14)


def test_preconditioned_operator_rejects_bad_diagonals():
    params = {"a": torch.zeros(3, dtype=F64)}
    hop = HessianOperator(lambda q: (q["a"] ** 2).sum(), params)
    with pytest.raises(ValueError, match="> 0"):
        PreconditionedOperator(hop, torch.tensor([1.0, 0.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="entries"):
        PreconditionedOperator(hop, torch.ones(4, dtype=F64))
    with pytest.raises(ValueError, match="keys"):
        PreconditionedOperator(hop, {"b": torch.ones(3, dtype=F64)})


def _step(opt, w: torch.Tensor, loss_fn) -> torch.Tensor:
    """One real step (SAM: with the closure at the ascent point); returns the gradient at w."""
    opt.zero_grad()
    loss_fn(w).backward()
    g = w.grad.detach().clone()
    if isinstance(opt, SAM):
        opt.step(lambda: loss_fn(w).backward())
    else:
        opt.step()
    return g


@pytest.mark.parametrize(
    "make",
    [
        lambda w: torch.optim.Adam([w], lr=0.01),
        lambda w: torch.optim.Adam([w], lr=0.01, betas=(0.5, 0.9), weight_decay=0.1, eps=1e-3),
        lambda w: torch.optim.AdamW([w], lr=0.01, weight_decay=0.1, eps=1e-4),
        lambda w: SAM([w], torch.optim.Adam, rho=0.05, lr=0.01),
    ],
    ids=["adam", "adam-wd", "adamw", "sam-over-adam"],
)
def test_adam_preconditioner_is_the_denominator_of_the_next_step(make):
    """After real steps, P read after one more step reproduces that step:
    w+ = (1 - lr wd_decoupled) w - lr / (1 - beta1^t) * exp_avg / P."""
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=F64))
    loss = lambda x: (x**4).sum() + x.prod()
    opt = make(w)
    base = getattr(opt, "base_optimizer", opt)
    for _ in range(3):
        _step(opt, w, loss)
    before = w.detach().clone()
    _step(opt, w, loss)
    P = adam_preconditioner(opt, {"w": w})["w"]
    group, state = base.param_groups[0], base.state[w]
    t = float(state["step"])
    decay = group["lr"] * group["weight_decay"] if isinstance(base, torch.optim.AdamW) else 0.0
    expected = before * (1 - decay) - group["lr"] / (1 - group["betas"][0] ** t) * state["exp_avg"] / P
    assert torch.allclose(w.detach(), expected, rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("momentum,centered", [(0.0, False), (0.9, False), (0.0, True), (0.5, True)])
def test_rmsprop_preconditioner_is_the_denominator_of_the_next_step(momentum, centered):
    """RMSprop (no bias correction): the buffer gains g/P (momentum) or the step is -lr g/P."""
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=F64))
    loss = lambda x: (x**4).sum() + x.prod()
    opt = torch.optim.RMSprop([w], lr=0.01, momentum=momentum, centered=centered, weight_decay=0.05)
    for _ in range(3):
        _step(opt, w, loss)
    before = w.detach().clone()
    buf = opt.state[w]["momentum_buffer"].clone() if momentum else None
    g = _step(opt, w, loss) + 0.05 * before
    P = adam_preconditioner(opt, {"w": w})["w"]
    if momentum:
        assert torch.allclose(opt.state[w]["momentum_buffer"] - momentum * buf, g / P, rtol=1e-13)
    else:
        assert torch.allclose(w.detach(), before - 0.01 * g / P, rtol=1e-14)


def test_adam_preconditioner_errors_name_the_fix():
    w = torch.nn.Parameter(torch.ones(2, dtype=F64))
    loss = lambda x: (x**2).sum()
    with pytest.raises(ValueError, match="take a step first"):
        adam_preconditioner(torch.optim.Adam([w], lr=0.1), {"w": w})
    ams = torch.optim.Adam([w], lr=0.1, amsgrad=True)
    _step(ams, w, loss)
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        adam_preconditioner(ams, {"w": w})
    with pytest.raises(ValueError, match="Adam, AdamW or RMSprop"):
        adam_preconditioner(torch.optim.SGD([w], lr=0.1), {"w": w})
    opt = torch.optim.Adam([w], lr=0.1)
    _step(opt, w, loss)
    with pytest.raises(ValueError, match="not one of the optimizer's parameters"):
        adam_preconditioner(opt, {"w": w, "other": torch.nn.Parameter(torch.ones(1))})
