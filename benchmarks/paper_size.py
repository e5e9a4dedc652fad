"""CPU (or GPU) time of one SAM step and one measurement at each `paper` preset's full size.

    SAMEDGE_DATA_DIR=... python benchmarks/paper_size.py [--device cpu] [--mnist-fraction 0.1] [--kernels onednn]

For each task: the preset's model, batch and eta, its largest rho; the time of one SAM step
(two gradients on the batch) and of one measurement (the retained-graph HVP operator, cold and
warm-started guarded Lanczos at the preset's tolerance), after one warm-up step. MNIST's full
batch of 60000 takes minutes per step on 2 cores, so ``--mnist-fraction`` times a fraction of it
and scales linearly (cost is linear in the batch); the report says so. Steps and HVPs run on the
preset's ``kernels`` (``samedge.kernels``) unless ``--kernels`` chooses. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time
from typing import Optional

import torch

from samedge.hessian import HessianOperator, sharpness
from samedge.kernels import KERNELS
from samedge.losses import module_loss, parameters_of
from samedge.presets import load_preset, resolve_params, run_configs
from samedge.sam import sam_step
from samedge.tasks import get_task


def time_task(task: str, device: str, mnist_fraction: float, kernels: Optional[str] = None) -> dict:
    """Seconds per SAM step and per measurement (cold and warm) at the paper preset's size."""
    paper = load_preset(task, "paper")
    scale, extra = 1.0, {}
    if task == "mnist" and mnist_fraction < 1:
        extra = dict(n_train=int(paper["n_train"] * mnist_fraction), n_test=16)
        scale = 1 / mnist_fraction
    elif task == "cifar10":
        extra = dict(n_test=16)
    elif task == "shakespeare":
        extra = dict(n_test_crops=8)
    params = resolve_params(task, "paper", **extra, rhos=[max(paper["rhos"])], kernels=kernels, device=device)
    (cfg,) = run_configs(task, params)
    torch.manual_seed(0)
    built = get_task(task).build(cfg.options, cfg.batch_size, device, cfg.torch_dtype, None)
    w = parameters_of(built.model)
    gen = torch.Generator().manual_seed(0)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    x, y = built.sample(0, gen)
    loss_fn = module_loss(built.model, built.loss, x, y)
    w = sam_step(loss_fn, w, cfg.eta, cfg.rho, kernels=cfg.kernels).params  # warm-up
    sync()
    t0 = time.perf_counter()
    st = sam_step(loss_fn, w, cfg.eta, cfg.rho, kernels=cfg.kernels)
    sync()
    t_step = time.perf_counter() - t0
    t0 = time.perf_counter()
    cold = sharpness(
        HessianOperator(loss_fn, st.params, kernels=cfg.kernels),
        tol=cfg.lanczos_tol,
        max_iter=cfg.lanczos_max_iter,
        seed=1,
    )
    sync()
    t_cold = time.perf_counter() - t0
    w2 = sam_step(loss_fn, st.params, cfg.eta, cfg.rho, kernels=cfg.kernels).params
    t0 = time.perf_counter()
    warm = sharpness(
        HessianOperator(loss_fn, w2, kernels=cfg.kernels),
        v0=cold.eigenvector,
        tol=cfg.lanczos_tol,
        max_iter=cfg.lanczos_max_iter,
        seed=2,
    )
    sync()
    t_warm = time.perf_counter() - t0
    n = sum(p.numel() for p in w.values())
    return dict(
        task=task,
        params=n,
        batch=len(x),
        scale=scale,
        step=t_step * scale,
        cold=t_cold * scale,
        cold_hvps=cold.num_hvps,
        warm=t_warm * scale,
        warm_hvps=warm.num_hvps,
        steps=cfg.steps,
        every=cfg.measure_every,
        kernels=cfg.kernels,
    )


def main() -> None:
    """Print the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mnist-fraction", type=float, default=0.1, help="time MNIST on this fraction of 60000, scale up")
    ap.add_argument(
        "--kernels", choices=KERNELS, help="linear-layer kernels (samedge.kernels; default: each paper preset's)"
    )
    args = ap.parse_args()
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(
        "| task | kernels | parameters | batch timed | SAM step s | cold measurement s (HVPs) "
        "| warm measurement s (HVPs) | one run, s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for task in ("mnist", "cifar10", "shakespeare"):
        r = time_task(task, args.device, args.mnist_fraction, args.kernels)
        per_run = r["steps"] * r["step"] + (r["steps"] // r["every"] + 1) * r["warm"] * (
            2 if task == "shakespeare" else 1
        )
        note = f" (x{r['scale']:g})" if r["scale"] != 1 else ""
        print(
            f"| {task} | {r['kernels']} | {r['params']:,} | {r['batch']}{note} | {r['step']:.3g} | {r['cold']:.3g} ({r['cold_hvps']}) "
            f"| {r['warm']:.3g} ({r['warm_hvps']}) | {per_run:.3g} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
