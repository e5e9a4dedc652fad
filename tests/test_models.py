"""The three architectures, their initialization and the losses.

References: parameter counts and shapes worked out by hand, the Glorot-normal standard
deviation sqrt(2 / (fan_in + fan_out)) and Gaussian kurtosis, perturbation of future tokens
for causality, hand-written LayerNorm and cross-entropy, and float64 dense Hessians.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import truncnorm
from torch import nn

from conftest import get_problem, reference_hessian, rel_err
from samedge.hessian import HessianOperator
from samedge.losses import masked_cross_entropy, module_loss, parameters_of, squared_loss
from samedge.models import CNN, MLP, ChannelLayerNorm, Transformer, causal_mask

pytestmark = pytest.mark.usefixtures("single_thread")
F64 = torch.float64


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Shapes and sizes
# --------------------------------------------------------------------------------------------


def test_mlp_shapes_and_parameter_count():
    """(batch, C, H, W) inputs are flattened; logits (batch, out_dim); parameter count by hand."""
    model = MLP(in_dim=12, width=7, depth=3, out_dim=5)
    assert model(torch.randn(4, 3, 2, 2)).shape == (4, 5)
    assert num_params(model) == (12 * 7 + 7) + 2 * (7 * 7 + 7) + (7 * 5 + 5)


@pytest.mark.parametrize("layers_per_block", [1, 2])
def test_cnn_shapes_and_parameter_count(layers_per_block):
    """Logits (batch, classes); channels double per block; count of convs, LayerNorms, pools."""
    model = CNN(
        in_channels=2, image_size=8, num_blocks=2, layers_per_block=layers_per_block, base_channels=3, num_classes=4
    )
    assert model(torch.randn(5, 2, 8, 8)).shape == (5, 4)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [3] * layers_per_block + [6] * layers_per_block
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    assert sum(isinstance(m, ChannelLayerNorm) for m in model.modules()) == 2 * layers_per_block
    chans = [2] + [3] * layers_per_block + [6] * layers_per_block
    expected = sum(a * b * 9 + b + 2 * b for a, b in zip(chans[:-1], chans[1:]))  # conv + LayerNorm
    expected += 6 * 2 * 2 * 4 + 4  # 8 -> 4 -> 2 pixels per side after two pools
    assert num_params(model) == expected


def test_transformer_shapes():
    """Logits (batch, time, vocab) for full and shorter sequences; too long is a ValueError."""
    model = Transformer(vocab_size=11, sequence_length=5, num_layers=2, num_heads=2, key_size=3, model_size=4)
    assert model(torch.randint(0, 11, (3, 5))).shape == (3, 5, 11)
    assert model(torch.randint(0, 11, (3, 2))).shape == (3, 2, 11)
    with pytest.raises(ValueError, match="sequence_length"):
        model(torch.randint(0, 11, (3, 6)))
    per_block = 2 * 8 + (4 * 18 + 18) + (6 * 4 + 4) + (4 * 16 + 16) + (16 * 4 + 4)
    assert num_params(model) == 11 * 4 + 5 * 4 + 2 * per_block + 8 + (4 * 11 + 11)


@pytest.mark.parametrize(
    "cls, kwargs, name",
    [
        (MLP, dict(in_dim=0), "in_dim"),
        (MLP, dict(width=-3), "width"),
        (MLP, dict(depth=2.5), "depth"),
        (MLP, dict(out_dim=0), "out_dim"),
        (CNN, dict(in_channels=0), "in_channels"),
        (CNN, dict(image_size=10, num_blocks=2), "image_size"),
        (CNN, dict(num_blocks=0), "num_blocks"),
        (CNN, dict(layers_per_block=0), "layers_per_block"),
        (CNN, dict(base_channels=1.0), "base_channels"),
        (CNN, dict(num_classes=-1), "num_classes"),
        (Transformer, dict(vocab_size=0), "vocab_size"),
        (Transformer, dict(sequence_length=0), "sequence_length"),
        (Transformer, dict(num_layers=-1), "num_layers"),
        (Transformer, dict(num_heads=0), "num_heads"),
        (Transformer, dict(key_size=2.0), "key_size"),
        (Transformer, dict(model_size=0), "model_size"),
    ],
)
def test_invalid_sizes_raise_value_error_naming_the_argument(cls, kwargs, name):
    """Non-positive or non-integer sizes (and an image size not divisible by 2**num_blocks)
    raise ValueError whose message names the offending argument."""
    with pytest.raises(ValueError, match=rf"^{name} "):
        cls(**kwargs)


# --------------------------------------------------------------------------------------------
# Initialization
# --------------------------------------------------------------------------------------------


# Moments of a standard normal truncated to [-2, 2], from scipy (an oracle independent of the
# constant samedge.models uses).
_TRUNC = truncnorm(-2, 2)
TRUNC_STD = float(_TRUNC.std())
TRUNC_KURTOSIS = float(_TRUNC.stats(moments="k")) + 3.0


def _assert_truncated_normal(weight: torch.Tensor, std: float) -> None:
    """Weights look like scale * N(0, 1) truncated to [-2, 2] with realised std ``std``: std and
    mean within 5 standard errors, kurtosis of the truncated normal (a plain normal has 3), and
    no weight beyond the truncation point 2 * std / TRUNC_STD."""
    w = weight.detach().double().reshape(-1)
    n = w.numel()
    assert float(w.std()) == pytest.approx(std, rel=max(0.03, 5 / math.sqrt(2 * n)))
    assert abs(float(w.mean())) < 5 * std / math.sqrt(n)
    kurtosis = float(((w - w.mean()) ** 4).mean() / w.var() ** 2)
    assert kurtosis == pytest.approx(TRUNC_KURTOSIS, abs=max(0.1, 10 / math.sqrt(n)))
    bound = 2 * std / TRUNC_STD
    assert float(w.abs().max()) <= bound * (1 + 1e-6)
    if n >= 10_000:
        assert float(w.abs().max()) >= 0.98 * bound  # truncated there, not narrower


def _glorot(fan_in: int, fan_out: int) -> float:
    return math.sqrt(2 / (fan_in + fan_out))


def test_mlp_init_is_flax_glorot_normal_at_paper_size():
    """The authors' MLP (3 hidden layers of 1000): flax glorot_normal (truncated) weights, zero biases."""
    torch.manual_seed(0)
    model = MLP(in_dim=784, width=1000, depth=3, out_dim=10)
    fans = [(784, 1000), (1000, 1000), (1000, 1000)]
    for layer, (fi, fo) in zip(model.hidden, fans):
        _assert_truncated_normal(layer.weight, _glorot(fi, fo))
    _assert_truncated_normal(model.out.weight, _glorot(1000, 10))
    for layer in [*model.hidden, model.out]:
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_cnn_init_is_flax_glorot_normal_at_paper_size():
    """The authors' CNN (16 and 32 channels): conv fans include the 3x3 receptive field, as
    flax's; zero biases; LayerNorm scale 1 and offset 0."""
    torch.manual_seed(1)
    model = CNN(in_channels=3, image_size=32, num_blocks=2, layers_per_block=1, base_channels=16, num_classes=10)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    for conv, (ci, co) in zip(convs, [(3, 16), (16, 32)]):
        _assert_truncated_normal(conv.weight, _glorot(9 * ci, 9 * co))
        assert torch.equal(conv.bias, torch.zeros(co))
    _assert_truncated_normal(model.out.weight, _glorot(32 * 8 * 8, 10))
    for ln in [m.norm for m in model.features if isinstance(m, ChannelLayerNorm)]:
        assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and torch.equal(ln.bias, torch.zeros_like(ln.bias))
    assert torch.equal(model.out.bias, torch.zeros(10))


