"""Floating-point precision of the matmuls and convolutions a run uses.

On CUDA, PyTorch lets convolutions (and, if asked, matmuls) run in TF32, whose 10-bit mantissa
gives relative errors of about 1e-3: the size of the Lanczos tolerance. Runs therefore pin IEEE
float32 on CUDA unless ``allow_tf32`` is asked for, and every record stores the settings it ran
with (``precision_settings``). On the CPU there is no TF32 and nothing changes.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator

import torch

__all__ = ["pinned_precision", "precision_settings"]


def precision_settings() -> Dict[str, Any]:
    """The current matmul/cuDNN precision and determinism flags, for a run's environment record."""
    return {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


@contextmanager
def pinned_precision(allow_tf32: bool = False) -> Iterator[Dict[str, Any]]:
    """Within the block: TF32 off for CUDA matmuls and cuDNN convolutions (on when
    ``allow_tf32``), cuDNN deterministic and not autotuned; the previous settings come back on
    exit, so the caller's process is left as it was. Yields ``precision_settings()``."""
    saved = (
        torch.get_float32_matmul_precision(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        torch.set_float32_matmul_precision("high" if allow_tf32 else "highest")
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
        # Autotuning may pick a different (non-deterministic) convolution algorithm per run.
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        yield precision_settings()
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cuda.matmul.allow_tf32 = saved[1]
        torch.backends.cudnn.allow_tf32 = saved[2]
        torch.backends.cudnn.deterministic = saved[3]
        torch.backends.cudnn.benchmark = saved[4]
