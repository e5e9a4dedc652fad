"""samedge: sharpness-aware minimization and the edge of stability, measured exactly."""

from .edge import aligned_sam_edge, gd_edge, momentum_edge, sam_edge, unnormalized_sam_edge
from .hessian import (
    DEFAULT_TOL,
    EigenResult,
    FiniteDifferenceHessianOperator,
    HessianOperator,
    Sharpness,
    dense_hessian,
    lanczos,
    power_iteration,
    sharpness,
)
from .monitor import EdgeMonitor
from .monitor_record import MonitorRecord
from .sam import SAM, SAMStep, ascent_point, sam_step
from .sam_map import sam_map_accounts, sam_map_sharpness
from .vectors import alignment, flatten, unflatten

__version__ = "0.1.0"

__all__ = [
    "gd_edge",
    "momentum_edge",
    "sam_edge",
    "unnormalized_sam_edge",
    "DEFAULT_TOL",
    "aligned_sam_edge",
    "EigenResult",
    "FiniteDifferenceHessianOperator",
    "HessianOperator",
    "Sharpness",
    "dense_hessian",
    "lanczos",
    "power_iteration",
    "sharpness",
    "EdgeMonitor",
    "MonitorRecord",
    "SAM",
    "SAMStep",
    "ascent_point",
    "sam_step",
    "sam_map_sharpness",
    "sam_map_accounts",
    "alignment",
    "flatten",
    "unflatten",
]
