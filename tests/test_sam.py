"""SAM steps against hand-computed steps with plain torch.autograd on the module itself.

The reference gradient loads the parameters into a copy of the nn.Module, evaluates
``loss(model(x), y)`` and calls ``torch.autograd.grad``: no ``torch.func``, no
``samedge.losses.module_loss``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import MODEL_NAMES, get_problem
from samedge.losses import module_loss
from samedge.sam import SAM, ascent_point, sam_step

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")


def grad_by_hand(problem, params):
    """(loss, grad dict) of the problem's loss at ``params`` by module.backward-style autograd."""
    model = copy.deepcopy(problem.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])
    loss = problem.loss(model(problem.inputs), problem.targets)
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(loss, [p for _, p in model.named_parameters()])
    return loss.detach(), dict(zip(names, grads))


def global_norm(tree):
    return torch.sqrt(sum((t**2).sum() for t in tree.values()))


def hand_sam_step(problem, params, eta, rho, normalize=True):
    """w~ = w + rho g/||g|| (or w + rho g), then w - eta grad L(w~)."""
    loss, g = grad_by_hand(problem, params)
    gn = global_norm(g)
    scale = rho / gn if normalize else rho
    w_tilde = {k: params[k] + scale * g[k] for k in params}
    _, g_tilde = grad_by_hand(problem, w_tilde)
    return {k: params[k] - eta * g_tilde[k] for k in params}, loss, g, gn, w_tilde, g_tilde


def assert_trees_close(a, b, rtol=1e-10, atol=1e-12):
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=rtol, atol=atol), k


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_sam_step_matches_hand_computed_step(name, normalize):
    """sam_step's new parameters and every logged field equal the hand-computed SAM step."""
    problem = get_problem(name)
    eta, rho = 0.05, 0.1
    new, loss, g, gn, w_tilde, g_tilde = hand_sam_step(problem, problem.params, eta, rho, normalize)
    step = sam_step(problem.loss_fn, problem.params, eta, rho, normalize=normalize)
    assert_trees_close(step.params, new)
    assert torch.allclose(step.loss, loss, rtol=1e-12)
    assert torch.allclose(step.grad_norm, gn, rtol=1e-12)
    assert_trees_close(step.grad, g)
    assert_trees_close(step.ascent_params, w_tilde)
    assert_trees_close(step.sam_grad, g_tilde)
    # The ascent really moved by rho (normalized) resp. rho ||g|| (unnormalized).
    shift = global_norm({k: w_tilde[k] - problem.params[k] for k in w_tilde})
    assert torch.allclose(shift, torch.tensor(rho if normalize else rho * gn.item(), dtype=F64), rtol=1e-12)
    # And SAM differs from GD here, so the comparison above is not vacuous.
    gd = {k: problem.params[k] - eta * g[k] for k in g}
    assert max((step.params[k] - gd[k]).abs().max() for k in gd) > 1e-6


def test_sam_step_does_not_modify_inputs():
    """The input parameter dict is left unchanged (sam_step is a pure update)."""
    problem = get_problem("mlp")
    before = {k: v.clone() for k, v in problem.params.items()}
    sam_step(problem.loss_fn, problem.params, 0.1, 0.1)
    assert_trees_close(problem.params, before, rtol=0, atol=0)


@pytest.mark.parametrize("normalize", [True, False])
def test_rho_zero_is_a_gd_step(normalize):
    """rho = 0: w - eta grad L(w), with w~ = w and grad L(w~) = g."""
    problem = get_problem("cnn")
    eta = 0.01
    _, g = grad_by_hand(problem, problem.params)
    step = sam_step(problem.loss_fn, problem.params, eta, 0.0, normalize=normalize)
    assert_trees_close(step.params, {k: problem.params[k] - eta * g[k] for k in g})
    assert_trees_close(step.ascent_params, problem.params, rtol=0, atol=0)
    assert_trees_close(step.sam_grad, g)


@pytest.mark.parametrize("normalize", [True, False])
def test_zero_gradient_gives_no_nan(normalize):
    """At a stationary point (g = 0) SAM does not move and produces no NaN."""
    A = torch.tensor([[2.0, 0.5], [0.5, -1.0]], dtype=F64)
    fn = lambda p: 0.5 * p["w"] @ A @ p["w"] + (p["b"] ** 2).sum()  # noqa: E731
    params = {"w": torch.zeros(2, dtype=F64), "b": torch.zeros(3, dtype=F64)}
    step = sam_step(fn, params, eta=0.1, rho=0.5, normalize=normalize)
    for tree in (step.params, step.ascent_params, step.sam_grad, step.grad):
        for t in tree.values():
            assert torch.isfinite(t).all() and torch.equal(t, torch.zeros_like(t))
    assert step.grad_norm == 0
    w_tilde = ascent_point(params, step.grad, 0.5, normalize=normalize)
    assert all(torch.equal(w_tilde[k], params[k]) for k in params)


