"""The authors' SAM update, jit-compiled in JAX, timed against ``samedge.sam_step`` (optional).

    pip install --target /path/to/jax-site --no-deps jax jaxlib ml_dtypes opt_einsum
    SAMEDGE_DATA_DIR=... PYTHONPATH=src:/path/to/jax-site OMP_NUM_THREADS=1 python benchmarks/jax_step.py [--quick] [--kernels onednn]

(or ``python benchmarks/bench.py``, whose section 3 runs it). jax is not in requirements.txt;
``--no-deps`` keeps the venv's own numpy and scipy in charge (jax needs both). Without jax,
``jax_missing()`` says so and the benchmark skips this comparison. At one torch thread the
process is pinned to one core, so XLA gets one too; otherwise it keeps its default (all cores).

What is theirs and what is not. Only the update rule is google-deepmind/sam_edge's
(``sam_edge.py``: ``sam_neighbor`` and ``update``, one ``jit``):
    w~ = w + rho g/(||g|| + 1e-5),  w <- w - eta grad L(w~).
The model and loss below are a minimal JAX transcription of *ours* (``samedge.models.MLP``:
``depth`` hidden ReLU layers and a linear output; ``samedge.losses.squared_loss``: the mean of
(f - y)^2 over examples and classes, the authors' ``jnp.mean(optax.squared_error(...))``), written
here only so that both steps compute the same thing from the same float32 arrays: the weights
and the data are copied from our torch tensors.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Dict, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors import jax_missing  # noqa: E402  (shared with authors_method.py)
from authors import match_threads as _match_threads  # noqa: E402

EPSILON = 1e-5  # the authors' sam_edge.EPSILON

__all__ = ["jax_missing", "authors_step", "compare", "EPSILON"]


def _jax_mlp_loss(jnp) -> Callable:
    """Our MLP + squared loss in JAX (a transcription of samedge.models.MLP, not the authors' code)."""

    def loss(params, x, y):
        h = x
        for w, b in params[:-1]:
            h = jnp.maximum(h @ w + b, 0.0)
        w, b = params[-1]
        return jnp.mean((h @ w + b - y) ** 2)

    return loss


def authors_step(
    params: Dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor, eta: float, rho: float
) -> Tuple[Callable[[], object], float, Callable[[], Dict[str, torch.Tensor]]]:
    """The authors' jit-compiled SAM update on our MLP's weights and data (float32 copies).

    Returns (one blocking step as a zero-argument callable, compile seconds (first call minus a
    later call), a function giving the updated weights back as a torch dict shaped like
    ``params``, to check that both sides compute the same step)."""
    import jax
    import jax.numpy as jnp
    from jax import grad, jit, tree_util

    keys = list(params)
    if len(keys) % 2 or any(params[k].dim() != (2 if i % 2 == 0 else 1) for i, k in enumerate(keys)):
        raise ValueError(f"params must be an MLP's (weight, bias) pairs in order, got keys {keys}")
    f32 = lambda t: jnp.asarray(t.detach().cpu().numpy().astype(np.float32))  # noqa: E731
    # flax Dense keeps the kernel as (in, out): x @ kernel + bias.
    jparams = [(f32(params[w]).T, f32(params[b])) for w, b in zip(keys[::2], keys[1::2])]
    x, y = f32(inputs.reshape(len(inputs), -1)), f32(targets)
    loss_by_params = jit(_jax_mlp_loss(jnp))

    # --- the authors' update rule (sam_edge.py, train(): sam_neighbor, update) ---
    @jit
    def sam_neighbor(params, x, y):
        grads = grad(loss_by_params)(params, x, y)
        norm = jnp.sqrt(jnp.sum(jnp.array(tree_util.tree_leaves(tree_util.tree_map(lambda t: jnp.sum(t * t), grads)))))
        return tree_util.tree_map(lambda p, g: p + rho * g / (norm + EPSILON), params, grads)

    @jit
    def update(params, x, y, eta):
        grad_location = sam_neighbor(params, x, y) if rho > 0.0 else params
        grads = grad(loss_by_params)(grad_location, x, y)
        return tree_util.tree_map(lambda p, g: p - eta * g, params, grads)

    # --- end of the authors' rule ---

    step = lambda: jax.block_until_ready(update(jparams, x, y, eta))  # noqa: E731
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    step()
    compile_s = max(0.0, first - (time.perf_counter() - t0))

    def updated() -> Dict[str, torch.Tensor]:
        out = {}
        for (w, b), kw, kb in zip(update(jparams, x, y, eta), keys[::2], keys[1::2]):
            out[kw], out[kb] = torch.from_numpy(np.asarray(w).T.copy()), torch.from_numpy(np.asarray(b).copy())
        return out

    return step, compile_s, updated


def cpu_times(fns: Dict[str, Callable], rounds: int, calls: int) -> dict:
    """Median CPU seconds (this process, all its threads) per call of each function, in
    interleaved rounds; ``(name, "ratio")``: median over rounds of its time relative to the
    first's. On a shared machine CPU time leaves out the time others hold the cores."""
    names = list(fns)
    per: Dict[str, list] = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.process_time()
            for _ in range(calls):
                fns[k]()
            per[k].append((time.process_time() - t0) / calls)
    out: dict = {k: float(np.median(v)) for k, v in per.items()}
    out.update({(k, "ratio"): float(np.median(np.array(per[k]) / np.array(per[names[0]]))) for k in names})
    return out


def compare(
    params: Dict[str, torch.Tensor],
    loss_fn: Callable,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    eta: float,
    rho: float,
    paired_times: Callable[..., dict],
    min_run_time: float,
    rounds: int = 7,
    kernels: str = "default",
) -> dict:
    """Our SAM step on ``kernels`` (``samedge.kernels``) against the authors' jit-compiled JAX step
    on the same arrays, timed in interleaved rounds by ``paired_times``; ratio = ours / JAX (median
    over rounds). Our step on the other kernels choice is timed in the same rounds (where oneDNN
    is available)."""
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        return _compare(params, loss_fn, inputs, targets, eta, rho, paired_times, min_run_time, rounds, kernels)
    finally:  # the caller's cores back (this thread's; the threads jax started keep theirs)
        if cores is not None and os.sched_getaffinity(0) != cores:
            os.sched_setaffinity(0, cores)


def _compare(params, loss_fn, inputs, targets, eta, rho, paired_times, min_run_time, rounds, kernels) -> dict:
    """``compare`` on whatever cores the process has (the caller restores them)."""
    import samedge
    from samedge import onednn
    from samedge.kernels import KERNELS, check_kernels

    check_kernels(kernels)
    other = next(k for k in KERNELS if k != kernels)
    threads = _match_threads()
    step, compile_s, updated = authors_step(params, inputs, targets, eta, rho)
    ours = samedge.sam_step(loss_fn, params, eta, rho, kernels=kernels).params
    theirs = updated()
    # The same update (w_new - w) up to their 1e-5 in the normalisation and float32 round-off.
    d_ours = {k: ours[k] - params[k] for k in ours}
    diff = max(float((d_ours[k] - (theirs[k] - params[k])).abs().max() / d_ours[k].abs().max()) for k in ours)
    fns = {"ours": lambda: samedge.sam_step(loss_fn, params, eta, rho, kernels=kernels), "jax": step}
    both = onednn.available()
    if both:  # the other kernels choice, in the same rounds
        fns["ours, other kernels"] = lambda: samedge.sam_step(loss_fn, params, eta, rho, kernels=other)
    t = paired_times(fns, min_run_time, rounds=rounds)
    c = cpu_times({k: fns[k] for k in ("ours", "jax")}, rounds, max(3, int(min_run_time / rounds / t["jax"])))
    import jax

    out = dict(
        ours=t["ours"],
        jax=t["jax"],
        ratio=1.0 / t[("jax", "ratio")],
        cpu_ours=c["ours"],
        cpu_jax=c["jax"],
        cpu_ratio=1.0 / c[("jax", "ratio")],
        jax_compile=compile_s,
        max_rel_diff=diff,
        threads=threads,
        jax_version=jax.__version__,
        kernels=kernels,
        torch_threads=torch.get_num_threads(),
    )
    if both:
        out["other_kernels"] = other
        out["other_kernels_time"] = t["ours, other kernels"]
        out["other_kernels_ratio"] = t[("ours, other kernels", "ratio")]
    return out


def report(res: dict) -> str:
    """One markdown paragraph of ``compare``'s result."""
    names = {"default": "PyTorch's default kernels", "onednn": "linear layers through oneDNN"}
    kernels = f"kernels={res['kernels']!r}: {names[res['kernels']]}"
    if "other_kernels" in res:
        kernels += (
            f"; kernels={res['other_kernels']!r}: {res['other_kernels_time'] * 1e3:.1f} ms, "
            f"{res['other_kernels_ratio']:.2f}x ours"
        )
    return (
        f"Against the authors' update (JAX {res['jax_version']}, jit; torch {res['torch_threads']} thread(s), "
        f"{res['threads']}): ours {res['ours'] * 1e3:.1f} ms ({kernels}, no torch.compile), JAX {res['jax'] * 1e3:.1f} ms "
        f"per SAM step; ratio ours / JAX {res['ratio']:.2f} (target <= 1.0; median over interleaved rounds). "
        f"In CPU time (what a busy machine distorts least): ours {res['cpu_ours'] * 1e3:.1f} ms, JAX "
        f"{res['cpu_jax'] * 1e3:.1f} ms, ratio {res['cpu_ratio']:.2f}. "
        f"JAX compile {res['jax_compile']:.2f} s (once). Same step: max relative difference of the weight updates "
        f"{res['max_rel_diff']:.1e} (their 1e-5 in ||g|| + 1e-5, and float32 round-off)."
    )


def main() -> None:
    """Run only this comparison on the cpu preset's MNIST MLP and print it."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import argparse

    from bench import paired_times, problem

    from samedge.data import load_mnist
    from samedge.kernels import KERNELS
    from samedge.presets import load_preset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter timings (a smoke check, not a result)")
    ap.add_argument(
        "--kernels",
        choices=KERNELS,
        default=load_preset("mnist", "cpu").get("kernels", "default"),
        help="our step's linear-layer kernels (samedge.kernels; default: the mnist cpu preset's)",
    )
    args = ap.parse_args()
    quick = args.quick
    msg = jax_missing()
    if msg:
        print(msg)
        return
    cpu = load_preset("mnist", "cpu")
    _, params, loss_fn = problem(cpu["n_train"], cpu["width"], cpu["depth"])
    train, _ = load_mnist(cpu["n_train"], 1)
    res = compare(
        params,
        loss_fn,
        train.inputs,
        train.targets,
        cpu["eta"],
        0.05,
        paired_times,
        1.0 if quick else 6.0,
        kernels=args.kernels,
    )
    print(report(res))


if __name__ == "__main__":
    main()
