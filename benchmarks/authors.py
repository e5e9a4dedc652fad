"""Shared by the benchmarks that run the authors' code (google-deepmind/sam_edge) beside ours.

jax is optional and kept out of requirements.txt:

    pip install --target /path/to/jax-site --no-deps jax jaxlib ml_dtypes opt_einsum
    PYTHONPATH=src:/path/to/jax-site ...

(``--no-deps`` keeps the venv's own numpy and scipy in charge). The authors' modules are not in
this repository: clone them once, ``git clone https://github.com/google-deepmind/sam_edge``, and
give the clone's path with ``--authors-dir`` or ``$SAMEDGE_AUTHORS_DIR``; ``import_authors`` puts
it on ``sys.path`` and imports their ``sam_edge`` and ``hessian_norm`` as they are.

Their MLP, CNN and loss live in ``image_classification.py``, a script that parses its command
line, downloads data with TFDS and trains when imported, and needs flax and optax: those three are
transcribed below in jax (``FlaxMLP``, ``FlaxCNN``, ``squared_error``), nothing else.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

AUTHORS_ENV = "SAMEDGE_AUTHORS_DIR"
AUTHORS_URL = "https://github.com/google-deepmind/sam_edge"

__all__ = [
    "AUTHORS_ENV",
    "AUTHORS_URL",
    "jax_missing",
    "authors_missing",
    "import_authors",
    "authors_commit",
    "match_threads",
    "FlaxMLP",
    "FlaxCNN",
    "squared_error",
    "to_flax_mlp",
    "from_flax_mlp",
    "to_flax_cnn",
    "from_flax_cnn",
]


def jax_missing() -> Optional[str]:
    """None when jax can be imported, else a one-line message saying how to get it."""
    if importlib.util.find_spec("jax") is None:
        return (
            "jax is not installed: skipped. To run it: `pip install --target /path/to/jax-site --no-deps jax jaxlib "
            "ml_dtypes opt_einsum` and put /path/to/jax-site on PYTHONPATH (jax stays out of requirements.txt)"
        )
    return None


def authors_missing(path: Optional[str | os.PathLike]) -> Optional[str]:
    """None when ``path`` (else ``$SAMEDGE_AUTHORS_DIR``) holds the authors' modules, else how to get them."""
    path = path or os.environ.get(AUTHORS_ENV)
    how = f"`git clone {AUTHORS_URL} DIR` and pass --authors-dir DIR (or set {AUTHORS_ENV}=DIR)"
    if not path:
        return f"the authors' code is not given: {how}"
    missing = [f for f in ("sam_edge.py", "hessian_norm.py", "more_tree_utils.py") if not (Path(path) / f).is_file()]
    if missing:
        return f"{path} lacks {', '.join(missing)}: it is not a clone of google-deepmind/sam_edge; {how}"
    return None


def import_authors(path: Optional[str | os.PathLike] = None) -> Tuple[ModuleType, ModuleType]:
    """The authors' ``sam_edge`` and ``hessian_norm`` modules, imported from their clone."""
    msg = jax_missing() or authors_missing(path)
    if msg:
        raise RuntimeError(msg)
    where = str(Path(path or os.environ[AUTHORS_ENV]).resolve())
    if where not in sys.path:
        sys.path.insert(0, where)
    os.environ.setdefault("MPLBACKEND", "Agg")  # sam_edge imports pyplot; we plot nothing with it
    return importlib.import_module("sam_edge"), importlib.import_module("hessian_norm")


def authors_commit(path: Optional[str | os.PathLike] = None) -> str:
    """The commit of the authors' clone (``git rev-parse HEAD``), or 'unknown' outside git."""
    where = path or os.environ.get(AUTHORS_ENV, ".")
    try:
        out = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def match_threads() -> str:
    """Give XLA the cores torch uses, before jax starts: at one torch thread the process is
    pinned to one core (jax 0.10's CPU runtime still ran two threads under the old XLA_FLAGS
    recipe, ``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``: its CPU
    time was twice its wall time)."""
    threads = torch.get_num_threads()
    if threads == 1 and hasattr(os, "sched_setaffinity"):
        cores = os.sched_getaffinity(0)
        if len(cores) > 1:
            os.sched_setaffinity(0, {min(cores)})
        return "process pinned to one core"
    flags = os.environ.get("XLA_FLAGS", "")
    return f"XLA_FLAGS='{flags}'" if flags else "XLA default threads (all cores)"