def test_ascent_point_by_hand():
    """ascent_point is w + rho g/||g|| (global norm over all tensors) or w + rho g."""
    w = {"a": torch.tensor([1.0, 2.0], dtype=F64), "b": torch.tensor([[0.5]], dtype=F64)}
    g = {"a": torch.tensor([3.0, 0.0], dtype=F64), "b": torch.tensor([[4.0]], dtype=F64)}  # ||g|| = 5
    n = ascent_point(w, g, 0.5)
    assert torch.allclose(n["a"], torch.tensor([1.3, 2.0], dtype=F64)) and torch.allclose(
        n["b"], torch.tensor([[0.9]], dtype=F64)
    )
    u = ascent_point(w, g, 0.5, normalize=False)
    assert torch.allclose(u["a"], torch.tensor([2.5, 2.0], dtype=F64)) and torch.allclose(
        u["b"], torch.tensor([[2.5]], dtype=F64)
    )


@pytest.mark.parametrize(
    "eta, rho, name",
    [(0.0, 0.1, "eta"), (-1.0, 0.1, "eta"), (float("nan"), 0.1, "eta"), (0.1, -0.1, "rho"), (0.1, float("inf"), "rho")],
)
def test_invalid_hyperparameters(eta, rho, name):
    """sam_step and the SAM optimizer reject bad eta/lr and rho with a ValueError naming them."""
    problem = get_problem("mlp")
    with pytest.raises(ValueError, match=rf"^{name} must"):
        sam_step(problem.loss_fn, problem.params, eta, rho)
    with pytest.raises(ValueError, match=rf"^{'lr' if name == 'eta' else name} must"):
        SAM(copy.deepcopy(problem.model).parameters(), torch.optim.SGD, lr=eta, rho=rho)


def _optimizer_run(problem, make_groups, steps, rho, normalize=True, use_closure=False):
    """SAM(SGD) on a copy of the module, davda54-style (first_step/second_step, or a closure
    called once after the caller's own backward); returns (final params dict, losses at w)."""
    model = copy.deepcopy(problem.model)
    opt = SAM(make_groups(model), torch.optim.SGD, rho=rho, normalize=normalize, lr=0.05)
    losses = []
    for _ in range(steps):
        loss = problem.loss(model(problem.inputs), problem.targets)
        loss.backward()
        losses.append(float(loss.detach()))
        if use_closure:

            def closure():  # the README's closure, verbatim (it binds the loop variables)
                loss = problem.loss(model(problem.inputs), problem.targets)
                loss.backward()
                return loss

            opt.step(closure)
            opt.zero_grad()
        else:
            opt.first_step(zero_grad=True)
            problem.loss(model(problem.inputs), problem.targets).backward()
            opt.second_step(zero_grad=True)
    return {k: v.detach().clone() for k, v in model.named_parameters()}, losses


def _sam_step_run(problem, steps, eta, rho, normalize=True):
    params, losses = dict(problem.params), []
    for _ in range(steps):
        s = sam_step(problem.loss_fn, params, eta, rho, normalize=normalize)
        params = s.params
        losses.append(float(s.loss))
    return params, losses


@pytest.mark.parametrize("use_closure", [False, True])
@pytest.mark.parametrize("rho, normalize", [(0.1, True), (0.1, False), (0.0, True)])
@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_optimizer_matches_sam_step(name, rho, normalize, use_closure):
    """Three SAM(SGD) steps on the nn.Module (first/second step, or step(closure)) give the same
    parameters and losses as three sam_step updates."""
    problem = get_problem(name)
    got, got_losses = _optimizer_run(problem, lambda m: m.parameters(), 3, rho, normalize, use_closure)
    want, want_losses = _sam_step_run(problem, 3, 0.05, rho, normalize)
    assert_trees_close(got, want)
    assert got_losses == pytest.approx(want_losses, rel=1e-12)


def test_optimizer_reproduces_sam_step_in_float32_over_20_steps():
    """samedge.SAM(torch.optim.SGD) and sam_step agree to float32 round-off over 20 steps of an
    MLP on fixed data (the paper's SAM, normalized and unnormalized)."""
    from samedge.losses import parameters_of, squared_loss
    from samedge.models import MLP

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(64, 20, generator=gen)
    y = torch.nn.functional.one_hot(torch.randint(0, 4, (64,), generator=gen), 4).float()
    for normalize in (True, False):
        torch.manual_seed(0)
        model = MLP(20, 32, 2, 4)
        params = parameters_of(model)
        fn = module_loss(model, squared_loss, x, y)
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, normalize=normalize, lr=0.5)
        for _ in range(20):
            squared_loss(model(x), y).backward()
            opt.first_step(zero_grad=True)
            squared_loss(model(x), y).backward()
            opt.second_step(zero_grad=True)
            params = sam_step(fn, params, 0.5, 0.05, normalize).params
        moved = max(float((params[k] - parameters_of(MLP(20, 32, 2, 4))[k]).abs().max()) for k in params)
        for k, p in model.named_parameters():
            assert torch.allclose(p.detach(), params[k], rtol=1e-5, atol=1e-6), (normalize, k)
        assert moved > 1e-3  # the weights did move: the comparison is not of two initializations


