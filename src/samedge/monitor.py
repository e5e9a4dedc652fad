"""Measure sharpness against the edge of stability in any training loop: ``EdgeMonitor``.

One implementation of "measure at w_t" serves the user's loop (``EdgeMonitor``) and ours
(``samedge.loop.run``): ``prepare`` builds the exact HVP operator of a loss at the current
weights together with its loss and gradient (for one closure with double backward, from the
same retained graph, so a SAM step at a measured point reuses that gradient), and ``measure``
turns it into a record row: ||H||_op by Lanczos warm-started from the previous eigenvector,
lambda_max/lambda_min, the edge and the ratio, alignments, HVP count and convergence, and the
same for an evaluation batch and the ascent point when given.

Which edge applies is read from the optimizer (``edge_spec``):
- ``torch.optim.SGD`` without momentum: gradient descent, 2/lr;
- ``torch.optim.SGD(momentum=beta)`` (heavy ball: dampening 0, no Nesterov): 2(1+beta)/lr, the
  maximal stable sharpness (2 + 2 beta)/eta of Polyak momentum on a quadratic, at which Cohen
  et al. (2021, "Gradient descent on neural networks typically occurs at the edge of
  stability", ICLR) observe full-batch momentum training (``samedge.edge.momentum_edge``);
- ``samedge.SAM`` over plain SGD: the SAM-edge from ||grad L(w)|| on the monitor's data at the
  measured point (normalized SAM), or the unnormalized-SAM edge (``normalize=False``);
- anything else (Nesterov, dampening, weight decay, Adam, ASAM, SAM over momentum, ...): a
  warning and ``edge = ratio = None``: no formula here covers it, and none is guessed.
The learning rate is read from the param groups at each measurement (schedules are followed).

BatchNorm and dropout: by default the monitor measures the model in ``eval()`` mode (running
statistics, no dropout: the loss is a deterministic per-example average whose Hessian is
well defined); ``train_mode=True`` measures the train-mode loss instead (batch statistics
differentiated through), and the running-statistics buffers the HVPs would update are put back.
Either way the modules' train/eval flags, the parameters and every ``.grad`` are left as found.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.func import grad_and_value

from .edge import edge as rule_edge
from .edge import gd_edge, momentum_edge
from .hessian import HessianOperator, HVPMethod, LossFn, sharpness
from .losses import module_loss
from .record import (
    ALIGN_GRAD,
    ALIGN_SAM_GRAD,
    ASCENT_OF,
    COLUMNS,
    CONVERGED,
    EDGE,
    EVAL_OF,
    GD_EDGE,
    GRAD_NORM,
    HVPS,
    LAMBDA_MAX,
    LAMBDA_MIN,
    LOSS,
    MEASURE_SECONDS,
    OP_NORM,
    RATIO,
    STEP,
    TRAIN_LOSS,
    TRAIN_SECONDS,
    RunRecord,
)
from .sam import SAM, ascent_point
from .vectors import Params, alignment, flatten, norm

__all__ = ["EdgeMonitor", "EdgeSpec", "edge_spec", "Point", "prepare", "loss_and_grad", "measure"]

# Warm-start keys: the eigenvector of the training loss, of the evaluation batch, at the ascent point.
WARM_KEYS = ("v", "v_eval", "v_ascent")


@dataclass
class Point:
    """A loss at fixed weights: its exact HVP operator, the loss and its gradient there."""

    op: HessianOperator
    loss: torch.Tensor
    grad: Params


def prepare(
    loss_fns: LossFn | Sequence[LossFn],
    params: Params,
    method: HVPMethod = "double_backward",
    weights: Optional[Sequence[float]] = None,
) -> Point:
    """The operator, loss and gradient at ``params``: for one closure with double backward the
    gradient comes from the graph the HVPs reuse (no extra backward); otherwise the weighted
    sum of each closure's ``torch.func`` gradient."""
    op = HessianOperator(loss_fns, params, method, weights)
    if op.single and method == "double_backward":
        loss, grad = op.loss_and_gradient()
        return Point(op, loss, grad)
    return Point(op, *loss_and_grad(op.loss_fns, op.params, op.weights))


def loss_and_grad(loss_fns: Sequence[LossFn], params: Params, weights: Sequence[float]) -> tuple:
    """(sum_i w_i L_i, sum_i w_i grad L_i) at ``params`` by ``torch.func``, detached."""
    loss, grad = None, None
    for fn, w in zip(loss_fns, weights):
        g, val = grad_and_value(fn)(params)
        if w != 1.0:
            g, val = {k: w * t for k, t in g.items()}, w * val
        loss = val if loss is None else loss + val
        grad = g if grad is None else {k: grad[k] + g[k] for k in grad}
    return loss.detach(), {k: t.detach() for k, t in grad.items()}


