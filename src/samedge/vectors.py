"""Parameter-shaped vectors: dicts of tensors, their flat views, inner products and alignment."""

from __future__ import annotations

from typing import Dict, Mapping

import torch

Params = Dict[str, torch.Tensor]

__all__ = ["Params", "flatten", "unflatten", "norm", "alignment", "add_scaled"]


def flatten(tree: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate the tensors of a parameter dict (in its key order) into one 1-D tensor."""
    return torch.cat([t.reshape(-1) for t in tree.values()])


def unflatten(vec: torch.Tensor, like: Mapping[str, torch.Tensor]) -> Params:
    """Split a flat vector into a dict shaped like ``like`` (views into ``vec``)."""
    out, i = {}, 0
    for k, t in like.items():
        n = t.numel()
        out[k] = vec[i : i + n].view_as(t)
        i += n
    if i != vec.numel():
        raise ValueError(f"vector has {vec.numel()} entries, parameters have {i}")
    return out


def _flat(x: Mapping[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
    return x.reshape(-1) if isinstance(x, torch.Tensor) else flatten(x)


def norm(u: Mapping[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Euclidean norm of a parameter-shaped vector, over all its tensors together."""
    if isinstance(u, torch.Tensor):
        return torch.linalg.vector_norm(u.reshape(-1))
    ts = list(u.values())
    if ts and len({(t.dtype, t.device) for t in ts}) == 1:
        # the norm of the per-tensor norms: one call, and no concatenated copy of the vector
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(ts)))
    return torch.linalg.vector_norm(flatten(u))


def alignment(u: Mapping[str, torch.Tensor] | torch.Tensor, v: Mapping[str, torch.Tensor] | torch.Tensor) -> float:
    """|cos| of the angle between two parameter-shaped vectors (0 if either is zero)."""
    fu, fv = _flat(u), _flat(v)
    denom = torch.linalg.vector_norm(fu) * torch.linalg.vector_norm(fv)
    if denom == 0:
        return 0.0
    return float(torch.abs(torch.dot(fu, fv)) / denom)


def add_scaled(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], scale: float | torch.Tensor) -> Params:
    """Return ``a + scale * b`` key by key."""
    keys = list(a)
    ta, tb = [a[k] for k in keys], [b[k] for k in keys]
    traced = isinstance(scale, torch.Tensor) and scale.requires_grad  # alpha would cut its graph
    if keys and not traced and len({(t.dtype, t.device) for t in ta + tb}) == 1:
        # one foreach call for all tensors (scale as a number: foreach's alpha)
        return dict(zip(keys, torch._foreach_add(ta, tb, alpha=float(scale))))
    return {k: a[k] + scale * b[k] for k in a}
