"""One-shot check of the `paper` presets on a device: step and measurement times, memory, projected
run times, torch.compile, TF32 and determinism, as one markdown table.

    SAMEDGE_DATA_DIR=... python benchmarks/device_check.py --device cuda   # <= 8 min on one H100
    SAMEDGE_DATA_DIR=... python benchmarks/device_check.py --device cpu --tiny --out /tmp/DEVICE.md

For each task at its `paper` preset (the authors' model, full batch or their minibatch, the preset's
eta and its largest rho): a measurement at the start (cold Lanczos, as the loop's first), ``--steps``
timed SAM steps after one warm-up step, a measurement at the end (warm-started from the first, as
the loop's later ones), timed GD steps, the peak GPU memory, and the projected time of the
preset's runs (steps x step time + measurements x end-measurement time). The same again with the
loss closure compiled by ``torch.compile`` (first-call time reported apart; compiled against eager
on one SAM step, one HVP and the end of the short run). Then: TF32 really off (a matmul and a
convolution against float64 under ``pinned_precision(False)``), and two identical short runs of
``samedge.loop.run`` give identical records (timing columns aside). ``--tiny`` replaces the sizes by
tiny ones (same code path, for CI). The table is written even when ``--time-budget`` runs out
(the phases left out say so). Exit status: 0 all checks passed, 1 a check or a task failed,
3 something was skipped for time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from samedge.hessian import HessianOperator, sharpness
from samedge.losses import module_loss, parameters_of
from samedge.precision import pinned_precision
from samedge.presets import resolve_params, run_configs
from samedge.sam import sam_step
from samedge.tasks import get_task
from samedge.vectors import flatten, unflatten

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("mnist", "cifar10", "shakespeare")
TF32_LIMIT = 1e-5  # IEEE float32 products err ~1e-7 relative; TF32 ones ~1e-4 to 1e-3
AGREE = 1e-5  # compiled against eager: float32 round-off
GRACE = 40  # seconds past --time-budget at which a phase still running is interrupted
# Tiny sizes for --tiny (CI): every code path of the paper presets in seconds on one CPU thread.
TINY = {
    "mnist": dict(n_train=64, n_test=32, width=32),
    "cifar10": dict(n_train=32, n_test=32, base_channels=4),
    "shakespeare": dict(
        num_layers=1,
        num_heads=2,
        key_size=16,
        model_size=32,
        sequence_length=16,
        batch_size=8,
        eval_batch_size=8,
        n_test_crops=16,
    ),
}
# Columns of the table (task first); every cell holds a number or says why not.
COLUMNS = {
    "params": "parameters",
    "batch": "batch",
    "sam_ms": "SAM step ms",
    "gd_ms": "GD step ms",
    "meas_s": "measurement s (start / end)",
    "hvps": "HVPs (start / end)",
    "peak": "peak GPU memory GiB",
    "run_min": "projected run min (largest rho)",
    "preset_min": "projected preset min (all runs)",
    "c_first_s": "compile s (step / HVP)",
    "c_sam_ms": "compiled SAM step ms",
    "c_gd_ms": "compiled GD step ms",
    "c_meas_s": "compiled measurement s (end)",
    "c_run_min": "compiled projected run min",
    "c_diff": "compiled vs eager rel. diff (step / HVP / end loss / end norm)",
    "repro": "identical records (2 runs)",
}
SKIPPED = "skipped (time budget)"


class Clock:
    """Wall time since the start against the budget."""

    def __init__(self, budget: float):
        self.start, self.budget = time.perf_counter(), budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


def sync(device: str) -> None:
    """Wait for the device's queued work (timers must not stop before it finishes)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300))


def g(x: float) -> str:
    """A number as the table shows it."""
    return f"{x:.3g}"


def why(err: BaseException) -> str:
    """One table-safe line naming an exception."""
    text = " ".join(str(err).split()).replace("|", "/")
    return f"{type(err).__name__}: {text if len(text) <= 200 else text[:200] + '...'}"


# --- checks ------------------------------------------------------------------------------------


