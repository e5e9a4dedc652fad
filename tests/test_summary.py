"""``summary.deviation_table`` against the preset files read directly and parameter counts by hand;
``summary.verdict_glue`` and ``summary_sentence`` against hand-built run records."""

from pathlib import Path

import pytest
import yaml

from samedge.config import RunConfig
from samedge.record import RunRecord
from samedge.summary import deviation_table, summary_sentence, summary_table, verdict_glue

PRESETS = Path(__file__).resolve().parents[1] / "src" / "samedge" / "presets"


def _yaml(task, preset):
    return yaml.safe_load((PRESETS / task / f"{preset}.yaml").read_text())


def _mlp_params(width, depth):
    """784 -> width (depth layers) -> 10, weights and biases."""
    dims = [784] + [width] * depth + [10]
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))


def _transformer_params(vocab, length, layers, heads, key, model):
    """Token and position embeddings, per block two LayerNorms, qkv, projection and a 4x MLP, a final
    LayerNorm and the output layer (all with biases)."""
    block = 2 * 2 * model + (model * 3 * heads * key + 3 * heads * key) + (heads * key * model + model)
    block += (model * 4 * model + 4 * model) + (4 * model * model + model)
    return vocab * model + length * model + layers * block + 2 * model + (model * vocab + vocab)


def test_deviation_table_reads_the_presets():
    t = deviation_table()
    assert list(dict.fromkeys(t["task"])) == ["MNIST", "CIFAR-10", "tiny_shakespeare"]
    assert set(t["setting"]) >= {"data", "model", "eta", "rho (SAM)", "steps", "batch", "measurement", "schedule"}

    def cell(task, setting, col):
        return t[(t["task"] == task) & (t["setting"] == setting)][col].item()

    for task, name in (("mnist", "MNIST"), ("cifar10", "CIFAR-10"), ("shakespeare", "tiny_shakespeare")):
        paper, cpu = _yaml(task, "paper"), _yaml(task, "cpu")
        assert (
            cell(name, "eta", "authors") == f"{paper['eta']:g}" and cell(name, "eta", "this book") == f"{cpu['eta']:g}"
        )
        assert cell(name, "eta", "differs") == (paper["eta"] != cpu["eta"])
        assert f"{paper['steps']:,}" in cell(name, "steps", "authors") and "wall-clock" in cell(
            name, "steps", "authors"
        )
        assert cell(name, "steps", "this book") == f"{cpu['steps']:,}"
        every = f"every {cpu['measure_every']} steps"  # paired presets measure t and t + 1
        assert cell(name, "schedule", "this book") == (
            f"steps t and t + 1 {every}" if cpu.get("measure_pairs") else every
        )
        assert cell(name, "rho (SAM)", "this book") == ", ".join(f"{r:g}" for r in cpu["rhos"] if r > 0)
        assert cell(name, "measurement", "differs")
    assert cell("MNIST", "data", "authors") == "first 60,000 training images"
    assert cell("CIFAR-10", "data", "this book") == f"first {_yaml('cifar10', 'cpu')['n_train']:,} training images"
    assert cell("MNIST", "batch", "authors") == "full batch" and not cell("MNIST", "batch", "differs")
    assert cell("tiny_shakespeare", "batch", "authors") == "128 crops"
    assert f"({_mlp_params(1000, 3):,} parameters)" in cell("MNIST", "model", "authors")
    assert f"({_mlp_params(256, 3):,} parameters)" in cell("MNIST", "model", "this book")
    paper = _transformer_params(128, 64, 6, 8, 32, 128)
    assert paper == 1_626_496
    assert f"({paper:,} parameters)" in cell("tiny_shakespeare", "model", "authors")


def _record(rho, seed, ratio, eta=0.5, batch_size=None, acc=0.5):
    """A 100-step run whose second half has a constant ratio; the edge is 2/eta for GD and 1 for SAM."""
    edge = 2 / eta if rho == 0 else 1.0
    rows = [dict(step=s, op_norm=ratio * edge, edge=edge, ratio=ratio, train_loss=0.1) for s in (0, 50, 75, 100)]
    cfg = RunConfig("mnist", eta, rho, 100, 25, seed=seed, batch_size=batch_size)
    return RunRecord(cfg, rows, {"test_loss": 0.2, "test_accuracy": acc})


def test_verdict_glue_and_sentence_by_hand():
    full = [_record(0.0, s, 0.99) for s in (0, 1)]
    full += [_record(0.05, s, r, acc=0.1) for s, r in ((0, 1.01), (1, 1.03))]  # mean 1.02
    full += [_record(0.1, s, r, acc=0.2) for s, r in ((0, 1.05), (1, 1.2))]  # mean 1.125, one seed out
    mini = [_record(0.0, 0, 1.16, batch_size=8), _record(0.1, 0, 0.95, batch_size=8)]
    t = summary_table({"mnist": full, "shakespeare": mini})
    g = verdict_glue(t)
    assert g["mnist-sam"] == "1.0200 to 1.1250" and g["mnist-gd"] == "0.9900"
    assert g["mnist-in-band"] == "5 of 6"  # 1.2 is above 1.15
    assert g["mnist-band"] == "[0.9, 1.15]" and g["shakespeare-band"] == "[0.8, 1.25]"
    # SAM's sharpness 1.02 and 1.125 against 2/eta = 4
    assert g["mnist-of-gd"] == "0.26 to 0.28"
    assert g["mnist-test-accuracy"] == "10% to 50%"
    assert "grows with rho (+2.0% at rho = 0.05 to +12.5% at rho = 0.1)" in g["mnist-bias"]
    assert g["shakespeare-sam"] == "0.9500" and g["shakespeare-of-gd"] == "0.24"  # one radius: one number (0.95 / 4)
    assert g["shakespeare-gd"] == "1.1600" and g["shakespeare-gd-where"] == "inside its band [0.8, 1.25]"
    assert "below the SAM-edge in every SAM setting (-5.0%)" in g["shakespeare-bias"]
    s = summary_sentence(t)
    assert s.count("\n\n") == 1 and "**MNIST**: 2 of 2 SAM radii" in s and "GD at 0.9900 x 2/eta (at its edge)" in s
    assert "**tiny_shakespeare**" in s and "GD at 1.1600 x 2/eta (at its edge)" in s


