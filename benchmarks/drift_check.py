"""Issue 23: does the account of the ratio's drift with rho found on the MNIST grid hold elsewhere?

    SAMEDGE_DATA_DIR=... python benchmarks/drift_check.py [--results results/drift_check]

Runs the CIFAR-10 and Transformer (shakespeare) ``cpu`` presets at rho 0 and 0.1, seed 0, with
the ratio measured in pairs (``measure_pairs``: steps t and t + 1) and, in the second half, the
SAM map's accounts (``accounts_every``) and the curvature at w~ (``measure_ascent``), one thread, and writes ``benchmarks/drift_check.csv``:
``samedge.analysis.run_accounts`` of each task's runs (one row per run and account: the median
pair mean over the second half, and the even- and odd-step medians), which book/grid.ipynb
reads (with each task's batching, which picks its band). Finished runs under ``--results`` are reloaded, not rerun.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from samedge.analysis import run_accounts
from samedge.loop import run
from samedge.presets import resolve_params, run_configs

OUT = Path(__file__).with_name("drift_check.csv")
# Per task: the pair cadence (CIFAR-10 pairs every 30 steps, denser than its preset's 40; the
# Transformer every 20, as its preset) and the accounts' cadence (four or five pairs in the second half).
CADENCE = {
    "cifar10": dict(measure_every=30, accounts_every=60),
    "shakespeare": dict(measure_every=20, accounts_every=40),
}


def main() -> None:
    """Run (or reload) the four runs and write the accounts table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results/drift_check")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tables = []
    for task, cadence in CADENCE.items():
        params = resolve_params(
            task, "cpu", rhos=[0.0, 0.1], seeds=[0], measure_pairs=True, measure_ascent=True, device="cpu", **cadence
        )
        records = []
        for cfg in run_configs(task, params):
            t0 = time.perf_counter()
            records.append(run(cfg, Path(args.results) / cfg.run_name(), progress=False))
            print(f"{cfg.run_name()}: {time.perf_counter() - t0:.0f} s", flush=True)
        tables.append(run_accounts(records).assign(task=task, batching=records[0].batching))
    out = pd.concat(tables, ignore_index=True)
    out.to_csv(OUT, index=False, float_format="%.6g")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
