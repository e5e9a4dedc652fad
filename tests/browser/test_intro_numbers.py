"""The intro page's summary table against the run records it was computed from.

Run after the book build (as .ci/run does)::

    SAMEDGE_BROWSER_TEST=1 pytest tests/browser/test_intro_numbers.py

It reads the table ``#samedge-summary`` out of ``_build/html/book/intro.html`` and recomputes each
median of ||H||/edge over the second half of training directly from the saved ``record.csv``
files under ``book/results/<task>/<preset>/`` (the directory the book's notebooks write to),
with plain pandas, not through the code that made the table.
"""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from samedge.analysis import MEDIAN_RATIO, RATIO_MAX, RATIO_MIN

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(os.environ.get("SAMEDGE_BOOK_HTML", ROOT / "_build" / "html"))
RESULTS = Path(os.environ.get("SAMEDGE_BOOK_RESULTS", ROOT / "book" / "results"))
PRESET = os.environ.get("SAMEDGE_PRESET", "cpu")


class TableParser(HTMLParser):
    """Rows of cell texts of the table with id ``samedge-summary``."""

    def __init__(self):
        super().__init__()
        self.rows, self._in, self._cell, self._depth = [], False, None, 0

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == "samedge-summary":
            self._in = True
        elif self._in and tag == "tr":
            self.rows.append([])
        elif self._in and tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if self._in and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell.strip())
            self._cell = None
        elif tag == "table" and self._in:
            self._in = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def page_table() -> pd.DataFrame:
    html = (SITE / "book" / "intro.html").read_text()
    p = TableParser()
    p.feed(html)
    assert p.rows, "no table with id samedge-summary on the intro page"
    header, *body = [r for r in p.rows if r]
    return pd.DataFrame(body, columns=header)


def recomputed(task: str, rho: float) -> list:
    """Each seed's median ratio over the second half for this rho, straight from the run files."""
    medians = []
    for meta in (RESULTS / task / PRESET).glob("*/config.json"):
        d = meta.parent
        cfg = json.loads(meta.read_text())["config"]
        if cfg["rho"] == rho and (d / "summary.json").exists():
            df = pd.read_csv(d / "record.csv")
            medians.append(float(df[df["step"] >= cfg["steps"] / 2]["ratio"].median()))
    assert medians, f"no finished {task} run with rho={rho} under {RESULTS / task / PRESET}"
    return medians


@pytest.mark.skipif(not (SITE / "book" / "intro.html").exists(), reason="build the book first")
def test_intro_numbers_match_records():
    """Every (task, rho) row of the intro table shows the mean, min and max over seeds of the
    medians its runs' records give, and the number of seeds."""
    table = page_table()
    assert {"mnist", "cifar10", "shakespeare"} <= set(table["task"])
    for _, row in table.iterrows():
        rho = 0.0 if row["run"] == "GD" else float(row["run"].split("rho=")[1])
        want = recomputed(row["task"], rho)
        assert int(row["seeds"]) == len(want), row.to_dict()
        assert float(row[MEDIAN_RATIO]) == pytest.approx(sum(want) / len(want), abs=6e-5), row.to_dict()
        assert float(row[RATIO_MIN]) == pytest.approx(min(want), abs=6e-5), row.to_dict()
        assert float(row[RATIO_MAX]) == pytest.approx(max(want), abs=6e-5), row.to_dict()
