"""No number typed in the chapters' prose: every digit-bearing number a reader sees in the text of
a chapter (``book/*.md``, and the Markdown cells of ``book/*.ipynb``) is glued from the records
(``{glue:text}``) or read from a committed results file, unless it is on the reviewed allow-list
below (the authors' settings, years of citations, constants of a formula).

What is not prose, and so not checked: math (``$...$``, ``$$...$$``, amsmath environments), code
(fenced blocks, code cells, inline code spans), roles (``{glue:text}`key```, ``{ref}``, ``{cite:p}``,
...), directives' option lines (``:name:``), link targets, labels ``(name)=``, HTML comments, and
words that merely contain digits (``float32``, ``CIFAR-10``, ``H100``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"

# Reviewed numbers that may be typed. Each says where it comes from; nothing measured belongs here.
ALLOWED = {
    # The authors' settings, from their released code (google-deepmind/sam_edge).
    "60000": "MNIST training set the authors use in full",
    "60,000": "the same",
    "1000": "the authors' MLP width; their CIFAR-10 subset",
    "3x1000": "the authors' MLP, 3 hidden layers of 1000",
    "0.01": "the authors' eta for the image tasks",
    "0.1": "the authors' eta for the Transformer",
    "128": "the authors' Transformer model size and batch",
    "64": "the authors' crop length",
    "6": "the authors' Transformer layers",
    "8": "the authors' Transformer heads",
    "32": "the authors' key size; CIFAR-10's 32x32 images",
    "16": "the authors' CIFAR-10 base channels",
    "2": "the 2 of 2/eta; 2 CPU cores; the CNN's 2 blocks",
    "3": "the authors' MLP depth (3 hidden layers)",
    "3x3": "the CNN's convolutions",
    "2x2": "the CNN's max-pool",
    "1e-5": "the authors' EPSILON and the 2 eps + 1e-5 denominator (code constants)",
    "1e-3": "the authors' finite-difference eps and power-iteration tolerance (code constants)",
    "0.25": "the authors' hessian_check_gap default, in hours",
    "4": "the authors' time limit for images, in hours",
    "3600": "seconds per hour (the authors' code multiplies by it)",
    "100": "the authors' power-iteration limit (iterations); the Lanczos cap lanczos_max_iter",
    "256": "the authors' pixel scale (pixels /256)",
    # Years of citations and dates of the authors' commits.
    "2021": "Cohen et al. (2021)",
    "2022": "Cohen et al. (2022)",
    "2023": "year of a citation",
    "2024": "year of a citation",
    "2026": "year of this companion (how to cite)",
    "2023-10-30": "date of the authors' commit 'Fix weight-sharing bug'",
    "2023-09-21": "date of the paper's arXiv v1",
    # Constants of formulas and conventions.
    "1": "a ratio of 1 means at the edge",
    "0": "rho = 0 is GD; seed 0; step 0",
    "5": "C/2 = 5, the factor between the loss conventions (10 classes)",
    "10": "the 10 classes",
    "0.1.0": "the package's version in the citation",
}

# Chapters that other issues are rewriting: checked all the same (the list is for the report).
BEING_EDITED = {"grid.ipynb", "your_loop.ipynb"}

# A token of prose that holds a digit, and what makes it a number rather than a name (float32,
# CIFAR-10, H100, 2/eta): digits with thousands commas, decimals, an exponent, products (3x1000) and
# a unit (63%, 1.2M, 5x, 10 ms is two tokens).
_TOKEN = re.compile(r"[\w.,%/+\-~≈×]*\d[\w.,%/+\-~≈×]*")
_IS_NUMBER = re.compile(
    r"[-+~≈]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?(?:[x×]\d[\d,]*(?:\.\d+)?)*(?:%|[kMG]|x|×|ms|s|h|px)?"
)
_UNIT = re.compile(r"(?:%|[kMG]|x|×|ms|s|h|px)$")


def _chapters() -> List[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    out = []
    for f in files:
        for ext in (".md", ".ipynb"):
            if (ROOT / (f + ext)).is_file():
                out.append(ROOT / (f + ext))
    return out


def _markdown_of(path: Path) -> List[Tuple[str, str]]:
    """(where, text) of each prose unit: the Markdown of a .md page, or each Markdown cell."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return [
            (f"{path.name} cell {i}", "".join(c["source"])) for i, c in enumerate(cells) if c["cell_type"] == "markdown"
        ]
    return [(path.name, path.read_text())]


