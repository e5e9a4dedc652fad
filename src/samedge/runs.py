"""From parameters to run directories: the one planner behind notebooks, ``samedge run`` and
``samedge sweep``.

``planned_runs`` turns one notebook's resolved parameters into its runs; ``plan`` takes a grid of
parameters and seeds over a preset to the same runs. Each run is a configuration (validated
before anything runs) and its fingerprinted directory under ``results_root``. Executing them is
``samedge.sweep.execute`` (submitit) or ``samedge.loop.run`` (in this process).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .config import ConfigError, RunConfig
from .presets import allowed_params, check_seeds, parse_value, resolve_params, run_configs
from .rundir import is_finished
from .tasks import get_task

__all__ = [
    "RESULTS_ENV",
    "NOT_IN_GRID",
    "PlannedRun",
    "results_root",
    "parse_grid",
    "check_grid",
    "plan",
    "planned_runs",
]

RESULTS_ENV = "SAMEDGE_RESULTS_DIR"


def results_root(task: str, params: Dict[str, Any]) -> Path:
    """Where an experiment's runs are saved: <results_dir>/<task>/<preset>/ (``results_dir``
    parameter, else ``$SAMEDGE_RESULTS_DIR``, else ``./results``)."""
    base = params.get("results_dir") or os.environ.get(RESULTS_ENV) or "results"
    return Path(base).expanduser() / task / str(params["preset"])


# Notebook parameters a grid may not vary: where the runs go, and the seed (use ``seeds``).
NOT_IN_GRID = {
    "preset": "choose the preset with preset=",
    "results_dir": "use results_dir=",
    "data_dir": "use -p data_dir=",
    "seed": "use seeds=[...] (--seeds on the command line)",
    "device": "use device= (--device)",
}


def parse_grid(specs: Sequence[str]) -> Dict[str, List[Any]]:
    """``["eta=0.1,0.2", "rho=0,0.05"]`` (or ``["eta=0.1,0.2,rho=0,0.05"]``) -> ``{"eta": [0.1, 0.2], "rho": [0, 0.05]}``.

    A comma-separated token with ``=`` starts a new parameter; the others are its values."""
    grid: Dict[str, List[Any]] = {}
    for spec in specs:
        key = None
        for token in spec.split(","):
            token = token.strip()
            if "=" in token:
                key, token = (s.strip() for s in token.split("=", 1))
                if not key:
                    raise ConfigError(f"grid {spec!r}: a parameter name is missing before '='; write NAME=V1,V2")
                if key in grid:
                    raise ConfigError(
                        f"grid parameter {key!r} is given twice; give all its values once: {key}=V1,V2,..."
                    )
                grid[key] = []
            elif key is None:
                raise ConfigError(f"grid {spec!r} must start with NAME=, e.g. eta=0.1,0.2")
            if token == "":
                if grid[key]:
                    raise ConfigError(f"grid {spec!r}: an empty value in the list of {key!r}")
                continue
            grid[key].append(parse_value(token))
    return grid


def _normalize_params(params: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``rho=r`` is ``rhos=[r]``; both at once is an error."""
    p = dict(params or {})
    if "rho" in p:
        if "rhos" in p:
            raise ConfigError(f"give either rho={p['rho']!r} or rhos={p['rhos']!r}, not both")
        rho = p.pop("rho")
        p["rhos"] = rho if isinstance(rho, list) else [rho]
    return p


