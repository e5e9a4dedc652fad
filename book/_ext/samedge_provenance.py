"""What built each page, and the run records a reader can download.

Every HTML page gets a footer line with the commit of the repository (``-dirty`` when the work
tree had uncommitted changes), the build date (UTC), the preset the experiment chapters ran
(``$SAMEDGE_PRESET``, else ``cpu``) and the versions of torch and samedge. When the build
finishes, each run's ``record.csv`` and ``config.json`` under the results directory
(``$SAMEDGE_RESULTS_DIR``, else ``book/results``, where the chapters save their runs) are copied to
``runs/<task>/<preset>/<run>/`` of the site, where the chapters link them
(``samedge.summary.run_links``)."""

from __future__ import annotations

import datetime
import html
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict

from sphinx.application import Sphinx

RUN_FILES = ("record.csv", "config.json")


def _git(srcdir: str, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=srcdir, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def provenance(srcdir: str) -> Dict[str, str]:
    """Commit, date, preset and versions of this build."""
    import torch

    import samedge

    commit = _git(srcdir, "rev-parse", "--short", "HEAD") or "unknown"
    if _git(srcdir, "status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    return {
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "preset": os.environ.get("SAMEDGE_PRESET") or "cpu",
        "torch": torch.__version__,
        "samedge": getattr(samedge, "__version__", "unknown"),
    }


def results_dir(srcdir: str) -> Path:
    """Where the chapters saved their runs (as ``samedge.runs.results_root`` resolves it from book/)."""
    env = os.environ.get("SAMEDGE_RESULTS_DIR")
    return Path(env).expanduser() if env else Path(srcdir) / "book" / "results"


def add_footer(app: Sphinx, pagename: str, templatename: str, context: Dict[str, Any], doctree: Any) -> None:
    """Append the provenance line to the page's body."""
    if "body" not in context:
        return
    p = app.env.samedge_provenance  # type: ignore[attr-defined]
    line = (
        f"Built from commit <code>{html.escape(p['commit'])}</code> on {html.escape(p['date'])}, preset "
        f"<code>{html.escape(p['preset'])}</code>, torch {html.escape(p['torch'])}, samedge {html.escape(p['samedge'])}."
    )
    context["body"] += f'<p class="samedge-provenance">{line}</p>'


def copy_runs(app: Sphinx, exception: Exception | None) -> None:
    """Copy every run's record.csv and config.json into runs/ of the site."""
    if exception is not None or app.builder.format != "html":
        return
    root = results_dir(app.srcdir)
    for cfg in root.glob("*/*/*/config.json"):
        dest = Path(app.outdir) / "runs" / cfg.parent.relative_to(root)
        dest.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            if (cfg.parent / name).is_file():
                shutil.copy2(cfg.parent / name, dest / name)


def setup(app: Sphinx) -> Dict[str, Any]:
    """Register the footer and the copy of the run records."""

    def remember(app: Sphinx) -> None:
        app.env.samedge_provenance = provenance(app.srcdir)  # type: ignore[attr-defined]

    app.connect("builder-inited", remember)
    app.connect("html-page-context", add_footer)
    app.connect("build-finished", copy_runs)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
