"""The authors' method beside ours (benchmarks/authors_method.py, book/mnist.ipynb).

The committed results file covers the book's MNIST ``cpu`` configuration, every rho and compared
step, and its numbers agree with our own SAM-edge formula; the chapter's section reads it into
the medians computed here from the file by hand, and says how to make the file when it is absent.
With jax: our MLP's weights in the authors' flax layout give our loss and come back unchanged.
With jax and a clone of the authors' code ($SAMEDGE_AUTHORS_DIR): their measured step from our
weights gives our loss, our SAM step and a sharpness close to the dense float64 Hessian's."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from samedge import plots
from samedge.analysis import AUTHORS_FACTS
from samedge.edge import edge, rule_of
from samedge.losses import module_loss, parameters_of, squared_loss
from samedge.models import CNN, MLP
from samedge.presets import resolve_params
from samedge.sam import sam_step

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import authors  # noqa: E402
import authors_method  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
TASKS = authors_method.TASKS
CHAPTERS = {"mnist": ROOT / "book" / "mnist.ipynb", "cifar10": ROOT / "book" / "cifar10.ipynb"}


def _results(task):
    csv = authors_method.out_path(task)
    return pd.read_csv(csv), json.loads(csv.with_suffix(".json").read_text())


@pytest.mark.parametrize("task", TASKS)
def test_results_file_covers_the_cpu_configuration_and_agrees_with_our_edge(task):
    """Every rho of the cpu preset at every compared step, measured on the preset's own schedule
    (so "ours" is the book's seed-0 run); their SAM-edge is ours from their ||g||."""
    df, meta = _results(task)
    cpu = resolve_params(task, "cpu", device="cpu")
    assert list(df.columns) == authors_method.COLUMNS
    for k in authors_method.CONFIG_KEYS[task]:
        assert meta["config"].get(k) == cpu.get(k), k
    assert meta["compare_every"] % cpu["measure_every"] == 0
    assert sorted(df["rho"].unique()) == sorted(cpu["rhos"])
    steps = authors_method.compare_steps(cpu["steps"], meta["compare_every"])
    for rho, g in df.groupby("rho"):
        assert list(g["step"]) == steps, rho
    assert np.isfinite(df.drop(columns=["rho", "step"]).to_numpy()).all()
    want = [edge(rule_of(r.rho), cpu["eta"], r.rho, r.their_grad_norm) for r in df.itertuples()]
    np.testing.assert_allclose(df["their_sam_edge"], want, rtol=1e-5)
    np.testing.assert_allclose(df["their_ratio"], df["their_op_norm"] / df["their_sam_edge"], rtol=1e-6)
    np.testing.assert_allclose(df["estimator_error"], df["their_op_norm"] / df["exact_op_norm"] - 1, atol=1e-6)
    first = df[df["step"] == 0]  # the same weights and data: the same loss and the same exact ||H||
    np.testing.assert_allclose(first["their_loss"], first["our_loss"], rtol=1e-6)
    np.testing.assert_allclose(first["exact_op_norm"], first["our_op_norm"], rtol=1e-3)
    assert all(c["step0_loss_rel_diff"] < 1e-5 for c in meta["checks"])


def _section(nb: Path):
    cells = json.loads(nb.read_text())["cells"]
    mine = [c for c in cells if "authors-method" in c["metadata"].get("tags", [])]
    code = "".join(next(c for c in mine if c["cell_type"] == "code")["source"])
    text = "".join("".join(c["source"]) for c in mine if c["cell_type"] == "markdown")
    return code, text


def _run_section(code: str, where: Path, monkeypatch, tmp_path) -> tuple:
    """Execute the section's code cell in ``where`` with glue and display recorded."""
    import IPython.display as ipd
    import myst_nb

    glued, shown = {}, []
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: glued.__setitem__(name, value))
    monkeypatch.chdir(where)
    ns = dict(
        pd=pd,
        plt=plt,
        plots=plots,
        glue=myst_nb.glue,
        display=shown.append,
        Markdown=ipd.Markdown,
        table_styler=lambda t, *a, **k: t,
        figures=tmp_path / "figures",
    )
    exec(compile(code, "mnist.ipynb:authors-method", "exec"), ns)
    plt.close("all")
    return glued, shown


@pytest.mark.parametrize("task", TASKS)
def test_section_reads_the_results_file(task, monkeypatch, tmp_path):
    """The section glues every name its text uses; its table holds the second-half medians per rho."""
    code, text = _section(CHAPTERS[task])
    glued, shown = _run_section(code, ROOT / "book", monkeypatch, tmp_path)
    used = set(re.findall(r"\{glue:(?:text|md)\}`([^`]+)`", text)) | set(re.findall(r"```\{glue:figure\} (\S+)", text))
    mine = {u for u in used if u.startswith(f"{task}-authors")}
    assert mine and mine <= set(glued)
    assert (
        tuple(
            k.removeprefix(f"{task}-authors-")
            for k in glued
            if k not in (f"{task}-authors-ratio", f"{task}-authors-command")
        )
        == AUTHORS_FACTS
    )
    df, meta = _results(task)
    table = shown[0]
    half = df[df["step"] >= meta["config"]["steps"] / 2]
    for rho, row in zip(sorted(df["rho"].unique()), table.itertuples()):
        h = half[half["rho"] == rho]
        assert row.run == ("GD" if rho == 0 else f"SAM rho={rho:g}")
        assert math.isclose(table.loc[row.Index, "theirs: estimate / edge"], float(np.median(h["their_ratio"])))
        assert math.isclose(table.loc[row.Index, "ours / edge, same steps"], float(np.median(h["our_ratio"])))
    assert glued[f"{task}-authors-every"] == str(meta["compare_every"])
    assert (f" --task {task}" in meta["command"]) == (task != "mnist")


