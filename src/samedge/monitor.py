"""Measure sharpness against the edge of stability in any training loop: ``EdgeMonitor``.

The measurement is ``samedge.measure`` (the one ``samedge.loop.run`` uses too); the edge comes
from the optimizer's update rule (``samedge.rules.edge_spec``: GD, heavy-ball momentum, SAM over
plain SGD; anything else gets a warning and ``edge = ratio = None``, never a guess). The learning
rate is read from the param groups at each measurement, so schedules are followed.

BatchNorm and dropout: by default the monitor measures the model in ``train()`` mode, the loss
full-batch training descends (batch statistics differentiated through, dropout active; the
running-statistics buffers the HVPs would update are put back). That is the Hessian whose
||H|| sits at 2/eta: on a small BatchNorm CNN trained by full-batch GD (``benchmarks/bn_mode.py``,
``benchmarks/BN_MODE.md``) the train-mode ratio ||H||/(2/eta) sits at 1.0-1.1 while the eval-mode
one is 4-6x the edge on the same stable run. ``train_mode=False`` measures the ``eval()``-mode loss
instead (running statistics, no dropout). A model with BatchNorm (running statistics) or dropout
(p > 0) gets one warning at construction naming the mode. Either way the modules' train/eval
flags, the parameters, every ``.grad``, the buffers and the global random-number state are left
as found.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from .columns import (
    CONVERGED,
    EDGE,
    GD_EDGE,
    GRAD_NORM,
    HVPS,
    LAMBDA_MAX,
    LAMBDA_MIN,
    MEASURE_SECONDS,
    OP_NORM,
    RATIO,
    STEP,
    TRAIN_LOSS,
    TRAIN_SECONDS,
)
from .environment import environment
from .hessian import DEFAULT_TOL, HVPMethod, adam_preconditioner
from .kernels import check_kernels
from .losses import batch_loss, module_loss
from .measure import WarmStart, loss_and_grad, measure, prepare
from .monitor_record import MonitorRecord
from .rules import EdgeSpec, edge_spec
from .sam import SAM, ascent_point
from .vectors import Params, norm

__all__ = ["EdgeMonitor"]


def _is_batch(data: Any) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)


def _one_batch(data: Any) -> bool:
    """For ``batch_loss``: a tuple, dict or tensor is one batch; a list or another iterable holds batches."""
    return isinstance(data, (tuple, dict, torch.Tensor))


def _size(batch: Any) -> int:
    """Examples in a batch: the length of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return len(batch)
    items = batch.values() if isinstance(batch, dict) else batch
    for t in items:
        if isinstance(t, torch.Tensor):
            return len(t)
    raise ValueError(f"cannot tell the size of a batch without tensors: {type(batch).__name__}")


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


