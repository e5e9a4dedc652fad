"""The training and measurement loop: SAM (or GD) for ``steps`` steps, measuring sharpness
against the SAM-edge every ``measure_every`` steps, checkpointing so that a killed run resumes
exactly where it was."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch.func import grad_and_value
from tqdm.auto import tqdm

from .config import ConfigError, RunConfig, resolve_device
from .edge import edge as stability_edge
from .edge import gd_edge
from .hessian import HessianOperator, sharpness
from .losses import module_loss, parameters_of
from .precision import pinned_precision
from .record import RunRecord, atomic_write_text, environment
from .sam import sam_step
from .tasks import get_task
from .vectors import alignment, flatten, norm

__all__ = ["run", "RunDirError"]

CHECKPOINT = "checkpoint.pt"


class RunDirError(RuntimeError):
    """The run directory belongs to another configuration."""


def _finite(*xs: float) -> bool:
    return all(math.isfinite(x) for x in xs)


def _measure(loss_fn, params, v0, cfg: RunConfig, seed: int, op: Optional[HessianOperator] = None):
    op = op or HessianOperator(loss_fn, params, cfg.hvp_method)
    return sharpness(op, v0=v0, tol=cfg.lanczos_tol, max_iter=cfg.lanczos_max_iter, seed=seed)


def _graph_operator(loss_fn, params, cfg: RunConfig):
    """(operator, (loss, gradient)) where the HVP graph also yields the gradient (double backward);
    (None, None) for forward-over-reverse, which has no graph to share."""
    if cfg.hvp_method != "double_backward":
        return None, None
    op = HessianOperator(loss_fn, params, cfg.hvp_method)
    return op, op.loss_and_gradient()


def _save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _check_run_dir(run_dir: Path, cfg: RunConfig) -> None:
    meta = run_dir / "config.json"
    if meta.exists():
        saved = json.loads(meta.read_text())["config"]
        if saved != cfg.to_dict():
            diff = sorted(k for k in set(saved) | set(cfg.to_dict()) if saved.get(k) != cfg.to_dict().get(k))
            raise RunDirError(
                f"{run_dir} holds a run with a different configuration (differs in {diff}); "
                "refusing to overwrite it: choose another results directory or delete that one"
            )


def run(
    cfg: RunConfig,
    run_dir: Optional[str | os.PathLike] = None,
    data_dir: Optional[str | os.PathLike] = None,
    progress: bool = True,
    stop_after: Optional[int] = None,
) -> RunRecord:
    """Train and measure as ``cfg`` says; with ``run_dir``, save the record there, checkpoint
    along the way, resume from a checkpoint, and return a finished record without rerunning.

    Matmuls and convolutions run in IEEE float32 on CUDA (no TF32) unless ``cfg.allow_tf32``.
    ``stop_after`` ends the call after that many steps (leaving a checkpoint), for tests.
    """
    with pinned_precision(cfg.allow_tf32):
        return _run(cfg, run_dir, data_dir, progress, stop_after)


def _run(cfg: RunConfig, run_dir, data_dir, progress: bool, stop_after: Optional[int]) -> RunRecord:
    device = resolve_device(cfg.device)
    if device != cfg.device and cfg.device != "auto":
        raise ConfigError(f"device {cfg.device!r} resolved to {device!r}")
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        _check_run_dir(run_dir, cfg)
        if (run_dir / "summary.json").exists() and (run_dir / "record.csv").exists():
            return RunRecord.load(run_dir)

    env = environment(device)
    dtype = cfg.torch_dtype
    torch.manual_seed(cfg.seed)
    task = get_task(cfg.task).build(cfg.options, cfg.batch_size, device, dtype, data_dir)
    model = task.model
    params = parameters_of(model)
    gen = torch.Generator().manual_seed(cfg.seed)  # minibatch sampling only
    minibatch = task.eval_batch is not None
    state: Dict[str, Any] = dict(step=0, rows=[], v=None, v_eval=None, v_ascent=None, train_seconds=0.0, measure_seconds=0.0)

    ckpt = run_dir / CHECKPOINT if run_dir is not None else None
    if ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, weights_only=True, map_location=device)
        params = saved.pop("params")
        gen.set_state(saved.pop("generator"))
        state.update(saved)
    if run_dir is not None:
        atomic_write_text(run_dir / "config.json", json.dumps({"config": cfg.to_dict(), "env": env}, indent=2))
    every_ckpt = cfg.checkpoint_every or max(1, cfg.steps // 20)
    edge2 = gd_edge(cfg.eta)
    diverged_at = None

    bar = tqdm(total=cfg.steps, initial=state["step"], desc=cfg.run_name()[:40], disable=not progress, leave=False)
    t = state["step"]
    while t <= cfg.steps:
        x, y = task.sample(t, gen)
        loss_fn = module_loss(model, task.loss, x, y)
        measuring = t % cfg.measure_every == 0 or t == cfg.steps
        t0 = time.perf_counter()
        # The HVP graph holds g = grad L(w_t): the SAM step reuses it instead of recomputing.
        op, pre = _graph_operator(loss_fn, params, cfg) if measuring else (None, None)
        tg = time.perf_counter()  # building the graph counts as measurement (conservatively)
        st = sam_step(loss_fn, params, cfg.eta, cfg.rho, cfg.normalize, loss_and_grad=pre)
        t1 = time.perf_counter()
        state["measure_seconds"] += tg - t0
        if t < cfg.steps:
            state["train_seconds"] += t1 - tg
        loss, gnorm = float(st.loss), float(st.grad_norm)
        if not _finite(loss, gnorm):
            diverged_at = t
            break
        if measuring:
            sh = _measure(loss_fn, params, state["v"], cfg, cfg.seed + t, op)
            op = None  # frees the retained graph
            state["v"] = sh.eigenvector
            edge = stability_edge(cfg.rule, cfg.eta, cfg.rho, gnorm)
            row = dict(
                step=t, train_loss=loss, grad_norm=gnorm, op_norm=sh.op_norm, lambda_max=sh.lambda_max,
                lambda_min=sh.lambda_min, edge=edge, gd_edge=edge2, ratio=sh.op_norm / edge if edge > 0 else math.inf,
                align_grad=alignment(flatten(st.grad), sh.eigenvector),
                align_sam_grad=alignment(flatten(st.sam_grad), sh.eigenvector),
                hvps=sh.num_hvps, converged=sh.converged,
            )
            if minibatch:
                ex, ey = task.eval_batch
                efn = module_loss(model, task.loss, ex, ey)
                eop, epre = _graph_operator(efn, params, cfg)  # the eval gradient from the eval HVP graph
                el, eg = epre if epre is not None else grad_and_value(efn)(params)[::-1]
                egn = float(norm(eg))
                esh = _measure(efn, params, state["v_eval"], cfg, cfg.seed + t + 1, eop)
                eop = None
                state["v_eval"] = esh.eigenvector
                eedge = stability_edge(cfg.rule, cfg.eta, cfg.rho, egn)
                row.update(eval_loss=float(el), eval_grad_norm=egn, eval_op_norm=esh.op_norm,
                           eval_edge=eedge, eval_ratio=esh.op_norm / eedge if eedge > 0 else math.inf, eval_hvps=esh.num_hvps)
            if cfg.measure_ascent:
                ash = _measure(loss_fn, st.ascent_params, state["v_ascent"], cfg, cfg.seed + t + 2)
                state["v_ascent"] = ash.eigenvector
                row.update(ascent_op_norm=ash.op_norm, ascent_hvps=ash.num_hvps)
            state["measure_seconds"] += time.perf_counter() - t1
            row.update(train_seconds=state["train_seconds"], measure_seconds=state["measure_seconds"])
            state["rows"].append(row)
            if not _finite(sh.op_norm):
                diverged_at = t
                break
        if t == cfg.steps:
            break
        params = st.params
        t += 1
        state["step"] = t
        bar.update(1)
        if ckpt is not None and (t % every_ckpt == 0):
            _save_checkpoint(ckpt, dict(params=params, generator=gen.get_state(), **state))
        if stop_after is not None and t >= stop_after:
            bar.close()
            return RunRecord(cfg, state["rows"], {"complete": False, "stopped_at": t}, env)
    bar.close()

    for k, p in params.items():  # the final weights, for the test metrics
        model.get_parameter(k).data.copy_(p)
    summary: Dict[str, Any] = dict(
        complete=True, diverged=diverged_at is not None, diverged_at=diverged_at,
        steps_done=t, train_seconds=state["train_seconds"], measure_seconds=state["measure_seconds"],
        num_train=task.num_train,
    )
    if diverged_at is None:
        summary.update(task.evaluate(model))
    record = RunRecord(cfg, state["rows"], summary, env)
    if run_dir is not None:
        record.save(run_dir)
        if ckpt.exists():
            ckpt.unlink()
    return record