def prose(text: str) -> str:
    """``text`` with everything that is not prose a reader reads removed (see the module docstring)."""
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)  # front matter
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    # fenced blocks: code, code cells, and directives whose body is not prose (include, figures' options)
    text = re.sub(r"^(`{3,}|~{3,})[^\n]*\n.*?^\1[ \t]*$", "", text, flags=re.S | re.M)
    text = re.sub(r"\$\$.*?\$\$", "", text, flags=re.S)  # display math
    text = re.sub(r"\\begin\{(\w+\*?)\}.*?\\end\{\1\}", "", text, flags=re.S)  # amsmath environments
    text = re.sub(r"(?<!\\)\$[^$\n]+?(?<!\\)\$", "", text)  # inline math
    text = re.sub(r"\{[\w:-]+\}`[^`]*`", "", text)  # roles, glue included
    text = re.sub(r"``.*?``|`[^`\n]*`", "", text)  # code spans
    text = re.sub(r"^\s*:[\w-]+:.*$", "", text, flags=re.M)  # directive options
    text = re.sub(r"^:::.*$", "", text, flags=re.M)  # colon fences (their body is prose)
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    text = re.sub(r"^\([\w-]+\)=\s*$", "", text, flags=re.M)  # labels
    text = re.sub(r"https?://\S+", "", text)
    text = re.sub(r"^\s*\d+\.\s", "", text, flags=re.M)  # ordered-list markers
    return text


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def numbers_in(text: str) -> List[str]:
    """The digit-bearing numbers of ``text``'s prose, as written (thousands commas and units kept).

    A hyphenated token is split: "1.6M-parameter" holds 1.6M and "2-3" two numbers, while the
    number of a name such as "CIFAR-10" (after a word) is not one; a date stays whole."""
    out = []
    for m in _TOKEN.finditer(prose(text)):
        tok = m.group(0).strip(".,-/~≈+")
        if _DATE.fullmatch(tok):
            out.append(tok)
            continue
        after_word = False
        for part in re.split(r"(?<=\w)-(?=\w)", tok):
            number = bool(part) and bool(_IS_NUMBER.fullmatch(part))
            if number and not after_word:
                out.append(part)
            after_word = not number
    return out


def allowed(number: str) -> bool:
    """On the allow-list as written, or without its unit or sign (5x: the factor 5)."""
    if number in ALLOWED:
        return True
    if number.endswith("%"):  # a percentage is a measurement, whatever its digits
        return False
    bare = _UNIT.sub("", number).lstrip("-+~≈")
    return bare in ALLOWED or bare.replace(",", "") in ALLOWED


def offending() -> Dict[str, List[str]]:
    """Per prose unit, the numbers not on the allow-list."""
    found: Dict[str, List[str]] = {}
    for path in _chapters():
        for where, text in _markdown_of(path):
            bad = [n for n in numbers_in(text) if not allowed(n)]
            if bad:
                found[where] = bad
    return found


def test_the_filter_keeps_prose_and_drops_the_rest():
    """Numbers in math, code, roles, options, links and labels are not prose; typed ones are."""
    text = (
        "---\nfile_format: mystnb\n---\n(sec-1)=\n# Title\n"
        "Ratio 1.049 at $\\rho = 0.05$ and $$x = 3.5$$ with `steps=600` and {glue:text}`mnist-2` and "
        "{cite:p}`cohen2021`, see [the 7 pages](https://x.org/v8) or {ref}`sec-1`; 16.6 HVPs, 63% of it, "
        "and CIFAR-10 on float32 at 3x1000.\n"
        "```{glue:figure} fig\n:name: fig-9\n\nCaption 0.83 here.\n```\n"
        ":::{note}\n:class: tip\nA box with 272.5 in it.\n:::\n"
        "```python\nx = 12345\n```\n"
    )
    assert numbers_in(text) == ["1.049", "7", "16.6", "63%", "3x1000", "272.5"]  # link text is prose
    assert numbers_in("about 1.2M parameters, 5x larger, 2.") == ["1.2M", "5x", "2"]
    assert numbers_in("a 1.6M-parameter model, 2-3 gradients, CIFAR-10, 2023-10-30") == ["1.6M", "2", "3", "2023-10-30"]
    assert allowed("5x") and allowed("60,000") and not allowed("1.2M") and not allowed("7%")


@pytest.mark.parametrize("path", _chapters(), ids=lambda p: p.name)
def test_no_typed_number_in_prose(path):
    """Every digit-bearing number in the chapter's prose is glued, read from a file, or allowed."""
    bad = {}
    for where, text in _markdown_of(path):
        nums = [n for n in numbers_in(text) if not allowed(n)]
        if nums:
            bad[where] = nums
    assert not bad, (
        f"numbers typed in the prose of {path.name}"
        + (" (a chapter another issue is rewriting)" if path.name in BEING_EDITED else "")
        + f": {bad}; glue them from the records (myst_nb.glue) or read them from a committed results file"
    )