def test_read_markdown_table(tmp_path):
    """The table with the asked column, cells as written; a missing column is an error."""
    from samedge.summary import read_markdown_table

    f = tmp_path / "r.md"
    f.write_text(
        "# R\n\n| a | b |\n|---|---|\n| 1 | x |\n\ntext\n\n| run | overlap median / min |\n|---|---|\n"
        "| GD | 0.999 / 0.685 |\n| SAM rho=0.05 | 0.884 / 0.045 |\n\nafter\n"
    )
    t = read_markdown_table(f, "overlap median / min")
    assert t.to_dict("records") == [
        {"run": "GD", "overlap median / min": "0.999 / 0.685"},
        {"run": "SAM rho=0.05", "overlap median / min": "0.884 / 0.045"},
    ]
    with pytest.raises(ValueError, match="no table"):
        read_markdown_table(f, "nothing")


def test_report_sections_drop_the_targets():
    """Sections by title; 'Target' paragraphs and '(target <= ...)' remarks gone, numbers kept."""
    from samedge.summary import report_sections

    text = (
        "# B\n\n<!-- report -->\n\nMachine: x.\n\n## 1. Gradient vs HVP\n\n| a |\n|---|\n| 1.55 |\n\n"
        "Target: exact HVP <= 3.0x a gradient.\n\n## 3. SAM step vs GD step\n\n"
        "SAM step 10.4 ms: ratio 1.99 (target <= 2.1; the median over rounds). JAX: ratio 0.99 (target <= 1.0; median).\n"
        "ratio **0.354** (median over starts; target <= 0.15).\n"
    )
    r = report_sections(text)
    assert list(r) == ["", "Gradient vs HVP", "SAM step vs GD step"]
    assert "Machine: x." in r[""] and "1.55" in r["Gradient vs HVP"]
    assert "arget" not in "".join(r.values()), r
    assert "ratio 1.99 (the median over rounds)" in r["SAM step vs GD step"]
    assert "ratio 0.99 (median)" in r["SAM step vs GD step"]
    assert "**0.354** (median over starts)" in r["SAM step vs GD step"]


def test_table_styler_one_rounding_rule_per_quantity():
    """Ratios with 4 decimals whatever their value, other numbers with 4 significant digits,
    integers as they are; every header and label word in a no-wrap span, number cells no-wrap."""
    import pandas as pd

    from samedge.analysis import MEDIAN_H, MEDIAN_RATIO, RATIO_MAX
    from samedge.summary import table_styler

    t = pd.DataFrame(
        {
            "run": ["SAM rho=0.05", "GD"],
            "seeds": [3, 1],
            MEDIAN_H: [2486.3, 0.00087],
            MEDIAN_RATIO: [0.995, 1.0004],
            RATIO_MAX: [1.0, 1.12345],
        }
    )
    out = table_styler(t).to_html()
    for cell in (">0.9950<", ">1.0004<", ">1.0000<", ">1.1235<", ">2,486<", ">8.700e-04<", ">3<"):
        assert cell in out, cell
    assert '<span class="samedge-word">median</span> <span class="samedge-word">||H||</span>' in out
    assert '<span class="samedge-word">rho=0.05</span>' in out
    assert "white-space: nowrap" in out
    seeds = table_styler(pd.DataFrame({"run": ["GD"], "seed 0": [2.66], "seed 1": [84.9]})).to_html()
    assert ">2.6600<" in seeds and ">84.9000<" in seeds  # per_seed_ratios' columns are ratios
    # analysis.phase_table's columns: settings as given, whole counts as integers, the phase gap a ratio.
    from samedge.analysis import PAIRS, PHASE_GAP

    ph = pd.DataFrame({"rho": [0.05, 0.0], "eta": [0.1, 0.015], PAIRS: [5.0, 4.5], PHASE_GAP: [-0.01946, 0.1]})
    out = table_styler(ph).to_html()
    for cell in (">0.05<", ">0<", ">0.1<", ">0.015<", ">5<", ">4.500<", ">-0.0195<", ">0.1000<"):
        assert cell in out, cell
    edge = table_styler(pd.DataFrame({"theirs: estimate / edge": [1.007, 0.95941]})).to_html()
    assert ">1.0070<" in edge and ">0.9594<" in edge  # a quantity over an edge is a ratio
    drift = table_styler(pd.DataFrame({"rho=0.1": [1.123], "drift": [0.05229], "drift seed min": [0.1]})).to_html()
    assert ">1.1230<" in drift and ">0.0523<" in drift and ">0.1000<" in drift  # drift_table's columns
