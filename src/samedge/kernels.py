"""The one switch for how linear layers are computed: ``kernels="default"`` (PyTorch's own
kernels, untouched) or ``kernels="onednn"`` (``samedge.onednn``: large float32 CPU linear layers
through oneDNN, same math to float32 round-off, faster where MKL's sgemm takes its slow path,
e.g. on AMD CPUs).

The choice is an explicit argument of ``sam_step``, ``HessianOperator`` and ``EdgeMonitor`` and
a field of ``RunConfig`` (so every run's ``config.json`` records it); nothing reads the CPU, and
the default changes no kernel of a user's model. This module is the only one that imports
``samedge.onednn``, and only when ``"onednn"`` is asked for.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Literal

__all__ = ["KERNELS", "Kernels", "check_kernels", "kernel_mode"]

Kernels = Literal["default", "onednn"]
KERNELS = ("default", "onednn")


def check_kernels(kernels: str) -> str:
    """``kernels`` if it names a known choice, else a ValueError listing them."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {list(KERNELS)}, got {kernels!r}")
    return kernels


def kernel_mode(kernels: str, twice: bool = False) -> ContextManager[None]:
    """The context in which a forward pass runs with ``kernels``; ``twice``: differentiable twice
    (Hessian-vector products by double backward)."""
    if check_kernels(kernels) == "default":
        return contextlib.nullcontext()
    from . import onednn

    return onednn.linear_mode(True, twice=twice)
