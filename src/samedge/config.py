"""Run configuration: one SAM (or GD) training run with its measurement schedule, validated
before any compute."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, List, Optional

import torch

from .edge import rule_of
from .hessian import DEFAULT_TOL
from .kernels import check_kernels

__all__ = ["RunConfig", "ConfigError", "resolve_device"]


class ConfigError(ValueError):
    """A run parameter is invalid; the message names it, its value and what is allowed."""


def _positive_int(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{name} must be a positive integer, got {v!r}")


def _check_number(name: str, v: Any, lo: float, strict: bool) -> None:
    ok = (
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > lo if strict else v >= lo)
    )
    if not ok:
        raise ConfigError(f"{name} must be a finite number {'>' if strict else '>='} {lo:g}, got {v!r}")


def resolve_device(device: str, here: bool = True, gpus: int = 0) -> str:
    """The device a run uses. On this machine (``here``): 'auto' -> 'cuda' when available, else
    'cpu'; 'cuda' without a GPU is an error. For a job on another machine (a SLURM node, checked
    there): 'auto' -> 'cuda' when ``gpus`` are requested, else 'cpu'."""
    if device == "auto":
        if here:
            return "cuda" if torch.cuda.is_available() else "cpu"
        return "cuda" if gpus else "cpu"
    if not isinstance(device, str) or not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if here and device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} was requested but CUDA is not available here; use device='cpu' or 'auto'")
    return device


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run's record (task options hold the data and model sizes)."""

    task: str
    eta: float
    rho: float
    steps: int
    measure_every: int
    seed: int = 0
    options: dict = field(default_factory=dict)  # task-specific: n_train, width, depth, ...
    normalize: bool = True  # normalized SAM (the paper's); False: w + rho g
    batch_size: Optional[int] = None  # None: full batch
    device: str = "cpu"
    dtype: str = "float32"
    hvp_method: str = "double_backward"
    kernels: str = "default"  # "onednn": large CPU float32 linear layers through oneDNN (samedge.kernels)
    lanczos_tol: float = DEFAULT_TOL
    lanczos_max_iter: int = 100
    measure_ascent: bool = False  # also measure ||H||_op at the ascent point w~
    # Also measure at t + 1 for every scheduled t: both phases of a period-2 oscillation, so that
    # a median can be read per phase and over the mean of each pair (``samedge.analysis``).
    measure_pairs: bool = False
    # In the second half (t >= steps/2), every accounts_every steps (a multiple of measure_every; with
    # measure_pairs also at t + 1): the SAM map's accounts of the ratio (``samedge.sam_map_accounts``).
    accounts_every: Optional[int] = None
    # Before this step only step 0 is measured (with measure_pairs, 0 and 1): for runs read only by
    # their start and their second half (the grid), the first half's measurements cost and tell nothing.
    measure_from: int = 0
    checkpoint_every: Optional[int] = None  # steps between checkpoints; None: ~20 per run
    allow_tf32: bool = False  # CUDA only: let matmuls and convolutions use TF32 (~1e-3 relative error)

    def __post_init__(self) -> None:
        _check_number("eta", self.eta, 0, strict=True)
        _check_number("rho", self.rho, 0, strict=False)
        _positive_int("steps", self.steps)
        _positive_int("measure_every", self.measure_every)
        if self.measure_every > self.steps:
            raise ConfigError(f"measure_every must be <= steps ({self.steps}), got {self.measure_every}")
        if (
            isinstance(self.measure_from, bool)
            or not isinstance(self.measure_from, int)
            or not (0 <= self.measure_from <= self.steps)
        ):
            raise ConfigError(
                f"measure_from must be an integer from 0 to steps ({self.steps}), got {self.measure_from!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.batch_size is not None:
            _positive_int("batch_size", self.batch_size)
        if self.checkpoint_every is not None:
            _positive_int("checkpoint_every", self.checkpoint_every)
        if self.accounts_every is not None:
            _positive_int("accounts_every", self.accounts_every)
            if self.accounts_every % self.measure_every:
                raise ConfigError(
                    f"accounts_every must be a multiple of measure_every ({self.measure_every}), "
                    f"got {self.accounts_every}"
                )
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.hvp_method not in ("double_backward", "forward_over_reverse"):
            raise ConfigError(
                f"hvp_method must be 'double_backward' or 'forward_over_reverse', got {self.hvp_method!r}"
            )
        _check_number("lanczos_tol", self.lanczos_tol, 0, strict=True)
        try:
            check_kernels(self.kernels)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        for name in ("normalize", "measure_ascent", "measure_pairs", "allow_tf32"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        _positive_int("lanczos_max_iter", self.lanczos_max_iter)
        if not isinstance(self.options, dict):
            raise ConfigError(f"options must be a dict, got {self.options!r}")
        from .tasks import get_task  # the task validates its own options

        try:
            get_task(self.task).validate(self.options)
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(str(err)) from None

    @property
    def rule(self) -> str:
        """The update rule: 'gd' (rho = 0), 'sam' (normalized) or 'usam' (unnormalized SAM)."""
        return rule_of(self.rho, self.normalize)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of parameters and data."""
        return getattr(torch, self.dtype)

    def measured_steps(self) -> List[int]:
        """The steps measured by a run that does not diverge: step 0, every measure_every steps from
        ``measure_from`` on and the last, and with ``measure_pairs`` also the step after each of them
        (up to ``steps``)."""
        base = [
            t
            for t in range(self.steps + 1)
            if t == 0 or t == self.steps or (t % self.measure_every == 0 and t >= self.measure_from)
        ]
        if not self.measure_pairs:
            return base
        return sorted(set(base) | {t + 1 for t in base if t < self.steps})

    def account_steps(self) -> List[int]:
        """The measured steps that also carry the SAM map's accounts: t >= steps/2 (and
        ``measure_from``) with t a multiple of ``accounts_every`` (with ``measure_pairs``: t < steps, and t + 1 too, so that
        every account has both phases); none without it."""
        if self.accounts_every is None:
            return []
        last = self.steps - 1 if self.measure_pairs else self.steps
        base = [t for t in range(0, last + 1, self.accounts_every) if 2 * t >= self.steps and t >= self.measure_from]
        if not self.measure_pairs:
            return base
        return sorted(set(base) | {t + 1 for t in base if t < self.steps})

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """Inverse of ``to_dict``; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown run configuration keys {unknown}; allowed: {sorted(names)}")
        return cls(**d)

    def fingerprint(self) -> str:
        """A short hash of the configuration (identifies the run's results directory)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]

    def run_name(self) -> str:
        """Readable, unique directory name for this run."""
        return f"{self.task}-{self.rule}-eta{self.eta:g}-rho{self.rho:g}-seed{self.seed}-{self.fingerprint()}"
