"""Presets: files load, explicit values win, the environment variable selects, bad keys fail."""

import pytest
import yaml

from samedge.config import ConfigError
from samedge.presets import (
    COMMON,
    PRESETS,
    load_preset,
    parse_assignment,
    parse_value,
    preset_path,
    resolve_params,
    run_configs,
)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_make_valid_configs(name):
    """Every MNIST preset resolves to valid run configurations, one per seed and rho, seed by
    seed, GD first."""
    p = resolve_params("mnist", name, device="cpu")
    cfgs = run_configs("mnist", p)
    assert [(c.seed, c.rho) for c in cfgs] == [(s, r) for s in p["seeds"] for r in p["rhos"]] and cfgs[0].rho == 0
    assert p["preset"] == name


@pytest.mark.parametrize("task", ["mnist", "cifar10", "shakespeare"])
def test_cpu_presets_have_three_seeds(task):
    """The book's runs repeat over at least 3 seeds (the chapters report the spread)."""
    seeds = resolve_params(task, "cpu", device="cpu")["seeds"]
    assert len(seeds) >= 3 and len(set(seeds)) == len(seeds)


def test_seed_and_seeds():
    """An explicit seed replaces the preset's seeds; seed and seeds that disagree, an empty list,
    a negative or repeated seed are errors naming the parameter."""
    assert resolve_params("mnist", "cpu", seed=5, device="cpu")["seeds"] == [5]
    assert resolve_params("mnist", "cpu", seeds="[3, 4]", device="cpu")["seeds"] == [3, 4]  # papermill text
    assert resolve_params("mnist", "cpu", seed=3, seeds=[3], device="cpu")["seeds"] == [3]
    for bad, match in [
        (dict(seed=1, seeds=[2]), "disagree"),
        (dict(seeds=[]), "seeds must be a non-empty list"),
        (dict(seeds=[0, -1]), "non-negative"),
        (dict(seeds=[1, 1]), "twice"),
        (dict(seeds=[0.5]), "non-negative integers"),
    ]:
        with pytest.raises(ConfigError, match=match):
            resolve_params("mnist", "cpu", device="cpu", **bad)


@pytest.mark.parametrize("seed", [0, 1])
def test_explicit_seed_wins_over_the_preset_files_seeds(seed):
    """papermill -f cpu.yaml -p seed S passes every value of the file and seed=S: the file's own
    seeds count as the preset's, so the explicit seed wins (one seed, S)."""
    from_file = {k: v for k, v in load_preset("mnist", "cpu").items() if k != "preset"}
    assert len(from_file["seeds"]) > 1
    p = resolve_params("mnist", "cpu", **from_file, seed=seed, device="cpu")
    assert p["seeds"] == [seed] and p["seed"] == seed
    assert [c.seed for c in run_configs("mnist", p)] == [seed] * len(from_file["rhos"])
    with pytest.raises(ConfigError, match="disagree"):  # seeds other than the file's still must agree
        resolve_params("mnist", "cpu", **{**from_file, "seeds": [5, 6]}, seed=seed, device="cpu")


def test_run_config_fields_are_preset_parameters():
    """COMMON follows RunConfig: kernels, hvp_method and lanczos_max_iter are parameters; the cpu
    preset of mnist chooses oneDNN, the others PyTorch's default kernels."""
    assert {"kernels", "hvp_method", "lanczos_max_iter", "lanczos_tol"} <= set(COMMON)
    assert {c.kernels for c in run_configs("mnist", resolve_params("mnist", "cpu", device="cpu"))} == {"onednn"}
    assert resolve_params("shakespeare", "cpu", device="cpu")["kernels"] == "default"
    assert resolve_params("mnist", "smoke", device="cpu")["kernels"] == "default"
    assert resolve_params("cifar10", "cpu", device="cpu")["kernels"] == "default"
    p = resolve_params("mnist", "cpu", kernels="default", lanczos_max_iter=50, device="cpu")
    assert {(c.kernels, c.lanczos_max_iter) for c in run_configs("mnist", p)} == {("default", 50)}
    with pytest.raises(ConfigError, match=r"kernels must be one of \['default', 'onednn'\]"):
        run_configs("mnist", resolve_params("mnist", "cpu", kernels="mkl", device="cpu"))


def test_parse_value_and_assignment():
    """Parameter text is YAML with numbers such as 1e-3 as floats; NAME=VALUE splits at the first '='."""
    assert parse_value("1e-3") == 1e-3 and isinstance(parse_value("1e-3"), float)
    assert parse_value("[0.0, 1e-2]") == [0.0, 0.01] and parse_value("true") is True and parse_value("3") == 3
    assert parse_value("onednn") == "onednn"
    assert parse_assignment(" lanczos_tol =1e-4") == ("lanczos_tol", 1e-4)
    assert parse_assignment("note=a=b") == ("note", "a=b")
    for bad in ("eta", "=0.1"):
        with pytest.raises(ConfigError, match="NAME=VALUE"):
            parse_assignment(bad)
    with pytest.raises(ConfigError, match="YAML"):
        parse_value("[0.1,")


def test_cpu_has_three_sam_radii_and_paper_is_authors_setting():
    """cpu has at least three rho > 0; paper is 60000 examples, 3x1000, eta = 0.01."""
    assert sum(r > 0 for r in load_preset("mnist", "cpu")["rhos"]) >= 3
    p = load_preset("mnist", "paper")
    assert (p["n_train"], p["width"], p["depth"], p["eta"]) == (60000, 1000, 3, 0.01)


def test_override_and_env(monkeypatch):
    """Explicit values beat the preset; SAMEDGE_PRESET picks the preset when none is given."""
    monkeypatch.setenv("SAMEDGE_PRESET", "smoke")
    p = resolve_params("mnist", None, width=7, eta=None)
    assert p["preset"] == "smoke" and p["width"] == 7 and p["eta"] == load_preset("mnist", "smoke")["eta"]
    monkeypatch.delenv("SAMEDGE_PRESET")
    assert resolve_params("mnist")["preset"] == "cpu"


def test_yaml_is_papermill_parameters():
    """The YAML files hold plain notebook parameters (usable with papermill -f)."""
    d = yaml.safe_load(preset_path("mnist", "cpu").read_text())
    assert d["preset"] == "cpu" and isinstance(d["rhos"], list)


def test_errors():
    """Unknown preset, parameter, or device cuda without a GPU: clear errors."""
    with pytest.raises(ConfigError, match="preset must be one of"):
        resolve_params("mnist", "huge")
    with pytest.raises(ConfigError, match="unknown parameter"):
        resolve_params("mnist", "smoke", widht=3)
    with pytest.raises(ConfigError, match="rhos must be a non-empty list"):
        resolve_params("mnist", "smoke", rhos=[])
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_params("mnist", "smoke", device="cuda")