def test_transformer_init_is_the_authors_haiku_init_at_paper_size():
    """The authors' LM (6 layers, 8 heads of 32, model 128): attention and MLP weights
    VarianceScaling(2/num_layers) with fan_in, std sqrt((2/6)/fan_in); the output layer haiku's
    TruncatedNormal(1/sqrt(128)), realised std 0.88/sqrt(128); embeddings TruncatedNormal(0.02);
    zero biases; LayerNorm scale 1 and offset 0."""
    torch.manual_seed(2)
    L, d, h, k = 6, 128, 8, 32
    model = Transformer(vocab_size=128, sequence_length=64, num_layers=L, num_heads=h, key_size=k, model_size=d)
    vs = lambda fan_in: math.sqrt((2 / L) / fan_in)
    for block in model.blocks:
        _assert_truncated_normal(block.attn.qkv.weight, vs(d))
        _assert_truncated_normal(block.attn.proj.weight, vs(h * k))
        _assert_truncated_normal(block.mlp[0].weight, vs(d))
        _assert_truncated_normal(block.mlp[2].weight, vs(4 * d))
        for lin in [block.attn.qkv, block.attn.proj, block.mlp[0], block.mlp[2]]:
            assert torch.equal(lin.bias, torch.zeros_like(lin.bias))
        for ln in (block.ln1, block.ln2):
            assert torch.equal(ln.weight, torch.ones(d)) and torch.equal(ln.bias, torch.zeros(d))
    _assert_truncated_normal(model.out.weight, TRUNC_STD / math.sqrt(d))
    assert torch.equal(model.out.bias, torch.zeros(128))
    for emb in (model.tok.weight, model.pos.weight):
        _assert_truncated_normal(emb, 0.02 * TRUNC_STD)
    # The attention output projection starts ~2x smaller than Glorot would make it.
    assert float(model.blocks[0].attn.proj.weight.detach().std()) / _glorot(h * k, d) == pytest.approx(0.5, rel=0.05)