def _ratio(op_norm: float, edge: Optional[float]) -> Optional[float]:
    if edge is None:
        return None
    return op_norm / edge if edge > 0 else math.inf


def measure(
    step: int,
    train: Point,
    edge_of: Optional[Callable[[float], Optional[float]]],
    lr: Optional[float],
    warm: Dict[str, Optional[torch.Tensor]],
    tol: float,
    max_iter: int,
    seed: int,
    sam_grad: Optional[Params] = None,
    eval_point: Optional[Point] = None,
    ascent_params: Optional[Params] = None,
    ascent_loss: Optional[LossFn] = None,
) -> tuple:
    """(row, warm starts): the record row at w_t and the new eigenvectors (keys ``WARM_KEYS``).

    ``edge_of(grad_norm)`` is the edge (None: unknown, so no ratio); ``lr`` gives the 2/eta
    column. ``sam_grad`` adds its alignment with the top eigenvector, ``eval_point`` the eval
    columns, ``ascent_params`` (with ``ascent_loss``) ||H||_op at the SAM ascent point.
    Lanczos seeds: ``seed`` for the training loss, +1 for the eval batch, +2 for the ascent point."""
    gn = float(norm(train.grad))
    sh = sharpness(train.op, v0=warm.get("v"), tol=tol, max_iter=max_iter, seed=seed)
    edge = edge_of(gn) if edge_of is not None else None
    row: Dict[str, Any] = {
        STEP: step,
        TRAIN_LOSS: float(train.loss),
        GRAD_NORM: gn,
        OP_NORM: sh.op_norm,
        LAMBDA_MAX: sh.lambda_max,
        LAMBDA_MIN: sh.lambda_min,
        EDGE: edge,
        GD_EDGE: gd_edge(lr) if lr is not None else None,
        RATIO: _ratio(sh.op_norm, edge),
        ALIGN_GRAD: alignment(flatten(train.grad), sh.eigenvector),
    }
    if sam_grad is not None:
        row[ALIGN_SAM_GRAD] = alignment(flatten(sam_grad), sh.eigenvector)
    row.update({HVPS: sh.num_hvps, CONVERGED: sh.converged})
    new = {"v": sh.eigenvector}
    if eval_point is not None:
        egn = float(norm(eval_point.grad))
        esh = sharpness(eval_point.op, v0=warm.get("v_eval"), tol=tol, max_iter=max_iter, seed=seed + 1)
        eedge = edge_of(egn) if edge_of is not None else None
        values = {
            TRAIN_LOSS: float(eval_point.loss),
            GRAD_NORM: egn,
            OP_NORM: esh.op_norm,
            EDGE: eedge,
            RATIO: _ratio(esh.op_norm, eedge),
            HVPS: esh.num_hvps,
        }
        row.update({EVAL_OF[k]: v for k, v in values.items()})
        new["v_eval"] = esh.eigenvector
    if ascent_params is not None:
        aop = HessianOperator(ascent_loss, ascent_params, train.op.method)
        ash = sharpness(aop, v0=warm.get("v_ascent"), tol=tol, max_iter=max_iter, seed=seed + 2)
        row.update({ASCENT_OF[OP_NORM]: ash.op_norm, ASCENT_OF[HVPS]: ash.num_hvps})
        new["v_ascent"] = ash.eigenvector
    return row, new


@dataclass(frozen=True)
class EdgeSpec:
    """Which edge an optimizer's update has: ``rule`` ('gd', 'momentum', 'sam', 'usam') or None
    (unknown: no edge), with its hyperparameters and, when None, why."""

    rule: Optional[str]
    lr: Optional[float] = None
    beta: float = 0.0
    rho: float = 0.0
    reason: str = ""

    def edge(self, grad_norm: float) -> Optional[float]:
        """The edge at a point with gradient norm ``grad_norm`` (None when the rule is unknown)."""
        if self.rule is None:
            return None
        if self.rule == "momentum":
            return float(momentum_edge(self.lr, self.beta))
        return float(rule_edge(self.rule, self.lr, self.rho, grad_norm))


def _common(groups: List[dict], key: str, default: Any = None) -> tuple:
    values = {repr(g.get(key, default)) for g in groups}
    return (groups[0].get(key, default), len(values) == 1)


