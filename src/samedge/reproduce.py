"""Run every experiment notebook of the book at one preset: ``python -m samedge.reproduce``.

    python -m samedge.reproduce --preset smoke --device auto --out OUTDIR [--notebooks mnist cifar10 ...]

The notebooks are the ``book/*.ipynb`` files with a cell tagged ``parameters`` (the papermill
convention), so a new experiment chapter is picked up without editing this file. Each is
executed with papermill into ``OUTDIR/<name>.ipynb``; the parameters ``preset``, ``device``
and ``results_dir`` (= ``OUTDIR/results``) are passed to every notebook that declares them,
and ``-p NAME=VALUE`` sets any other declared parameter (values are YAML: ``-p steps=50``,
``-p "rhos=[0.0, 0.1]"``). One progress line per notebook (name, seconds, ok / FAILED with
the error), a ``summary.json`` in OUTDIR, and exit status 1 if any notebook failed, 2 for a
usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["parse_param_arg", "find_book_dir", "discover", "declared_parameters", "run_notebook", "main"]

PARAMETERS_TAG = "parameters"


def find_book_dir(start: Optional[os.PathLike] = None) -> Path:
    """``./book`` if it exists, else the ``book/`` of the source checkout this module lives in."""
    candidates = [Path(start) if start else Path.cwd() / "book", Path(__file__).resolve().parents[2] / "book"]
    for c in candidates:
        if c.is_dir() and any(c.glob("*.ipynb")):
            return c
    raise FileNotFoundError(
        f"no book directory with notebooks found (looked in {', '.join(map(str, candidates))}); pass --book-dir"
    )


def _has_parameters_cell(path: Path) -> bool:
    nb = json.loads(path.read_text())
    return any(
        PARAMETERS_TAG in (c.get("metadata", {}).get("tags") or [])
        for c in nb.get("cells", [])
        if c.get("cell_type") == "code"
    )


def discover(book_dir: os.PathLike) -> Dict[str, Path]:
    """Name -> path of every notebook in ``book_dir`` that has a ``parameters`` cell, sorted by name."""
    found = {p.stem: p for p in sorted(Path(book_dir).glob("*.ipynb")) if _has_parameters_cell(p)}
    return dict(sorted(found.items()))


def declared_parameters(path: os.PathLike) -> Dict[str, Any]:
    """The parameters a notebook declares (papermill's reading of its ``parameters`` cell)."""
    import papermill

    return dict(papermill.inspect_notebook(str(path)))


def _first_line(err: BaseException) -> str:
    """A one-line reason: papermill's error names the exception and its message."""
    ename = getattr(err, "ename", None)
    evalue = getattr(err, "evalue", None)
    text = f"{ename}: {evalue}" if ename else f"{type(err).__name__}: {err}"
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def run_notebook(
    path: Path,
    out_dir: Path,
    parameters: Dict[str, Any],
    cwd: Path,
    timeout: Optional[int] = None,
    prepare_only: bool = False,
) -> Dict[str, Any]:
    """Execute one notebook with papermill (or only inject its parameters, ``prepare_only``);
    returns name, status, seconds, output path and error."""
    import papermill

    out = out_dir / path.name
    t0 = time.perf_counter()
    status, error = "ok", None
    try:
        papermill.execute_notebook(
            str(path),
            str(out),
            parameters=parameters,
            cwd=str(cwd),
            kernel_name="python3",
            progress_bar=False,
            log_output=False,
            execution_timeout=timeout,
            prepare_only=prepare_only,
        )
    except Exception as err:  # a failing cell (PapermillExecutionError), a dead kernel, a timeout
        status, error = "failed", _first_line(err)
    return dict(
        name=path.stem,
        status=status,
        seconds=round(time.perf_counter() - t0, 2),
        output=str(out),
        parameters={k: v for k, v in parameters.items()},
        error=error,
    )


def parse_param_arg(text: str) -> tuple:
    """A ``-p NAME=VALUE`` argument (``presets.parse_assignment``), as argparse wants its errors."""
    from .presets import parse_assignment

    try:
        return parse_assignment(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m samedge.reproduce",
        description="Execute every experiment notebook of the book (those with a 'parameters' cell) at one preset.",
    )
    p.add_argument(
        "--preset", default="smoke", help="preset name passed to every notebook that takes one (default: smoke)"
    )
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda[:N]' (default: auto)")
    p.add_argument(
        "--out",
        type=Path,
        help="output directory: executed notebooks, results/ and summary.json (required unless --list)",
    )
    p.add_argument("--notebooks", nargs="+", metavar="NAME", help="only these notebooks (default: all)")
    p.add_argument(
        "-p",
        "--param",
        action="append",
        type=parse_param_arg,
        default=[],
        metavar="NAME=VALUE",
        help="another parameter for the notebooks that declare it (value parsed as YAML); repeatable",
    )
    p.add_argument(
        "--book-dir", type=Path, help="directory of the notebooks (default: ./book, else the checkout's book/)"
    )
    p.add_argument("--timeout", type=int, default=None, help="seconds allowed per cell (default: no limit)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing notebook")
    p.add_argument("--list", action="store_true", help="list the notebooks and their parameters, run nothing")
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="write the notebooks with their parameters injected, execute nothing (checks a command line)",
    )
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        book = find_book_dir(args.book_dir)
    except FileNotFoundError as err:
        parser.error(str(err))
    available = discover(book)
    names: List[str] = args.notebooks or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown notebook(s) {unknown}; available in {book}: {sorted(available)}")
    declared = {n: declared_parameters(available[n]) for n in names}
    if args.list:
        for n in names:
            print(f"{n}: {available[n]}  parameters: {', '.join(declared[n])}")
        return 0
    if args.out is None:
        parser.error("--out is required")
    extra = dict(args.param)
    unused = [k for k in extra if not any(k in declared[n] for n in names)]
    if unused:
        parser.error(f"parameter(s) {unused} are declared by none of the notebooks {names}")

    out = args.out.expanduser().resolve()
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    # Notebooks that take no results_dir still write under OUTDIR/results; kernels inherit this.
    os.environ["SAMEDGE_RESULTS_DIR"] = str(results)
    os.environ["SAMEDGE_PRESET"] = args.preset
    # Figures go into the executed notebooks: a non-interactive MPLBACKEND (e.g. Agg, as tests
    # set it) inherited by the kernels would keep ipykernel from using the inline backend.
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    common = {"preset": args.preset, "device": args.device, "results_dir": str(results)}

    print(
        f"samedge.reproduce: {len(names)} notebook(s) from {book}, preset {args.preset}, device {args.device}, into {out}",
        flush=True,
    )
    width = max(len(n) for n in names)
    records = []
    for i, name in enumerate(names, 1):
        params = {k: v for k, v in {**common, **extra}.items() if k in declared[name]}
        rec = run_notebook(available[name], out, params, cwd=book, timeout=args.timeout, prepare_only=args.prepare_only)
        records.append(rec)
        line = f"[{i}/{len(names)}] {name:<{width}}  {rec['seconds']:8.1f} s  {'ok' if rec['status'] == 'ok' else 'FAILED'}"
        if rec["error"]:
            line += f"  ({rec['error']}; see {rec['output']})"
        print(line, flush=True)
        if rec["status"] != "ok" and args.fail_fast:
            break
    failed = [r["name"] for r in records if r["status"] != "ok"]
    summary = dict(
        preset=args.preset,
        device=args.device,
        book_dir=str(book),
        results_dir=str(results),
        notebooks=records,
        failed=failed,
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    total = sum(r["seconds"] for r in records)
    skipped = len(names) - len(records)
    print(
        f"{len(records) - len(failed)} ok, {len(failed)} failed"
        + (f", {skipped} not run" if skipped else "")
        + f" in {total:.1f} s"
        + (f": failed {', '.join(failed)}" if failed else ""),
        flush=True,
    )
    return 1 if failed or skipped else 0


if __name__ == "__main__":
    sys.exit(main())