def test_davda54_readme_loops_run_unchanged():
    """The two training loops of davda54/sam's README, as written there (SGD with momentum 0.9),
    equal a hand-computed SAM + heavy-ball update: w~ = w + rho g/||g||, buf = 0.9 buf + grad L(w~),
    w -= lr buf (torch's SGD momentum, buf = grad L(w~) at the first step)."""
    from samedge import SAM as ImportedSAM

    gen = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(16, 6, generator=gen, dtype=F64), torch.randn(16, 2, generator=gen, dtype=F64)) for _ in range(4)
    ]
    loss_function = torch.nn.MSELoss()

    def YourModel():
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()

    def readme_first_second_step():
        model = YourModel()
        base_optimizer = torch.optim.SGD  # define an optimizer for the "sharpness-aware" update
        optimizer = ImportedSAM(model.parameters(), base_optimizer, lr=0.1, momentum=0.9)
        for input, output in data:
            # first forward-backward pass
            loss = loss_function(output, model(input))  # use this loss for any training statistics
            loss.backward()
            optimizer.first_step(zero_grad=True)
            # second forward-backward pass
            loss_function(output, model(input)).backward()  # make sure to do a full forward pass
            optimizer.second_step(zero_grad=True)
        return model

    def readme_closure():
        model = YourModel()
        base_optimizer = torch.optim.SGD  # define an optimizer for the "sharpness-aware" update
        optimizer = ImportedSAM(model.parameters(), base_optimizer, lr=0.1, momentum=0.9)
        for input, output in data:

            def closure():  # the README's closure, verbatim (it binds the loop variables)
                loss = loss_function(output, model(input))  # noqa: B023
                loss.backward()
                return loss

            loss = loss_function(output, model(input))
            loss.backward()
            optimizer.step(closure)
            optimizer.zero_grad()
        return model

    model = YourModel()
    names = [n for n, _ in model.named_parameters()]
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    buf = None

    def grads_at(params, x, y):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.copy_(params[n])
        # note the README's argument order loss_function(output, model(input)): MSE is symmetric
        return dict(zip(names, torch.autograd.grad(loss_function(m(x), y), list(m.parameters()))))

    for x, y in data:
        g = grads_at(w, x, y)
        gn = torch.sqrt(sum((t**2).sum() for t in g.values()))
        g_tilde = grads_at({n: w[n] + 0.05 * g[n] / gn for n in names}, x, y)
        buf = g_tilde if buf is None else {n: 0.9 * buf[n] + g_tilde[n] for n in names}
        w = {n: w[n] - 0.1 * buf[n] for n in names}
    for make in (readme_first_second_step, readme_closure):
        got = {n: p.detach() for n, p in make().named_parameters()}
        assert_trees_close(got, w)


def _two_groups(model, **second):
    params = list(model.named_parameters())
    half = len(params) // 2
    return [{"params": [p for _, p in params[:half]]}, {"params": [p for _, p in params[half:]], **second}]


def test_optimizer_two_groups_use_the_global_gradient_norm():
    """With two param groups (same lr, rho) the result equals sam_step: the ascent is
    normalized by ||g|| over all parameters, not per group (which gives a different step)."""
    problem = get_problem("mlp")
    got, _ = _optimizer_run(problem, _two_groups, 3, 0.1)
    want, _ = _sam_step_run(problem, 3, 0.05, 0.1)
    assert_trees_close(got, want)
    # Per-group normalization would be distinguishable at this tolerance.
    names = list(problem.params)
    half = len(names) // 2
    _, g = grad_by_hand(problem, problem.params)
    per_group = {}
    for group in (names[:half], names[half:]):
        gn = global_norm({k: g[k] for k in group})
        per_group.update({k: problem.params[k] + 0.1 * g[k] / gn for k in group})
    _, g_tilde = grad_by_hand(problem, per_group)
    one = _optimizer_run(problem, _two_groups, 1, 0.1)[0]
    assert max((one[k] - (problem.params[k] - 0.05 * g_tilde[k])).abs().max() for k in names) > 1e-6


