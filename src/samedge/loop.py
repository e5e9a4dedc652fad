"""The training and measurement loop: SAM (or GD) for ``steps`` steps, measuring sharpness
against the SAM-edge every ``measure_every`` steps (with ``samedge.monitor``, the measurement
EdgeMonitor uses), checkpointing so that a killed run resumes exactly where it was."""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from tqdm.auto import tqdm

from . import rundir
from .columns import (
    ACCOUNT_COLUMNS,
    AMPLITUDE_U,
    GROWTH_U,
    GROWTH_U_AT_AMPLITUDE,
    MEASURE_SECONDS,
    OP_NORM,
    SAM_MAP_HVPS,
    SAM_MAP_MU,
    TRAIN_SECONDS,
)
from .config import ConfigError, RunConfig, resolve_device
from .edge import edge as stability_edge
from .edge import gd_edge
from .environment import environment
from .losses import module_loss, parameters_of
from .measure import WarmStart, measure, prepare
from .precision import pinned_precision
from .record import RunRecord
from .rundir import CHECKPOINT, DamagedRunError, RunDirError, atomic_write_text
from .sam import sam_step
from .sam_map import sam_map_accounts
from .tasks import get_task

__all__ = ["run", "RunDirError"]


def _all_finite(*xs: float) -> bool:
    return all(math.isfinite(x) for x in xs)


def _finished(run_dir: Path, cfg: RunConfig) -> Optional[RunRecord]:
    """The finished, validated record in ``run_dir``, or None when the run is still to do;
    a directory holding another configuration, or damaged, is refused."""
    rundir.prepare_run_dir(run_dir)
    meta = rundir.read_config(run_dir) if run_dir.is_dir() else None
    if meta is not None and meta["config"] != cfg.to_dict():
        saved = meta["config"]
        diff = sorted(k for k in set(saved) | set(cfg.to_dict()) if saved.get(k) != cfg.to_dict().get(k))
        raise RunDirError(
            f"{run_dir} holds a run with a different configuration (differs in {diff}); "
            "refusing to overwrite it: choose another results directory or delete that one"
        )
    rundir.check_fingerprint(run_dir, cfg.fingerprint())
    return RunRecord.load(run_dir) if (run_dir / rundir.SUMMARY).exists() else None


def run(
    cfg: RunConfig,
    run_dir: Optional[str | os.PathLike] = None,
    data_dir: Optional[str | os.PathLike] = None,
    progress: bool = True,
    stop_after: Optional[int] = None,
    on_damaged_checkpoint: str = "restart",
    lock_timeout: float = 0.0,
) -> RunRecord:
    """Train and measure as ``cfg`` says; with ``run_dir``, save the record there, checkpoint
    along the way, resume from a checkpoint, and return a finished record without rerunning.

    Matmuls and convolutions run in IEEE float32 on CUDA (no TF32) unless ``cfg.allow_tf32``.
    ``stop_after`` ends the call after that many steps (leaving a checkpoint), for tests.

    A finished record is validated when reloaded (``record.check_record``); a damaged one is an
    error naming the file, never partial or mistyped data. One process writes a run directory at
    a time: the run holds its lock (``rundir.RunLock``) from start to end; a second writer waits
    ``lock_timeout`` seconds (default 0: it fails at once with RunDirBusyError naming the holder),
    and reloads the record if the first one finished meanwhile. Reading a finished run takes no
    lock, so it works on a read-only copy.

    ``on_damaged_checkpoint``: what to do with a ``checkpoint.pt`` that cannot be read, has other
    keys, or belongs to another configuration. 'restart' (the default) moves it aside to
    ``checkpoint.pt.damaged``, warns, and runs from step 0; 'error' raises DamagedRunError.
    Restarting is the default because a checkpoint holds no result, only progress: a run is
    deterministic, so the restarted record is the one the checkpoint would have led to, and what
    the damage cost (the compute since step 0) is lost either way; an error would only make every
    resubmitted job of a sweep fail until someone deletes the file by hand.
    """
    device = resolve_device(cfg.device)
    if on_damaged_checkpoint not in ("restart", "error"):
        raise ConfigError(f"on_damaged_checkpoint must be 'restart' or 'error', got {on_damaged_checkpoint!r}")
    if run_dir is None:
        with pinned_precision(cfg.allow_tf32):
            return _run(cfg, None, device, data_dir, progress, stop_after, on_damaged_checkpoint)
    run_dir = Path(run_dir)
    done = _finished(run_dir, cfg)
    if done is not None:
        return done
    with rundir.RunLock(run_dir, timeout=lock_timeout):
        done = _finished(run_dir, cfg)  # the writer we waited for may have finished it
        if done is not None:
            return done
        rundir.remove_temporaries(run_dir)
        if (run_dir / rundir.RECORD).exists():
            how = "resuming from its checkpoint" if (run_dir / CHECKPOINT).exists() else "recomputing it from step 0"
            warnings.warn(
                f"{run_dir} holds record.csv but no summary.json: its final save was cut short; {how}",
                RuntimeWarning,
                stacklevel=2,
            )
        with pinned_precision(cfg.allow_tf32):
            return _run(cfg, run_dir, device, data_dir, progress, stop_after, on_damaged_checkpoint)


