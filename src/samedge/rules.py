"""Which edge an optimizer's update has: its rule (a name of ``samedge.edge.RULES``) and the
hyperparameters the edge formula needs, read from the optimizer's type and param groups.

- ``torch.optim.SGD`` without momentum: 'gd', 2/lr;
- ``torch.optim.SGD(momentum=beta)`` (heavy ball: dampening 0, no Nesterov): 'momentum',
  2(1+beta)/lr, the maximal stable sharpness of Polyak momentum on a quadratic, at which Cohen
  et al. (2021) observe full-batch momentum training;
- ``samedge.SAM`` over plain SGD: 'sam' (normalized, the SAM-edge from ||grad L(w)||) or 'usam';
- anything else: no rule (``EdgeSpec.rule is None``) and the reason, so that a caller can say
  why no edge is drawn instead of guessing one.
The learning rate is read at each call, so schedules are followed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

import torch

from . import edge as edges
from .sam import SAM

__all__ = ["EdgeSpec", "edge_spec"]


@dataclass(frozen=True)
class EdgeSpec:
    """An update rule (a name of ``samedge.edge.RULES``, or None: unknown, no edge) with the
    hyperparameters its edge needs and, when unknown, why."""

    rule: Optional[str]
    lr: Optional[float] = None
    beta: float = 0.0
    rho: float = 0.0
    reason: str = ""

    def edge(self, grad_norm: float) -> Optional[float]:
        """The edge at a point with gradient norm ``grad_norm`` (None when the rule is unknown)."""
        if self.rule is None or self.lr is None:
            return None
        return float(edges.edge(self.rule, self.lr, self.rho, grad_norm, self.beta))

    def gd_edge(self) -> Optional[float]:
        """2/lr, the GD edge at this learning rate (None when the rule is unknown)."""
        return None if self.rule is None or self.lr is None else float(edges.gd_edge(self.lr))


def _common(groups: List[dict], key: str, default: Any = None) -> bool:
    return len({repr(g.get(key, default)) for g in groups}) == 1


def _sgd_trouble(groups: List[dict], allow_momentum: bool) -> str:
    """Why an SGD update (param groups) has no edge formula here, or '' when it has one."""
    for key in ("lr", "momentum", "dampening", "nesterov", "weight_decay", "maximize"):
        if not _common(groups, key):
            return f"param groups differ in {key!r}: one edge needs one update rule"
    g = groups[0]
    if g.get("weight_decay", 0) != 0:
        return f"weight_decay={g['weight_decay']} changes the curvature the update sees (H + wd I)"
    if g.get("maximize", False):
        return "maximize=True"
    if g.get("momentum", 0) != 0:
        if not allow_momentum:
            return f"momentum={g['momentum']} in the base optimizer of SAM (no SAM-edge with momentum is derived)"
        if g.get("nesterov", False):
            return "nesterov=True (the heavy-ball edge 2(1+beta)/lr does not apply)"
        if g.get("dampening", 0) != 0:
            return f"dampening={g['dampening']} (the heavy-ball edge assumes dampening=0)"
    return ""


def edge_spec(optimizer: torch.optim.Optimizer) -> EdgeSpec:
    """The edge of ``optimizer``'s current update rule, read from its type and param groups."""
    groups = optimizer.param_groups
    if isinstance(optimizer, SAM):
        base = optimizer.base_optimizer
        if type(base) is not torch.optim.SGD:
            return EdgeSpec(
                None, reason=f"SAM over {type(base).__name__}: the SAM-edge is derived for SAM over plain SGD"
            )
        for key in ("rho", "adaptive", "normalize"):
            if not _common(groups, key):
                return EdgeSpec(None, reason=f"param groups differ in {key!r}: one edge needs one update rule")
        if groups[0].get("adaptive", False):
            return EdgeSpec(None, reason="adaptive=True (ASAM): no edge formula for the adaptive ascent")
        why = _sgd_trouble(groups, allow_momentum=False)
        if why:
            return EdgeSpec(None, reason=why)
        rho = float(groups[0]["rho"])
        rule = edges.rule_of(rho, groups[0].get("normalize", True))
        return EdgeSpec(rule, float(groups[0]["lr"]), rho=rho)
    if type(optimizer) is torch.optim.SGD:
        why = _sgd_trouble(groups, allow_momentum=True)
        if why:
            return EdgeSpec(None, reason=why)
        beta = float(groups[0].get("momentum", 0))
        return EdgeSpec("momentum" if beta > 0 else "gd", float(groups[0]["lr"]), beta=beta)
    return EdgeSpec(
        None, reason=f"{type(optimizer).__name__}: edges are known for torch.optim.SGD and samedge.SAM only"
    )