def test_optimizer_two_groups_with_different_learning_rates():
    """Groups with lr 0.05 and 0.2: w~ = w + rho g/||g||_global for all parameters, then each
    group steps with its own lr along grad L(w~) (hand-computed, two steps)."""
    problem = get_problem("transformer")
    names = list(problem.params)
    second = set(names[len(names) // 2 :])
    got, _ = _optimizer_run(problem, lambda m: _two_groups(m, lr=0.2), 2, 0.1)
    params = dict(problem.params)
    for _ in range(2):
        _, g = grad_by_hand(problem, params)
        gn = global_norm(g)
        _, g_tilde = grad_by_hand(problem, {k: params[k] + 0.1 * g[k] / gn for k in params})
        params = {k: params[k] - (0.2 if k in second else 0.05) * g_tilde[k] for k in params}
    assert_trees_close(got, params)


def test_optimizer_adaptive_is_asam():
    """adaptive=True: w~ = w + rho w^2 g / || |w| g ||, then the SGD step with grad L(w~) (hand-computed)."""
    problem = get_problem("mlp")
    model = copy.deepcopy(problem.model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, adaptive=True, lr=0.05)
    problem.loss(model(problem.inputs), problem.targets).backward()
    opt.first_step(zero_grad=True)
    problem.loss(model(problem.inputs), problem.targets).backward()
    opt.second_step(zero_grad=True)
    w = problem.params
    _, g = grad_by_hand(problem, w)
    gn = global_norm({k: w[k].abs() * g[k] for k in w})
    _, g_tilde = grad_by_hand(problem, {k: w[k] + 0.5 * w[k] ** 2 * g[k] / gn for k in w})
    assert_trees_close({k: p.detach() for k, p in model.named_parameters()}, {k: w[k] - 0.05 * g_tilde[k] for k in w})


def test_optimizer_zero_gradient_and_missing_closure():
    """At a stationary point the optimizer takes no ascent and leaves the weights unchanged without
    NaN; step() without a closure, or before any backward, is a ValueError."""
    w = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    opt = SAM([w], torch.optim.SGD, lr=0.1, rho=0.5)
    with pytest.raises(ValueError, match="backward"):
        opt.first_step()

    def closure():
        loss = (w**2).sum()
        loss.backward()
        return loss

    closure()
    opt.step(closure)
    assert torch.equal(w.detach(), torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="closure"):
        opt.step()


def test_optimizer_state_dict_round_trip():
    """load_state_dict keeps the base optimizer on the shared param groups (momentum buffers too)."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=F64))
    opt = SAM([w], torch.optim.SGD, lr=0.1, rho=0.05, momentum=0.9)
    (w**2).sum().backward()
    opt.step(lambda: (w**2).sum().backward())
    state = copy.deepcopy(opt.state_dict())
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = SAM([w2], torch.optim.SGD, lr=0.1, rho=0.05, momentum=0.9)
    opt2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = 0.01
    assert opt2.base_optimizer.param_groups[0]["lr"] == 0.01
    assert torch.equal(opt2.base_optimizer.state[w2]["momentum_buffer"], opt.base_optimizer.state[w]["momentum_buffer"])


def test_sam_step_reproduces_module_loss_gradient():
    """Sanity for the closures used above: module_loss equals loss(model(x), y) by hand."""
    problem = get_problem("cnn")
    fn = module_loss(problem.model, problem.loss, problem.inputs, problem.targets)
    loss, _ = grad_by_hand(problem, problem.params)
    assert torch.allclose(fn(problem.params), loss, rtol=1e-14)


def test_sam_step_on_a_quadratic_with_an_unused_parameter():
    """On L = 0.5 w^T A w + b^T w (closed-form gradient A w + b), sam_step equals the two-gradient
    step by hand; a parameter the loss does not use gets a zero gradient and stays put."""
    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=F64)
    b = torch.tensor([0.5, -1.0], dtype=F64)
    fn = lambda p: 0.5 * p["w"] @ A @ p["w"] + b @ p["w"]  # noqa: E731
    w = torch.tensor([1.0, -2.0], dtype=F64)
    params = {"w": w, "unused": torch.ones(3, dtype=F64)}
    eta, rho = 0.1, 0.3
    g = A @ w + b
    w_tilde = w + rho * g / torch.linalg.vector_norm(g)
    step = sam_step(fn, params, eta, rho)
    assert torch.allclose(step.params["w"], w - eta * (A @ w_tilde + b), rtol=1e-14, atol=0)
    assert torch.allclose(step.grad_norm, torch.linalg.vector_norm(g), rtol=1e-14)
    assert torch.equal(step.grad["unused"], torch.zeros(3, dtype=F64))
    assert torch.equal(step.params["unused"], params["unused"])
