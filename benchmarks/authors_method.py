"""The authors' method beside ours, on the book's MNIST (or, ``--task cifar10``, CIFAR-10) ``cpu``
configuration at seed 0.

    git clone https://github.com/google-deepmind/sam_edge /path/to/sam_edge
    pip install --target ~/jax-site --no-deps jax jaxlib ml_dtypes opt_einsum
    SAMEDGE_DATA_DIR=... PYTHONPATH=src:$HOME/jax-site OMP_NUM_THREADS=1 \\
        python benchmarks/authors_method.py --authors-dir /path/to/sam_edge

writes ``book/data/authors_method_<task>.csv`` (one row per rho and compared step) and its
sidecar ``.json`` (the command, both commits, versions, date, run time, the step-0 checks), which
book/mnist.ipynb (book/cifar10.ipynb) reads; jax is needed only here, not to build the book.

What is theirs, imported from their clone and called as it is: ``sam_edge.train``, which holds
their SAM update (``w - eta grad L(w + rho g/(||g|| + 1e-5))``), their SAM-edge formula, ||g|| and
the loss, and calls their estimator, ``hessian_norm.CurvatureEstimator.curvature_and_direction``:
power iteration on finite-difference Hessian-vector products (offset 1e-3), stopped at a relative
change of 1e-3 or after 100 iterations (their defaults), from a fresh random direction. ``train``
measures on a wall-clock schedule; to measure by step we call it once per compared step on one
batch with a negative ``hessian_check_gap`` (their test ``time > last + 3600 gap`` is then true: it
measures at w_t, then takes the step), and in between on the batches up to the next compared step
with ``hessian_check_gap=0`` (no measurement). Their model and loss are in ``image_classification.py``,
a script that cannot be imported (see ``authors.py``): ``FlaxMLP`` (``FlaxCNN``) and ``squared_error``
transcribe them. Data and initial weights are ours: the run's full batch of the first ``n_train``
images (``samedge.data``) and our seed-0 MLP (CNN), converted to their flax parameter tree (and, for
the CNN, the images to their NHWC layout); the step-0 loss of both is checked equal.

Per rho and compared step the CSV holds their loss, ||g||, ||H|| estimate, SAM-edge and ratio;
our exact ||H||_op at *their* weights (``samedge.sharpness``, cold-started Lanczos on exact HVPs,
the weights converted to torch), so that the estimator's error shows apart from any difference of
trajectories; and our own run's record at the same step (``samedge.loop.run`` on the same
configuration, reused from ``--results-dir`` when finished there, as the book's run is).

One seed (0) and one thread. Their power iteration takes up to 100 finite-difference HVPs per
measurement where our Lanczos takes a few tens, so the comparison runs at every
``--compare-every``-th step (default 60, every other pair of the book's measurements; it must be a
multiple of the preset's ``measure_every``, so that our run measures at every compared step).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import authors  # noqa: E402

from samedge.analysis import AUTHORS_FILE, authors_method_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("mnist", "cifar10")
OUT = ROOT / "book" / "data" / AUTHORS_FILE.format(task="mnist")
# Every other pair of each cpu preset's measurements (MNIST pairs at t, t + 1 every 30 steps,
# CIFAR-10 every 40): steps our run measures, so "ours, same steps" is the book's own run.
COMPARE_EVERY = {"mnist": 60, "cifar10": 80}
# The preset parameters the sidecar records (the test checks them against the preset).
CONFIG_KEYS = {
    "mnist": ("preset", "n_train", "width", "depth", "eta", "rhos", "steps", "measure_every", "measure_pairs"),
    "cifar10": (
        "preset",
        "n_train",
        "num_blocks",
        "layers_per_block",
        "base_channels",
        "eta",
        "rhos",
        "steps",
        "measure_every",
        "measure_pairs",
    ),
}

# The CSV's columns: theirs (their_*: sam_edge.train's own numbers), our exact ||H||_op at their
# weights (exact_*), and our run's record at the same step (our_*).
COLUMNS = [
    "rho",
    "step",
    "their_loss",
    "their_grad_norm",
    "their_op_norm",
    "their_sam_edge",
    "their_ratio",
    "exact_op_norm",
    "exact_ratio",
    "estimator_error",
    "our_loss",
    "our_op_norm",
    "our_edge",
    "our_ratio",
]
# sam_edge.train's raw-data line: training time, ||H|| estimate, 2/eta, SAM-edge, ||g||, loss, two alignments.
RAW = [
    "seconds",
    "their_op_norm",
    "two_over_eta",
    "their_sam_edge",
    "their_grad_norm",
    "their_loss",
    "g_align",
    "sg_align",
]

__all__ = [
    "COLUMNS",
    "OUT",
    "TASKS",
    "out_path",
    "authors_model",
    "compare_steps",
    "drive_authors",
    "compare_rho",
    "main",
]


def out_path(task: str) -> Path:
    """The results file of ``task``: ``book/data/authors_method_<task>.csv``."""
    return ROOT / "book" / "data" / AUTHORS_FILE.format(task=task)


def authors_model(cfg) -> tuple:
    """(their model, our weights -> their tree, (their tree, our weights) -> our weights, our
    batch -> their input) for the task of ``cfg``: the MLP on MNIST, the CNN (NHWC) on CIFAR-10."""
    if cfg.task == "mnist":
        return (
            authors.FlaxMLP(),
            authors.to_flax_mlp,
            lambda tree, like: authors.from_flax_mlp(tree, list(like)),
            lambda x: x.numpy(),
        )
    if cfg.task == "cifar10":
        model = authors.FlaxCNN(cfg.options["num_blocks"], cfg.options["layers_per_block"])
        return (
            model,
            lambda p: authors.to_flax_cnn(p, model),
            lambda tree, like: authors.from_flax_cnn(tree, like, model),
            lambda x: x.permute(0, 2, 3, 1).contiguous().numpy(),
        )
    raise ValueError(f"task must be one of {list(TASKS)}, got {cfg.task!r}")


def compare_steps(steps: int, every: int) -> List[int]:
    """The compared steps: 0, every, 2 every, ... and the last step (our loop measures it too)."""
    return sorted(set(range(0, steps + 1, every)) | {steps})


def drive_authors(sam_edge, params, x, y, eta: float, rho: float, steps: List[int], raw: Path, seed: int, model=None):
    """Run the authors' ``sam_edge.train`` from ``params`` measuring exactly at ``steps``; yields
    (step, their parameter tree at that step) before each measurement, then reads their raw-data
    file (``raw``) as a DataFrame with one row per step, returned by the generator."""
    import jax

    quiet = io.StringIO()  # train prints a paragraph per measurement; RAW keeps the numbers
    key = jax.random.PRNGKey(seed)

    def train(tree, batches: int, gap: float, k):
        with contextlib.redirect_stdout(quiet):
            return sam_edge.train(
                tree, model or authors.FlaxMLP(), authors.squared_error, iter([(x, y)] * batches), eta, rho,
                gap, None, None, None, None, str(raw), 1, 1e6, k,
            )  # fmt: skip

    for i, t in enumerate(steps):
        yield t, params
        params = train(params, 1, -1.0, jax.random.fold_in(key, t))  # measure at w_t, then step t
        if i + 1 < len(steps) and steps[i + 1] - t > 1:
            params = train(params, steps[i + 1] - t - 1, 0.0, key)  # no measurement in between
    table = pd.DataFrame(np.atleast_2d(np.loadtxt(raw)), columns=RAW)
    table.insert(0, "step", steps[: len(table)])
    return table


def compare_rho(cfg, sam_edge, steps: List[int], run_dir: Path, data_dir, work: Path) -> tuple:
    """One rho: our run (reused when finished), then the authors' run from the same weights on the
    same data with our exact ||H||_op at their weights. Returns (rows, checks)."""
    import jax.numpy as jnp

    from samedge.edge import edge
    from samedge.hessian import sharpness
    from samedge.loop import run
    from samedge.losses import module_loss, parameters_of
    from samedge.measure import prepare
    from samedge.tasks import get_task

    t0 = time.perf_counter()
    ours = run(cfg, run_dir, data_dir=data_dir, progress=False, lock_timeout=3600).frame.set_index("step")
    ours_seconds = time.perf_counter() - t0
    torch.manual_seed(cfg.seed)  # as samedge.loop.run: the same initial weights
    inst = get_task(cfg.task).build(cfg.options, cfg.batch_size, "cpu", cfg.torch_dtype, data_dir)
    params = {k: v.detach() for k, v in parameters_of(inst.model).items()}
    x, y = inst.sample(0, torch.Generator())
    loss_fn = module_loss(inst.model, inst.loss, x, y)
    flax_model, to_flax, from_flax, their_input = authors_model(cfg)
    xj, yj = jnp.asarray(their_input(x)), jnp.asarray(y.numpy())

    t0 = time.perf_counter()
    exact: Dict[int, float] = {}
    raw = work / f"raw-rho{cfg.rho:g}.txt"
    gen = drive_authors(sam_edge, to_flax(params), xj, yj, cfg.eta, cfg.rho, steps, raw, cfg.seed, flax_model)
    try:
        while True:
            t, tree = next(gen)
            point = prepare(loss_fn, from_flax(tree, params))
            exact[t] = sharpness(
                point.op, tol=cfg.lanczos_tol, max_iter=cfg.lanczos_max_iter, seed=cfg.seed + t
            ).op_norm
    except StopIteration as done:
        theirs = done.value
    seconds = time.perf_counter() - t0

    rows = []
    for r in theirs.itertuples():
        o = ours.loc[r.step]
        rows.append(
            dict(
                rho=cfg.rho,
                step=r.step,
                their_loss=r.their_loss,
                their_grad_norm=r.their_grad_norm,
                their_op_norm=r.their_op_norm,
                their_sam_edge=r.their_sam_edge,
                their_ratio=r.their_op_norm / r.their_sam_edge,
                exact_op_norm=exact[r.step],
                exact_ratio=exact[r.step] / r.their_sam_edge,
                estimator_error=r.their_op_norm / exact[r.step] - 1.0,
                our_loss=o["train_loss"],
                our_op_norm=o["op_norm"],
                our_edge=o["edge"],
                our_ratio=o["ratio"],
            )
        )
    first = rows[0]
    # Their SAM-edge and ours from their ||g||: the same formula (their float32 arithmetic).
    same_edge = max(
        abs(float(edge(cfg.rule, cfg.eta, cfg.rho, r.their_grad_norm)) / r.their_sam_edge - 1)
        for r in theirs.itertuples()
    )
    checks = dict(
        rho=cfg.rho,
        step0_loss_theirs=first["their_loss"],
        step0_loss_ours=first["our_loss"],
        step0_loss_rel_diff=abs(first["their_loss"] / first["our_loss"] - 1),
        sam_edge_formula_max_rel_diff=same_edge,
        authors_seconds=seconds,
        our_run_seconds=ours_seconds,
        our_median_ratio_all_measurements=float(ours[ours.index >= cfg.steps / 2]["ratio"].median()),
    )
    return rows, checks


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: Optional[List[str]] = None) -> int:
    """Run the comparison and write the CSV and its JSON sidecar."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--authors-dir", default=os.environ.get(authors.AUTHORS_ENV), help="a clone of " + authors.AUTHORS_URL
    )
    ap.add_argument("--rhos", type=float, nargs="+", default=None, help="default: the preset's")
    ap.add_argument("--task", choices=TASKS, default="mnist", help="the experiment (default mnist)")
    ap.add_argument(
        "--compare-every", type=int, default=None, help=f"steps between compared measurements (default {COMPARE_EVERY})"
    )
    ap.add_argument("--steps", type=int, default=None, help="default: the preset's (fewer: a quick check only)")
    ap.add_argument("--results-dir", default=None, help="our runs' results directory (default: the book's, ./results)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=None, help="default: book/data/authors_method_<task>.csv")
    args = ap.parse_args(argv)
    default_every = COMPARE_EVERY[args.task]
    args.compare_every = args.compare_every or default_every
    args.out = args.out or out_path(args.task)
    msg = authors.jax_missing() or authors.authors_missing(args.authors_dir)
    if msg:
        print(msg)
        return 1
    torch.set_num_threads(1)
    threads = authors.match_threads()
    import jax

    from samedge.presets import resolve_params
    from samedge.runs import planned_runs

    cache = Path(tempfile.mkdtemp(prefix="samedge-authors-"))
    # sam_edge.train jit-compiles its closures anew at each call: the persistent cache compiles
    # each once (same HLO), not once per call.
    jax.config.update("jax_compilation_cache_dir", str(cache / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    sam_edge, hessian_norm = authors.import_authors(args.authors_dir)

    given: Dict[str, Any] = dict(seed=0, device="cpu", results_dir=args.results_dir, data_dir=args.data_dir)
    if args.rhos:
        given["rhos"] = args.rhos
    if args.steps:
        given["steps"] = args.steps
    params = resolve_params(args.task, "cpu", **given)
    if args.compare_every % params["measure_every"]:
        raise SystemExit(
            f"--compare-every must be a multiple of the {args.task} cpu preset's measure_every ({params['measure_every']}), "
            f"so that our run measures at every compared step; got {args.compare_every}"
        )
    runs = planned_runs(args.task, params)
    steps = compare_steps(params["steps"], args.compare_every)
    start, start_cpu = time.perf_counter(), time.process_time()
    rows: List[dict] = []
    checks = []
    try:
        for r in runs:
            got, chk = compare_rho(r.config, sam_edge, steps, r.run_dir, r.data_dir, cache)
            rows += got
            checks.append(chk)
            half = [g["their_ratio"] for g in got if g["step"] >= params["steps"] / 2]
            print(
                f"rho={r.config.rho:g}: their median ratio {np.median(half):.4f}, ours {chk['our_median_ratio_all_measurements']:.4f}; "
                f"step-0 loss rel. diff {chk['step0_loss_rel_diff']:.1e}; {chk['authors_seconds']:.0f} s",
                flush=True,
            )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    bad = [c for c in checks if not c["step0_loss_rel_diff"] < 1e-5]
    if bad:
        raise SystemExit(f"their step-0 loss differs from ours: {bad}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=COLUMNS).to_csv(args.out, index=False, float_format="%.8g")
    import importlib.metadata as md

    side = dict(
        command=authors_method_command(args.task)
        + (f" --rhos {' '.join(f'{x:g}' for x in args.rhos)}" if args.rhos else "")
        + (f" --compare-every {args.compare_every}" if args.compare_every != default_every else "")
        + (f" --steps {args.steps}" if args.steps else ""),
        get_authors=f"git clone {authors.AUTHORS_URL} DIR",
        samedge_commit=_git("rev-parse", "HEAD"),
        samedge_dirty=bool(_git("status", "--porcelain", "--untracked-files=no")),
        authors_commit=authors.authors_commit(args.authors_dir),
        jax_version=jax.__version__,
        jaxlib_version=md.version("jaxlib"),
        torch_version=torch.__version__,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        seconds=seconds,
        cpu_seconds=cpu_seconds,  # this process's CPU time: what a shared machine distorts least
        threads=f"torch 1 thread; {threads}",
        config={k: params.get(k) for k in CONFIG_KEYS[args.task]},
        seed=0,
        compare_every=args.compare_every,
        compared_steps=steps,
        their_estimator=dict(
            differentiation_step=hessian_norm.DIFFERENTIATION_STEP_SIZE,
            relative_tolerance=hessian_norm.POWER_ITERATION_EPS,
            iteration_limit=hessian_norm.CurvatureEstimator.__init__.__defaults__[0],
            sam_epsilon=sam_edge.EPSILON,
        ),
        checks=checks,
    )
    args.out.with_suffix(".json").write_text(json.dumps(side, indent=2) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json').name} in {seconds / 60:.1f} min")
    return 0 if all(math.isfinite(r["their_op_norm"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