# --------------------------------------------------------------------------------------------
# Layers and causality
# --------------------------------------------------------------------------------------------


def test_channel_layer_norm_matches_hand_computation():
    """ChannelLayerNorm normalizes each pixel's channel vector (biased variance, eps inside)."""
    torch.manual_seed(3)
    x = torch.randn(2, 5, 3, 4, dtype=F64)
    ln = ChannelLayerNorm(5).double()
    with torch.no_grad():
        ln.norm.weight.copy_(torch.randn(5))
        ln.norm.bias.copy_(torch.randn(5))
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * ln.norm.weight.view(1, 5, 1, 1) + ln.norm.bias.view(1, 5, 1, 1)
    assert torch.allclose(ln(x), expected, atol=1e-12)


def _cnn_reference(model: CNN, x: torch.Tensor) -> torch.Tensor:
    """The CNN's forward written out with F.conv2d, a hand LayerNorm over channels, max-pool
    and an NCHW flatten, on contiguous (N, C, H, W) memory."""
    h = x.contiguous()
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            h = F.conv2d(h, m.weight, m.bias, padding=1)
        elif isinstance(m, nn.ReLU):
            h = h.clamp_min(0)
        elif isinstance(m, ChannelLayerNorm):
            mu = h.mean(1, keepdim=True)
            var = (h - mu).pow(2).mean(1, keepdim=True)
            w, b = m.norm.weight[:, None, None], m.norm.bias[:, None, None]
            h = (h - mu) / torch.sqrt(var + m.norm.eps) * w + b
        else:
            h = F.max_pool2d(h, 2)
    return h.reshape(len(h), -1) @ model.out.weight.T + model.out.bias


def test_cnn_channels_last_forward_and_gradient_match_nchw_reference():
    """The CNN computes in channels-last memory for speed: its logits and parameter gradient equal
    those of the written-out NCHW forward (float64, 1e-10), flatten order included."""
    torch.manual_seed(0)
    model = CNN(in_channels=3, image_size=8, num_blocks=2, base_channels=4, num_classes=5).double()
    with torch.no_grad():  # non-trivial LayerNorm parameters, so a wrong axis would show
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.add_(torch.randn_like(m.weight) * 0.3)
                m.bias.add_(torch.randn_like(m.bias) * 0.3)
    x = torch.randn(6, 3, 8, 8, dtype=F64)
    out, ref = model(x), _cnn_reference(model, x)
    assert rel_err(out, ref) < 1e-10
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    ref_grads = torch.autograd.grad(_cnn_reference(model, x).square().sum(), list(model.parameters()))
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) < 1e-10


def test_causal_mask():
    """causal_mask(n)[i, j] is True exactly when j <= i."""
    m = causal_mask(4)
    assert m.dtype == torch.bool
    assert m.tolist() == [[j <= i for j in range(4)] for i in range(4)]


