"""Linear layers through oneDNN on CPU, for the training step and for Hessian-vector products.

Opt-in only, through the one switch ``samedge.kernels`` (``kernels="onednn"``); nothing else
imports this module.

PyTorch's float32 CPU matmul is MKL's sgemm, and MKL takes its AVX2 path on non-Intel x86
CPUs: on the AMD EPYC (AVX-512) this project is developed on, oneDNN (bundled with PyTorch)
runs a forward and backward of the MNIST MLP's first layer (1000 x 784 x 256) in 5.4 ms against
MKL's 11.8 ms at one thread, about as fast as jax/XLA's kernels (benchmarks/bench.py, section 3).
Same math, another summation order: results agree with MKL's to float32 round-off, and are
bit-for-bit repeatable at a fixed thread count.

``linear_mode()`` routes ``torch.nn.functional.linear`` calls on CPU float32 tensors
(``nn.Linear`` included) of at least ``MIN_MACS`` multiply-adds to oneDNN while it is active;
other calls are untouched (below that, oneDNN's fixed cost per call, ~50 us more than MKL's
for a forward and backward, outweighs its faster kernel: the two break even near 2-3e6).
``linear_mode(twice=False)`` (the training step) gives first derivatives only, with the least
overhead; ``linear_mode(twice=True)`` (Hessian-vector products by double backward) builds the
layer from a product whose backward is made of the same product, so it can be differentiated
again, and again (each derivative's matmuls by oneDNN too), and runs ReLU with a detached mask.

Layouts. oneDNN reads its second operand with any strides but copies a non-contiguous first
one, and PyTorch's transposing copy is serial (about a tenth of a product's time). A 2-D layer
therefore computes W x^T and hands on its transposed view ("feature-major": the batch is the
contiguous dimension); ReLU keeps that layout, the next layer reads it as it is (and is routed at
any size, so that the layout does not change mid-network), and every gradient is produced in
its tensor's layout, because elementwise kernels on a mix of layouts run 5-30x slower. On the
MNIST MLP this removes every large copy: a SAM step 11.1 -> 9.7 ms and an HVP 13.4 -> 7.3 ms at
two threads (benchmarks/bench.py). A user's model that mixes a routed layer's output with a
plain tensor of the same shape (a residual sum with the input) pays for one layout conversion
there, about what the copy cost before.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

__all__ = ["available", "linear_mode", "linear", "linear_twice", "MIN_MACS"]

MIN_MACS = 4_000_000  # rows x in x out of one linear call, the least routed to oneDNN


def _op():
    return torch.ops.mkldnn._linear_pointwise


def _mm_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T by oneDNN (2-D, float32, CPU; b with any strides, a non-contiguous a is copied)."""
    return _op()(a, b, None, "none", [], "")


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether this PyTorch build runs oneDNN linear layers on this CPU (tried once)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        a = torch.arange(6.0).reshape(2, 3)
        return bool(torch.equal(_mm_t(a, a), a @ a.T))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def _transposed(t: torch.Tensor) -> bool:
    """Whether a 2-D tensor is the transposed view of a contiguous one (feature-major)."""
    return t.dim() == 2 and not t.is_contiguous() and t.t().is_contiguous()


def _product(a: torch.Tensor, b: torch.Tensor, transposed: Optional[bool] = None) -> torch.Tensor:
    """a @ b (2-D) by oneDNN, as a plain tensor or (``transposed``) the transposed view of one;
    None: whichever needs no copy.

    oneDNN's first operand must be contiguous (the second may have any strides), so a plain
    result is a (b^T)^T with ``a`` first and a transposed one (b^T a^T)^T with b^T first; the
    first operand is copied when it is not contiguous. A transposing copy costs about a tenth
    of the product (PyTorch's is serial), and elementwise kernels on a mix of layouts (ReLU's
    backward on a gradient laid out unlike its activation) run 5-30x slower than on one."""
    bt = b.t()
    if transposed is None:
        transposed = not a.is_contiguous() and (bt.is_contiguous() or bt.numel() < a.numel())
    if transposed:
        return _mm_t(bt.contiguous(), a).t()
    return _mm_t(a.contiguous(), bt)


