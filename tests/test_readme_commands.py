"""Every shell command the README and the book show runs as written (at the smoke preset), or,
where it needs a GPU or the paper's sizes, is checked with papermill's --prepare-only or the
program's own argument parser. A command that no rule below covers fails the test, so a new
command in the docs cannot go untested."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("SAMEDGE_DATA_DIR")
needs_data = pytest.mark.skipif(
    not DATA or not (Path(DATA) / "MNIST" / "raw").is_dir(),
    reason="set SAMEDGE_DATA_DIR to a directory holding MNIST/raw",
)
FENCE = re.compile(r"```(?:bash|sh|console)\n(.*?)```", re.S)


def _doc_texts() -> dict:
    """Markdown text of the README, the book's .md pages and the notebooks' markdown cells."""
    texts = {"README.md": (ROOT / "README.md").read_text()}
    for md in sorted((ROOT / "book").glob("*.md")):
        texts[f"book/{md.name}"] = md.read_text()
    for nb in sorted((ROOT / "book").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        texts[f"book/{nb.name}"] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return texts


def documented_commands() -> list:
    """(source, command) for every command in a bash block; `a && b` gives two commands."""
    out = []
    for source, text in _doc_texts().items():
        for block in FENCE.findall(text):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                if line and not line.startswith("#"):
                    out += [(source, part.strip()) for part in line.split("&&")]
    return out


COMMANDS = documented_commands()


def _split(command: str) -> tuple:
    """(environment assignments, argv) of a shell command line."""
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    return env, words


def _run(argv: list, tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    full = {**os.environ, "SAMEDGE_PRESET": "smoke", "SAMEDGE_RESULTS_DIR": str(tmp_path / "results"), **env}
    return subprocess.run(argv, cwd=ROOT, env=full, capture_output=True, text=True, timeout=600)


def _needs_gpu_or_paper(words: list) -> bool:
    cuda = any(w.startswith("cuda") for w in words) and not torch.cuda.is_available()
    paper = any(w.endswith("/paper.yaml") for w in words) or any(
        a == "--preset" and b == "paper" for a, b in zip(words, words[1:])
    )
    return cuda or paper


def _retarget(words: list, tmp_path: Path) -> list:
    """Output paths of the command moved into tmp_path (the docs write to out.ipynb / out/...)."""
    out = []
    for w in words:
        out.append(
            str(tmp_path / w) if (w.endswith(".ipynb") and not w.startswith("book/")) or w.startswith("out/") else w
        )
    return out


def test_the_docs_show_commands():
    """The extraction finds the README's commands (a broken regex would make this test vacuous)."""
    progs = {_split(c)[1][0] for _, c in COMMANDS}
    assert {"pip", "jupyter-book", "pytest", "papermill", "python"} <= progs
    assert sum(1 for _, c in COMMANDS if c.startswith("papermill")) >= 4


@needs_data
@pytest.mark.parametrize("source,command", COMMANDS, ids=[f"{s}: {c[:60]}" for s, c in COMMANDS])
def test_documented_command_runs(source, command, tmp_path):
    """Run (or check) one documented command; which rule applies is decided by its program."""
    env, words = _split(command)
    env = {k: (DATA if v == "..." else v) for k, v in env.items()}
    prog = words[0]
    ci = (ROOT / ".ci" / "run").read_text()
    if prog in ("pip", "jupyter-book") or words == ["pytest"]:
        # The CI script runs these itself on a clean clone: check that it does.
        key = {
            "pip": "pip install -q -r requirements.txt",
            "jupyter-book": "jupyter-book build .",
            "pytest": "\npytest\n",
        }[prog]
        assert key in ci, f"{source}: {command!r} is not what .ci/run runs"
        return
    if prog == "papermill":
        words = _retarget(words, tmp_path)
        if _needs_gpu_or_paper(words):
            words.append("--prepare-only")
        for flag, value in zip(words, words[1:]):
            if flag == "-f":
                assert (ROOT / value).is_file(), f"{source}: {value} does not exist"
        r = _run([sys.executable, "-m", "papermill", *words[1:], "-k", "python3"], tmp_path, env)
    elif words[:3] == ["python", "-m", "samedge.reproduce"]:
        words = _retarget(words, tmp_path)
        if _needs_gpu_or_paper(words):
            words.append("--prepare-only")
        r = _run([sys.executable, *words[1:]], tmp_path, env)
    elif prog == "python" and words[1].startswith("benchmarks/"):
        # Minutes of timing: check that the script accepts exactly these flags.
        r = _run([sys.executable, words[1], "--help"], tmp_path, env)
        flags = [w for w in words[2:] if w.startswith("--")]
        assert all(f in r.stdout for f in flags), f"{source}: {command!r} uses flags the script does not have"
    elif prog == "samedge":
        exe = str(Path(sys.executable).with_name("samedge"))
        words = [
            w.replace("results/", str(tmp_path / "results") + "/", 1) if w.startswith("results/") else w for w in words
        ]
        if words[1] == "summarize":  # it needs finished runs to summarize: make one first
            assert _run([exe, "run", "mnist", "--preset", "smoke", "-p", "rho=0"], tmp_path, env).returncode == 0
        if words[1] == "sweep" and "--executor" in words and "slurm" in words:
            words.append("--dry-run")
        r = _run([exe, *words[1:]], tmp_path, env)
    elif words[:2] == ["git", "clone"]:
        # No network here: the command must name a public repository to clone into a named directory.
        assert len(words) == 4 and words[2].startswith("https://github.com/"), f"{source}: {command!r}"
        return
    else:
        pytest.fail(f"{source}: no rule for the documented command {command!r}: add one to this test")
    assert r.returncode == 0, f"{source}: {command!r} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