def _sgd_trouble(groups: List[dict], allow_momentum: bool) -> str:
    """Why an SGD update (param groups) has no edge formula here, or '' when it has one."""
    for key in ("lr", "momentum", "dampening", "nesterov", "weight_decay", "maximize"):
        if not _common(groups, key)[1]:
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
            if not _common(groups, key)[1]:
                return EdgeSpec(None, reason=f"param groups differ in {key!r}: one edge needs one update rule")
        if groups[0].get("adaptive", False):
            return EdgeSpec(None, reason="adaptive=True (ASAM): no edge formula for the adaptive ascent")
        why = _sgd_trouble(groups, allow_momentum=False)
        if why:
            return EdgeSpec(None, reason=why)
        rho = float(groups[0]["rho"])
        rule = "gd" if rho == 0 else ("sam" if groups[0].get("normalize", True) else "usam")
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


def _is_batch(data: Any) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)


class EdgeMonitor:
    """Tracks ||H||_op against the optimizer's edge in an ordinary PyTorch training loop.

    ``loss_fn(outputs, targets)`` (e.g. ``torch.nn.MSELoss()``); ``data`` one ``(inputs,
    targets)`` batch or an iterable of batches (re-iterated at every measurement; the Hessian
    of the size-weighted mean loss over them); ``optimizer`` the one that steps the model.
    Call ``step()`` after every optimizer step: every ``every`` calls it measures at the current
    weights and returns the row (keys ``step, loss, grad_norm, op_norm, lambda_max, lambda_min,
    edge, gd_edge, ratio, align_grad, hvps, converged, train_seconds, measure_seconds``; ``align_sam_grad`` for
    SAM; ``eval_*`` with ``eval_data``), else None. ``measure()`` measures now (e.g. at step 0)::

        monitor = EdgeMonitor(model, nn.MSELoss(), (x, y), optimizer, every=10)
        for t in range(steps):
            optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
            monitor.step()
        monitor.to_frame(); monitor.save("runs/mine")

    ``tol``/``max_iter``: Lanczos relative residual and HVP cap; ``seed``: the Lanczos start of the
    first measurement (later ones warm-start from the previous eigenvector); ``train_mode``:
    see the module docstring on BatchNorm.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        data: Any,
        optimizer: torch.optim.Optimizer,
        every: int = 10,
        eval_data: Optional[Sequence[torch.Tensor]] = None,
        tol: float = 1e-3,
        max_iter: int = 100,
        seed: int = 0,
        train_mode: bool = False,
        hvp_method: HVPMethod = "double_backward",
    ):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer (measure every that many steps), got {every!r}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if eval_data is not None and not _is_batch(eval_data):
            raise ValueError("eval_data must be one (inputs, targets) pair of tensors")
        if not (isinstance(tol, (int, float)) and tol > 0):
            raise ValueError(f"tol must be a number > 0, got {tol!r}")
        self.model, self.loss_fn, self.data, self.optimizer = model, loss_fn, data, optimizer
        self.every, self.eval_data, self.tol, self.max_iter, self.seed = every, eval_data, tol, max_iter, seed
        self.train_mode, self.hvp_method = train_mode, hvp_method
        self.t = 0  # optimizer steps seen
        self.rows: List[Dict[str, Any]] = []
        self._warm: Dict[str, Optional[torch.Tensor]] = {}
        self._warned: set = set()
        self._seconds = 0.0  # spent measuring
        self._start = time.perf_counter()
        self._warn(edge_spec(optimizer))

    def _warn(self, spec: EdgeSpec) -> None:
        if spec.rule is None and spec.reason not in self._warned:
            self._warned.add(spec.reason)
            warnings.warn(
                f"EdgeMonitor: no stability edge for this optimizer ({spec.reason}); "
                "edge and ratio are recorded as None",
                stacklevel=3,
            )

    def step(self) -> Optional[Dict[str, Any]]:
        """Count one optimizer step; measure and return the row every ``every`` steps, else None."""
        self.t += 1
        return self.measure() if self.t % self.every == 0 else None

    def _params(self) -> Params:
        params = {k: p.detach() for k, p in self.model.named_parameters() if p.requires_grad}
        if not params:
            raise ValueError("the model has no parameter with requires_grad=True: nothing to measure")
        return params

    def _closures(self, device: torch.device) -> tuple:
        """(loss closures, their weights) on the monitor's data, moved to ``device``."""
        batches = [self.data] if _is_batch(self.data) else list(self.data)
        if not batches or not all(_is_batch(b) for b in batches):
            raise ValueError("data must be an (inputs, targets) pair of tensors or an iterable of such pairs")
        fns = [module_loss(self.model, self.loss_fn, x.to(device), y.to(device)) for x, y in batches]
        sizes = [len(b[0]) for b in batches]
        if len(fns) == 1:
            return fns[0], None
        return fns, [s / float(sum(sizes)) for s in sizes]

    def measure(self) -> Dict[str, Any]:
        """Measure at the current weights now, append the row to ``rows`` and return it."""
        t0 = time.perf_counter()
        outside = t0 - self._start - self._seconds  # the user's loop, between measurements
        flags = [(m, m.training) for m in self.model.modules()]
        buffers = {k: b.clone() for k, b in self.model.named_buffers()} if self.train_mode else {}
        try:
            self.model.train(self.train_mode)
            row = self._measure()
        finally:
            for m, flag in flags:
                m.training = flag
            with torch.no_grad():
                for k, b in self.model.named_buffers():
                    if k in buffers:
                        b.copy_(buffers[k])
        self._seconds += time.perf_counter() - t0
        row.update({TRAIN_SECONDS: outside, MEASURE_SECONDS: self._seconds})
        row = {(LOSS if k == TRAIN_LOSS else k): v for k, v in row.items()}
        self.rows.append(row)
        return row

    def _measure(self) -> Dict[str, Any]:
        params = self._params()
        device = next(iter(params.values())).device
        spec = edge_spec(self.optimizer)  # param groups can change (schedules, user edits)
        self._warn(spec)
        fns, weights = self._closures(device)
        train = prepare(fns, params, self.hvp_method, weights)
        sam_grad = None
        if spec.rule in ("sam", "usam"):
            w_tilde = ascent_point(params, train.grad, spec.rho, spec.rule == "sam")
            sam_grad = loss_and_grad(train.op.loss_fns, w_tilde, train.op.weights)[1] if spec.rho else train.grad
        eval_point = None
        if self.eval_data is not None:
            ex, ey = self.eval_data
            eval_point = prepare(
                module_loss(self.model, self.loss_fn, ex.to(device), ey.to(device)), params, self.hvp_method
            )
        lr = float(self.optimizer.param_groups[0]["lr"]) if spec.rule is not None else None
        row, self._warm = measure(
            self.t,
            train,
            spec.edge if spec.rule else None,
            lr,
            self._warm,
            self.tol,
            self.max_iter,
            self.seed + self.t,
            sam_grad=sam_grad,
            eval_point=eval_point,
        )
        return row

    def to_frame(self):
        """The rows as a pandas DataFrame (one row per measurement)."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def label(self) -> str:
        """A short name of the update rule, e.g. 'SGD', 'SGD momentum=0.9', 'SAM rho=0.05'."""
        g = self.optimizer.param_groups[0]
        if isinstance(self.optimizer, SAM):
            kind = "SAM" if g.get("normalize", True) else "unnormalized SAM"
            return f"{kind} rho={g['rho']:g}" + (
                f" over {type(self.optimizer.base_optimizer).__name__}"
                if type(self.optimizer.base_optimizer) is not torch.optim.SGD
                else ""
            )
        name = type(self.optimizer).__name__
        return name + (f" momentum={g['momentum']:g}" if g.get("momentum", 0) else "")

    def record(self, label: Optional[str] = None) -> RunRecord:
        """The rows as a ``RunRecord`` of the ``custom`` task, drawn by ``samedge.plots`` and
        tabulated by ``samedge.analysis`` under ``label`` (default: ``self.label()``)."""
        from .config import RunConfig

        spec = edge_spec(self.optimizer)
        steps = max([1, self.t] + [r[STEP] for r in self.rows])
        cfg = RunConfig(
            task="custom",
            eta=float(self.optimizer.param_groups[0]["lr"]),
            rho=spec.rho,
            steps=steps,
            measure_every=min(self.every, steps),
            normalize=spec.rule != "usam",
            lanczos_tol=float(self.tol),
            lanczos_max_iter=self.max_iter,
            hvp_method=self.hvp_method,
            seed=self.seed,
            device=str(next(iter(self._params().values())).device),
            dtype=str(next(iter(self._params().values())).dtype).removeprefix("torch."),
        )
        rows = []
        for r in self.rows:
            out = {c: None for c in COLUMNS}
            out.update({(TRAIN_LOSS if k == LOSS else k): v for k, v in r.items()})
            rows.append(out)
        train_seconds = self.rows[-1][TRAIN_SECONDS] if self.rows else 0.0
        summary = dict(
            complete=True,
            diverged=False,
            diverged_at=None,
            steps_done=steps,
            label=label or self.label(),
            optimizer=type(self.optimizer).__name__,
            edge_rule=spec.rule,
            momentum=spec.beta,
            no_edge_reason=spec.reason or None,
            train_seconds=train_seconds,
            measure_seconds=self._seconds,
        )
        return RunRecord(cfg, rows, summary, {})

    def save(self, run_dir: str | os.PathLike, label: Optional[str] = None) -> Path:
        """Write the rows as a run record (config.json, record.csv, summary.json) into ``run_dir``."""
        from .record import environment

        rec = self.record(label)
        rec.env = environment(rec.config.device)
        return rec.save(run_dir)
