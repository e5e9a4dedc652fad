"""Which mode's ||H|| sits at 2/eta when a BatchNorm network is trained by full-batch GD?

    SAMEDGE_DATA_DIR=... OMP_NUM_THREADS=1 python benchmarks/bn_mode.py [--out benchmarks/BN_MODE.md]

A small CNN with BatchNorm2d (conv 3->8, BN, ReLU, 4x4 average pool, conv 8->16, BN, ReLU, 4x4
average pool, linear to 10; 2,090 parameters; ``--pool max`` for max pooling) on the first 256 CIFAR-10 training images, the authors' squared loss,
trained by full-batch GD (``torch.optim.SGD(lr=eta)``, the model in train mode as any training
loop has it). Two ``EdgeMonitor``s measure the same model every ``--every`` steps, one with
``train_mode=False`` (running statistics, the eval-mode loss) and one with ``train_mode=True``
(batch statistics differentiated through, the loss GD actually descends). Both leave modes,
buffers and the random state as found, so the trajectory is the one without monitors.
Prints (and with ``--out`` writes) the median of ||H||/(2/eta) over the second half of the
measurements for each mode, per (seed, eta). A few minutes on one thread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from samedge import EdgeMonitor
from samedge.data import load_cifar10
from samedge.losses import squared_loss


def cnn(seed: int, pool: str = "avg") -> nn.Module:
    torch.manual_seed(seed)
    Pool = nn.AvgPool2d if pool == "avg" else nn.MaxPool2d
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        Pool(4),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        Pool(4),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 10),
    )


def trajectory(x: torch.Tensor, y: torch.Tensor, seed: int, eta: float, steps: int, every: int, pool: str) -> dict:
    """{mode: [ratio ||H||/(2/eta) at each measurement]} and the final loss, along one GD run."""
    model = cnn(seed, pool).train()
    opt = torch.optim.SGD(model.parameters(), lr=eta)
    monitors = {
        mode: EdgeMonitor(model, squared_loss, (x, y), opt, every=every, train_mode=(mode == "train"), seed=seed)
        for mode in ("eval", "train")
    }
    for mon in monitors.values():
        mon.measure()  # step 0
    for _ in range(steps):
        opt.zero_grad()
        loss = squared_loss(model(x), y)
        loss.backward()
        opt.step()
        for mon in monitors.values():
            mon.step()
    return {
        "ratios": {mode: [_nan(r["ratio"]) for r in mon.rows] for mode, mon in monitors.items()},
        "op_norm": {mode: mon.rows[-1]["op_norm"] for mode, mon in monitors.items()},
        "loss": loss.item(),
        "params": sum(p.numel() for p in model.parameters()),
    }


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


def second_half_median(values: list) -> float:
    return statistics.median(values[len(values) // 2 :])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--etas", type=float, nargs="+", default=[0.4])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--pool", choices=["avg", "max"], default="avg")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train, _ = load_cifar10(args.n, 10)
    x, y = train.inputs, train.targets
    lines = [
        f"Small BatchNorm CNN, first {args.n} CIFAR-10 images, squared loss, full-batch GD for {args.steps} steps, "
        f"measured every {args.every} steps; ratio = ||H||_op / (2/eta), median over the second half.",
        "",
        "| seed | eta | 2/eta | eval mode: median ratio | train mode: median ratio | last ||H||: eval | train "
        "| final loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    t0 = time.perf_counter()
    for eta in args.etas:
        for seed in args.seeds:
            out = trajectory(x, y, seed, eta, args.steps, args.every, args.pool)
            med = {m: second_half_median(r) for m, r in out["ratios"].items()}
            lines.append(
                f"| {seed} | {eta:g} | {2 / eta:g} | {med['eval']:.3f} | {med['train']:.3f} "
                f"| {out['op_norm']['eval']:.2f} | {out['op_norm']['train']:.2f} | {out['loss']:.4f} |"
            )
            print(lines[-1], flush=True)
            for mode, ratios in out["ratios"].items():
                print(f"  {mode}: " + " ".join(f"{r:.2f}" for r in ratios), file=sys.stderr, flush=True)
    lines += ["", f"{out['params']:,} parameters; {time.perf_counter() - t0:.0f} s on one thread."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        cmd = "SAMEDGE_DATA_DIR=... OMP_NUM_THREADS=1 python benchmarks/bn_mode.py " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:])
        )
        header = "# Which mode's ||H|| sits at 2/eta with BatchNorm\n\nCommand: `" + cmd.strip() + "`\n\n"
        args.out.write_text(header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