def _load_checkpoint(
    ckpt: Path, device: str, keys, params, cfg: RunConfig, on_damaged: str
) -> Optional[Dict[str, Any]]:
    """The checkpoint's state, or None (start from step 0) when there is none, or it is damaged
    and ``on_damaged`` is 'restart' (it is kept as checkpoint.pt.damaged)."""
    if not ckpt.exists():
        return None
    try:
        return rundir.load_checkpoint(ckpt, device, keys, params, cfg.fingerprint())
    except DamagedRunError as err:
        if on_damaged == "error":
            raise
        aside = ckpt.with_name(ckpt.name + ".damaged")
        os.replace(ckpt, aside)
        warnings.warn(
            f"{ckpt} is damaged: {err.what}. Restarting the run from step 0 (a run is deterministic: "
            f"same record); the damaged file is kept as {aside}",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def _run(
    cfg: RunConfig,
    run_dir: Optional[Path],
    device: str,
    data_dir,
    progress: bool,
    stop_after: Optional[int],
    on_damaged_checkpoint: str,
) -> RunRecord:
    """The body of ``run``: train and measure, checkpointing into ``run_dir`` (locked by ``run``)."""
    env = environment(device)
    dtype = cfg.torch_dtype
    torch.manual_seed(cfg.seed)
    task = get_task(cfg.task).build(cfg.options, cfg.batch_size, device, dtype, data_dir)
    model = task.model
    params = parameters_of(model)
    gen = torch.Generator().manual_seed(cfg.seed)  # minibatch sampling only
    minibatch = task.eval_batch is not None
    state: Dict[str, Any] = dict(step=0, rows=[], warm=WarmStart(), train_seconds=0.0, measure_seconds=0.0)

    ckpt = run_dir / CHECKPOINT if run_dir is not None else None
    saved = _load_checkpoint(ckpt, device, state, params, cfg, on_damaged_checkpoint) if ckpt is not None else None
    if saved is not None:
        params = saved.pop("params")
        gen.set_state(saved.pop("generator"))
        state.update(saved, warm=WarmStart(**saved["warm"]))
    if run_dir is not None:
        atomic_write_text(run_dir / "config.json", json.dumps({"config": cfg.to_dict(), "env": env}, indent=2))
    every_ckpt = cfg.checkpoint_every or max(1, cfg.steps // 20)
    edge_at = lambda gn: stability_edge(cfg.rule, cfg.eta, cfg.rho, gn)  # noqa: E731
    diverged_at = None

    scheduled, with_accounts = set(cfg.measured_steps()), set(cfg.account_steps())
    bar = tqdm(total=cfg.steps, initial=state["step"], desc=cfg.run_name()[:40], disable=not progress, leave=False)
    t = state["step"]
    while t <= cfg.steps:
        x, y = task.sample(t, gen)
        loss_fn = module_loss(model, task.loss, x, y)
        measuring = t in scheduled
        t0 = time.perf_counter()
        # The HVP graph holds g = grad L(w_t): the SAM step reuses it instead of recomputing.
        point = prepare(loss_fn, params, cfg.hvp_method, kernels=cfg.kernels) if measuring else None
        tg = time.perf_counter()  # building the graph counts as measurement (conservatively)
        st = sam_step(
            loss_fn,
            params,
            cfg.eta,
            cfg.rho,
            cfg.normalize,
            loss_and_grad=(point.loss, point.grad) if point is not None else None,
            kernels=cfg.kernels,
        )
        t1 = time.perf_counter()
        state["measure_seconds"] += tg - t0
        if t < cfg.steps:
            state["train_seconds"] += t1 - tg
        if not _all_finite(float(st.loss), float(st.grad_norm)):
            diverged_at = t
            break
        if measuring:
            eval_point = None
            if minibatch:
                ex, ey = task.eval_batch
                eval_point = prepare(module_loss(model, task.loss, ex, ey), params, cfg.hvp_method, kernels=cfg.kernels)
            row, warm = measure(
                t,
                point,
                edge_at,
                gd_edge(cfg.eta),
                state["warm"],
                cfg.lanczos_tol,
                cfg.lanczos_max_iter,
                cfg.seed + t,
                sam_grad=st.sam_grad,
                eval_point=eval_point,
                ascent_params=st.ascent_params if cfg.measure_ascent else None,
                ascent_loss=loss_fn,
            )
            point = eval_point = None  # frees the retained graphs
            if cfg.accounts_every is not None:
                row.update(dict.fromkeys(ACCOUNT_COLUMNS, math.nan))
            if t in with_accounts and _all_finite(row[OP_NORM]):
                acc = sam_map_accounts(
                    loss_fn,
                    params,
                    cfg.eta,
                    cfg.rho,
                    warm.train,
                    cfg.normalize,
                    v0=state["warm"].sam_map,
                    tol=cfg.lanczos_tol,
                    max_iter=cfg.lanczos_max_iter,
                    seed=cfg.seed + t + 3,
                    method=cfg.hvp_method,
                    kernels=cfg.kernels,
                )
                row.update(
                    {
                        SAM_MAP_MU: acc.sharpness.value,
                        SAM_MAP_HVPS: acc.sharpness.num_hvps,
                        GROWTH_U: acc.growth,
                        GROWTH_U_AT_AMPLITUDE: acc.growth_at_amplitude,
                        AMPLITUDE_U: acc.amplitude,
                    }
                )
                warm.sam_map = acc.sharpness.eigenvector
            elif warm.sam_map is None:
                warm.sam_map = state["warm"].sam_map  # the SAM map's eigenvector waits for the next accounts
            state["warm"] = warm
            state["measure_seconds"] += time.perf_counter() - t1
            row.update({TRAIN_SECONDS: state["train_seconds"], MEASURE_SECONDS: state["measure_seconds"]})
            state["rows"].append(row)
            if not _all_finite(row[OP_NORM]):
                diverged_at = t
                break
        if t == cfg.steps:
            break
        params = st.params
        t += 1
        state["step"] = t
        bar.update(1)
        if ckpt is not None and (t % every_ckpt == 0):
            # Atomic: a full disk leaves the previous checkpoint.
            rundir.save_checkpoint(
                ckpt,
                dict(
                    params=params,
                    generator=gen.get_state(),
                    fingerprint=cfg.fingerprint(),
                    **{**state, "warm": asdict(state["warm"])},
                ),
            )
        if stop_after is not None and t >= stop_after:
            bar.close()
            return RunRecord(cfg, state["rows"], {"complete": False, "stopped_at": t}, env)
    bar.close()

    for k, p in params.items():  # the final weights, for the test metrics
        model.get_parameter(k).data.copy_(p)
    summary: Dict[str, Any] = dict(
        complete=True,
        diverged=diverged_at is not None,
        diverged_at=diverged_at,
        steps_done=t,
        train_seconds=state["train_seconds"],
        measure_seconds=state["measure_seconds"],
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
