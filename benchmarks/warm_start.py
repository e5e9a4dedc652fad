"""What the warm-start guard costs and changes along the book's cpu-preset runs.

    SAMEDGE_DATA_DIR=... python benchmarks/warm_start.py --results DIR [--out benchmarks/WARM_START.md]

Runs (or reloads from ``DIR/guarded`` and ``DIR/unguarded``) every seed-0 run of the three
experiment chapters at the `cpu` preset twice (``DIR/guarded`` may be the book's results
directory, whose seed-0 runs are then reloaded): with the guarded warm start of ``samedge.sharpness`` (the
default: previous eigenvector plus an equal-norm random vector, stopped on the residual test
and the bound ``samedge.hessian.miss_bound``) and with the plain warm start from the previous
eigenvector alone (``warm_mix = 0``, ``warm_min_iter = 1``, what the library did before any
guard). Prints a markdown table per run: HVPs per warm measurement (training batch, and the
evaluation batch of the minibatch task), the median sharpness / edge over the second half, and
how many measurements differ by more than 1e-3 between the two. About 10 minutes per pass on 2 quiet cores.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import samedge.hessian as hessian
from samedge.analysis import run_label
from samedge.loop import run
from samedge.presets import resolve_params, run_configs

TASKS = ("mnist", "cifar10", "shakespeare")


def runs(root: Path, guarded: bool) -> dict:
    """{(task, label): record} for every cpu-preset run, with or without the guard."""
    saved = hessian.sharpness.__defaults__
    if not guarded:
        # The plain warm start: no random share (hence no bound), stop as soon as the residual test passes.
        names = list(inspect.signature(hessian.sharpness).parameters)[-len(saved) :]
        hessian.sharpness.__defaults__ = tuple(
            {"warm_mix": 0.0, "warm_min_iter": 1}.get(k, v) for k, v in zip(names, saved)
        )
    try:
        out = {}
        for task in TASKS:
            # The first seed's runs: the warm start is compared along the same trajectories.
            for cfg in run_configs(task, resolve_params(task, "cpu", device="cpu", seed=0)):
                rec = run(cfg, root / task / "cpu" / cfg.run_name(), progress=False)
                out[(task, run_label(rec))] = rec
        return out
    finally:
        hessian.sharpness.__defaults__ = saved


def mean_warm(df, column: str) -> float:
    """Mean HVPs over the warm-started measurements (all but the first)."""
    return float(df[column].iloc[1:].mean())


def report(guarded: dict, plain: dict) -> str:
    """The markdown table comparing the two passes."""
    lines = [
        "| task | run | HVPs per warm measurement: plain | guarded | eval batch: plain | guarded "
        "| median ratio, 2nd half: plain | guarded | measurements differing by > 1e-3 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, g in guarded.items():
        p = plain[key]
        gd, pd_ = g.frame, p.frame
        ev = "eval_hvps" in gd
        differ = int(((gd["op_norm"] - pd_["op_norm"]).abs() > 1e-3 * pd_["op_norm"]).sum())
        lines.append(
            f"| {key[0]} | {key[1]} | {mean_warm(pd_, 'hvps'):.1f} | {mean_warm(gd, 'hvps'):.1f} "
            f"| {mean_warm(pd_, 'eval_hvps') if ev else float('nan'):.1f} | {mean_warm(gd, 'eval_hvps') if ev else float('nan'):.1f} "
            f"| {p.median_ratio():.4f} | {g.median_ratio():.4f} | {differ} of {len(gd)} |"
        )
    return "\n".join(lines).replace("| nan | nan |", "| - | - |")


def main() -> None:
    """Run both passes and print (and optionally write) the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, required=True, help="results directory for both passes (reused if present)")
    ap.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = ap.parse_args()
    plain = runs(args.results / "unguarded", guarded=False)
    guarded = runs(args.results / "guarded", guarded=True)
    text = report(guarded, plain)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