@pytest.mark.parametrize("task", TASKS)
def test_section_without_the_file_says_how_to_make_it(task, monkeypatch, tmp_path):
    """Where the file is absent the section shows the command and glues every name still."""
    code, text = _section(CHAPTERS[task])
    glued, shown = _run_section(code, tmp_path, monkeypatch, tmp_path)
    assert "git clone https://github.com/google-deepmind/sam_edge" in shown[0].data
    assert "benchmarks/authors_method.py" in shown[0].data and f"authors_method_{task}.csv" in shown[0].data
    used = set(re.findall(r"\{glue:(?:text|md)\}`(" + task + r"-authors[^`]+)`", text))
    assert used and used <= set(glued)


def _tiny():
    torch.manual_seed(0)
    model = MLP(12, 16, 3, 4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 12, generator=gen)
    y = F.one_hot(torch.randint(0, 4, (30,), generator=gen), 4).float()
    return model, x, y


@pytest.mark.skipif(authors.jax_missing() is not None, reason="jax is not installed")
def test_our_weights_in_their_layout_give_our_loss():
    """to_flax_mlp: their FlaxMLP and squared error give our loss at step 0; from_flax_mlp inverts it."""
    import jax.numpy as jnp

    model, x, y = _tiny()
    params = parameters_of(model)
    tree = authors.to_flax_mlp(params)
    assert list(tree["params"]) == [
        "input_to_hidden_def",
        "hidden_to_hidden_defs_0",
        "hidden_to_hidden_defs_1",
        "output_def",
    ]
    assert tree["params"]["input_to_hidden_def"]["kernel"].shape == (12, 16)
    theirs = jnp.mean(
        authors.squared_error(None, authors.FlaxMLP().apply(tree, jnp.asarray(x.numpy())), jnp.asarray(y.numpy()))
    )
    ours = squared_loss(model(x), y)
    assert math.isclose(float(theirs), float(ours), rel_tol=1e-6)
    back = authors.from_flax_mlp(tree, list(params))
    assert all(torch.equal(back[k], params[k].detach()) for k in params)


@pytest.mark.skipif(authors.jax_missing() is not None, reason="jax is not installed")
def test_our_cnn_weights_in_their_layout_give_our_logits():
    """to_flax_cnn: their FlaxCNN on our images in NHWC gives our CNN's logits (2 blocks of 2 layers,
    non-trivial LayerNorm parameters); from_flax_cnn inverts it exactly."""
    import jax.numpy as jnp

    torch.manual_seed(0)
    model = CNN(in_channels=3, image_size=8, num_blocks=2, layers_per_block=2, base_channels=3, num_classes=5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.add_(0.3 * torch.randn_like(m.weight))
                m.bias.add_(0.3 * torch.randn_like(m.bias))
    params = {k: v.detach() for k, v in parameters_of(model).items()}
    flax = authors.FlaxCNN(2, 2)
    tree = authors.to_flax_cnn(params, flax)
    assert sorted(tree["params"]) == sorted([n for pair in flax.names() for n in pair] + ["dense_def"])
    assert tree["params"]["conv_defs_1_0"]["kernel"].shape == (3, 3, 3, 6)  # HWIO
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    theirs = np.asarray(flax.apply(tree, jnp.asarray(x.permute(0, 2, 3, 1).numpy())))
    ours = model(x).detach().numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)
    back = authors.from_flax_cnn(tree, params, flax)
    assert all(torch.equal(back[k], params[k]) for k in params)


@pytest.mark.skipif(
    authors.jax_missing() is not None or authors.authors_missing(None) is not None,
    reason=f"needs jax and a clone of the authors' code in ${authors.AUTHORS_ENV}",
)
def test_their_measured_step_from_our_weights(tmp_path):
    """drive_authors: their step-0 loss is ours, their update is samedge.sam_step's (up to their 1e-5
    in ||g|| + 1e-5), their ||H|| estimate is within 5% of the dense float64 Hessian's."""
    import jax.numpy as jnp

    sam_edge, _ = authors.import_authors()
    model, x, y = _tiny()
    params = {k: v.detach() for k, v in parameters_of(model).items()}
    eta, rho = 0.5, 0.05
    gen = authors_method.drive_authors(
        sam_edge,
        authors.to_flax_mlp(params),
        jnp.asarray(x.numpy()),
        jnp.asarray(y.numpy()),
        eta,
        rho,
        [0, 1],
        tmp_path / "raw.txt",
        0,
    )
    _, at0 = next(gen)
    _, at1 = next(gen)
    with pytest.raises(StopIteration) as done:
        next(gen)
    table = done.value.value
    loss_fn = module_loss(model, squared_loss, x, y)
    assert math.isclose(table["their_loss"][0], float(loss_fn(params)), rel_tol=1e-6)
    want = sam_step(loss_fn, params, eta, rho).params
    got = authors.from_flax_mlp(at1, list(params))
    for k in params:
        step, ref = got[k] - params[k], want[k] - params[k]
        assert float((step - ref).abs().max() / ref.abs().max()) < 1e-3, k
    flat = torch.cat([p.double().reshape(-1) for p in params.values()])
    shapes = [(k, p.shape, p.numel()) for k, p in params.items()]

    def f(v):
        out, i = {}, 0
        for k, s, n in shapes:
            out[k] = v[i : i + n].reshape(s)
            i += n
        return squared_loss(torch.func.functional_call(model.double(), out, (x.double(),)), y.double())

    exact = torch.linalg.eigvalsh(torch.autograd.functional.hessian(f, flat)).abs().max().item()
    assert abs(table["their_op_norm"][0] / exact - 1) < 0.05