# Flax names a module's Dense layers after the attributes that hold them (image_classification.MLP:
# input_to_hidden_def, hidden_to_hidden_defs[i], output_def), under the collection "params".
def _layer_names(n_layers: int) -> List[str]:
    return ["input_to_hidden_def"] + [f"hidden_to_hidden_defs_{i}" for i in range(n_layers - 2)] + ["output_def"]


class FlaxMLP:
    """``image_classification.MLP`` (flax) on its parameter tree: flatten, Dense-ReLU layers, a
    Dense output; flax's Dense is ``x @ kernel + bias`` with the kernel shaped (in, out)."""

    def apply(self, params, x):
        """Logits of the batch ``x`` (the ``model.apply(params, x)`` that sam_edge.train calls)."""
        import jax.numpy as jnp

        layers = params["params"]
        names = _layer_names(len(layers))
        h = x.reshape((x.shape[0], -1))
        for name in names[:-1]:
            h = jnp.maximum(h @ layers[name]["kernel"] + layers[name]["bias"], 0.0)
        return h @ layers[names[-1]]["kernel"] + layers[names[-1]]["bias"]


def squared_error(x, logits, y):
    """The authors' ``loss(x, logits, y)``: ``optax.squared_error(logits, y)`` = (logits - y)^2;
    sam_edge.train takes its mean over examples and classes."""
    return (logits - y) ** 2


def to_flax_mlp(params: Dict[str, torch.Tensor]):
    """Our MLP's weights (``samedge.models.MLP``: (weight, bias) pairs in order) as the authors'
    flax parameter tree, float32."""
    import jax.numpy as jnp

    keys = list(params)
    if len(keys) % 2 or any(params[k].dim() != (2 if i % 2 == 0 else 1) for i, k in enumerate(keys)):
        raise ValueError(f"params must be an MLP's (weight, bias) pairs in order, got keys {keys}")
    f32 = lambda t: jnp.asarray(t.detach().cpu().numpy().astype(np.float32))  # noqa: E731
    pairs = list(zip(keys[::2], keys[1::2]))
    # torch's Linear keeps the weight as (out, in): the kernel is its transpose.
    return {
        "params": {
            n: {"kernel": f32(params[w]).T, "bias": f32(params[b])}
            for n, (w, b) in zip(_layer_names(len(pairs)), pairs)
        }
    }


def from_flax_mlp(tree, keys: List[str]) -> Dict[str, torch.Tensor]:
    """The authors' flax parameter tree as our MLP's weights, named by ``keys`` (weight, bias, ...)."""
    layers = tree["params"]
    out: Dict[str, torch.Tensor] = {}
    for name, w, b in zip(_layer_names(len(layers)), keys[::2], keys[1::2]):
        out[w] = torch.from_numpy(np.asarray(layers[name]["kernel"]).T.copy())
        out[b] = torch.from_numpy(np.asarray(layers[name]["bias"]).copy())
    return out


class FlaxCNN:
    """``image_classification.CNN`` (flax) on its parameter tree, NHWC images: per block,
    ``layers_per_block`` times (3x3 SAME conv, ReLU, ``nn.LayerNorm()`` over channels), then a 2x2
    max-pool; flatten (in NHWC order); Dense. Flax names the attribute convs ``conv_defs_{i}_{j}``,
    the inline LayerNorms ``LayerNorm_{k}`` in call order and the output ``dense_def``."""

    def __init__(self, num_blocks: int, layers_per_block: int):
        self.num_blocks, self.layers_per_block = num_blocks, layers_per_block

    def names(self) -> List[Tuple[str, str]]:
        """(conv, LayerNorm) names in call order."""
        n = self.layers_per_block
        return [(f"conv_defs_{i}_{j}", f"LayerNorm_{i * n + j}") for i in range(self.num_blocks) for j in range(n)]

    def apply(self, params, x):
        """Logits of the NHWC batch ``x``."""
        import jax
        import jax.numpy as jnp

        p = params["params"]
        h, names = x, self.names()
        for i in range(self.num_blocks):
            for conv, ln in names[i * self.layers_per_block : (i + 1) * self.layers_per_block]:
                h = jax.lax.conv_general_dilated(
                    h, p[conv]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
                )
                h = jnp.maximum(h + p[conv]["bias"], 0.0)
                # flax.linen.LayerNorm: epsilon 1e-6, the fast variance E[x^2] - E[x]^2 (clipped at 0).
                mean = jnp.mean(h, axis=-1, keepdims=True)
                var = jnp.maximum(0.0, jnp.mean(jnp.square(h), axis=-1, keepdims=True) - jnp.square(mean))
                h = (h - mean) * jax.lax.rsqrt(var + 1e-6) * p[ln]["scale"] + p[ln]["bias"]
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        h = h.reshape((h.shape[0], -1))
        return h @ p["dense_def"]["kernel"] + p["dense_def"]["bias"]


