"""An author-year bibliography for sphinxcontrib-bibtex: entries labelled "Long and Bartlett, 2024"
to match the author-year citations in the text (``bibtex_reference_style = "author_year"``),
instead of the default style's "[LB24]"."""

from __future__ import annotations

from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from sphinx.application import Sphinx

STYLE = "samedge_author_year"


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
    """Register the label and formatting styles with pybtex (``bibtex_default_style`` selects them)."""
    register_plugin("pybtex.style.labels", STYLE, AuthorYearLabels)
    register_plugin("pybtex.style.formatting", STYLE, AuthorYearStyle)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
