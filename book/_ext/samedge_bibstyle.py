"""Author-year citations and bibliography for sphinxcontrib-bibtex.

In the text, ``{cite:p}`` gives "(Long and Bartlett, 2024)" and ``{cite:t}`` "Long and Bartlett
(2024)" (the reference style ``author_year_round``: sphinxcontrib-bibtex's ``author_year`` with
round brackets); the bibliography labels its entries "Long and Bartlett, 2024" to match (the
formatting style ``samedge_author_year``), instead of the default style's "[LB24]"."""

from __future__ import annotations

from dataclasses import dataclass, field

import sphinxcontrib.bibtex.plugin
from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from sphinx.application import Sphinx
from sphinxcontrib.bibtex.style.referencing import BracketStyle
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle

STYLE = "samedge_author_year"
REFERENCE_STYLE = "author_year_round"


def _round() -> BracketStyle:
    return BracketStyle(left="(", right=")")


@dataclass
class RoundAuthorYearReferenceStyle(AuthorYearReferenceStyle):
    """sphinxcontrib-bibtex's author-year citations in round brackets."""

    bracket_parenthetical: BracketStyle = field(default_factory=_round)
    bracket_textual: BracketStyle = field(default_factory=_round)
    bracket_author: BracketStyle = field(default_factory=_round)
    bracket_label: BracketStyle = field(default_factory=_round)
    bracket_year: BracketStyle = field(default_factory=_round)


class AuthorYearLabels(BaseLabelStyle):
    """Labels "Last, year", "Last and Last, year" or "Last et al., year"."""

    def format_labels(self, sorted_entries):
        for entry in sorted_entries:
            people = entry.persons.get("author") or entry.persons.get("editor") or []
            last = [" ".join(p.last_names) for p in people]
            if not last:
                names = entry.fields.get("key", entry.key)
            elif len(last) == 1:
                names = last[0]
            elif len(last) == 2:
                names = f"{last[0]} and {last[1]}"
            else:
                names = f"{last[0]} et al."
            yield f"{names}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearStyle(UnsrtStyle):
    """unsrt entries, sorted by author and year, with author-year labels."""

    default_label_style = STYLE
    default_sorting_style = "author_year_title"


def setup(app: Sphinx) -> dict:
    """Register the styles (selected by ``bibtex_default_style`` and ``bibtex_reference_style``)."""
    register_plugin("pybtex.style.labels", STYLE, AuthorYearLabels)
    register_plugin("pybtex.style.formatting", STYLE, AuthorYearStyle)
    sphinxcontrib.bibtex.plugin.register_plugin(
        "sphinxcontrib.bibtex.style.referencing", REFERENCE_STYLE, RoundAuthorYearReferenceStyle
    )
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