class EdgeMonitor:
    """Tracks ||H||_op against the optimizer's edge in an ordinary PyTorch training loop.

    ``loss_fn(outputs, targets)`` (e.g. ``torch.nn.MSELoss()``); ``data`` one ``(inputs,
    targets)`` batch or an iterable of batches (re-iterated at every measurement; the Hessian
    of the size-weighted mean loss over them); ``optimizer`` the one that steps the model.
    Call ``step()`` after every optimizer step: every ``every`` calls it measures at the current
    weights and returns the row (keys of ``samedge.columns``: ``step, train_loss, grad_norm,
    op_norm, lambda_max, lambda_min, edge, gd_edge, ratio, align_grad, hvps, converged,
    train_seconds, measure_seconds``; ``align_sam_grad`` for SAM; ``eval_*`` with ``eval_data``),
    else None. ``measure()`` measures now (e.g. at step 0)::

        monitor = EdgeMonitor(model, nn.MSELoss(), (x, y), optimizer, every=10)
        for t in range(steps):
            optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
            monitor.step()
        monitor.to_frame(); monitor.save("runs/mine")

    Other batch formats (dicts, ``(x, y, extra)`` tuples, models with several inputs): pass
    ``batch_loss=True`` and ``loss_fn(model, batch)``; ``data`` is then one batch (a tuple, dict or
    tensor) or a list or other iterable of batches. The format is checked when the monitor is built.

    ``edge``: your own edge for an optimizer without a derived one (ASAM, ...), a number or a
    function of the gradient norm at the measured point; it replaces the inferred edge, and the
    record says so. ``tol``/``max_iter``: Lanczos relative residual and HVP cap; ``seed``: the
    Lanczos start of the first measurement (later ones warm-start from the previous eigenvector);
    ``train_mode``: measure the train-mode loss (default) or, with False, the eval-mode one (see
    the module docstring); ``kernels``: ``"default"`` or ``"onednn"``
    (``samedge.kernels``).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        data: Any,
        optimizer: torch.optim.Optimizer,
        every: int = 10,
        eval_data: Optional[Sequence[torch.Tensor]] = None,
        tol: float = DEFAULT_TOL,
        max_iter: int = 100,
        seed: int = 0,
        train_mode: bool = True,
        hvp_method: HVPMethod = "double_backward",
        kernels: str = "default",
        batch_loss: bool = False,
        edge: Optional[float | Callable[[float], float]] = None,
    ):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer (measure every that many steps), got {every!r}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if eval_data is not None and not _is_batch(eval_data):
            raise ValueError("eval_data must be one (inputs, targets) pair of tensors")
        if not (isinstance(tol, (int, float)) and tol > 0):
            raise ValueError(f"tol must be a number > 0, got {tol!r}")
        if edge is not None and not callable(edge) and not (isinstance(edge, (int, float)) and edge > 0):
            raise ValueError(f"edge must be a number > 0 or a function of the gradient norm, got {edge!r}")
        self.batch_loss, self.user_edge = batch_loss, edge
        self.model, self.loss_fn, self.data, self.optimizer = model, loss_fn, data, optimizer
        self.every, self.eval_data, self.tol, self.max_iter, self.seed = every, eval_data, tol, max_iter, seed
        self.train_mode, self.hvp_method, self.kernels = train_mode, hvp_method, check_kernels(kernels)
        batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if train_mode and batchnorm and hvp_method == "forward_over_reverse":
            raise ValueError(
                "hvp_method='forward_over_reverse' cannot differentiate train-mode BatchNorm (torch.func refuses its "
                "in-place running-statistics update): use hvp_method='double_backward' (the default, also the cheaper) "
                "or train_mode=False"
            )
        self.t = 0  # optimizer steps seen
        self.rows: List[Dict[str, Any]] = []
        self.diverged_at: Optional[int] = None
        self._warm = WarmStart()
        self._warned: set = set()
        self._seconds = 0.0  # spent measuring
        self._start = time.perf_counter()
        self._check_data(data)
        self._spec()
        self._warn_mode()

    def _warn(self, spec: EdgeSpec) -> None:
        if spec.rule is None and spec.reason not in self._warned:
            self._warned.add(spec.reason)
            warnings.warn(
                f"EdgeMonitor: no stability edge for this optimizer ({spec.reason}); "
                "edge and ratio are recorded as None",
                stacklevel=3,
            )

    def _warn_mode(self) -> None:
        """A warning, at construction, when the measurement depends on the mode: BatchNorm with
        running statistics, or dropout with p > 0. It names the mode measured in and the other."""
        kinds = sorted(
            {
                type(m).__name__
                for m in self.model.modules()
                if (isinstance(m, _BatchNorm) and m.track_running_stats) or (isinstance(m, _DropoutNd) and m.p > 0)
            }
        )
        if not kinds:
            return
        desc = {
            "train": "batch statistics differentiated through, dropout on: the loss training descends",
            "eval": "running statistics, no dropout",
        }
        mode, other = ("train", "eval") if self.train_mode else ("eval", "train")
        warnings.warn(
            f"EdgeMonitor: the model has {', '.join(kinds)}, so ||H|| depends on the mode; it is measured in "
            f"{mode} mode ({desc[mode]}); pass train_mode={not self.train_mode} to measure in {other} mode "
            f"({desc[other]})",
            UserWarning,
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

    def _batches(self, data: Any) -> list:
        if self.batch_loss:
            return [data] if _one_batch(data) else list(data)
        return [data] if _is_batch(data) else list(data)

    def _check_data(self, data: Any) -> None:
        """The data's format, checked once at build time (the first batch of an iterable)."""
        if self.batch_loss:
            first = data if _one_batch(data) else next(iter(data), None)
            if first is None:
                raise ValueError("data holds no batch")
            _size(first)
            return
        if _is_batch(data):
            return
        first = next(iter(data), None) if isinstance(data, (list, tuple)) or hasattr(data, "__iter__") else None
        if first is None or not _is_batch(first):
            raise ValueError(
                "data must be an (inputs, targets) pair of tensors or an iterable of such pairs; for other "
                "formats (dicts, (x, y, extra) tuples, several inputs) pass batch_loss=True and loss_fn(model, batch)"
            )

    def _closures(self, device: torch.device) -> tuple:
        """(loss closures, their weights) on the monitor's data, moved to ``device``."""
        batches = self._batches(self.data)
        if self.batch_loss:
            fns = [batch_loss(self.model, self.loss_fn, _to(b, device)) for b in batches]
            sizes = [_size(b) for b in batches]
        else:
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
        device = next(iter(self._params().values())).device
        cuda = [device] if device.type == "cuda" else []
        try:
            # Dropout in train mode draws random numbers: the user's training must not see them.
            with torch.random.fork_rng(devices=cuda):
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
        self.rows.append(row)
        return row

    def _diverged_row(self, loss: float, grad_norm: float) -> Dict[str, Any]:
        """The row at a non-finite loss or gradient: no Lanczos run, the divergence marked."""
        if self.diverged_at is None:
            self.diverged_at = self.t
            warnings.warn(
                f"EdgeMonitor: the loss or its gradient is not finite at step {self.t} (loss {loss}); "
                "the record marks the divergence there",
                RuntimeWarning,
                stacklevel=4,
            )
        nan = float("nan")
        return {
            STEP: self.t,
            TRAIN_LOSS: loss,
            GRAD_NORM: grad_norm,
            OP_NORM: nan,
            LAMBDA_MAX: nan,
            LAMBDA_MIN: nan,
            EDGE: None,
            GD_EDGE: None,
            RATIO: None,
            HVPS: 0,
            CONVERGED: False,
        }

    def _measure(self) -> Dict[str, Any]:
        params = self._params()
        device = next(iter(params.values())).device
        spec = self._spec()  # param groups can change (schedules, user edits)
        fns, weights = self._closures(device)
        train = prepare(fns, params, self.hvp_method, weights, kernels=self.kernels)
        gn = float(norm(train.grad))
        if not (math.isfinite(float(train.loss)) and math.isfinite(gn)):
            return self._diverged_row(float(train.loss), gn)
        sam_grad = None
        if spec.rule in ("sam", "usam"):
            w_tilde = ascent_point(params, train.grad, spec.rho, spec.rule == "sam")
            sam_grad = loss_and_grad(train.op.loss_fns, w_tilde, train.op.weights)[1] if spec.rho else train.grad
        eval_point = None
        if self.eval_data is not None:
            ex, ey = self.eval_data
            eval_point = prepare(
                module_loss(self.model, self.loss_fn, ex.to(device), ey.to(device)),
                params,
                self.hvp_method,
                kernels=self.kernels,
            )
        # A user's edge is compared with ||H||; an adaptive optimizer's with lambda_max(P^-1 H).
        precondition = self._preconditioner(spec) if spec.preconditioned and self.user_edge is None else None
        known = precondition is not None or not spec.preconditioned or self.user_edge is not None
        edge_at = self._edge_at(spec) if known else None
        row, self._warm = measure(
            self.t,
            train,
            edge_at,
            spec.gd_edge() if self.user_edge is None else None,
            self._warm,
            self.tol,
            self.max_iter,
            self.seed + self.t,
            sam_grad=sam_grad,
            eval_point=eval_point,
            precondition=precondition,
        )
        if not math.isfinite(row[OP_NORM]) and self.diverged_at is None:
            self.diverged_at = self.t
        return row

    def _spec(self) -> EdgeSpec:
        """The optimizer's rule now; a warning, once, when it has no edge and none was given."""
        spec = edge_spec(self.optimizer)
        if self.user_edge is None:
            self._warn(spec)
        return spec

    def _preconditioner(self, spec: EdgeSpec) -> Optional[tuple]:
        """(P, shift) of an Adam, AdamW or RMSprop step now; None (a warning, once) before its first step."""
        params: Params = {k: p for k, p in self.model.named_parameters() if p.requires_grad}
        try:
            diag = adam_preconditioner(self.optimizer, params)
        except ValueError as err:
            self._warn(EdgeSpec(None, reason=f"no preconditioner to measure with yet: {err}"))
            return None
        # Coupled weight decay (Adam, RMSprop) divides by P too; AdamW's decoupled decay is in its edge.
        return diag, (spec.weight_decay if spec.rule in ("adam", "rmsprop") else 0.0)

    def _edge_at(self, spec: EdgeSpec) -> Optional[Callable[[float], Optional[float]]]:
        """The edge as a function of the gradient norm: the user's, else the rule's, else None."""
        user = self.user_edge
        if user is not None:
            return user if callable(user) else (lambda gn: float(user))
        return spec.edge if spec.rule else None

    def to_frame(self):
        """The rows as a pandas DataFrame (one row per measurement)."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def label(self) -> str:
        """The update rule in full, e.g. 'SGD momentum=0.9 weight_decay=0.0005', 'SAM rho=0.05 over SGD'."""
        spec = edge_spec(self.optimizer)
        if spec.label:
            return spec.label
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

    def record(self, label: Optional[str] = None) -> MonitorRecord:
        """The rows and what made them, as a ``MonitorRecord`` (drawn by ``samedge.plots``,
        tabulated by ``samedge.analysis``) under ``label`` (default: ``self.label()``)."""
        spec = edge_spec(self.optimizer)
        first = next(iter(self._params().values()))
        user = self.user_edge is not None
        lr = self.optimizer.param_groups[0].get("lr")
        meta = dict(
            label=label or self.label() + (" (your edge)" if user else ""),
            optimizer=type(self.optimizer).__name__,
            rule="user" if user else spec.rule,
            sharpness="lambda_max(P^-1 H)" if spec.preconditioned and not user else "||H||_op",
            no_edge_reason=None if user else (spec.reason or None),
            lr=None if lr is None else float(lr),
            rho=spec.rho,
            beta=spec.beta,
            every=self.every,
            steps=max([1, self.t] + [r[STEP] for r in self.rows]),
            diverged_at=self.diverged_at,
            tol=float(self.tol),
            max_iter=self.max_iter,
            hvp_method=self.hvp_method,
            kernels=self.kernels,
            train_mode=self.train_mode,
            seed=self.seed,
            device=str(first.device),
            dtype=str(first.dtype).removeprefix("torch."),
            train_seconds=self.rows[-1][TRAIN_SECONDS] if self.rows else 0.0,
            measure_seconds=self._seconds,
        )
        return MonitorRecord([dict(r) for r in self.rows], meta)

    def save(self, run_dir: str | os.PathLike, label: Optional[str] = None, overwrite: bool = False) -> Path:
        """Write the record (monitor.json, record.csv) into ``run_dir``; read it back with
        ``samedge.MonitorRecord.load``. A directory holding another record is refused unless
        ``overwrite``."""
        rec = self.record(label)
        rec.env = environment(rec.meta["device"])
        return rec.save(run_dir, overwrite=overwrite)
