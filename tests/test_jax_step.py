"""benchmarks/jax_step.py: without jax it says how to get it; with jax, the authors' update on our
MLP equals their rule written out by hand in float64 (plain torch autograd, w + rho g/(||g|| + 1e-5))."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from samedge.losses import parameters_of
from samedge.models import MLP

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import jax_step  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def test_without_jax_the_message_says_how_to_install_it(monkeypatch):
    """jax_missing() is None with jax, else a message naming the install command."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jax" else real(name, *a))
    msg = jax_step.jax_missing()
    assert msg is not None and "pip install --target" in msg and "PYTHONPATH" in msg


@pytest.mark.skipif(jax_step.jax_missing() is not None, reason="jax is not installed")
def test_authors_update_matches_hand_step_in_float64():
    """One jit-compiled step of the authors' rule on our MLP's weights equals the float64 hand step."""
    torch.manual_seed(0)
    model = MLP(12, 16, 2, 3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 12, generator=gen)
    y = F.one_hot(torch.randint(0, 3, (20,), generator=gen), 3).float()
    params, eta, rho = parameters_of(model), 0.5, 0.1
    _, _, updated = jax_step.authors_step(params, x, y, eta, rho)
    got = updated()

    m = copy.deepcopy(model).double()

    def grad_at(p):
        with torch.no_grad():
            for n, t in m.named_parameters():
                t.copy_(p[n])
        loss = ((m(x.double()) - y.double()) ** 2).mean()
        return dict(zip([n for n, _ in m.named_parameters()], torch.autograd.grad(loss, list(m.parameters()))))

    w = {k: v.double() for k, v in params.items()}
    g = grad_at(w)
    gn = torch.sqrt(sum((t**2).sum() for t in g.values()))
    g2 = grad_at({k: w[k] + rho * g[k] / (gn + jax_step.EPSILON) for k in w})
    for k in w:
        step, want = got[k].double() - w[k], -eta * g2[k]
        assert got[k].shape == w[k].shape
        assert float((step - want).abs().max() / want.abs().max()) < 1e-4, k
