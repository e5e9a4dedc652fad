"""The experiments' tasks: data, model and loss behind one small interface, so the run loop
is task-agnostic. Each task validates its own options (sizes) before anything is loaded."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from torch import nn

from .losses import squared_loss
from .models import MLP

__all__ = ["Task", "Built", "get_task", "register_task", "TASKS"]

Batch = tuple  # (inputs, targets)


@dataclass
class Built:
    """A task made concrete for one run."""

    model: nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    sample: Callable[[int, torch.Generator], Batch]  # (step, generator) -> training batch
    evaluate: Callable[[nn.Module], Dict[str, float]]  # final test metrics of a module
    eval_batch: Optional[Batch] = None  # fixed held-out batch, measured too in minibatch runs
    num_train: int = 0


def _check_options(name: str, options: dict, defaults: dict) -> None:
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for task {name!r}; allowed: {sorted(defaults)}")
    for k, v in options.items():
        if isinstance(defaults[k], int) and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{k} must be a positive integer, got {v!r}")


class Task:
    """Base class: a name, default options, validation and ``build``."""

    name: str = ""
    defaults: dict = {}

    def validate(self, options: dict) -> None:
        """Raise ValueError naming the option if any is unknown or out of range."""
        _check_options(self.name, options, self.defaults)

    def options(self, options: dict) -> dict:
        """Defaults overridden by ``options``."""
        self.validate(options)
        return {**self.defaults, **options}

    def build(self, options: dict, batch_size: Optional[int], device: str, dtype: torch.dtype,
              data_dir: Optional[str | os.PathLike]) -> Built:
        """Load the data and make the model (seeded by the caller)."""
        raise NotImplementedError


def classification_evaluator(test_x: torch.Tensor, test_y: torch.Tensor, labels: torch.Tensor, loss) -> Callable:
    """Test loss and accuracy of a module on a fixed test split."""

    @torch.no_grad()
    def evaluate(model: nn.Module) -> Dict[str, float]:
        if len(test_x) == 0:
            return {}
        out = model(test_x)
        return {"test_loss": float(loss(out, test_y)), "test_accuracy": float((out.argmax(1) == labels).float().mean())}

    return evaluate


def subset_sampler(x: torch.Tensor, y: torch.Tensor, batch_size: Optional[int]) -> Callable[[int, torch.Generator], Batch]:
    """Full batch when ``batch_size`` is None or covers the data, else a fresh random subset per step."""
    n = len(x)
    if batch_size is None or batch_size >= n:
        return lambda step, gen: (x, y)

    def sample(step: int, gen: torch.Generator) -> Batch:
        idx = torch.randperm(n, generator=gen)[:batch_size].to(x.device)
        return x[idx], y[idx]

    return sample


class MNISTTask(Task):
    """MNIST, first n_train examples, MLP with ``depth`` hidden ReLU layers of ``width``, squared loss."""

    name = "mnist"
    defaults = {"n_train": 60000, "n_test": 10000, "width": 1000, "depth": 3}

    def validate(self, options: dict) -> None:
        """Also check the sizes MNIST can supply."""
        super().validate(options)
        if options.get("n_train", 1) > 60000 or options.get("n_test", 1) > 10000:
            raise ValueError(f"MNIST has 60000 training and 10000 test examples; got n_train={options.get('n_train')}, n_test={options.get('n_test')}")

    def build(self, options, batch_size, device, dtype, data_dir) -> Built:
        """Load MNIST (see ``samedge.data.load_mnist``) and make the MLP."""
        from .data import load_mnist

        o = self.options(options)
        train, test = load_mnist(o["n_train"], o["n_test"], data_dir=data_dir)
        train, test = train.to(device, dtype), test.to(device, dtype)
        model = MLP(784, o["width"], o["depth"], 10).to(device=device, dtype=dtype)
        return Built(
            model,
            squared_loss,
            subset_sampler(train.inputs, train.targets, batch_size),
            classification_evaluator(test.inputs, test.targets, test.labels, squared_loss),
            num_train=len(train),
        )


TASKS: Dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add a task to the registry under ``task.name``."""
    TASKS[task.name] = task
    return task


register_task(MNISTTask())


def get_task(name: str) -> Task:
    """The registered task called ``name``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]
