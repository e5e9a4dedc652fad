"""Why the CIFAR-10 CNN of the `cpu` preset starts at very different sharpness for different seeds.

For seeds 0-9, at initialization (the weights the training loop draws for that seed) and on the
preset's training images: ||H||_op (exact HVPs, Lanczos), the logits' standard deviation, the
smallest per-pixel variance over the channels at the input of each LayerNorm, and ||H||_op of the
same weights with the LayerNorm epsilon raised from 1e-5 to 1e-3. Writes a CSV the CIFAR-10
chapter reads::

    SAMEDGE_DATA_DIR=... python benchmarks/cifar_init_sharpness.py --out benchmarks/cifar_init_sharpness.csv

(about two minutes on one core).
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from samedge import HessianOperator, sharpness
from samedge.losses import module_loss, parameters_of
from samedge.models import ChannelLayerNorm
from samedge.presets import load_preset
from samedge.tasks import get_task


def measure(seed: int, options: dict) -> dict:
    """One seed's initial sharpness and the scales that could drive it."""
    torch.manual_seed(seed)  # as samedge.loop.run does before building the task
    inst = get_task("cifar10").build(options, None, "cpu", torch.float32, None)
    x, y = inst.sample(0, torch.Generator().manual_seed(seed))
    norms = [m for m in inst.model.modules() if isinstance(m, ChannelLayerNorm)]
    variances = []
    hooks = [
        m.register_forward_hook(lambda _m, i, _o: variances.append(i[0].var(dim=1, unbiased=False))) for m in norms
    ]
    with torch.no_grad():
        logits = inst.model(x)
    for h in hooks:
        h.remove()
    op = sharpness(HessianOperator(module_loss(inst.model, inst.loss, x, y), parameters_of(inst.model)), seed=seed)
    row = {"seed": seed, "||H|| at init": op.op_norm, "logits std": float(logits.std())}
    for k, v in enumerate(variances, 1):
        row[f"LayerNorm {k}: smallest pixel variance"] = float(v.min())
    eps = [m.norm.eps for m in norms]
    for m in norms:
        m.norm.eps = 1e-3
    raised = sharpness(HessianOperator(module_loss(inst.model, inst.loss, x, y), parameters_of(inst.model)), seed=seed)
    for m, e in zip(norms, eps):
        m.norm.eps = e
    row["||H|| at init, LayerNorm eps 1e-3"] = raised.op_norm
    return row


def main() -> None:
    """Measure seeds 0-9 and write the CSV."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/cifar_init_sharpness.csv")
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    p = load_preset("cifar10", "cpu")
    options = {k: p[k] for k in get_task("cifar10").defaults if k in p}
    rows = []
    for seed in range(args.seeds):
        rows.append(measure(seed, options))
        print(rows[-1], flush=True)
    pd.DataFrame(rows).to_csv(args.out, index=False, float_format="%.6g")


if __name__ == "__main__":
    main()
