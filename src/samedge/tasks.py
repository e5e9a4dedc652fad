"""The experiments' tasks: data, model and loss behind one small interface, so the run loop
is task-agnostic. Each task validates its own options (sizes) before anything is loaded."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from torch import nn

from .data import CIFAR_TEST_SIZE, CIFAR_TRAIN_SIZE, MNIST_TEST_SIZE, MNIST_TRAIN_SIZE
from .losses import masked_cross_entropy, squared_loss
from .models import CNN, MLP, Transformer

__all__ = [
    "Task",
    "TaskInstance",
    "get_task",
    "register_task",
    "TASKS",
    "MNISTTask",
    "CIFAR10Task",
    "ShakespeareTask",
]

Batch = tuple  # (inputs, targets)


@dataclass
class TaskInstance:
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


def _check_split(name: str, options: dict, train: int, test: int) -> None:
    """The sizes a dataset can supply (``samedge.data``'s counts)."""
    if options.get("n_train", 1) > train or options.get("n_test", 1) > test:
        raise ValueError(
            f"{name} has {train} training and {test} test examples; "
            f"got n_train={options.get('n_train')}, n_test={options.get('n_test')}"
        )


class Task:
    """Base class: a name, default options, validation and ``build``."""

    name: str = ""
    defaults: dict = {}
    loss_name: str = ""  # "squared" or "cross_entropy": what a figure's loss note says

    def validate(self, options: dict) -> None:
        """Raise ValueError naming the option if any is unknown or out of range."""
        _check_options(self.name, options, self.defaults)

    def resolve_options(self, options: dict) -> dict:
        """Defaults overridden by ``options``."""
        self.validate(options)
        return {**self.defaults, **options}

    def model(self, options: dict) -> nn.Module:
        """The task's network for these options (initialized from torch's global generator)."""
        raise NotImplementedError

    def build(
        self,
        options: dict,
        batch_size: Optional[int],
        device: str,
        dtype: torch.dtype,
        data_dir: Optional[str | os.PathLike],
    ) -> TaskInstance:
        """Load the data and make the model (seeded by the caller)."""
        raise NotImplementedError


def classification_evaluator(
    test_x: torch.Tensor, test_y: torch.Tensor, labels: torch.Tensor, loss, split: str = "test"
) -> Callable:
    """Loss and accuracy of a module on a fixed split, as ``{split}_loss`` and ``{split}_accuracy``."""

    @torch.no_grad()
    def evaluate(model: nn.Module) -> Dict[str, float]:
        if len(test_x) == 0:
            return {}
        out = model(test_x)
        return {
            f"{split}_loss": float(loss(out, test_y)),
            f"{split}_accuracy": float((out.argmax(1) == labels).float().mean()),
        }

    return evaluate


def subset_sampler(
    x: torch.Tensor, y: torch.Tensor, batch_size: Optional[int]
) -> Callable[[int, torch.Generator], Batch]:
    """Full batch when ``batch_size`` is None or covers the data, else a fresh random subset per step."""
    n = len(x)
    if batch_size is None or batch_size >= n:
        return lambda step, gen: (x, y)

    def sample(step: int, gen: torch.Generator) -> Batch:
        idx = torch.randperm(n, generator=gen)[:batch_size].to(x.device)
        return x[idx], y[idx]

    return sample


def squared_loss_classification(
    model: nn.Module, train, test, batch_size: Optional[int], device: str, dtype: torch.dtype
) -> TaskInstance:
    """An image-classification task as the paper sets it up: squared loss on one-hot targets,
    full batch or random minibatches; at the end, loss and accuracy on the test split and on the
    whole training subset (whether the network fit its training set)."""
    train, test = train.to(device, dtype), test.to(device, dtype)
    on_test = classification_evaluator(test.inputs, test.targets, test.labels, squared_loss)
    on_train = classification_evaluator(train.inputs, train.targets, train.labels, squared_loss, split="final_train")
    return TaskInstance(
        model.to(device=device, dtype=dtype),
        squared_loss,
        subset_sampler(train.inputs, train.targets, batch_size),
        lambda m: {**on_test(m), **on_train(m)},
        num_train=len(train),
    )


class MNISTTask(Task):
    """MNIST, first n_train examples, MLP with ``depth`` hidden ReLU layers of ``width``, squared loss."""

    name = "mnist"
    loss_name = "squared"
    defaults = {"n_train": MNIST_TRAIN_SIZE, "n_test": MNIST_TEST_SIZE, "width": 1000, "depth": 3}

    def validate(self, options: dict) -> None:
        """Also check the sizes MNIST can supply."""
        super().validate(options)
        _check_split("MNIST", options, MNIST_TRAIN_SIZE, MNIST_TEST_SIZE)

    def model(self, options: dict) -> nn.Module:
        """The MLP: 784 inputs, ``depth`` hidden ReLU layers of ``width``, 10 outputs."""
        o = self.resolve_options(options)
        return MLP(784, o["width"], o["depth"], 10)

    def build(self, options, batch_size, device, dtype, data_dir) -> TaskInstance:
        """Load MNIST (see ``samedge.data.load_mnist``) and make the MLP."""
        from .data import load_mnist

        o = self.resolve_options(options)
        train, test = load_mnist(o["n_train"], o["n_test"], data_dir=data_dir)
        return squared_loss_classification(self.model(options), train, test, batch_size, device, dtype)


class CIFAR10Task(Task):
    """CIFAR-10, first n_train training images, the paper's CNN (``num_blocks`` blocks of
    ``layers_per_block`` conv-ReLU-LayerNorm layers, ``base_channels`` doubling), squared loss."""

    name = "cifar10"
    loss_name = "squared"
    defaults = {"n_train": 1000, "n_test": 1000, "num_blocks": 2, "layers_per_block": 1, "base_channels": 16}

    def validate(self, options: dict) -> None:
        """Also check the sizes CIFAR-10 can supply and that the image survives the pooling."""
        super().validate(options)
        _check_split("CIFAR-10", options, CIFAR_TRAIN_SIZE, CIFAR_TEST_SIZE)
        if options.get("num_blocks", 1) > 5:
            raise ValueError(
                f"num_blocks must be <= 5 (each block halves the 32x32 image), got {options['num_blocks']}"
            )

    def model(self, options: dict) -> nn.Module:
        """The CNN on 32x32 RGB images, 10 classes."""
        o = self.resolve_options(options)
        return CNN(3, 32, o["num_blocks"], o["layers_per_block"], o["base_channels"], 10)

    def build(self, options, batch_size, device, dtype, data_dir) -> TaskInstance:
        """Load CIFAR-10 (see ``samedge.data.load_cifar10``) and make the CNN."""
        from .data import load_cifar10

        o = self.resolve_options(options)
        train, test = load_cifar10(o["n_train"], o["n_test"], data_dir=data_dir)
        model = self.model(options)
        return squared_loss_classification(model, train, test, batch_size, device, dtype)


# Fixed seeds of the held-out crops: the same evaluation batch and test set for every run.
EVAL_BATCH_SEED, TEST_CROPS_SEED = 1_000_003, 2_000_003


def lm_evaluator(inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 256) -> Callable:
    """Mean masked cross-entropy and next-token accuracy over fixed test crops (in chunks)."""

    @torch.no_grad()
    def evaluate(model: nn.Module) -> Dict[str, float]:
        loss_sum, correct, count = 0.0, 0.0, 0.0
        for i in range(0, len(inputs), chunk):
            x, y = inputs[i : i + chunk], targets[i : i + chunk]
            out = model(x)
            n = float((y != 0).sum())
            loss_sum += float(masked_cross_entropy(out, y)) * n
            correct += float(((out.argmax(-1) == y) & (y != 0)).sum())
            count += n
        return {"test_loss": loss_sum / count, "test_accuracy": correct / count}

    return evaluate


class ShakespeareTask(Task):
    """tiny_shakespeare character LM: random crops of ``sequence_length + 1`` ASCII tokens, the
    decoder-only Transformer, masked mean cross-entropy. Minibatch only (``batch_size`` crops a
    step); a fixed batch of ``eval_batch_size`` test crops is measured too, and the final test
    loss is over ``n_test_crops`` fixed test crops."""

    name = "shakespeare"
    loss_name = "cross_entropy"
    defaults = {
        "num_layers": 6,
        "num_heads": 8,
        "key_size": 32,
        "model_size": 128,
        "sequence_length": 64,
        "eval_batch_size": 128,
        "n_test_crops": 1024,
    }

    def model(self, options: dict) -> nn.Module:
        """The decoder-only Transformer over the ASCII vocabulary."""
        from .data import VOCAB_SIZE

        o = self.resolve_options(options)
        return Transformer(
            VOCAB_SIZE, o["sequence_length"], o["num_layers"], o["num_heads"], o["key_size"], o["model_size"]
        )

    def build(self, options, batch_size, device, dtype, data_dir) -> TaskInstance:
        """Load the text (see ``samedge.data.load_shakespeare``) and make the Transformer."""
        from .data import load_shakespeare, random_crops

        o = self.resolve_options(options)
        if batch_size is None:
            raise ValueError("the shakespeare task trains on random crops: set batch_size (the paper uses 128)")
        train, test = load_shakespeare(data_dir=data_dir)
        train, test = train.to(device), test.to(device)
        L = o["sequence_length"]
        model = self.model(options).to(device=device, dtype=dtype)
        eval_batch = random_crops(test, o["eval_batch_size"], L, torch.Generator().manual_seed(EVAL_BATCH_SEED))
        test_x, test_y = random_crops(test, o["n_test_crops"], L, torch.Generator().manual_seed(TEST_CROPS_SEED))
        return TaskInstance(
            model,
            masked_cross_entropy,
            lambda step, gen: random_crops(train, batch_size, L, gen),
            lm_evaluator(test_x, test_y),
            eval_batch=eval_batch,
            num_train=len(train),
        )


TASKS: Dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add a task to the registry under ``task.name``."""
    TASKS[task.name] = task
    return task


register_task(MNISTTask())
register_task(CIFAR10Task())
register_task(ShakespeareTask())


def get_task(name: str) -> Task:
    """The registered task called ``name``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]
