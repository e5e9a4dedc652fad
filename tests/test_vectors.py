"""Parameter-dict vector arithmetic against float64 references on the flattened vector."""

from __future__ import annotations

import torch

from samedge.vectors import add_scaled, flatten, norm


def _tree(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(30, 7, generator=gen).to(dtype), "b": torch.randn(7, generator=gen).to(dtype)}


def test_norm_of_a_dict_is_the_norm_of_its_concatenation():
    """One foreach path for equal dtypes, the concatenation otherwise: both equal float64's norm."""
    u = _tree()
    want = float(flatten({k: v.double() for k, v in u.items()}).norm())
    assert abs(float(norm(u)) - want) <= 1e-6 * want
    mixed = {"w": u["w"].double(), "b": u["b"]}
    assert abs(float(norm(mixed)) - want) <= 1e-6 * want
    assert abs(float(norm(flatten(u))) - want) <= 1e-6 * want
    assert float(norm({"z": torch.zeros(3)})) == 0.0


def test_add_scaled_is_a_plus_scale_b_key_by_key():
    """a + s b for a float and a tensor scale, in the key order of a, against float64."""
    a, b = _tree(seed=1), _tree(seed=2)
    for scale in (0.37, torch.tensor(-2.5)):
        out = add_scaled(a, b, scale)
        assert list(out) == list(a)
        for k in a:
            want = a[k].double() + float(scale) * b[k].double()
            assert out[k].dtype == a[k].dtype and torch.allclose(out[k].double(), want, atol=1e-6)
    mixed = add_scaled({"w": a["w"].double()}, {"w": b["w"]}, 0.5)
    assert mixed["w"].dtype == torch.float64


def test_add_scaled_keeps_the_graph_of_a_traced_scale():
    """A scale that requires grad stays differentiable: d(sum(a + s b))/ds = sum(b)."""
    a, b = _tree(seed=3), _tree(seed=4)
    s = torch.tensor(0.3, requires_grad=True)
    out = add_scaled(a, b, s)
    (ds,) = torch.autograd.grad(sum(t.sum() for t in out.values()), s)
    assert abs(float(ds) - float(sum(t.double().sum() for t in b.values()))) < 1e-4
