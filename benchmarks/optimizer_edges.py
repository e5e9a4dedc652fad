"""Heavy-ball GD, SAM over heavy-ball SGD and Adam on the MNIST ``cpu`` setting, each measured
against its own edge by ``samedge.EdgeMonitor``.

    SAMEDGE_DATA_DIR=... OMP_NUM_THREADS=1 python benchmarks/optimizer_edges.py \
        [--adam-etas 1e-4,3e-4,1e-3] [--out benchmarks/OPTIMIZER_EDGES.md]

Full batch: the first 1000 MNIST training images, the MLP of ``samedge.models.MLP`` with 3 hidden
layers of 256, the squared loss (``samedge.losses.squared_loss``), seed 0, 600 steps, a measurement
every 10 steps. Step sizes: the momentum runs take eta = (1 + beta) x the GD preset's eta, so that
their edge 2(1 + beta)/eta equals GD's 2/eta, the edge the preset's GD run reaches by progressive
sharpening; Adam's edge (2 + 2 beta1)/((1 - beta1) eta) = 38/eta is on the preconditioned
sharpness lambda_max(P^-1 H), whose scale is set by the gradient history, so several step sizes
are tried and all are reported. Prints, and writes to ``--out``, each run's median ratio over the
second half against its own edge, with what was run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import samedge
from samedge import SAM, EdgeMonitor
from samedge.data import load_mnist
from samedge.edge import momentum_edge, sam_sgd_edge
from samedge.losses import squared_loss
from samedge.models import MLP
from samedge.presets import load_preset

BETA, RHO, SEED = 0.9, 0.05, 0
STEPS, EVERY = 600, 10  # the defaults of --steps and --every


def run(kind: str, eta: float, x: torch.Tensor, y: torch.Tensor, cfg: dict, steps: int, every: int) -> dict:
    """One full-batch run of ``kind`` ('momentum', 'sam_sgd' or 'adam') at step size ``eta``;
    its MonitorRecord and wall time."""
    torch.manual_seed(SEED)
    model = MLP(784, cfg["width"], cfg["depth"], 10)
    if kind == "momentum":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=eta, momentum=BETA)
    elif kind == "sam_sgd":
        opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=eta, momentum=BETA)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=eta)
    # The MLP has no BatchNorm or dropout; the mode is stated so that no default decides it.
    monitor = EdgeMonitor(model, squared_loss, (x, y), opt, every=every, train_mode=False, seed=SEED)
    t0 = time.perf_counter()
    for _ in range(steps):
        if isinstance(opt, SAM):
            squared_loss(model(x), y).backward()
            opt.first_step(zero_grad=True)
            squared_loss(model(x), y).backward()
            opt.second_step(zero_grad=True)
        else:
            opt.zero_grad()
            squared_loss(model(x), y).backward()
            opt.step()
        monitor.step()
    return dict(kind=kind, eta=eta, record=monitor.record(), seconds=time.perf_counter() - t0)


def summary(r: dict) -> dict:
    """The numbers the results file reports for one run."""
    rec = r["record"]
    rows = [row for row in rec.rows if row["ratio"] is not None]
    half = [row for row in rows if row["step"] >= rec.steps / 2]
    return dict(
        label=rec.label,
        rule=rec.rule,
        sharpness=rec.meta["sharpness"],
        eta=r["eta"],
        median_ratio=rec.median_ratio(),
        ratio_min=min(row["ratio"] for row in half),
        ratio_max=max(row["ratio"] for row in half),
        max_ratio_run=max(row["ratio"] for row in rows),
        median_edge=statistics.median(row["edge"] for row in half),
        median_sharpness=statistics.median(row["op_norm"] for row in half),
        final_loss=rec.rows[-1]["train_loss"],
        hvps=statistics.mean(row["hvps"] for row in rec.rows),
        converged=sum(bool(row["converged"]) for row in rec.rows),
        measurements=len(rec.rows),
        half=len(half),
        seconds=r["seconds"],
        diverged_at=rec.diverged_at,
    )


def main() -> None:
    """Run the three optimizers (Adam at each step size asked for) and report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adam-etas", default="1e-4,3e-4,1e-3", help="Adam step sizes to try, comma-separated")
    ap.add_argument("--out", type=Path, help="also write the report to this markdown file")
    ap.add_argument("--records", type=Path, help="also save each run's MonitorRecord under this directory")
    ap.add_argument("--steps", type=int, default=STEPS, help="steps per run (a smoke check: fewer)")
    ap.add_argument("--every", type=int, default=EVERY, help="steps between measurements")
    args = ap.parse_args()
    cfg = load_preset("mnist", "cpu")
    eta_m = (1 + BETA) * cfg["eta"]  # 2(1 + beta)/eta_m = 2/eta of the GD preset
    train, _ = load_mnist(cfg["n_train"], 1)
    x, y = train.inputs, train.targets
    go = lambda kind, eta: run(kind, eta, x, y, cfg, args.steps, args.every)
    runs = [go("momentum", eta_m), go("sam_sgd", eta_m)] + [go("adam", float(e)) for e in args.adam_etas.split(",")]
    if args.records:
        for r in runs:
            r["record"].save(args.records / f"{r['kind']}_eta{r['eta']:g}", overwrite=True)
    rows = [summary(r) for r in runs]
    lines = []
    say = lambda s="": (print(s, flush=True), lines.append(s))
    say("# Optimizer edges on MNIST, full batch")
    say()
    say(
        f"Command: `{' '.join(['python'] + sys.argv)}` ({time.strftime('%Y-%m-%d')}), torch {torch.__version__}, "
        f"samedge {samedge.__version__}, {torch.get_num_threads()} thread(s)."
    )
    say()
    say(
        f"Setting: the first {cfg['n_train']} MNIST training images, MLP {cfg['depth']}x{cfg['width']} "
        f"(`samedge.models.MLP`), squared loss, seed {SEED}, {args.steps} full-batch steps, a measurement every "
        f"{args.every} steps by `samedge.EdgeMonitor` (train_mode=False; the MLP has no BatchNorm or dropout). "
        f"Momentum runs: beta = {BETA:g} at eta = (1 + beta) x {cfg['eta']:g} (the GD preset's eta) = {eta_m:g}, "
        f"so that the heavy-ball edge 2(1 + beta)/eta = {momentum_edge(eta_m, BETA):.4g} equals the GD preset's "
        f"2/eta; SAM over heavy-ball SGD with rho = {RHO:g} at the same eta, against the SAM-over-SGD edge "
        f"(which depends on the gradient norm; at ||g|| = 1 it is {sam_sgd_edge(eta_m, RHO, 1.0, BETA):.4g}). "
        "Adam (betas 0.9, 0.999, eps 1e-8) against its edge (2 + 2 beta1)/((1 - beta1) eta) = 38/eta on the "
        "preconditioned sharpness lambda_max(P^-1 H), P = sqrt(v_hat) + eps; every Adam step size tried is listed."
    )
    say()
    say(
        "| run | rule | sharpness | eta | median edge, 2nd half | median sharpness, 2nd half | **median ratio, 2nd half** | "
        "ratio min / max, 2nd half | max ratio, whole run | final loss | HVPs per measurement | converged | seconds |"
    )
    say("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in rows:
        div = f" (diverged at step {s['diverged_at']})" if s["diverged_at"] is not None else ""
        say(
            f"| {s['label']}{div} | {s['rule']} | {s['sharpness'].replace('|', chr(92) + '|')} | {s['eta']:g} | {s['median_edge']:.4g} | "
            f"{s['median_sharpness']:.4g} | **{s['median_ratio']:.3f}** | {s['ratio_min']:.3f} / {s['ratio_max']:.3f} | "
            f"{s['max_ratio_run']:.3f} | {s['final_loss']:.3g} | {s['hvps']:.1f} | "
            f"{s['converged']} of {s['measurements']} | {s['seconds']:.0f} |"
        )
    say()
    adam = [s for s in rows if s["rule"] == "adam"]
    tried = ", ".join(f"{s['eta']:g}" for s in adam)
    reached = ", ".join(f"{s['eta']:g}" for s in adam if s["max_ratio_run"] >= 0.9)
    say(
        f"Medians are over the {rows[0]['half']} measurements of the second half (steps >= {args.steps / 2:g}). "
        f"Adam step sizes tried: {tried or 'none'}; the preconditioned sharpness came within 10% of 38/eta at some "
        f"measurement for: {reached or 'none of them'}."
    )
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
