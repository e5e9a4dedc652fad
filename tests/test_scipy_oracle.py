"""samedge's Lanczos sharpness against an independent eigensolver: ARPACK (scipy.sparse.linalg.eigsh)
driven through the same exact Hessian-vector products, on an MLP of a few thousand parameters in
float64, where a dense Hessian would already be the slow way to check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

import samedge

scipy_linalg = pytest.importorskip("scipy.sparse.linalg")


def mlp_loss():
    """A tanh MLP 20-64-64-5 (5,829 parameters) and its squared loss on 200 random examples, in float64."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 5)).double()
    for p in model.parameters():
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / np.sqrt(p.shape[-1]))
    x = torch.randn(200, 20, generator=gen, dtype=torch.float64)
    y = torch.randn(200, 5, generator=gen, dtype=torch.float64)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def loss(ps):
        return ((functional_call(model, ps, (x,)) - y) ** 2).mean()

    return loss, params


@pytest.mark.parametrize("method", ["double_backward", "forward_over_reverse"])
def test_sharpness_matches_arpack(method):
    """||H||_op from samedge.sharpness equals ARPACK's largest-magnitude eigenvalue to 1e-6 relative."""
    loss, params = mlp_loss()
    op = samedge.HessianOperator(loss, params, method=method)
    assert op.size == 5829

    def matvec(x: np.ndarray) -> np.ndarray:
        return op(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).ravel())).numpy()

    linop = scipy_linalg.LinearOperator((op.size, op.size), matvec=matvec, dtype=np.float64)
    (reference,), _ = scipy_linalg.eigsh(linop, k=1, which="LM", tol=1e-12, v0=np.ones(op.size))
    assert abs(reference) > 1e-3  # a non-trivial spectrum

    ours = samedge.sharpness(op, tol=1e-8, max_iter=300, seed=1)
    assert ours.converged
    assert ours.op_norm == pytest.approx(abs(reference), rel=1e-6)
    # The same eigenvector, up to sign: its Rayleigh quotient under the operator is the eigenvalue.
    u = ours.eigenvector.double() / torch.linalg.vector_norm(ours.eigenvector.double())
    assert float(u @ op(u)) == pytest.approx(reference, rel=1e-6)
