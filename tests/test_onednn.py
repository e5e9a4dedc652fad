"""oneDNN linear layers against float64 references: F.linear and plain autograd in float64 on
the same numbers, and a SAM step written out by hand (two gradients, float64) on a small MLP."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from samedge import onednn
from samedge.kernels import KERNELS, check_kernels, kernel_mode
from samedge.losses import module_loss, parameters_of, squared_loss
from samedge.models import MLP
from samedge.sam import sam_step

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(not onednn.available(), reason="this PyTorch build has no oneDNN linear layers"),
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("shape, bias", [((9, 7), True), ((2, 5, 7), True), ((9, 7), False), ((7,), True)])
def test_linear_and_its_gradients_match_float64(shape, bias):
    """Forward and d/dx, d/dW, d/db of onednn.linear equal float64 F.linear's to float32 round-off."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    w = torch.randn(4, 7, generator=gen)
    b = torch.randn(4, generator=gen) if bias else None
    dy = torch.randn(*shape[:-1], 4, generator=gen)
    leaves32 = [t.clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    leaves64 = [t.double().requires_grad_() for t in leaves32]
    y32 = onednn.linear(*leaves32) if bias else onednn.linear(*leaves32, None)
    y64 = F.linear(*leaves64)
    assert y32.shape == y64.shape
    assert _rel(y32, y64) < 1e-5
    for g32, g64 in zip(torch.autograd.grad(y32, leaves32, dy), torch.autograd.grad(y64, leaves64, dy.double())):
        assert g32.shape == g64.shape and _rel(g32, g64) < 1e-5


@pytest.fixture
def route_all(monkeypatch):
    """Route even tiny linear calls to oneDNN, so that tiny models exercise it."""
    monkeypatch.setattr(onednn, "MIN_MACS", 0)


def test_linear_mode_routes_large_calls_only():
    """With the default threshold, a layer of MIN_MACS multiply-adds goes to oneDNN, a smaller one not."""
    w = torch.randn(64, 256, requires_grad=True)
    rows = -(-onednn.MIN_MACS // (64 * 256))
    with onednn.linear_mode():
        big, small = F.linear(torch.randn(rows, 256), w), F.linear(torch.randn(rows - 1, 256), w)
    assert "_Linear" in type(big.grad_fn).__name__
    assert "_Linear" not in type(small.grad_fn).__name__


@pytest.mark.usefixtures("route_all")
def test_linear_mode_routes_float32_only():
    """Under linear_mode, float32 CPU F.linear goes to oneDNN; float64 runs unchanged (bit for bit,
    with double backward still available for Hessian-vector products)."""
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(6, 5, generator=gen), torch.randn(3, 5, generator=gen)
    b = torch.randn(3, generator=gen)
    with onednn.linear_mode():
        y = F.linear(x, w.requires_grad_())
        yk = F.linear(input=x, weight=w, bias=b)  # keywords too
    assert "_Linear" in type(y.grad_fn).__name__ and "_Linear" in type(yk.grad_fn).__name__
    assert _rel(yk, x.double() @ w.double().T + b.double()) < 1e-6
    w64 = w.detach().double().requires_grad_()
    with onednn.linear_mode():
        y64 = F.linear(x.double(), w64)
        (g,) = torch.autograd.grad((y64**2).sum(), w64, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), w64)
    assert torch.equal(y64, F.linear(x.double(), w64))
    # L = ||x W^T||^2: dL/dW = 2 W x^T x, so d(sum dL/dW)/dW_ik = 2 sum_j (x^T x)_kj
    assert torch.allclose(h, (2 * x.double().T @ x.double()).sum(1).expand(3, 5))


def _mlp_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = MLP(12, 16, 2, 3)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(20, 12, generator=gen)
    y = F.one_hot(torch.randint(0, 3, (20,), generator=gen), 3).float()
    return model, parameters_of(model), x, y


def _hand_sam_step_float64(model, params, x, y, eta, rho):
    """w~ = w + rho g/||g||, then w - eta grad L(w~), by plain autograd on a float64 copy."""
    m = copy.deepcopy(model).double()
    names = [n for n, _ in m.named_parameters()]

    def grad_at(p):
        with torch.no_grad():
            for n, t in m.named_parameters():
                t.copy_(p[n])
        loss = ((m(x.double()) - y.double()) ** 2).mean()
        return dict(zip(names, torch.autograd.grad(loss, list(m.parameters()))))

    w = {k: v.double() for k, v in params.items()}
    g = grad_at(w)
    gn = torch.sqrt(sum((t**2).sum() for t in g.values()))
    g2 = grad_at({k: w[k] + rho * g[k] / gn for k in w})
    return {k: w[k] - eta * g2[k] for k in w}


@pytest.mark.usefixtures("route_all")
def test_sam_step_through_onednn_matches_hand_step_in_float64(monkeypatch):
    """A float32 SAM step through oneDNN equals the hand-written float64 step to float32 round-off,
    as does the default-kernel step, and two oneDNN steps are bit for bit the same."""
    model, params, x, y = _mlp_problem()
    eta, rho = 0.5, 0.1
    loss_fn = module_loss(model, squared_loss, x, y)
    want = _hand_sam_step_float64(model, params, x, y, eta, rho)
    calls, real = [], onednn._op
    monkeypatch.setattr(onednn, "_op", lambda: calls.append(1) or real())
    fast = sam_step(loss_fn, params, eta, rho, kernels="onednn")
    assert len(calls) == 2 * (3 + 3 + 2)  # two gradients: 3 forwards, 3 weight and 2 input products
    monkeypatch.setattr(onednn, "_op", real)
    plain = sam_step(loss_fn, params, eta, rho, kernels="default")
    for k in want:
        step = want[k] - params[k].double()
        assert _rel(fast.params[k] - params[k], step) < 1e-4, k  # the update itself, not w
        assert _rel(plain.params[k] - params[k], step) < 1e-4, k
    again = sam_step(loss_fn, params, eta, rho, kernels="onednn")
    assert all(torch.equal(fast.params[k], again.params[k]) for k in params)


@pytest.mark.usefixtures("route_all")
def test_kernels_default_makes_no_onednn_call_and_onednn_does(monkeypatch):
    """The kernels switch is explicit: kernels="default" (the default) runs PyTorch's kernels only,
    on any CPU and any model size; kernels="onednn" routes the linear layers to oneDNN."""
    from samedge.hessian import HessianOperator

    model, params, x, y = _mlp_problem()
    loss_fn = module_loss(model, squared_loss, x, y)
    calls, real = [], onednn._op
    monkeypatch.setattr(onednn, "_op", lambda: calls.append(1) or real())
    sam_step(loss_fn, params, 0.1, 0.1)
    sam_step(loss_fn, params, 0.1, 0.1, kernels="default")
    with kernel_mode("default", twice=True):
        model(x)
    op = HessianOperator(loss_fn, params)
    op(torch.randn(sum(p.numel() for p in params.values())))
    assert op.kernels == "default" and not calls
    sam_step(loss_fn, params, 0.1, 0.1, kernels="onednn")
    assert calls
    calls.clear()
    op = HessianOperator(loss_fn, params, kernels="onednn")
    op(torch.randn(sum(p.numel() for p in params.values())))
    assert op.kernels == "onednn" and calls
    # forward-mode AD does not go through oneDNN: forward-over-reverse records the default kernels
    assert HessianOperator(loss_fn, params, "forward_over_reverse", kernels="onednn").kernels == "default"
    calls.clear()
    with kernel_mode("onednn"):
        model(x)
    assert calls


def test_check_kernels_names_the_choices():
    """check_kernels accepts the names of KERNELS and refuses anything else, listing them; so do
    sam_step and HessianOperator."""
    from samedge.hessian import HessianOperator

    assert KERNELS == ("default", "onednn")
    for k in KERNELS:
        assert check_kernels(k) == k
    for bad in ("x", None, True, "oneDNN"):
        with pytest.raises(ValueError, match=r"kernels must be one of \['default', 'onednn'\]"):
            check_kernels(bad)
    model, params, x, y = _mlp_problem()
    loss_fn = module_loss(model, squared_loss, x, y)
    with pytest.raises(ValueError, match="'default', 'onednn'"):
        sam_step(loss_fn, params, 0.1, 0.1, kernels="x")
    with pytest.raises(ValueError, match="'default', 'onednn'"):
        HessianOperator(loss_fn, params, kernels="x")


def test_unavailable_onednn_is_a_clear_error(monkeypatch):
    """Asking for oneDNN where the build has none fails naming the way out; the default kernels run."""
    monkeypatch.setattr(onednn, "available", lambda: False)
    model, params, x, y = _mlp_problem()
    loss_fn = module_loss(model, squared_loss, x, y)
    with pytest.raises(RuntimeError, match="kernels='default'"):
        sam_step(loss_fn, params, 0.1, 0.1, kernels="onednn")
    sam_step(loss_fn, params, 0.1, 0.1)  # the default kernels


@pytest.mark.parametrize("shape, bias", [((9, 7), True), ((2, 5, 7), True), ((9, 7), False)])
def test_linear_twice_second_and_third_derivatives_match_float64(shape, bias):
    """linear_twice: the value, the gradient of a nonlinear scalar of it, a Hessian-vector
    product (double backward) and a third derivative, all against float64 F.linear."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=gen)
    w = torch.randn(4, 7, generator=gen)
    b = torch.randn(4, generator=gen) if bias else None
    vs = [torch.randn_like(t) for t in (x, w) + ((b,) if bias else ())]

    def derivatives(lin, leaves):
        y = lin(*leaves) if bias else lin(*leaves, None)
        loss = torch.tanh(y).pow(2).sum()
        g = torch.autograd.grad(loss, leaves, create_graph=True)
        gv = sum((gi * vi.to(gi.dtype)).sum() for gi, vi in zip(g, vs))
        hv = torch.autograd.grad(gv, leaves, create_graph=True)
        third = torch.autograd.grad(sum((h * h).sum() for h in hv), leaves)
        return [y, *g, *hv, *third]

    leaves32 = [t.clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    leaves64 = [t.double().requires_grad_() for t in leaves32]
    for a, r in zip(derivatives(onednn.linear_twice, leaves32), derivatives(F.linear, leaves64)):
        assert a.shape == r.shape and _rel(a, r) < 1e-4


def test_hessian_operator_runs_linear_layers_on_onednn_and_matches_float64(monkeypatch):
    """HessianOperator(kernels="onednn") on an MLP: its HVPs go through oneDNN (counted) and equal the
    float64 HVP of the same loss to float32 round-off; kernels="default" makes no oneDNN call."""
    from samedge.hessian import HessianOperator

    torch.manual_seed(0)
    model = MLP(50, 64, 2, 10)
    x, y = torch.randn(2000, 50), torch.eye(10)[torch.randint(0, 10, (2000,))]
    params = parameters_of(model)
    calls = []
    real = onednn._mm_t
    monkeypatch.setattr(onednn, "_mm_t", lambda a, b: calls.append(1) or real(a, b))
    v = torch.randn(sum(p.numel() for p in params.values()))
    hv = HessianOperator(module_loss(model, squared_loss, x, y), params, kernels="onednn")(v)
    routed = len(calls)
    model64 = copy.deepcopy(model).double()
    ref = HessianOperator(module_loss(model64, squared_loss, x.double(), y.double()), parameters_of(model64))(
        v.double()
    )
    assert routed > 0 and _rel(hv, ref) < 1e-4
    calls.clear()
    HessianOperator(module_loss(model, squared_loss, x, y), params, kernels="default")(v)
    assert not calls


def _layout(t: torch.Tensor) -> str:
    return "plain" if t.is_contiguous() else "transposed" if t.t().is_contiguous() else "other"


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("transposed", [None, False, True])
def test_product_is_a_at_b_in_the_layout_asked(ta, tb, transposed):
    """_product(a, b) equals float64 a @ b for every layout of a and b; asked for a layout it gives
    it, and left to choose it takes the one that needs no copy of either operand."""
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(7, 5, generator=gen).t() if ta else torch.randn(5, 7, generator=gen)
    b = torch.randn(6, 7, generator=gen).t() if tb else torch.randn(7, 6, generator=gen)
    out = onednn._product(a, b, transposed)
    assert out.shape == (5, 6) and _rel(out, a.double() @ b.double()) < 1e-6
    if transposed is not None:
        assert _layout(out) == ("transposed" if transposed else "plain")
    elif not ta:
        assert _layout(out) == "plain"  # a is contiguous: a first
    elif tb:
        assert _layout(out) == "transposed"  # b^T is contiguous: b^T first


@pytest.mark.parametrize("twice", [False, True])
def test_routed_layers_keep_the_feature_major_layout_forward_and_back(twice):
    """Under linear_mode a 2-D layer's output is feature-major (a transposed view), ReLU keeps it,
    the next layer is routed at any size, and the gradient of a feature-major activation comes
    back feature-major (a mix of layouts would slow elementwise kernels several times)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 9, generator=gen)
    w1 = torch.randn(12_000, 9, generator=gen).mul_(0.1).requires_grad_()  # >= MIN_MACS
    w2 = torch.randn(3, w1.shape[0], generator=gen).mul_(0.01).requires_grad_()  # small: routed as fm
    with onednn.linear_mode(twice=twice):
        h = F.relu(F.linear(x, w1))
        y = F.linear(h, w2)
    assert x.numel() * w1.shape[0] >= onednn.MIN_MACS
    assert _layout(h) == "transposed" and _layout(y) == "transposed"
    fns = type(y.grad_fn).__name__ + type(y.grad_fn.next_functions[0][0]).__name__  # twice: a view of a _Product
    assert ("_Product" if twice else "_Linear") in fns
    (gh,) = torch.autograd.grad((y**2).sum(), h, create_graph=twice)
    assert _layout(gh) == "transposed"
    want = 2 * (h.detach().double() @ w2.detach().double().T) @ w2.detach().double()
    assert _rel(gh, want) < 1e-5


def test_relu_under_twice_mode_has_exact_second_derivatives():
    """linear_mode(twice=True) runs ReLU as _Relu (whose double backward builds no zero gradient
    for the activation): the HVP through it equals float64 autograd's."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(30, 8, generator=gen)
    w = torch.randn(5, 8, generator=gen).requires_grad_()
    v = torch.randn(5, 8, generator=gen)

    def hvp(w, relu):
        g = torch.autograd.grad((relu(x.to(w.dtype) @ w.T) ** 3).sum(), w, create_graph=True)[0]
        return torch.autograd.grad((g * v.to(w.dtype)).sum(), w)[0]

    with onednn.linear_mode(twice=True):
        assert type(F.relu(x @ w.T).grad_fn).__name__.startswith("_Relu")
        assert type(torch.relu(x @ w.T).grad_fn).__name__.startswith("_Relu")
        got = hvp(w, F.relu)
    ref = hvp(w.detach().double().requires_grad_(), F.relu)
    assert _rel(got, ref) < 1e-5
