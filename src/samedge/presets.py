"""Presets (YAML files of notebook parameters) and their resolution into run configurations.

One mechanism for the book, nbval and papermill alike: a notebook's ``preset`` parameter
defaults to ``None``, meaning the environment variable ``SAMEDGE_PRESET``, else ``cpu``.
Every other parameter left at ``None`` takes the preset's value; a value given explicitly
(a notebook cell, ``papermill -p``, or the YAML itself with ``papermill -f``) wins.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, fields
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from .config import ConfigError, RunConfig, resolve_device
from .tasks import get_task

__all__ = [
    "PRESETS",
    "PRESET_ENV_VAR",
    "COMMON",
    "RUN_FIELDS",
    "allowed_params",
    "preset_path",
    "load_preset",
    "parse_value",
    "parse_assignment",
    "resolve_params",
    "run_configs",
    "check_seeds",
]

PRESET_ENV_VAR = "SAMEDGE_PRESET"
PRESETS = ("smoke", "cpu", "paper")
# The run parameters a notebook takes: every RunConfig field but the task, rho (a notebook runs a
# list, ``rhos``) and the task's options (the task adds those, e.g. width), at RunConfig's
# defaults, so that a new RunConfig field is a preset parameter without editing this module.
RUN_FIELDS = tuple(f.name for f in fields(RunConfig) if f.name not in ("task", "rho", "options"))
_NO_DEFAULT = {f.name: None for f in fields(RunConfig) if f.default is MISSING and f.default_factory is MISSING}
# Parameters that hold paths: text given for them stays text (a directory named 1e3 is not a number).
PATH_PARAMS = ("data_dir", "results_dir")
# Parameters every experiment notebook takes (the task adds its own sizes, e.g. width).
COMMON: Dict[str, Any] = {
    "preset": None,
    "rhos": None,
    "seeds": None,  # every rho runs once per seed; None: [seed]
    "data_dir": None,
    "results_dir": None,
    **{f.name: _NO_DEFAULT.get(f.name, f.default) for f in fields(RunConfig) if f.name in RUN_FIELDS},
    "device": "auto",  # resolved on this machine (RunConfig's own default is 'cpu')
}


def preset_path(task: str, name: str) -> Path:
    """Path of a preset's YAML file (for ``papermill -f``)."""
    get_task(task)
    if name not in PRESETS:
        raise ConfigError(f"preset must be one of {list(PRESETS)}, got {name!r}")
    return Path(str(resources.files("samedge") / "presets" / task / f"{name}.yaml"))


def allowed_params(task: str) -> set:
    """The parameter names a notebook of ``task`` takes: ``COMMON`` and the task's options."""
    return set(COMMON) | set(get_task(task).defaults)


def load_preset(task: str, name: str) -> Dict[str, Any]:
    """A preset's parameters; unknown keys in the file are an error."""
    path = preset_path(task, name)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset file {path} must hold a mapping of parameter names to values")
    unknown = sorted(set(data) - allowed_params(task))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in preset file {path}; allowed: {sorted(allowed_params(task))}")
    return data


def parse_value(text: str) -> Any:
    """A parameter value given as text (``-p NAME=VALUE``, ``papermill -p``): YAML (``0.1``,
    ``[0.0, 0.1]``, ``true``), with numbers such as ``1e-3`` (a string in YAML 1.1) as floats."""
    try:
        return _numbers(yaml.safe_load(text))
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot read {text!r} as a YAML value: {' '.join(str(err).split())}") from None


def parse_assignment(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` (a ``-p`` argument) as (name, ``parse_value(VALUE)``); a ConfigError otherwise."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"-p expects NAME=VALUE, got {text!r}")
    return name.strip(), parse_value(value)


def _numbers(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    if isinstance(v, list):
        return [_numbers(x) for x in v]
    return v


def resolve_params(task: str, preset: Optional[str] = None, **given: Any) -> Dict[str, Any]:
    """The notebook's parameters: explicit values over the preset's over the defaults.

    ``papermill -f FILE`` passes a preset file's values as parameters too: a given value equal to
    the preset file's counts as the file's, so an explicit ``seed`` wins over the file's ``seeds``."""
    name = preset or os.environ.get(PRESET_ENV_VAR) or "cpu"
    unknown = sorted(set(given) - allowed_params(task))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown} for task {task!r}; allowed: {sorted(allowed_params(task))}")
    from_file = load_preset(task, name)
    params = {**COMMON, **get_task(task).defaults, **from_file}
    given = {k: _from_text(k, v, params[k]) for k, v in given.items() if v is not None}
    params.update(given)
    params["preset"] = name
    if "seed" in given and "seeds" in given and given["seeds"] != from_file.get("seeds"):
        if check_seeds(params["seeds"]) != [params["seed"]]:
            raise ConfigError(f"seed={params['seed']!r} and seeds={params['seeds']!r} disagree; give only one of them")
    elif "seed" in given:
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
    if not isinstance(value, str) or isinstance(like, str) or name in PATH_PARAMS:
        return value
    try:
        return parse_value(value)
    except ConfigError:
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
    common = {k: params[k] for k in RUN_FIELDS if k != "seed"}
    seeds = check_seeds(params["seeds"] if params.get("seeds") is not None else [params["seed"]])
    return [
        RunConfig(task=task, rho=rho, seed=seed, options=opts, **common) for seed in seeds for rho in params["rhos"]
    ]
