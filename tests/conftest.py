"""Shared fixtures: three tiny float64 models on fixed data, with dense reference Hessians.

The reference Hessian is computed by ``torch.autograd.functional.hessian`` on a flat vector
that this file splits into the parameter dict itself (not through ``samedge.vectors``), so it
does not share code with the operators under test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

import pytest
import torch
from torch import nn

from samedge.losses import masked_cross_entropy, module_loss, parameters_of, squared_loss
from samedge.models import CNN, MLP, Transformer

MODEL_NAMES = ("mlp", "cnn", "transformer")


def split_flat(x: torch.Tensor, like: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Split a flat vector into tensors shaped like ``like`` (independent of samedge.vectors)."""
    sizes = [t.numel() for t in like.values()]
    return {k: c.reshape(t.shape) for (k, t), c in zip(like.items(), torch.split(x, sizes))}


def cat_flat(tree: Dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tree.values()])


def reference_hessian(loss_fn: Callable, params: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Dense Hessian of ``loss_fn`` at ``params`` by torch.autograd.functional.hessian."""
    flat = cat_flat({k: v.detach() for k, v in params.items()})
    H = torch.autograd.functional.hessian(lambda x: loss_fn(split_flat(x, params)), flat, vectorize=True)
    return 0.5 * (H + H.T)  # exact symmetry; the asymmetry is round-off only


@dataclass
class Problem:
    name: str
    model: nn.Module
    loss: Callable  # (outputs, targets) -> scalar
    inputs: torch.Tensor
    targets: torch.Tensor
    params: Dict[str, torch.Tensor]
    loss_fn: Callable  # params -> loss on the full (fixed) data
    hessian: torch.Tensor  # dense float64 reference at ``params``
    batch_sizes: tuple  # unequal split of the data, for the multi-batch operator

    @property
    def size(self) -> int:
        return self.hessian.shape[0]


def _build(name: str) -> Problem:
    gen = torch.Generator().manual_seed({"mlp": 1, "cnn": 2, "transformer": 3}[name])
    torch.manual_seed({"mlp": 11, "cnn": 12, "transformer": 13}[name])
    if name == "mlp":
        model = MLP(in_dim=4, width=5, depth=2, out_dim=3).double()
        x = torch.randn(10, 4, generator=gen, dtype=torch.float64)
        y = nn.functional.one_hot(torch.randint(0, 3, (10,), generator=gen), 3).double()
        loss, sizes = squared_loss, (3, 5, 2)
    elif name == "cnn":
        model = CNN(in_channels=2, image_size=8, num_blocks=2, base_channels=3, num_classes=3).double()
        x = torch.randn(6, 2, 8, 8, generator=gen, dtype=torch.float64)
        y = nn.functional.one_hot(torch.randint(0, 3, (6,), generator=gen), 3).double()
        loss, sizes = squared_loss, (1, 3, 2)
    else:
        model = Transformer(
            vocab_size=11, sequence_length=5, num_layers=2, num_heads=2, key_size=3, model_size=4
        ).double()
        # Larger-than-init embeddings so attention is far from uniform and the Hessian is generic.
        with torch.no_grad():
            model.tok.weight.normal_(0, 1, generator=gen)
            model.pos.weight.normal_(0, 1, generator=gen)
        x = torch.randint(0, 11, (4, 5), generator=gen)
        y = torch.randint(1, 11, (4, 5), generator=gen)  # no pad targets: every position counts
        loss, sizes = masked_cross_entropy, (1, 3)
    params = parameters_of(model)
    loss_fn = module_loss(model, loss, x, y)
    return Problem(name, model, loss, x, y, params, loss_fn, reference_hessian(loss_fn, params), sizes)


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tests on one intra-op thread: these models are tiny, and on a 2-core
    machine that is busy with anything else, thread oversubscription makes them 5-10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_CACHE: Dict[str, Problem] = {}


def get_problem(name: str) -> Problem:
    if name not in _CACHE:
        _CACHE[name] = _build(name)
    return _CACHE[name]


@pytest.fixture(params=MODEL_NAMES)
def problem(request) -> Problem:
    """One of the three tiny float64 models with its batch, loss closure and dense Hessian."""
    return get_problem(request.param)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def random_quadratic(eigenvalues, seed: int = 0):
    """Symmetric A = Q diag(eigenvalues) Q^T with a random orthogonal Q (float64)."""
    gen = torch.Generator().manual_seed(seed)
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(len(lam), len(lam), generator=gen, dtype=torch.float64))
    return Q @ torch.diag(lam) @ Q.T, Q
