"""Presets (YAML files of notebook parameters) and their resolution into run configurations.

One mechanism for the book, nbval and papermill alike: a notebook's ``preset`` parameter
defaults to ``None``, meaning the environment variable ``SAMEDGE_PRESET``, else ``cpu``.
Every other parameter left at ``None`` takes the preset's value; a value given explicitly
(a notebook cell, ``papermill -p``, or the YAML itself with ``papermill -f``) wins.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from .config import ConfigError, RunConfig, resolve_device
from .tasks import get_task

__all__ = ["PRESETS", "PRESET_ENV_VAR", "preset_path", "load_preset", "resolve_params", "run_configs", "check_seeds"]

PRESET_ENV_VAR = "SAMEDGE_PRESET"
PRESETS = ("smoke", "cpu", "paper")
# Parameters every experiment notebook takes (the task adds its own sizes, e.g. width).
COMMON = {
    "preset": None,
    "eta": None,
    "rhos": None,
    "steps": None,
    "measure_every": None,
    "seed": 0,
    "seeds": None,  # every rho runs once per seed; None: [seed]
    "device": "auto",
    "data_dir": None,
    "results_dir": None,
    "batch_size": None,
    "normalize": True,
    "measure_ascent": False,
    "lanczos_tol": 1e-3,
    "dtype": "float32",
    "checkpoint_every": None,
    "allow_tf32": False,
}


def preset_path(task: str, name: str) -> Path:
    """Path of a preset's YAML file (for ``papermill -f``)."""
    get_task(task)
    if name not in PRESETS:
        raise ConfigError(f"preset must be one of {list(PRESETS)}, got {name!r}")
    return Path(str(resources.files("samedge") / "presets" / task / f"{name}.yaml"))


def _allowed(task: str) -> set:
    return set(COMMON) | set(get_task(task).defaults)


def load_preset(task: str, name: str) -> Dict[str, Any]:
    """A preset's parameters; unknown keys in the file are an error."""
    path = preset_path(task, name)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset file {path} must hold a mapping of parameter names to values")
    unknown = sorted(set(data) - _allowed(task))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in preset file {path}; allowed: {sorted(_allowed(task))}")
    return data


def resolve_params(task: str, preset: Optional[str] = None, **given: Any) -> Dict[str, Any]:
    """The notebook's parameters: explicit values over the preset's over the defaults."""
    import os

    name = preset or os.environ.get(PRESET_ENV_VAR) or "cpu"
    unknown = sorted(set(given) - _allowed(task))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown} for task {task!r}; allowed: {sorted(_allowed(task))}")
    params = {**COMMON, **get_task(task).defaults, **load_preset(task, name)}
    params.update({k: _from_text(k, v, params[k]) for k, v in given.items() if v is not None})
    params["preset"] = name
    if given.get("seed") is not None and given.get("seeds") is not None:
        if check_seeds(params["seeds"]) != [params["seed"]]:
            raise ConfigError(f"seed={params['seed']!r} and seeds={params['seeds']!r} disagree; give only one of them")
    elif given.get("seed") is not None:
        params["seeds"] = [params["seed"]]  # an explicit seed wins over the preset's seeds
    params["seeds"] = check_seeds(params["seeds"] if params["seeds"] is not None else [params["seed"]])
    params["seed"] = params["seeds"][0]
    rhos = params["rhos"]
    if not isinstance(rhos, (list, tuple)) or not rhos:
        raise ConfigError(f"rhos must be a non-empty list of numbers >= 0, got {rhos!r}")
    params["rhos"] = [float(r) if isinstance(r, int) and not isinstance(r, bool) else r for r in rhos]
    if isinstance(params["eta"], int) and not isinstance(params["eta"], bool):
        params["eta"] = float(params["eta"])
    params["device"] = resolve_device(params["device"])
    return params


def _from_text(name: str, value: Any, like: Any) -> Any:
    """A value given as text where a list, number or bool belongs (``papermill -p rhos "[0.0, 0.1]"``
    passes the string) is read as YAML; anything that is not valid YAML is an error naming it."""
    if not isinstance(value, str) or isinstance(like, str) or like is None:
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        example = "a YAML list such as [0.0, 0.1]" if isinstance(like, (list, tuple)) else f"a value like {like!r}"
        raise ConfigError(f"{name} must be {example}, got the text {value!r}") from None


def check_seeds(seeds: Any) -> List[int]:
    """The seeds as a list of distinct non-negative integers, else an error naming the fix."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise ConfigError(f"seeds must be a non-empty list of non-negative integers such as [0, 1, 2], got {seeds!r}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"seeds must be non-negative integers, got {s!r} in {list(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds lists a seed twice: {list(seeds)}")
    return list(seeds)


def run_configs(task: str, params: Dict[str, Any]) -> List[RunConfig]:
    """One RunConfig per seed and rho, seed by seed (validated before anything runs)."""
    opts = {k: params[k] for k in get_task(task).defaults}
    common = dict(
        task=task,
        eta=params["eta"],
        steps=params["steps"],
        measure_every=params["measure_every"],
        options=opts,
        normalize=params["normalize"],
        batch_size=params["batch_size"],
        device=params["device"],
        dtype=params["dtype"],
        lanczos_tol=params["lanczos_tol"],
        measure_ascent=params["measure_ascent"],
        checkpoint_every=params["checkpoint_every"],
        allow_tf32=params["allow_tf32"],
    )
    seeds = check_seeds(params["seeds"] if params.get("seeds") is not None else [params["seed"]])
    return [RunConfig(rho=rho, seed=seed, **common) for seed in seeds for rho in params["rhos"]]
