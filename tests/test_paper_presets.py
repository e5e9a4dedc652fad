"""The `paper` presets build and run: each task at the authors' model size (the preset's own
width, depth, channels, layers, heads, sequence length), with the data cut to a few examples,
takes two SAM steps and its measurements on the CPU. Nothing else executes these sizes in CI."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from samedge.loop import run
from samedge.presets import load_preset, resolve_params, run_configs

DATA = os.environ.get("SAMEDGE_DATA_DIR")
pytestmark = pytest.mark.skipif(not DATA or not Path(DATA).is_dir(), reason="set SAMEDGE_DATA_DIR to the data mirror")

# Only the data shrinks; every model size comes from the paper preset.
FEW = {
    "mnist": dict(n_train=32, n_test=16),
    "cifar10": dict(n_train=16, n_test=16),
    "shakespeare": dict(batch_size=4, eval_batch_size=4, n_test_crops=8),
}
MODEL_KEYS = {
    "mnist": ("width", "depth"),
    "cifar10": ("num_blocks", "layers_per_block", "base_channels"),
    "shakespeare": ("num_layers", "num_heads", "key_size", "model_size", "sequence_length"),
}


def expected_parameters(task: str, p: dict) -> int:
    """Parameter count of the authors' architecture, by hand from the preset's sizes."""
    if task == "mnist":
        dims = [784] + [p["width"]] * p["depth"] + [10]
        return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))
    if task == "cifar10":
        n, c_in, side = 0, 3, 32
        for b in range(p["num_blocks"]):
            c = p["base_channels"] * 2**b
            for _ in range(p["layers_per_block"]):
                n += 9 * c_in * c + c + 2 * c  # conv + LayerNorm
                c_in = c
            side //= 2
        return n + c_in * side * side * 10 + 10
    d, hk, L = p["model_size"], p["num_heads"] * p["key_size"], p["num_layers"]
    block = 2 * 2 * d + (d * 3 * hk + 3 * hk) + (hk * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return 128 * d + p["sequence_length"] * d + L * block + 2 * d + (d * 128 + 128)


@pytest.mark.parametrize("task", sorted(FEW))
def test_paper_preset_runs_two_steps_at_full_model_size(task):
    """Two SAM steps and a measurement at steps 0 and 2, at the paper's model size: finite,
    converged sharpness, the preset's eta and largest rho, the authors' parameter count."""
    paper = load_preset(task, "paper")
    params = resolve_params(
        task, "paper", **FEW[task], steps=2, measure_every=2, rhos=[max(paper["rhos"])], device="cpu"
    )
    assert all(params[k] == paper[k] for k in MODEL_KEYS[task])
    (cfg,) = run_configs(task, params)
    assert cfg.eta == paper["eta"] and cfg.rho == max(paper["rhos"])
    rec = run(cfg, progress=False)
    assert rec.summary["complete"] and not rec.diverged
    df = rec.frame
    assert df["step"].tolist() == [0, 2]
    assert df["converged"].all() and all(math.isfinite(x) and x > 0 for x in df["op_norm"])
    assert all(math.isfinite(x) for x in df["ratio"])
    from samedge.tasks import get_task  # the model the run trained, rebuilt for its size

    built = get_task(task).build(cfg.options, cfg.batch_size, "cpu", cfg.torch_dtype, None)
    n = sum(p.numel() for p in built.model.parameters())
    assert n == expected_parameters(task, paper)
