"""``python -m samedge.reproduce``: discovery, a real run of the MNIST notebook at the smoke
preset, and the failure path (a bad parameter: non-zero exit naming the notebook)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from samedge.reproduce import declared_parameters, discover, find_book_dir

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"


def reproduce(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "samedge.reproduce", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_discovers_the_notebooks_with_a_parameters_cell(tmp_path):
    """Every book notebook with a 'parameters' cell is found, and only those."""
    found = discover(BOOK)
    assert "mnist" in found and "quadratic" in found
    assert all(p.suffix == ".ipynb" and p.parent == BOOK for p in found.values())
    assert {"preset", "device", "results_dir"} <= set(declared_parameters(found["mnist"]))
    # A notebook without a parameters cell is not an experiment notebook.
    (tmp_path / "a.ipynb").write_text((BOOK / "mnist.ipynb").read_text())
    nb = json.loads((BOOK / "mnist.ipynb").read_text())
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("tags", None)
    (tmp_path / "b.ipynb").write_text(json.dumps(nb))
    assert list(discover(tmp_path)) == ["a"]
    assert find_book_dir(tmp_path) == tmp_path


def test_unknown_notebook_and_parameter_are_usage_errors(tmp_path):
    r = reproduce("--out", str(tmp_path), "--notebooks", "nosuch")
    assert r.returncode == 2 and "nosuch" in r.stderr and "mnist" in r.stderr
    r = reproduce("--out", str(tmp_path), "--notebooks", "mnist", "-p", "nosuchparam=1")
    assert r.returncode == 2 and "nosuchparam" in r.stderr


def test_mnist_at_smoke(tmp_path):
    """Runs the MNIST notebook at the smoke preset: exit 0, one 'ok' progress line with the
    name and seconds, the executed notebook, summary.json and the run records under results/."""
    out = tmp_path / "out"
    r = reproduce("--preset", "smoke", "--device", "cpu", "--out", str(out), "--notebooks", "mnist")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("[1/1]")]
    assert len(lines) == 1 and "mnist" in lines[0] and lines[0].rstrip().endswith("ok") and " s " in lines[0]
    assert (out / "mnist.ipynb").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == [] and summary["notebooks"][0]["parameters"]["preset"] == "smoke"
    runs = list((out / "results" / "mnist" / "smoke").glob("*/summary.json"))
    assert len(runs) >= 2  # smoke runs GD and one SAM radius
    executed = json.loads((out / "mnist.ipynb").read_text())
    assert any("injected-parameters" in (c.get("metadata", {}).get("tags") or []) for c in executed["cells"])

    # How a book at a long preset is built (README): the notebook executed later with
    # SAMEDGE_PRESET and SAMEDGE_RESULTS_DIR pointing at these runs reloads them, runs nothing.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "results").rglob("record.csv")}
    env = {**os.environ, "SAMEDGE_PRESET": "smoke", "SAMEDGE_RESULTS_DIR": str(out / "results")}
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            "mnist.ipynb",
            str(tmp_path / "again.ipynb"),
            "-k",
            "python3",
            "-p",
            "device",
            "cpu",
        ],
        cwd=BOOK,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (out / "results").rglob("record.csv")} == stamps
    assert not any((out / "results").rglob("checkpoint.pt"))


def test_a_failing_notebook_exits_non_zero_and_is_named(tmp_path):
    """A bad parameter (steps=0) makes the MNIST notebook raise: exit status 1, a FAILED line
    naming the notebook and the error, and summary.json listing it."""
    out = tmp_path / "out"
    r = reproduce("--preset", "smoke", "--device", "cpu", "--out", str(out), "--notebooks", "mnist", "-p", "steps=0")
    assert r.returncode == 1, r.stdout + r.stderr
    failed = [ln for ln in r.stdout.splitlines() if "FAILED" in ln]
    assert len(failed) == 1 and "mnist" in failed[0] and "steps" in failed[0], r.stdout
    assert "failed mnist" in r.stdout.splitlines()[-1]
    assert json.loads((out / "summary.json").read_text())["failed"] == ["mnist"]