def _cnn_keys(params: Dict[str, torch.Tensor]) -> Tuple[List[Tuple[str, str, str, str]], Tuple[str, str]]:
    """Our CNN's keys as (conv weight, conv bias, LayerNorm weight, LayerNorm bias) per layer, and
    (output weight, output bias) (``samedge.models.CNN``'s parameter order)."""
    keys = list(params)
    if len(keys) < 6 or (len(keys) - 2) % 4 or params[keys[-2]].dim() != 2:
        raise ValueError(f"params must be a samedge.models.CNN's, got keys {keys}")
    layers = [tuple(keys[i : i + 4]) for i in range(0, len(keys) - 2, 4)]
    if any(params[w].dim() != 4 for w, *_ in layers):
        raise ValueError(f"params must be a samedge.models.CNN's (conv, LayerNorm) layers, got keys {keys}")
    return layers, (keys[-2], keys[-1])  # type: ignore[return-value]


def to_flax_cnn(params: Dict[str, torch.Tensor], model: FlaxCNN):
    """Our CNN's weights as the authors' flax tree (float32): conv (O, I, kh, kw) -> HWIO; the
    output layer's input reordered from our NCHW flatten to their NHWC one."""
    import jax.numpy as jnp

    f32 = lambda t: jnp.asarray(t.detach().cpu().numpy().astype(np.float32))  # noqa: E731
    layers, (ow, ob) = _cnn_keys(params)
    if len(layers) != len(model.names()):
        raise ValueError(f"{len(layers)} conv layers for a FlaxCNN of {len(model.names())}")
    tree = {}
    for (cw, cb, lw, lb), (conv, ln) in zip(layers, model.names()):
        tree[conv] = {"kernel": f32(params[cw].permute(2, 3, 1, 0)), "bias": f32(params[cb])}
        tree[ln] = {"scale": f32(params[lw]), "bias": f32(params[lb])}
    c = params[layers[-1][0]].shape[0]
    side = int(round((params[ow].shape[1] / c) ** 0.5))
    w = params[ow].reshape(-1, c, side, side).permute(0, 2, 3, 1).reshape(params[ow].shape[0], -1)
    tree["dense_def"] = {"kernel": f32(w).T, "bias": f32(params[ob])}
    return {"params": tree}


def from_flax_cnn(tree, like: Dict[str, torch.Tensor], model: FlaxCNN) -> Dict[str, torch.Tensor]:
    """The authors' flax tree as our CNN's weights, with the keys and shapes of ``like``."""
    p = tree["params"]
    t = lambda a: torch.from_numpy(np.asarray(a).copy())  # noqa: E731
    layers, (ow, ob) = _cnn_keys(like)
    out: Dict[str, torch.Tensor] = {}
    for (cw, cb, lw, lb), (conv, ln) in zip(layers, model.names()):
        out[cw], out[cb] = t(p[conv]["kernel"]).permute(3, 2, 0, 1).contiguous(), t(p[conv]["bias"])
        out[lw], out[lb] = t(p[ln]["scale"]), t(p[ln]["bias"])
    c = like[layers[-1][0]].shape[0]
    side = int(round((like[ow].shape[1] / c) ** 0.5))
    k = t(p["dense_def"]["kernel"]).T  # (classes, H * W * C), NHWC order
    out[ow] = k.reshape(-1, side, side, c).permute(0, 3, 1, 2).reshape(like[ow].shape).contiguous()
    out[ob] = t(p["dense_def"]["bias"])
    return {k_: out[k_] for k_ in like}
