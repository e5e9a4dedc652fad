"""Which edge an optimizer's update has: its rule (a name of ``samedge.edge.RULES``) and the
hyperparameters the edge formula needs, read from the optimizer's type and param groups.

- ``torch.optim.SGD``: 'gd' (2/lr), 'momentum' (heavy ball, 2(1+beta)/lr), or 'sgd' with
  dampening, Nesterov or weight decay (``samedge.edge.sgd_edge``);
- ``samedge.SAM`` over ``torch.optim.SGD``: 'sam' / 'usam' over plain SGD (the SAM-edge), or
  'sam_sgd' over SGD with momentum, dampening, Nesterov or weight decay (``sam_sgd_edge``);
- ``torch.optim.Adam`` / ``AdamW`` / ``RMSprop``: 'adam' / 'adamw' / 'rmsprop', edges of the
  preconditioned sharpness lambda_max(P^-1 H) (``EdgeSpec.preconditioned``);
- anything else (ASAM, SAM over Adam, amsgrad, maximize, param groups that differ, other
  optimizers): no rule (``EdgeSpec.rule is None``) and the reason, so that a caller can say why no
  edge is drawn instead of guessing one.
The learning rate is read at each call, so schedules are followed. Derivations: book/derivation.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from . import edge as edges
from .sam import SAM

__all__ = ["EdgeSpec", "edge_spec"]


@dataclass(frozen=True)
class EdgeSpec:
    """An update rule (a name of ``samedge.edge.RULES``, or None: unknown, no edge) with the
    hyperparameters its edge needs and, when unknown, why. ``beta`` is the momentum (beta1 for
    Adam); ``label`` names the rule in full."""

    rule: Optional[str]
    lr: Optional[float] = None
    beta: float = 0.0
    rho: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    normalize: bool = True
    reason: str = ""
    label: str = ""

    @property
    def preconditioned(self) -> bool:
        """Whether the edge bounds lambda_max(P^-1 H) (Adam, AdamW, RMSprop) rather than ||H||."""
        return self.rule in edges.PRECONDITIONED

    def edge(self, grad_norm: float) -> Optional[float]:
        """The edge at a point with gradient norm ``grad_norm`` (None when the rule is unknown)."""
        if self.rule is None or self.lr is None:
            return None
        return float(
            edges.edge(
                self.rule,
                self.lr,
                self.rho,
                grad_norm,
                self.beta,
                self.dampening,
                self.nesterov,
                self.weight_decay,
                self.normalize,
            )
        )

    def gd_edge(self) -> Optional[float]:
        """The base rule's edge without SAM: 2/lr for GD, ``sgd_edge`` for SGD, Adam's for Adam."""
        if self.rule is None or self.lr is None:
            return None
        if self.rule in ("gd", "sam", "usam"):
            return float(edges.gd_edge(self.lr))
        if self.rule in ("sgd", "sam_sgd", "momentum"):
            return float(edges.sgd_edge(self.lr, self.beta, self.dampening, self.nesterov, self.weight_decay))
        return self.edge(0.0)


def _differ(groups: List[dict], keys: tuple) -> Optional[str]:
    for key in keys:
        if len({repr(g.get(key)) for g in groups}) > 1:
            return f"param groups differ in {key!r}: one edge needs one update rule"
    return None


def _sgd(g: dict) -> dict:
    """The SGD hyperparameters of a param group, as EdgeSpec fields."""
    return dict(
        beta=float(g.get("momentum", 0) or 0),
        dampening=float(g.get("dampening", 0) or 0),
        nesterov=bool(g.get("nesterov", False)),
        weight_decay=float(g.get("weight_decay", 0) or 0),
    )


def _sgd_words(h: dict) -> str:
    words = []
    if h["beta"]:
        words.append(f"momentum={h['beta']:g}")
        if h["dampening"]:
            words.append(f"dampening={h['dampening']:g}")
        if h["nesterov"]:
            words.append("Nesterov")
    if h["weight_decay"]:
        words.append(f"weight_decay={h['weight_decay']:g}")
    return " ".join(["SGD"] + words)


def _plain(h: dict) -> bool:
    return not (h["dampening"] and h["beta"]) and not h["nesterov"] and not h["weight_decay"]


def edge_spec(optimizer: torch.optim.Optimizer) -> EdgeSpec:
    """The edge of ``optimizer``'s current update rule, read from its type and param groups."""
    groups = optimizer.param_groups
    sgd_keys = ("lr", "momentum", "dampening", "nesterov", "weight_decay", "maximize")
    if isinstance(optimizer, SAM):
        base = optimizer.base_optimizer
        why = _differ(groups, ("rho", "adaptive", "normalize") + sgd_keys)
        if why:
            return EdgeSpec(None, reason=why)
        g = groups[0]
        rho, normalize = float(g["rho"]), bool(g.get("normalize", True))
        kind = "SAM" if normalize else "unnormalized SAM"
        if g.get("adaptive", False):
            return EdgeSpec(None, reason="adaptive=True (ASAM): no edge is derived for the adaptive ascent; pass edge=")
        if type(base) is not torch.optim.SGD:
            return EdgeSpec(
                None,
                reason=f"SAM over {type(base).__name__}: the ascent follows H's eigenvectors and the step "
                "P^-1 H's, so no edge is derived; pass edge=",
            )
        if g.get("maximize", False):
            return EdgeSpec(None, reason="maximize=True")
        h = _sgd(g)
        label = f"{kind} rho={rho:g} over {_sgd_words(h)}"
        if rho == 0:
            return edge_spec_sgd(float(g["lr"]), h, label)
        if not h["beta"] and _plain(h):
            label = f"{kind} rho={rho:g}"  # over plain SGD: the paper's SAM
            return EdgeSpec(edges.rule_of(rho, normalize), float(g["lr"]), rho=rho, normalize=normalize, label=label)
        return EdgeSpec("sam_sgd", float(g["lr"]), rho=rho, normalize=normalize, label=label, **h)
    if type(optimizer) is torch.optim.SGD:
        why = _differ(groups, sgd_keys)
        if why:
            return EdgeSpec(None, reason=why)
        if groups[0].get("maximize", False):
            return EdgeSpec(None, reason="maximize=True")
        h = _sgd(groups[0])
        return edge_spec_sgd(float(groups[0]["lr"]), h, _sgd_words(h))
    kind = type(optimizer).__name__
    if type(optimizer) in (torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop):
        why = _differ(groups, ("lr", "betas", "alpha", "momentum", "weight_decay", "eps", "amsgrad", "maximize"))
        if why:
            return EdgeSpec(None, reason=why)
        g = groups[0]
        if g.get("amsgrad", False) or g.get("maximize", False):
            return EdgeSpec(None, reason=f"{kind} with amsgrad or maximize: no edge is derived")
        wd = float(g.get("weight_decay", 0) or 0)
        if type(optimizer) is torch.optim.RMSprop:
            beta = float(g.get("momentum", 0) or 0)
            label = f"RMSprop alpha={g['alpha']:g}" + (f" momentum={beta:g}" if beta else "")
            return EdgeSpec("rmsprop", float(g["lr"]), beta=beta, weight_decay=wd, label=label)
        beta1 = float(g["betas"][0])
        rule = "adamw" if type(optimizer) is torch.optim.AdamW else "adam"
        label = f"{kind} beta1={beta1:g} beta2={g['betas'][1]:g}" + (f" weight_decay={wd:g}" if wd else "")
        return EdgeSpec(rule, float(g["lr"]), beta=beta1, weight_decay=wd, label=label)
    return EdgeSpec(
        None,
        reason=f"{kind}: edges are known for torch.optim.SGD, Adam, AdamW, RMSprop and samedge.SAM over SGD; "
        "pass edge=",
    )


def edge_spec_sgd(lr: float, h: dict, label: str) -> EdgeSpec:
    """The rule of SGD with hyperparameters ``h``: 'gd', 'momentum' (heavy ball) or 'sgd'."""
    if _plain(h):
        return EdgeSpec("momentum" if h["beta"] else "gd", lr, beta=h["beta"], label=label)
    return EdgeSpec("sgd", lr, label=label, **h)