def tf32_check(device: str) -> Dict[str, Any]:
    """Relative errors of a float32 matmul and convolution against float64, with TF32 off (the
    check) and allowed (to show the check could see TF32: on a GPU that uses it, ~1e-4)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(1024, 1024, generator=gen).to(device) for _ in range(2))
    x, w = torch.randn(8, 16, 32, 32, generator=gen).to(device), torch.randn(32, 16, 3, 3, generator=gen).to(device)
    ref_mm, ref_conv = a.double() @ b.double(), torch.nn.functional.conv2d(x.double(), w.double(), padding=1)
    out = {}
    for allow in (False, True):
        with pinned_precision(allow):
            mm, conv = a @ b, torch.nn.functional.conv2d(x, w, padding=1)
            sync(device)
        out[allow] = (rel(mm, ref_mm), rel(conv, ref_conv))
    off = out[False]
    return dict(matmul=off[0], conv=off[1], tf32_allowed=max(out[True]), ok=max(off) < TF32_LIMIT)


def flagged_ops(device: str, fn: Callable[[], Any]) -> List[str]:
    """Ops that PyTorch flags as nondeterministic while ``fn`` runs (deterministic algorithms
    switched on with warn_only, then restored)."""
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
            sync(device)
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)
    names = set()
    for w in caught:
        msg = str(w.message)
        if "CuBLAS" in msg or "CUBLAS_WORKSPACE_CONFIG" in msg:
            names.add("cuBLAS without CUBLAS_WORKSPACE_CONFIG")
        elif "deterministic" in msg:
            names.add(msg.split(" does not have")[0].strip()[:80])
    return sorted(names)


def reproducible(cfg, steps: int, data_dir) -> str:
    """Two identical short runs of ``samedge.loop.run``: 'identical' or how far apart."""
    from samedge.columns import TIMING_COLUMNS
    from samedge.loop import run

    short = dataclasses.replace(cfg, steps=steps, measure_every=max(1, steps // 2), checkpoint_every=None)
    a, b = (run(short, run_dir=None, data_dir=data_dir, progress=False) for _ in range(2))
    fa, fb = (r.frame.drop(columns=[c for c in TIMING_COLUMNS if c in r.frame]) for r in (a, b))
    sa, sb = ({k: v for k, v in r.summary.items() if "seconds" not in k} for r in (a, b))
    if fa.equals(fb) and sa == sb:
        return f"identical ({len(fa)} rows)"
    num = fa.select_dtypes("number").columns
    diff = float((fa[num] - fb[num]).abs().max().max()) if len(num) and fa.shape == fb.shape else math.nan
    return f"differ: max abs diff {diff:.3g}"


# --- timing ------------------------------------------------------------------------------------


class CompiledHVP:
    """H v by forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``), compiled: the
    fallback where double backward through the compiled loss is refused."""

    def __init__(self, hvp: Callable, params: Dict[str, torch.Tensor], x, y):
        self.hvp_fn, self.x, self.y = hvp, x, y
        self.params = {k: v.detach() for k, v in params.items()}
        self.size = sum(v.numel() for v in self.params.values())
        first = next(iter(self.params.values()))
        self.dtype, self.device = first.dtype, first.device

    def __call__(self, vec: torch.Tensor) -> torch.Tensor:
        v = unflatten(vec.to(self.dtype), self.params)
        return flatten(self.hvp_fn(self.params, v, self.x, self.y)).detach()


def measure(make_op, batches, params, cfg, warm, seed: int, device: str) -> Dict[str, Any]:
    """One measurement as the loop makes it: ||H||_op on the training batch (and on the evaluation
    batch of minibatch tasks), warm-started from ``warm`` when given."""
    sync(device)
    t0 = time.perf_counter()
    hvps, norms, vecs = 0, [], []
    for i, (x, y) in enumerate(batches):
        sh = sharpness(
            make_op(x, y, params),
            v0=warm[i] if warm else None,
            tol=cfg.lanczos_tol,
            max_iter=cfg.lanczos_max_iter,
            seed=seed + i,
        )
        hvps, norms, vecs = hvps + sh.num_hvps, norms + [sh.op_norm], vecs + [sh.eigenvector]
    sync(device)
    return dict(seconds=time.perf_counter() - t0, hvps=hvps, op_norm=norms[0], vecs=vecs)


def time_pass(built, cfg, init, steps: int, loss_of, make_op, device: str, clock: Clock) -> Dict[str, Any]:
    """Start measurement, one warm-up SAM and GD step, ``steps`` timed SAM steps, end measurement,
    timed GD steps. ``loss_of(x, y)`` is the loss closure of a batch, ``make_op(x, y, params)``
    its HVP operator (None: no measurements)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    params = dict(init)
    x, y = built.sample(0, gen)
    evals = [built.eval_batch] if built.eval_batch is not None else []
    out: Dict[str, Any] = {}
    if make_op is not None:
        out["start"] = measure(make_op, [(x, y)] + evals, params, cfg, None, cfg.seed, device)
    fn = loss_of(x, y)
    st = sam_step(fn, params, cfg.eta, cfg.rho, cfg.normalize)
    sam_step(fn, params, cfg.eta, 0.0, cfg.normalize)
    out["sam_grad0"] = flatten(st.sam_grad)
    params, done = st.params, 0
    sync(device)
    t0 = time.perf_counter()
    for t in range(1, steps + 1):
        x, y = built.sample(t, gen)
        st = sam_step(loss_of(x, y), params, cfg.eta, cfg.rho, cfg.normalize)
        params, done = st.params, done + 1
        if clock.left() < 0:
            break
    sync(device)
    out["sam_s"], out["steps"], out["end_loss"] = (time.perf_counter() - t0) / done, done, float(st.loss)
    x, y = built.sample(steps + 1, gen)
    if make_op is not None:
        warm = out["start"]["vecs"]
        out["end"] = measure(make_op, [(x, y)] + evals, params, cfg, warm, cfg.seed + steps + 1, device)
    gd_gen, gd_params, n_gd = torch.Generator().manual_seed(cfg.seed + 1), params, max(2, steps // 2)
    sync(device)
    t0 = time.perf_counter()
    for t in range(n_gd):
        gx, gy = built.sample(t, gd_gen)
        gd_params = sam_step(loss_of(gx, gy), gd_params, cfg.eta, 0.0, cfg.normalize).params
    sync(device)
    out["gd_s"] = (time.perf_counter() - t0) / n_gd
    return out


def projected(cfg, paper: Dict[str, Any], sam_s: float, gd_s: float, meas_s: float) -> tuple:
    """(minutes of one run at the largest rho, minutes of all the preset's runs): steps x step
    time + (steps / measure_every + 1) x measurement time; rho = 0 runs take GD steps."""
    n_meas = paper["steps"] // paper["measure_every"] + 1
    one = lambda step_s: (paper["steps"] * step_s + n_meas * meas_s) / 60  # noqa: E731
    runs = [(gd_s if rho == 0 else sam_s) for rho in paper["rhos"] for _ in paper["seeds"]]
    return one(sam_s if cfg.rho > 0 else gd_s), sum(one(s) for s in runs)


def check_task(task: str, args, clock: Clock, row: Dict[str, str], notes: List[str]) -> Dict[str, Any]:
    """Fill ``row`` with the eager columns of ``task``; returns what the later phases need."""
    device = args.device
    given = dict(TINY[task]) if args.tiny else {}
    paper = resolve_params(task, "paper", device=device, **given)
    largest = max(paper["rhos"])
    (cfg,) = run_configs(task, {**paper, "rhos": [largest], "seeds": [paper["seeds"][0]]})
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(cfg.seed)
    built = get_task(task).build(cfg.options, cfg.batch_size, device, cfg.torch_dtype, args.data_dir)
    init = parameters_of(built.model)
    loss_of = lambda x, y: module_loss(built.model, built.loss, x, y)  # noqa: E731
    make_op = lambda x, y, p: HessianOperator(loss_of(x, y), p)  # noqa: E731
    with pinned_precision(cfg.allow_tf32):
        e = time_pass(built, cfg, init, args.steps, loss_of, make_op, device, clock)
        x0, y0 = built.sample(0, torch.Generator().manual_seed(cfg.seed))
        v = torch.randn(sum(p.numel() for p in init.values()), generator=torch.Generator().manual_seed(7))
        v = (v / torch.linalg.vector_norm(v)).to(device=device, dtype=cfg.torch_dtype)
        hv = HessianOperator(loss_of(x0, y0), init)(v)

        def one_step_and_hvp():
            sam_step(loss_of(x0, y0), init, cfg.eta, cfg.rho, cfg.normalize)
            HessianOperator(loss_of(x0, y0), init)(v)

        flagged = flagged_ops(device, one_step_and_hvp)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    run_min, preset_min = projected(cfg, paper, e["sam_s"], e["gd_s"], e["end"]["seconds"])
    row.update(
        params=f"{len(v):,}",
        batch=str(len(x0)),
        sam_ms=g(1e3 * e["sam_s"]),
        gd_ms=g(1e3 * e["gd_s"]),
        meas_s=f"{g(e['start']['seconds'])} / {g(e['end']['seconds'])}",
        hvps=f"{e['start']['hvps']} / {e['end']['hvps']}",
        peak=g(peak) if peak is not None else "n/a (cpu)",
        run_min=g(run_min),
        preset_min=f"{g(preset_min)} ({len(paper['rhos']) * len(paper['seeds'])} runs)",
    )
    notes.append(
        f"{task}: ops PyTorch flags as nondeterministic in a SAM step and an HVP: {', '.join(flagged) or 'none'}"
    )
    return dict(cfg=cfg, paper=paper, built=built, init=init, eager=e, x0=x0, y0=y0, v=v, hv=hv)


def check_compiled(task: str, ctx: Dict[str, Any], args, clock: Clock, row: Dict[str, str], notes: List[str]) -> None:
    """Fill ``row``'s compiled columns: the loss closure by ``torch.compile``, the HVP by double
    backward through it or, where that is refused, by compiled forward-over-reverse."""
    from torch.func import functional_call, grad, jvp

    cfg, built, init, device = ctx["cfg"], ctx["built"], ctx["init"], args.device
    model, loss, x0, y0, v = built.model, built.loss, ctx["x0"], ctx["y0"], ctx["v"]
    e = ctx["eager"]
    torch._dynamo.reset()
    compiled = torch.compile(lambda p, x, y: module_loss(model, loss, x, y)(p), backend=args.compile_backend)
    loss_of = lambda x, y: lambda p: compiled(p, x, y)  # noqa: E731
    eager_loss = lambda x, y: module_loss(model, loss, x, y)  # noqa: E731
    make_op, hvp_cell = None, "failed: no compiled HVP"
    with pinned_precision(cfg.allow_tf32):
        # Eager from w0 moved by float32 round-off: how far apart round-off alone puts two runs
        # after the timed steps (ReLU and max-pool kinks amplify it), to judge the compiled run's.
        r = torch.Generator().manual_seed(11)
        nudged = {k: p * (1 + 2**-24 * torch.randn(p.shape, generator=r).sign().to(p)) for k, p in init.items()}
        eager_op = lambda x, y, p: HessianOperator(eager_loss(x, y), p)  # noqa: E731
        ref = time_pass(built, cfg, nudged, args.steps, eager_loss, eager_op, device, clock)
        # The first SAM and GD steps compile the loss closure's forward and backward.
        t0 = time.perf_counter()
        sam_step(loss_of(x0, y0), init, cfg.eta, cfg.rho, cfg.normalize)
        sam_step(loss_of(x0, y0), init, cfg.eta, 0.0, cfg.normalize)
        sync(device)
        step_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            hv = HessianOperator(loss_of(x0, y0), init)(v)
            sync(device)
            make_op = lambda x, y, p: HessianOperator(loss_of(x, y), p)  # noqa: E731
            path = "double backward through the compiled loss"
        except Exception as err:  # noqa: BLE001 - the table reports it
            refused = why(err)
            buffers = dict(model.named_buffers())

            def fwd_over_rev(p, u, x, y):
                f = lambda q: loss(functional_call(model, {**q, **buffers}, (x,)), y)  # noqa: E731
                return jvp(grad(f), (p,), (u,))[1]

            hvp_c = torch.compile(fwd_over_rev, backend=args.compile_backend)
            t0 = time.perf_counter()
            try:
                hv = CompiledHVP(hvp_c, init, x0, y0)(v)
                sync(device)
                make_op = lambda x, y, p: CompiledHVP(hvp_c, p, x, y)  # noqa: E731
                path = f"compiled forward-over-reverse (double backward through the compiled loss: failed: {refused})"
            except Exception as err2:  # noqa: BLE001
                path = f"none (double backward: failed: {refused}; forward-over-reverse: failed: {why(err2)})"
                hvp_cell = f"failed: {why(err2)}"
        hvp_first = time.perf_counter() - t0
        c = time_pass(built, cfg, init, args.steps, loss_of, make_op, device, clock)
    step_diff = rel(c["sam_grad0"], e["sam_grad0"])
    end_loss = lambda a: abs(a["end_loss"] - e["end_loss"]) / max(abs(e["end_loss"]), 1e-300)  # noqa: E731
    end_norm = lambda a: abs(a["end"]["op_norm"] - e["end"]["op_norm"]) / e["end"]["op_norm"]  # noqa: E731
    hvp_diff = rel(hv, ctx["hv"]) if make_op is not None else None
    worst = max(step_diff, hvp_diff or 0.0)
    row.update(
        c_first_s=f"{g(step_first)} / {g(hvp_first) if make_op is not None else 'n/a (no compiled HVP)'}",
        c_sam_ms=g(1e3 * c["sam_s"]),
        c_gd_ms=g(1e3 * c["gd_s"]),
        c_diff=f"{g(step_diff)} / {g(hvp_diff) if hvp_diff is not None else 'n/a'} / {g(end_loss(c))} / "
        + (g(end_norm(c)) if make_op is not None else "n/a")
        + ("" if worst <= AGREE else f" (step or HVP above {AGREE:g})"),
    )
    if make_op is not None:
        run_min, _ = projected(cfg, ctx["paper"], c["sam_s"], c["gd_s"], c["end"]["seconds"])
        row.update(c_meas_s=g(c["end"]["seconds"]), c_run_min=g(run_min))
    else:
        row.update(c_meas_s=hvp_cell, c_run_min=hvp_cell)
    notes.append(f"{task}: compiled HVP: {path}")
    notes.append(
        f"{task}: eager from w0 moved by float32 round-off (2^-24 relative) ends {g(end_loss(ref))} (loss) and "
        f"{g(end_norm(ref))} (||H||) from eager after {args.steps} steps: the scale of the compiled run's end differences"
    )


# --- report ------------------------------------------------------------------------------------


def header(args, clock: Clock) -> List[str]:
    """Date, commit, torch, device, threads, sizes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True)
        commit += " (uncommitted changes)" if dirty.stdout.strip() else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    if args.device.startswith("cuda"):
        dev = f"{torch.cuda.get_device_name(torch.device(args.device))} (CUDA {torch.version.cuda})"
    else:
        dev = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    sizes = "TINY sizes (--tiny: not the paper's; projections are for these tiny models)" if args.tiny else "paper"
    return [
        "# Device check of the `paper` presets",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; commit {commit}",
        f"- torch {torch.__version__}, python {platform.python_version()}, device {args.device}: {dev}, "
        f"{torch.get_num_threads()} CPU threads",
        f"- sizes: {sizes}; {args.steps} timed SAM steps per task; wall time {clock.elapsed():.0f} s "
        f"(budget {args.time_budget:.0f} s); torch.compile backend {args.compile_backend}",
        "- command: `python benchmarks/device_check.py " + " ".join(sys.argv[1:]) + "`",
        "",
    ]


def report(args, clock: Clock, rows: Dict[str, Dict[str, str]], lines: List[str], notes: List[str]) -> str:
    """The markdown report: header, the table (one row per task), the checks, the notes."""
    out = header(args, clock)
    out.append("| task | " + " | ".join(COLUMNS.values()) + " |")
    out.append("|---" * (len(COLUMNS) + 1) + "|")
    for task, row in rows.items():
        out.append(f"| {task} | " + " | ".join(row.get(k, SKIPPED) for k in COLUMNS) + " |")
    out += [""] + [f"- {line}" for line in lines] + [""]
    out += [
        "Measurement s: one measurement as the loop makes it (Lanczos on the training batch, and on the "
        "evaluation batch for shakespeare); start = cold, end = warm-started from the start's eigenvector. "
        "Projected run: preset steps x step time + (steps / measure_every + 1) x end measurement; the preset: "
        "the same for each of its runs (GD step time for rho = 0). Compile s: the first SAM + GD step, and "
        "the first HVP. Rel. diff: one SAM step's gradient and one HVP at w0 (same batch and vector: float32 "
        "round-off is ~1e-6), then the loss and ||H|| after the timed steps (compare the notes' round-off scale).",
        "",
    ]
    out += [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    """Run the checks, write the report, return the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes instead of the paper's (CI)")
    ap.add_argument("--steps", type=int, default=None, help="timed SAM steps per task (default 50; --tiny 6)")
    ap.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    ap.add_argument("--out", default=None, help="report file (default benchmarks/DEVICE.md, -cpu.md on cpu)")
    ap.add_argument(
        "--time-budget",
        type=float,
        default=400.0,
        help=f"seconds: later phases are skipped, a phase still running at +{GRACE} s stopped",
    )
    ap.add_argument("--repro-steps", type=int, default=None, help="steps of each determinism run (default 6; --tiny 4)")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile columns")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (CI: aot_eager, no C++ build)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--data-dir", default=None, help="data directory (default: SAMEDGE_DATA_DIR or the cache)")
    args = ap.parse_args(argv)
    args.steps = args.steps or (6 if args.tiny else 50)
    repro_steps = args.repro_steps or (4 if args.tiny else 6)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("device_check: --device cuda, but CUDA is not available here; use --device cpu --tiny", file=sys.stderr)
        return 2
    out_path = (
        Path(args.out)
        if args.out
        else ROOT / "benchmarks" / ("DEVICE.md" if args.device == "cuda" else "DEVICE-cpu.md")
    )
    clock = Clock(args.time_budget)
    rows: Dict[str, Dict[str, str]] = {t: {} for t in args.tasks}
    lines: List[str] = []
    notes: List[str] = []
    failed = incomplete = False
    ctxs: Dict[str, Dict[str, Any]] = {}

    def log(msg: str) -> None:
        print(f"[{clock.elapsed():6.1f} s] {msg}", file=sys.stderr, flush=True)

    def fail(task: str, keys, err: BaseException) -> None:
        nonlocal failed
        failed = True
        traceback.print_exc()
        for k in keys:
            rows[task].setdefault(k, f"failed: {why(err)}")

    def out_of_time(signum, frame):
        raise TimeoutError(f"interrupted {GRACE} s past the time budget of {args.time_budget:g} s")

    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, out_of_time)
        signal.alarm(int(args.time_budget + GRACE))
    try:
        tf = tf32_check(args.device)
        failed |= not tf["ok"]
        lines.append(
            f"TF32 off: relative error against float64 of a 1024x1024 matmul {tf['matmul']:.2g}, of a convolution "
            f"{tf['conv']:.2g} (limit {TF32_LIMIT:g}): {'PASS' if tf['ok'] else 'FAIL'} "
            f"(with TF32 allowed: {tf['tf32_allowed']:.2g})"
        )
        log(lines[-1])
        # Phases in order of what matters most, so that a short budget cuts the least important.
        for task in args.tasks:
            log(f"{task}: eager")
            try:
                ctxs[task] = check_task(task, args, clock, rows[task], notes)
            except Exception as err:  # noqa: BLE001 - a task that crashes is reported, the others go on
                fail(task, COLUMNS, err)
            if args.device == "cuda":
                torch.cuda.empty_cache()
        verdicts = []
        for task in args.tasks:
            if task not in ctxs:
                verdicts.append(f"{task} not run")
                continue
            e = ctxs[task]["eager"]
            estimate = 2 * (repro_steps * e["sam_s"] + 3 * e["end"]["seconds"]) + 5
            if clock.left() < estimate:
                incomplete = True
                verdicts.append(f"{task} {SKIPPED}")
                continue
            log(f"{task}: determinism")
            try:
                rows[task]["repro"] = reproducible(ctxs[task]["cfg"], repro_steps, args.data_dir)
            except Exception as err:  # noqa: BLE001
                fail(task, ["repro"], err)
            verdicts.append(f"{task} {rows[task]['repro']}")
        same = [t for t in args.tasks if rows[t].get("repro", "").startswith("identical")]
        bad = any(rows[t].get("repro", "").startswith(("differ", "failed")) for t in args.tasks)
        failed |= bad
        verdict = "PASS" if len(same) == len(args.tasks) else ("FAIL" if bad else "INCOMPLETE")
        lines.append(
            f"Determinism: two identical runs of {repro_steps} steps per task, records compared without the timing "
            f"columns: {'; '.join(verdicts)}: {verdict}"
        )
        log(lines[-1])
        for task in args.tasks:
            if task not in ctxs:
                continue
            keys = [k for k in COLUMNS if k.startswith("c_")]
            if args.no_compile:
                rows[task].update({k: "n/a (--no-compile)" for k in keys})
                continue
            e = ctxs[task]["eager"]
            estimate = 30 + 2 * (1.5 * args.steps * e["sam_s"] + e["start"]["seconds"] + e["end"]["seconds"])
            if clock.left() < estimate:
                incomplete = True
                continue
            log(f"{task}: torch.compile")
            try:
                check_compiled(task, ctxs[task], args, clock, rows[task], notes)
            except Exception as err:  # noqa: BLE001 - a platform without a working compiler says so
                traceback.print_exc()
                rows[task].update({k: f"failed: {why(err)}" for k in keys if k not in rows[task]})
    except TimeoutError as err:
        incomplete = True
        lines.append(f"stopped: {why(err)}")
    finally:
        if hasattr(signal, "SIGALRM"):
            signal.alarm(0)
        text = report(args, clock, rows, lines, notes)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text)
        print(text)
        log(f"wrote {out_path}")
    incomplete |= any(k not in row or SKIPPED in row[k] for row in rows.values() for k in COLUMNS)
    return 1 if failed else (3 if incomplete else 0)


if __name__ == "__main__":
    sys.exit(main())
