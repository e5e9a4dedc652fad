"""The paper's three architectures: an MLP (MNIST), a CNN with LayerNorm (CIFAR-10) and a
decoder-only Transformer (tiny_shakespeare), initialised as the authors' flax/haiku code does.

Initialisers (the authors' ``image_classification.py`` and ``transformer_model.py``):
- MLP and CNN weights: flax ``glorot_normal``, a normal truncated at +-2 of its scale with the
  scale raised by 1/0.8796 so that the realised std is sqrt(2/(fan_in + fan_out)).
- Transformer attention (query, key, value, output) and MLP weights: haiku
  ``VarianceScaling(2/num_layers)`` (fan_in, truncated normal): std sqrt((2/num_layers)/fan_in).
- Transformer output layer: haiku's default ``TruncatedNormal(1/sqrt(fan_in))``, truncated at
  +-2 of that scale, so the realised std is 0.88/sqrt(fan_in).
- Token and position embeddings: ``TruncatedNormal(0.02)`` (realised std 0.0176).
- Biases zero; LayerNorm scale one and offset zero.

Attention is written out (no ``scaled_dot_product_attention``): PyTorch's fused CPU
attention kernels have no double backward, and exact HVPs need one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MLP",
    "CNN",
    "Transformer",
    "ChannelLayerNorm",
    "causal_mask",
    "glorot_init_",
    "truncated_normal_",
    "TRUNCATED_STD",
]

# Std of a standard normal truncated to [-2, 2]: the factor jax and haiku divide a variance-
# scaling initialiser's scale by, so that the truncated draw has the intended std.
TRUNCATED_STD = 0.87962566103423978


def truncated_normal_(weight: torch.Tensor, scale: float) -> torch.Tensor:
    """In place: scale * (a standard normal truncated to [-2, 2]), as haiku's TruncatedNormal
    (realised std TRUNCATED_STD * scale)."""
    return nn.init.trunc_normal_(weight, mean=0.0, std=scale, a=-2 * scale, b=2 * scale)


def _fans(weight: torch.Tensor) -> tuple:
    # Receptive field included for convolutions, as flax and torch.nn.init both count it.
    receptive = weight[0][0].numel() if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def glorot_init_(module: nn.Module) -> None:
    """flax ``glorot_normal`` weights (truncated normal with std sqrt(2/(fan_in + fan_out)))
    and zero biases for every Linear and Conv2d inside ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in, fan_out = _fans(m.weight)
            truncated_normal_(m.weight, math.sqrt(2.0 / (fan_in + fan_out)) / TRUNCATED_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _check_sizes(**sizes: int) -> None:
    """Raise ValueError naming the first size that is not a positive integer."""
    for name, v in sizes.items():
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def _variance_scaling_(layer: nn.Module, scale: float) -> None:
    """haiku ``VarianceScaling(scale)`` (fan_in, truncated normal) weights and a zero bias."""
    assert isinstance(layer, nn.Linear)
    truncated_normal_(layer.weight, math.sqrt(scale / layer.in_features) / TRUNCATED_STD)
    nn.init.zeros_(layer.bias)


class MLP(nn.Module):
    """``depth`` hidden ReLU layers of ``width`` units on flattened inputs, then a linear output."""

    def __init__(self, in_dim: int = 784, width: int = 1000, depth: int = 3, out_dim: int = 10):
        super().__init__()
        _check_sizes(in_dim=in_dim, width=width, depth=depth, out_dim=out_dim)
        dims = [in_dim] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], out_dim)
        glorot_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, out_dim)."""
        x = x.flatten(1)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.out(x)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis at every pixel of an NCHW map (haiku's axis=-1 on NHWC)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize each pixel's channel vector."""
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CNN(nn.Module):
    """``num_blocks`` blocks of ``layers_per_block`` (3x3 SAME conv, ReLU, LayerNorm), 2x2 max-pool
    after each block, channels ``base_channels`` doubling per block, then one dense output layer."""

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        num_blocks: int = 2,
        layers_per_block: int = 1,
        base_channels: int = 16,
        num_classes: int = 10,
    ):
        super().__init__()
        _check_sizes(
            in_channels=in_channels,
            image_size=image_size,
            num_blocks=num_blocks,
            layers_per_block=layers_per_block,
            base_channels=base_channels,
            num_classes=num_classes,
        )
        if image_size % (2**num_blocks):
            raise ValueError(f"image_size {image_size} must be divisible by 2**num_blocks = {2**num_blocks}")
        layers, c_in = [], in_channels
        for b in range(num_blocks):
            c_out = base_channels * 2**b
            for _ in range(layers_per_block):
                # flax's LayerNorm (the authors' CNN) uses epsilon 1e-6
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), ChannelLayerNorm(c_out, eps=1e-6)]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = image_size // 2**num_blocks
        self.out = nn.Linear(c_in * side * side, num_classes)
        glorot_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, num_classes) from images (batch, C, H, W)."""
        # Channels-last memory makes each LayerNorm's permute to (N, H, W, C) free instead of a
        # copy (a CIFAR-10 cpu run took 14% less time); the logical layout, and so the
        # math, is unchanged (tests/test_models.py checks that the output matches NCHW memory).
        return self.out(self.features(x.contiguous(memory_format=torch.channels_last)).flatten(1))


def causal_mask(length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (length, length) mask, True where position i may attend to j (j <= i)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention written with matmuls and softmax (double-backward safe).

    haiku's ``MultiHeadAttention`` has separate query, key and value projections; ``qkv`` is the
    three stacked (same parameters, same fan_in), and the mask is causal only: the authors' pad
    mask never masks anything on tiny_shakespeare, whose text has no pad (NUL) character."""

    def __init__(self, model_size: int, num_heads: int, key_size: int):
        super().__init__()
        self.h, self.d = num_heads, key_size
        self.qkv = nn.Linear(model_size, 3 * num_heads * key_size)
        self.proj = nn.Linear(num_heads * key_size, model_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over earlier positions only."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.d)
        scores = scores.masked_fill(~causal_mask(t, x.device), float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, self.h * self.d))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with 4x GELU MLP
    (tanh-approximate GELU, as ``jax.nn.gelu`` in haiku's example Transformer)."""

    def __init__(self, model_size: int, num_heads: int, key_size: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(model_size), nn.LayerNorm(model_size)
        self.attn = CausalSelfAttention(model_size, num_heads, key_size)
        self.mlp = nn.Sequential(
            nn.Linear(model_size, 4 * model_size), nn.GELU(approximate="tanh"), nn.Linear(4 * model_size, model_size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One residual block."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """Decoder-only character LM: token + learned position embeddings, pre-LN blocks, final
    LayerNorm, untied output layer."""

    def __init__(
        self,
        vocab_size: int = 128,
        sequence_length: int = 64,
        num_layers: int = 6,
        num_heads: int = 8,
        key_size: int = 32,
        model_size: int = 128,
    ):
        super().__init__()
        _check_sizes(
            vocab_size=vocab_size,
            sequence_length=sequence_length,
            num_layers=num_layers,
            num_heads=num_heads,
            key_size=key_size,
            model_size=model_size,
        )
        self.sequence_length = sequence_length
        self.tok = nn.Embedding(vocab_size, model_size)
        self.pos = nn.Embedding(sequence_length, model_size)
        self.blocks = nn.ModuleList(Block(model_size, num_heads, key_size) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(model_size)
        self.out = nn.Linear(model_size, vocab_size)
        # The authors' haiku initialisers (module docstring); the order of the draws is fixed
        # so that a seed gives the same model every time.
        for block in self.blocks:
            assert isinstance(block, Block)
            for layer in (block.attn.qkv, block.attn.proj, block.mlp[0], block.mlp[2]):
                _variance_scaling_(layer, 2.0 / num_layers)
        truncated_normal_(self.out.weight, 1.0 / math.sqrt(model_size))
        nn.init.zeros_(self.out.bias)
        truncated_normal_(self.tok.weight, 0.02)
        truncated_normal_(self.pos.weight, 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (batch, time, vocab) from integer tokens (batch, time)."""
        t = tokens.shape[1]
        if t > self.sequence_length:
            raise ValueError(f"sequence of {t} tokens is longer than sequence_length={self.sequence_length}")
        x = self.tok(tokens) + self.pos(torch.arange(t, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.out(self.ln_f(x))
