"""Versions and hardware, stored with every record."""

from __future__ import annotations

import platform
import sys
from typing import Any, Dict

import torch

from .precision import precision_settings

__all__ = ["environment"]


def environment(device: str) -> Dict[str, Any]:
    """Versions, platform, device, torch threads and precision settings, for a record."""
    import numpy

    from . import __version__

    env: Dict[str, Any] = {
        "samedge": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
    }
    env["precision"] = precision_settings()
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env