def check_grid(
    task: str, grid: Mapping[str, Sequence[Any]], params: Optional[Mapping[str, Any]] = None
) -> Dict[str, List[Any]]:
    """The grid with ``rhos`` spelled ``rho``; unknown, empty, repeated or doubly-set parameters are errors."""
    allowed = allowed_params(task)
    given = _normalize_params(params)
    out: Dict[str, List[Any]] = {}
    for key, values in grid.items():
        name = "rho" if key in ("rho", "rhos") else key
        if name in out:
            raise ConfigError("grid parameter 'rho' is given twice (as 'rho' and 'rhos'); give its values once")
        if name in NOT_IN_GRID:
            raise ConfigError(f"{name!r} cannot be a grid parameter: {NOT_IN_GRID[name]}")
        if name != "rho" and name not in allowed:
            options = sorted((allowed - set(NOT_IN_GRID) - {"rhos"}) | {"rho"})
            raise ConfigError(f"unknown grid parameter {key!r} for task {task!r}; allowed: {options}")
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise ConfigError(f"grid parameter {key!r} has no values; give at least one, e.g. {key}=0.1,0.2")
        seen = []
        for v in values:
            if v in seen:
                raise ConfigError(f"grid parameter {key!r} lists the value {v!r} twice")
            seen.append(v)
        if (name == "rho" and "rhos" in given) or name in given:
            raise ConfigError(
                f"{name!r} is set both as a parameter ({given.get(name, given.get('rhos'))!r}) and by the grid; drop one"
            )
        out[name] = values
    return out


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its configuration, its run directory and the data directory."""

    config: RunConfig
    run_dir: Path
    data_dir: Optional[str] = None

    @property
    def name(self) -> str:
        """The run directory's name."""
        return self.run_dir.name

    @property
    def finished(self) -> bool:
        """Whether the run directory holds a finished record (``loop.run`` reloads it)."""
        return is_finished(self.run_dir)


def _describe(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in point.items())


def plan(
    task: str,
    preset: Optional[str] = None,
    grid: Optional[Mapping[str, Sequence[Any]]] = None,
    seeds: Optional[Sequence[int]] = None,
    params: Optional[Mapping[str, Any]] = None,
    results_dir: Optional[str | os.PathLike] = None,
    device: str = "cpu",
) -> List[PlannedRun]:
    """Every run of the sweep, each configuration validated; nothing is written or submitted.

    The runs are the product of the grid's values and the seeds over the preset's parameters
    (``params`` override the preset; a grid without ``rho`` runs every rho of the preset).
    ``device`` is taken as given (resolved by the caller with ``config.resolve_device``)."""
    get_task(task)
    given = _normalize_params(params)
    given.pop("device", None)
    grid = check_grid(task, grid or {}, given)
    if seeds is not None:
        seeds = check_seeds(list(seeds))
        if "seed" in given:
            raise ConfigError(f"seed is set both as a parameter ({given['seed']!r}) and by seeds={seeds}; drop one")
    if results_dir is not None:
        given["results_dir"] = str(results_dir)
    runs: List[PlannedRun] = []
    seen = set()
    for combo in itertools.product(*grid.values()):
        point = dict(zip(grid, combo))
        p = {**given, **{k: v for k, v in point.items() if k != "rho"}}
        if "rho" in point:
            p["rhos"] = [point["rho"]]
        for seed in seeds if seeds is not None else [None]:
            where = _describe({**point, **({"seed": seed} if seed is not None else {})})
            try:
                resolved = resolve_params(
                    task, preset, **{**p, "device": "cpu", **({} if seed is None else {"seed": seed})}
                )
                configs = [replace(c, device=device) if c.device != device else c for c in run_configs(task, resolved)]
            except ValueError as err:  # ConfigError, or a task's own ValueError
                raise ConfigError(f"grid point {where}: {err}" if where else str(err)) from None
            for r in planned_runs(task, resolved, configs):
                if r.run_dir not in seen:
                    seen.add(r.run_dir)
                    runs.append(r)
    return runs


def planned_runs(task: str, params: Dict[str, Any], configs: Optional[List[RunConfig]] = None) -> List[PlannedRun]:
    """The runs of one notebook's resolved parameters (``presets.resolve_params``): one per seed
    and rho (``configs``: these instead of ``presets.run_configs(task, params)``), each in its
    directory under ``results_root``."""
    root = results_root(task, params)
    configs = run_configs(task, params) if configs is None else configs
    return [PlannedRun(c, root / c.run_name(), params.get("data_dir")) for c in configs]
