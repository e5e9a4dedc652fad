"""Serve MathJax 3 from the built site, so the book's math renders offline.

The MathJax files come from the PyPI package ``django-static-mathjax`` (its importable package
``mathjax`` ships the npm package ``mathjax`` at ``static/mathjax``; Django is not needed or
imported). When the build finishes, the ``es5`` component files the book loads are copied into
``_static/mathjax`` of the output, and ``mathjax_path`` points there. Without the package the
build warns (an error under ``-W``) and the pages would load MathJax from its CDN."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.fileutil import copy_asset

logger = logging.getLogger(__name__)

ENTRY = "tex-mml-chtml.js"  # the component Sphinx's default CDN URL names
# Whole-page bundles of other input/output combinations: never loaded by the book, 14 MB.
UNUSED = {
    "tex-svg.js",
    "tex-svg-full.js",
    "tex-mml-svg.js",
    "mml-svg.js",
    "mml-chtml.js",
    "tex-chtml-full-speech.js",
    "tex-chtml-full.js",
    "node-main.js",
}


def mathjax_es5() -> Optional[Path]:
    """The ``es5`` directory of the installed MathJax 3 package, or None when it is not installed."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        es5 = Path(location) / "static" / "mathjax" / "es5"
        if (es5 / ENTRY).is_file():
            return es5
    return None


def _configure(app: Sphinx, config) -> None:
    if mathjax_es5() is None:
        logger.warning(
            "MathJax 3 is not installed (pip install django-static-mathjax): the pages load it from a CDN "
            "and show raw TeX offline"
        )
        return
    config.mathjax_path = f"mathjax/{ENTRY}"


def _copy(app: Sphinx, exc: Optional[Exception]) -> None:
    es5 = mathjax_es5()
    if exc is not None or es5 is None or app.builder.format != "html":
        return
    copy_asset(
        str(es5),
        str(Path(app.outdir) / "_static" / "mathjax"),
        excluded=lambda path: Path(path).name in UNUSED or path.endswith(".map"),
    )


def setup(app: Sphinx) -> dict:
    """Register the configuration hook and the copy at the end of the build."""
    app.connect("config-inited", _configure)
    app.connect("build-finished", _copy)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