class _Linear(torch.autograd.Function):
    """y = x W^T + b with the three products (forward, d/dx, d/dW) by oneDNN, first derivatives only.

    A 2-D input gives y as the transposed view of W x^T ("feature-major"): the next layer reads
    it as it is, elementwise layers (ReLU) keep its layout, and in the backward dy^T is then
    contiguous, so d/dW = dy^T x needs no transposing copy of dy (one per layer otherwise, ~15%
    of a step of the MNIST MLP). Other inputs keep the usual layout."""

    # forward(ctx, ...) rather than setup_context: apply() then skips binding the signature
    # (inspect), about 50 us a call; torch.func transforms are not needed here.
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if x.dim() == 2:
            y = _product(weight, x.t())
            if bias is not None:
                y.add_(bias[:, None])
            return y.t()
        y = _op()(x.reshape(-1, x.shape[-1]), weight, bias, "none", [], "")
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
        dy2 = dy if dy.dim() == 2 else dy.reshape(-1, dy.shape[-1])
        # Each gradient in its tensor's layout, so that elementwise backward kernels see one layout.
        dx = _product(dy2, weight, _transposed(x2)).reshape(x.shape) if need_x else None  # dy W
        dw = _product(dy2.t(), x2, False) if need_w else None  # dy^T x
        db = dy2.sum(0) if ctx.has_bias and need_b else None
        return dx, dw, db


class _Product(torch.autograd.Function):
    """a @ b by oneDNN (``_product``), differentiable any number of times: its backward is two
    such products of views, g b^T and a^T g."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, transposed: Optional[bool] = None) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        out = _product(a, b, transposed)
        ctx.transposed = _transposed(out)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        a, b = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[:2]
        if _transposed(g) != ctx.transposed:  # g in the output's layout, once, here (e.g. from a loss)
            g = g.t().contiguous().t() if ctx.transposed else g.contiguous()
        # Each gradient in its operand's layout (see _product).
        da = _Product.apply(g, b.t(), _transposed(a)) if need_a else None
        db = _Product.apply(a.t(), g, _transposed(b)) if need_b else None
        return da, db, None


def linear_twice(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """``F.linear`` through oneDNN, differentiable any number of times (CPU float32); a 2-D
    input gives the feature-major layout of ``_Linear``."""
    if x.dim() == 2:
        y = _Product.apply(weight, x.t()).t()
    else:
        y = _Product.apply(x.reshape(-1, x.shape[-1]), weight.t())
    if bias is not None:
        y = y + bias
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], weight.shape[0])


class _Relu(torch.autograd.Function):
    """ReLU whose backward masks with the detached output: the same derivatives (ReLU's second
    derivative is zero), but a double backward builds no zero gradient for the activation
    (autograd's own ReLU does, a fill and an add per layer and HVP)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(g, out.detach(), 0)


def _routable(*ts) -> bool:
    return all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in ts)


def linear(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """``F.linear`` through oneDNN (CPU float32, first derivatives only)."""
    return _Linear.apply(x, weight, bias)


class _LinearMode(TorchFunctionMode):
    """Routes large F.linear calls on CPU float32 tensors to oneDNN; every other call runs unchanged."""

    def __init__(self, twice: bool = False):
        super().__init__()
        self.twice = twice

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x = args[0] if args else kwargs["input"]
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            big = x.dim() >= 1 and weight.dim() == 2 and x.numel() * weight.shape[0] >= MIN_MACS
            # A feature-major input (a routed layer's output) is routed at any size: elementwise
            # kernels on a mix of layouts (ReLU's backward) run several times slower.
            if (big or (_transposed(x) and weight.dim() == 2)) and _routable(x, weight, bias):
                return linear_twice(x, weight, bias) if self.twice else _Linear.apply(x, weight, bias)
        elif self.twice and func in (F.relu, torch.relu, torch.Tensor.relu) and not kwargs.get("inplace", False):
            if len(args) == 1 and isinstance(args[0], torch.Tensor) and _routable(args[0]):
                return _Relu.apply(args[0])
        return func(*args, **kwargs)


@contextlib.contextmanager
def linear_mode(enabled: bool = True, twice: bool = False) -> Iterator[None]:
    """While active (and ``enabled``), F.linear on CPU float32 tensors runs through oneDNN;
    ``twice``: in a form that can be differentiated again (for Hessian-vector products)."""
    if not enabled:
        yield
        return
    if not available():
        raise RuntimeError("oneDNN linear layers are not available in this PyTorch build: use kernels='default'")
    with _LinearMode(twice):
        yield
