"""Issue 23: is SAM's sharpness above the SAM-edge linearly unstable? The exact SAM-map criterion.

    SAMEDGE_DATA_DIR=... python benchmarks/sam_map_probe.py [--steps 300] [--start 150] [--every 1]

On 500 MNIST examples, an MLP 784-128-128-128-10 (seed 0) trained with the authors' squared loss
by full-batch GD / SAM (eta 2.0, rho 0, 0.05, 0.1; ``samedge.sam_step``), one thread. At every
``--every``-th step from ``--start`` to ``--steps`` it measures, at the iterate before the step,
||H||_op (``samedge.sharpness``), the SAM-edge from ||g||, cos^2(g, u) with u the top Hessian
eigenvector, the aligned edge (``samedge.aligned_sam_edge``) and eta mu, mu the eigenvalue of the
SAM map's M with the largest real part (``samedge.sam_map_sharpness``); both solvers warm-start
from their previous eigenvectors. Prints, per run and per phase (even / odd step), the medians of
||H|| / SAM-edge, ||H|| / aligned edge and eta mu (the linear criterion: unstable above 2).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import samedge
from samedge.data import load_mnist
from samedge.losses import module_loss, parameters_of, squared_loss
from samedge.models import MLP
from samedge.vectors import alignment

ETA = 2.0


def probe(rho: float, steps: int, start: int, every: int, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Train one run and return its per-measurement arrays (step, ratios, eta mu, HVPs)."""
    torch.manual_seed(0)
    model = MLP(784, 128, 3, 10)
    loss_fn = module_loss(model, squared_loss, x, y)
    params = parameters_of(model)
    rows, v_h, v_m = [], None, None
    for t in range(steps + 1):
        if t >= start and (t - start) % every == 0:
            s = samedge.sharpness(samedge.HessianOperator(loss_fn, params), v0=v_h, tol=1e-3)
            m = samedge.sam_map_sharpness(loss_fn, params, rho, v0=v_m, tol=1e-3)
            v_h, v_m = s.eigenvector, m.eigenvector
            g = torch.func.grad(loss_fn)(params)
            gn = m.grad_norm
            cos2 = min(alignment(g, s.eigenvector) ** 2, 1.0)  # round-off can put |cos| a hair above 1
            edge = samedge.sam_edge(ETA, rho, gn)
            aligned = samedge.aligned_sam_edge(ETA, rho, gn, cos2)
            rows.append(
                (
                    t,
                    s.op_norm / edge,
                    s.op_norm / aligned,
                    ETA * m.value,
                    cos2,
                    m.imag,
                    s.num_hvps,
                    m.num_hvps,
                    m.converged,
                )
            )
        if t < steps:
            params = samedge.sam_step(loss_fn, params, ETA, rho).params
    return {
        k: np.array(v)
        for k, v in zip(("step", "formula", "aligned", "eta_mu", "cos2", "imag", "hvp_h", "hvp_m", "conv"), zip(*rows))
    }


def main() -> None:
    """Run the three probes and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--start", type=int, default=150)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--rhos", type=float, nargs="+", default=[0.0, 0.05, 0.1])
    args = ap.parse_args()
    torch.set_num_threads(1)
    train, _ = load_mnist(500, 100)
    print(
        "| rho | phase | n | median ||H||/SAM-edge | median ||H||/aligned edge | median eta mu "
        "| median cos^2 | max |imag mu|/mu | HVPs per measurement (H, M) | unconverged | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for rho in args.rhos:
        t0 = time.perf_counter()
        r = probe(rho, args.steps, args.start, args.every, train.inputs, train.targets)
        sec = time.perf_counter() - t0
        for phase, sel in (("even", r["step"] % 2 == 0), ("odd", r["step"] % 2 == 1)):
            if not sel.any():
                continue
            med = lambda k, r=r, sel=sel: float(np.median(r[k][sel]))
            imag = float(np.max(np.abs(r["imag"][sel]) / np.abs(r["eta_mu"][sel] / ETA)))
            print(
                f"| {rho} | {phase} | {int(sel.sum())} | {med('formula'):.3f} | {med('aligned'):.3f} "
                f"| {med('eta_mu'):.3f} | {med('cos2'):.3f} | {imag:.1e} | {med('hvp_h'):.0f}, {med('hvp_m'):.0f} "
                f"| {int((~r['conv'][sel].astype(bool)).sum())} | {sec:.0f} |"
            )


if __name__ == "__main__":
    main()
