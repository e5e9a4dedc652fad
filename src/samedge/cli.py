"""The ``samedge`` command line: one run, a sweep through submitit, the book's notebooks, a table.

    samedge run mnist --preset smoke -p rho=0.05 [-p steps=200 ...] [--results-dir D] [--device cpu]
    samedge sweep mnist --preset cpu --grid eta=0.35,0.7 --grid rho=0,0.01,0.05,0.1 --seeds 0 1 2 \\
        [--max-parallel 2] [-p n_train=500 ...] [--results-dir D]
    samedge sweep mnist --preset paper --grid rho=0,0.05,0.1 --seeds 0 1 2 --executor slurm \\
        --slurm-partition gpu --slurm-time 120 --slurm-gpus 1 --slurm-option qos=high [--dry-run]
    samedge reproduce --preset smoke --out out/smoke        # = python -m samedge.reproduce
    samedge summarize results/mnist [--csv table.csv]

``-p NAME=VALUE`` sets any notebook parameter of the task (values are YAML: ``-p steps=200``,
``-p "rhos=[0.0, 0.1]"``; ``-p rho=0.05`` is ``-p rhos=[0.05]``). ``samedge run`` makes exactly
one run: when the resolved parameters hold several rhos (every preset does), choose one with
``-p rho=R``; a list of several rhos is an error (that is a sweep); the seed is the preset's
first unless ``-p seed=S``. Runs go to
``<results-dir>/<task>/<preset>/<run name>`` (``--results-dir``, else ``$SAMEDGE_RESULTS_DIR``,
else ``./results``), the same directories the notebooks use, so a finished run is reloaded and an
unfinished one resumes from its checkpoint.

``samedge sweep`` runs the product of its ``--grid`` values (any notebook parameter of the task,
e.g. eta, rho, steps, width; ``NAME=V1,V2``, repeatable) and ``--seeds``, one submitit job per
run (without ``--seeds``, the preset's seeds); re-running the same command after a failure, a preemption or an ``scancel`` computes only
the missing and unfinished runs. Every configuration is validated before anything is submitted.
The SLURM options come from the command line or ``--slurm-config FILE.yaml`` (a mapping such as
``partition: gpu``, ``time: 120``, ``gpus_per_node: 1``, ``qos: high``, ``setup: [module load
cuda]``; the command line wins); keys submitit does not know become ``#SBATCH --key=value`` lines.

Exit status: 0 on success, 1 when a run or job failed (or ``summarize`` found no runs), 2 for a
usage or configuration error (nothing was run or submitted).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["main", "find_run_dirs", "runs_table"]


def _param(text: str) -> tuple:
    """A ``-p NAME=VALUE`` argument, parsed as every command parses it (``reproduce.parse_param_arg``)."""
    from .reproduce import parse_param_arg

    return parse_param_arg(text)


def _params(pairs: Sequence[tuple]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"-p {name}= is given twice ({out[name]!r} and {value!r}); give it once")
        out[name] = value
    return out


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", help="the task: mnist, cifar10 or shakespeare")
    p.add_argument("--preset", default=None, help="smoke, cpu or paper (default: $SAMEDGE_PRESET, else cpu)")
    p.add_argument(
        "-p",
        "--param",
        action="append",
        type=_param,
        default=[],
        metavar="NAME=VALUE",
        help="a notebook parameter (value parsed as YAML); repeatable; rho=R means rhos=[R]",
    )
    p.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="root of the run directories (default: $SAMEDGE_RESULTS_DIR, else ./results)",
    )
    p.add_argument("--device", default=None, help="'auto', 'cpu' or 'cuda[:N]' (default: auto)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samedge", description="Runs, sweeps and tables of the SAM-edge experiments.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    r = sub.add_parser(
        "run",
        help="one run into its fingerprinted, resumable run directory",
        description="One run (exactly one rho) into <results-dir>/<task>/<preset>/<run name>.",
    )
    _add_common(r)
    r.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser(
        "sweep",
        help="a grid of runs x seeds, one submitit job per run",
        description="The product of --grid values and --seeds over the preset, one submitit job per run.",
    )
    _add_common(s)
    s.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=V1,V2",
        help="a parameter and its values (eta=0.1,0.2; rho=0,0.05; steps=...); repeatable",
    )
    s.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED", help="seeds (default: the preset's)")
    s.add_argument(
        "--executor",
        choices=["local", "slurm", "debug"],
        default="local",
        help="local subprocesses (default), a SLURM job array, or in-process (debug)",
    )
    s.add_argument(
        "--max-parallel",
        type=int,
        default=None,
        metavar="N",
        help="jobs at once (local default: 1 per CPU core; slurm: the array's parallelism)",
    )
    s.add_argument(
        "--runs-per-job",
        type=int,
        default=1,
        metavar="K",
        help="local/debug executor: runs each job runs one after the other (default 1; more saves a process "
        "start per run when runs take seconds)",
    )
    s.add_argument(
        "--timeout-min", type=int, default=24 * 60, metavar="MIN", help="local executor: minutes per job (default 1440)"
    )
    s.add_argument("--slurm-partition", default=None)
    s.add_argument("--slurm-time", type=int, default=None, metavar="MIN", help="minutes per job (default 60)")
    s.add_argument("--slurm-gpus", type=int, default=None, metavar="N", help="GPUs per job (gpus_per_node)")
    s.add_argument(
        "--slurm-option",
        action="append",
        type=_param,
        default=[],
        metavar="KEY=VALUE",
        help="another SLURM parameter (qos=high, account=x, mem=16G, cpus_per_task=4, ...); repeatable",
    )
    s.add_argument(
        "--slurm-config", type=Path, default=None, metavar="FILE.yaml", help="SLURM parameters from a YAML mapping"
    )
    s.add_argument(
        "--submitit-dir",
        type=Path,
        default=None,
        help="submitit's folder (default: <results root>/submitit/<UTC time>)",
    )
    s.add_argument(
        "--dry-run", action="store_true", help="print the plan (and the sbatch script for slurm); submit nothing"
    )
    s.add_argument(
        "--poll", type=float, default=2.0, metavar="SECONDS", help="how often job states are polled (default 2)"
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    sub.add_parser(
        "reproduce", help="run every book notebook at one preset (python -m samedge.reproduce)", add_help=False
    )

    m = sub.add_parser(
        "summarize",
        help="the ratio table of the runs under a directory",
        description="The ratio table of every finished run found (recursively) under DIR.",
    )
    m.add_argument("dir", type=Path)
    m.add_argument("--csv", type=Path, default=None, metavar="FILE", help="also write the table as CSV")
    return parser


def _fail(message: str, code: int = 2) -> int:
    print(f"samedge: error: {message}", file=sys.stderr)
    return code


def _device(args: argparse.Namespace, params: Dict[str, Any]) -> str:
    if args.device is not None and "device" in params:
        raise ValueError(
            f"the device is given twice (--device {args.device} and -p device={params['device']}); give it once"
        )
    return args.device or params.pop("device", None) or "auto"


def _cmd_run(args: argparse.Namespace) -> int:
    from .config import ConfigError, resolve_device
    from .loop import RunDirError
    from .runs import plan

    try:
        params = _params(args.param)
        device = resolve_device(_device(args, params))
        rhos = params.get("rhos")
        if isinstance(rhos, list) and len(rhos) > 1:
            raise ConfigError(
                f"samedge run makes one run, but rhos={rhos} lists {len(rhos)}; "
                "choose one with -p rho=R, or run them all with samedge sweep"
            )
        runs = plan(args.task, args.preset, None, None, params, args.results_dir, device)
        if "seed" not in params and "seeds" not in params:  # one run: the preset's first seed
            runs = [r for r in runs if r.config.seed == runs[0].config.seed]
        if len(runs) != 1:
            choices = sorted({r.config.rho for r in runs})
            raise ConfigError(
                f"the parameters give {len(runs)} runs (rhos {choices}); samedge run makes one: "
                f"choose one with -p rho=R (e.g. -p rho={choices[-1]:g}), or use samedge sweep"
            )
    except ValueError as err:  # ConfigError, unknown task / option
        return _fail(str(err))
    from .loop import run

    r = runs[0]
    print(f"samedge run: {r.run_dir}" + ("  (finished before: reloading)" if r.finished else ""), flush=True)
    try:
        rec = run(r.config, r.run_dir, data_dir=r.data_dir, progress=not args.quiet)
    except RunDirError as err:
        return _fail(str(err))
    status = f"diverged at step {rec.summary.get('diverged_at')}" if rec.diverged else "done"
    print(f"{r.run_dir}\n{status}; median ratio (2nd half) {rec.median_ratio():.4f}", flush=True)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .config import resolve_device
    from .runs import parse_grid, plan
    from .sweep import check_executor, default_folder, execute, local_gpus, slurm_parameters, slurm_script

    try:
        params = _params(args.param)
        if args.executor == "slurm":
            slurm = slurm_parameters(
                args.slurm_partition,
                args.slurm_time,
                args.slurm_gpus,
                _params(args.slurm_option),
                args.slurm_config,
                args.max_parallel,
            )
        else:
            given = [
                f
                for f, v in (
                    ("--slurm-partition", args.slurm_partition),
                    ("--slurm-time", args.slurm_time),
                    ("--slurm-gpus", args.slurm_gpus),
                    ("--slurm-option", args.slurm_option),
                    ("--slurm-config", args.slurm_config),
                )
                if v
            ]
            if given:
                raise ValueError(
                    f"{', '.join(given)} only apply with --executor slurm (got --executor {args.executor})"
                )
            slurm = None
        if args.max_parallel is not None and args.max_parallel < 1:
            raise ValueError(f"--max-parallel must be a positive integer, got {args.max_parallel}")
        if args.runs_per_job < 1 or (args.runs_per_job > 1 and args.executor == "slurm"):
            raise ValueError(
                f"--runs-per-job must be a positive integer, and 1 with --executor slurm; got {args.runs_per_job}"
            )
        grid = parse_grid(args.grid)
        gpus = int((slurm or {}).get("gpus_per_node") or 0)
        device = resolve_device(_device(args, params), here=check_executor(args.executor) != "slurm", gpus=gpus)
        runs = plan(args.task, args.preset, grid, args.seeds, params, args.results_dir, device)
        if args.executor == "slurm":
            folder = args.submitit_dir or default_folder(runs)
            script = slurm_script(folder, slurm, sum(not r.finished for r in runs))  # checks the parameters too
        else:
            folder = args.submitit_dir
    except ValueError as err:  # ConfigError, unknown task / option, bad SLURM parameter
        return _fail(str(err))
    todo = [r for r in runs if not r.finished]
    print(
        f"samedge sweep: {len(runs)} runs of {args.task} ({len(runs) - len(todo)} finished, {len(todo)} to run) "
        f"under {runs[0].run_dir.parent}, executor {args.executor}",
        flush=True,
    )
    if args.dry_run:
        for r in runs:
            print(f"  {'finished' if r.finished else 'to run  '}  {r.run_dir}")
        if args.executor == "slurm" and todo:
            print(f"# sbatch script submitit would submit (folder {folder}):")
            print(script)
        return 0
    try:
        result = execute(
            runs,
            args.executor,
            args.max_parallel,
            folder,
            args.timeout_min,
            slurm,
            local_gpus(device) if args.executor == "local" else 0,
            progress=not args.quiet,
            poll_s=args.poll,
            runs_per_job=args.runs_per_job,
        )
    except ValueError as err:  # e.g. SLURM not available here
        return _fail(str(err))
    if result.folder is not None:
        print(f"submitit folder (job scripts and logs): {result.folder}")
    if result.failed:
        print(result.failure_report(), file=sys.stderr)
        return 1
    print(
        f"{len(runs)} runs finished ({len(result.submitted)} computed now, {len(runs) - len(result.submitted)} reloaded); "
        f"summarize them with: samedge summarize {runs[0].run_dir.parent}"
    )
    return 0


def find_run_dirs(root: Path) -> List[Path]:
    """Every directory under ``root`` (itself included) holding a finished record, sorted."""
    from .rundir import SUMMARY, is_finished

    return sorted(p.parent for p in Path(root).rglob(SUMMARY) if is_finished(p.parent))


def runs_table(run_dirs: Sequence[Path], root: Optional[Path] = None):
    """The ratio table of these runs (``analysis.ratio_table``) with task, seed, steps and directory."""
    from .analysis import ratio_table
    from .record import RunRecord

    records = [RunRecord.load(d) for d in run_dirs]
    table = ratio_table(records)
    table.insert(0, "task", [r.config.task for r in records])
    table.insert(table.columns.get_loc("seed") + 1, "steps", [r.config.steps for r in records])
    table["run directory"] = [str(d.relative_to(root)) if root is not None else str(d) for d in run_dirs]
    return table.sort_values(["task", "eta", "rho", "seed", "steps"], kind="stable").reset_index(drop=True)


def _cmd_summarize(args: argparse.Namespace) -> int:
    import pandas as pd

    root = args.dir
    if not root.is_dir():
        return _fail(f"{root} is not a directory", 1)
    dirs = find_run_dirs(root)
    unfinished = sorted({p.parent for p in root.rglob("checkpoint.pt")} - set(dirs))
    if not dirs:
        extra = f" ({len(unfinished)} unfinished, with a checkpoint only)" if unfinished else ""
        return _fail(f"no finished runs (directories with summary.json and record.csv) under {root}{extra}", 1)
    table = runs_table(dirs, root)
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 250):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"{len(dirs)} runs under {root}" + (f"; {len(unfinished)} unfinished (not shown)" if unfinished else ""))
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.csv, index=False)
        print(f"table written to {args.csv}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``samedge`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "reproduce":  # its own parser, unchanged
        from .reproduce import main as reproduce_main

        try:
            return reproduce_main(argv[1:])
        except SystemExit as e:
            return int(e.code or 0) if not isinstance(e.code, str) else _fail(e.code)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    return {"run": _cmd_run, "sweep": _cmd_sweep, "summarize": _cmd_summarize}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