@pytest.mark.parametrize("position", [1, 2, 4])
def test_transformer_is_causal(position):
    """Changing the token at ``position`` leaves the logits at earlier positions unchanged and
    changes those at ``position`` and later (float64 model with non-trivial embeddings)."""
    model = get_problem("transformer").model
    tokens = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    changed = tokens.clone()
    changed[:, position] = (changed[:, position] + 3) % 11
    a, b = model(tokens), model(changed)
    assert torch.allclose(a[:, :position], b[:, :position], rtol=0, atol=1e-12)
    later = (a[:, position:] - b[:, position:]).abs().amax(dim=-1)
    assert bool((later > 1e-6).all())


@pytest.mark.parametrize("method", ["double_backward", "forward_over_reverse"])
def test_transformer_hvp_float32_cpu_without_fused_attention(method, monkeypatch):
    """A freshly initialized float32 Transformer supports exact HVPs on CPU, close to the
    float64 dense Hessian; the forward never calls scaled_dot_product_attention."""

    def forbidden(*args, **kwargs):
        raise AssertionError("scaled_dot_product_attention has no double backward on CPU")

    monkeypatch.setattr(F, "scaled_dot_product_attention", forbidden)
    torch.manual_seed(4)
    model = Transformer(vocab_size=7, sequence_length=4, num_layers=1, num_heads=2, key_size=2, model_size=4)
    x, y = torch.randint(0, 7, (3, 4)), torch.randint(1, 7, (3, 4))
    params = parameters_of(model)
    assert all(p.dtype == torch.float32 for p in params.values())
    op = HessianOperator(module_loss(model, masked_cross_entropy, x, y), params, method=method)
    v = torch.randn(op.size)
    hv = op(v)
    assert hv.dtype == torch.float32 and torch.isfinite(hv).all()
    model64 = copy.deepcopy(model).double()
    H = reference_hessian(module_loss(model64, masked_cross_entropy, x, y), {k: p.double() for k, p in params.items()})
    assert rel_err(hv.double(), H @ v.double()) <= 1e-4


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def test_squared_loss_is_mean_over_examples_and_classes():
    """(1/(n C)) sum_i sum_c (f_ic - y_ic)^2, by hand; shape mismatch is a ValueError."""
    out = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]], dtype=F64)
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    assert float(squared_loss(out, y)) == pytest.approx((0 + 4 + 0 + 0 + 1 + 4) / 6)
    with pytest.raises(ValueError, match="shape"):
        squared_loss(out, y[:, :2])


def test_masked_cross_entropy_ignores_pad_targets():
    """Mean of -log softmax(logits)[target] over the positions whose target is not pad."""
    torch.manual_seed(5)
    logits = torch.randn(2, 3, 4, dtype=F64)
    targets = torch.tensor([[1, 0, 3], [0, 2, 2]])
    logp = torch.log_softmax(logits, dim=-1)
    kept = [(0, 0), (0, 2), (1, 1), (1, 2)]
    expected = -sum(logp[b, t, targets[b, t]] for b, t in kept) / len(kept)
    assert torch.allclose(masked_cross_entropy(logits, targets), expected, rtol=1e-14)
    assert float(masked_cross_entropy(logits, torch.zeros_like(targets))) == 0.0  # all pad: no NaN


def test_module_loss_and_parameters_of():
    """parameters_of is a detached copy; module_loss(params) equals loss(model(x), y), and
    evaluating it at other parameters does not touch the module."""
    problem = get_problem("mlp")
    model = problem.model
    params = parameters_of(model)
    assert all(not p.requires_grad for p in params.values())
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(params.values(), model.parameters()))
    fn = module_loss(model, squared_loss, problem.inputs, problem.targets)
    assert torch.allclose(fn(params), squared_loss(model(problem.inputs), problem.targets), rtol=1e-14)
    zero = {k: torch.zeros_like(v) for k, v in params.items()}
    assert float(fn(zero)) == pytest.approx(float((problem.targets**2).mean()))
    assert all(torch.equal(p, q) for p, q in zip(params.values(), model.parameters()))
