"""The built book in a real browser: every page of ``_build/html`` opened in headless Chromium.

Run after ``jupyter-book build .`` (CI builds at ``SAMEDGE_PRESET=smoke``)::

    SAMEDGE_BROWSER_TEST=1 pytest tests/browser

For every page: it loads with status 200; every ``<img>`` has loaded (``naturalWidth > 0``);
every math element was typeset by MathJax (an ``mjx-container`` inside each ``.math``, no
``mjx-merror``, no undefined-macro text, no raw ``$$`` left outside code), by the MathJax copy
the site serves itself (``_static/mathjax``, not a CDN); no JavaScript console error or uncaught
exception; the experiment pages show their results table and at least one figure, the quadratic
chapter its figures; the derivation page has typeset math. What a reader sees is checked too:
no table, code block, display equation or figure wider than the content column (nor scrolling
inside it), no equation running under its number, every figure shown at >= 80% of its natural
width or >= 600 px and inside a ``<figure>`` with a numbered caption, no definition list
left unparsed ("Term" + newline + ": text" in a paragraph), no raw TeX (a ``$`` or a backslash
command) in the text outside typeset math and code, none of the project's internal words
(``INTERNAL_WORDS``), no table header or number broken inside a word (each word's
``Range.getClientRects()`` on one line), a provenance footer on every page, and on every experiment
page links to its runs' ``record.csv`` and ``config.json`` that the site serves. A full-page screenshot of each page
and ``report.json`` go to ``_build/browser-artifacts/``.

The site is served on 127.0.0.1 from a thread, and every request that does not go to it is
aborted and counted: the pages must need none. A site built without the book's MathJax package
loads MathJax from its CDN; for such a build, requests for that URL can be answered from a local
copy of the npm package ``mathjax@3`` (``SAMEDGE_MATHJAX_DIR``), and every page is reported as
loading MathJax from the network.

``test_the_checks_catch_breakage`` shows the checks can fail: on a temporary copy of the site
with an image file deleted, an equation broken, MathJax withheld, and on the quadratic chapter a
figure shrunk, a caption removed, a wide table, a long equation, an unparsed definition list, raw
TeX, an internal phrase and a table whose header and number break inside a word injected, they
report each problem.

Environment: ``SAMEDGE_BOOK_HTML`` (default ``_build/html``), ``SAMEDGE_BROWSER_ARTIFACTS``
(default ``_build/browser-artifacts``), ``SAMEDGE_CHROMIUM`` (default ``/usr/bin/chromium``).
Playwright drives that Chromium; ``playwright install`` is never needed.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional
from urllib.parse import urljoin, urlparse
from urllib.request import urlopen

import pytest
from playwright.sync_api import BrowserContext, Route, sync_playwright

from samedge.reproduce import declared_parameters, discover

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(os.environ.get("SAMEDGE_BOOK_HTML", ROOT / "_build" / "html"))
ARTIFACTS = Path(os.environ.get("SAMEDGE_BROWSER_ARTIFACTS", ROOT / "_build" / "browser-artifacts"))
CHROMIUM = os.environ.get("SAMEDGE_CHROMIUM", "/usr/bin/chromium")
MATHJAX_CDN = "https://cdn.jsdelivr.net/npm/mathjax@3/"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCAL_MATHJAX = "/_static/mathjax/"  # where book/_ext/samedge_mathjax.py puts MathJax in the site
MIN_FIGURE_PX = 600  # a figure shown narrower than this must be shown at >= 80% of its natural width
MATH_PAGES = {"book/derivation.html"}  # must contain typeset math
FIGURE_PAGES = {"book/quadratic.html"}  # must contain figures (besides the experiment pages)
RESULTS_HEADER = "median ratio"  # a column of samedge.analysis.ratio_table
# Words of the project's own process that a reader must not meet (lower case).
INTERNAL_WORDS = (
    "the issue's target",
    "issue's target",
    "issue tracker",
    "first version of the book",
    "column eval_ratio",
    "target was",
    "target <=",
)
PROVENANCE = ("commit", "preset", "torch")  # what the footer of every page says
SPHINX_PAGES = {"genindex.html", "search.html"}  # Sphinx's own pages: no footer


def mathjax_dir() -> Optional[Path]:
    """A local copy of the npm package mathjax@3, to answer CDN requests of a site built without the
    book's MathJax package (None: there is none, and such requests are blocked like any other)."""
    cache = Path(os.environ.get("SAMEDGE_CI_CACHE", Path.home() / ".cache" / "samedge-ci"))
    candidates = [os.environ.get("SAMEDGE_MATHJAX_DIR"), cache / "npm" / "node_modules" / "mathjax"]
    for c in candidates:
        if c and (Path(c) / "es5" / "tex-mml-chtml.js").is_file():
            return Path(c)
    return None


def experiment_pages() -> set:
    """Pages built from experiment notebooks: those whose parameters include ``preset``."""
    return {
        f"book/{name}.html" for name, path in discover(ROOT / "book").items() if "preset" in declared_parameters(path)
    }


def run_pages() -> set:
    """Pages of chapters that run their experiment with ``run_experiment``: they link its run records."""
    return {
        f"book/{name}.html" for name, path in discover(ROOT / "book").items() if "run_experiment(" in path.read_text()
    }


def site_pages(site: Path) -> List[str]:
    """Every HTML page of the built site, relative to it (not the theme's static files)."""
    skip = ("_static/", "_sources/", "_images/", "_downloads/")
    return sorted(
        str(p.relative_to(site)) for p in site.rglob("*.html") if not str(p.relative_to(site)).startswith(skip)
    )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest's output readable
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A browser that cancels a request (a navigation away) resets its connection: not an error."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on a free port of 127.0.0.1 from a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def chromium() -> Iterator[BrowserContext]:
    """Headless Chromium (the system's, not a Playwright download) with a fresh profile."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set SAMEDGE_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="samedge-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            service_workers="block",
        )
        try:
            yield context
        finally:
            context.close()


@dataclass
class PageReport:
    page: str
    status: Optional[int] = None
    images: int = 0
    math_elements: int = 0
    typeset: int = 0
    tables: int = 0
    blocked: List[str] = field(default_factory=list)
    console_errors: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    screenshot: Optional[str] = None
    column_px: Optional[float] = None


# Runs in the page after MathJax has finished: what the checks need, in one round trip.
INSPECT = """() => {
  const imgs = Array.from(document.images).map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}));
  const math = Array.from(document.querySelectorAll('.math'));
  const untypeset = math.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.trim().slice(0, 80));
  const errors = Array.from(document.querySelectorAll('mjx-merror, [data-mjx-error]'))
      .map(e => e.getAttribute('data-mjx-error') || e.textContent.trim().slice(0, 80));
  const undefinedMacros = Array.from(document.querySelectorAll('mjx-container [style*="color: red"]'))
      .map(e => e.textContent.trim().slice(0, 80));
  const main = document.querySelector('main') || document.body;
  const clone = main.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, mjx-container, .math').forEach(e => e.remove());
  const tables = Array.from(document.querySelectorAll('main table'));
  const headers = tables.map(t => Array.from(t.querySelectorAll('th')).map(th => th.textContent.trim()).join(' | '));
  // What a reader sees, measured against the content column (its padding box less the padding).
  const col = document.querySelector('.bd-article') || main;
  const cs = getComputedStyle(col), cr = col.getBoundingClientRect();
  const colLeft = cr.left + parseFloat(cs.paddingLeft), colRight = cr.right - parseFloat(cs.paddingRight);
  const name = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + ' "' +
      (e.getAttribute('src') || e.textContent || '').trim().replace(/\\s+/g, ' ').slice(0, 50) + '"';
  const wide = [];
  col.querySelectorAll('table, pre, div.math, mjx-container[display="true"], img, figure').forEach(e => {
    const r = e.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) return;  // not displayed (a collapsed toggle)
    const outside = r.right > colRight + 1 || r.left < colLeft - 1;
    const scrolls = e.scrollWidth > e.clientWidth + 1 && e.tagName !== 'IMG';
    if (outside || scrolls) wide.push(`${name(e)}: ${Math.round(Math.max(r.width, e.scrollWidth))} px`);
  });
  const underNumber = [];
  col.querySelectorAll('div.math').forEach(d => {
    const num = d.querySelector('.eqno'), m = d.querySelector('mjx-container mjx-math');
    if (!num || !m) return;
    const a = m.getBoundingClientRect(), b = num.getBoundingClientRect();
    if (a.top < b.bottom && b.top < a.bottom && a.right > b.left + 1) underNumber.push(num.textContent.trim().slice(0, 8));
  });
  const figures = Array.from(col.querySelectorAll('img')).map(i => {
    const fig = i.closest('figure'), cap = fig && fig.querySelector('figcaption');
    return {src: i.getAttribute('src'), shown: i.getBoundingClientRect().width, natural: i.naturalWidth,
            caption: cap ? cap.textContent.trim() : '', numbered: !!(cap && cap.querySelector('.caption-number'))};
  });
  const terms = Array.from(col.querySelectorAll('p')).map(p => p.textContent)
      .filter(t => /(^|\\n)[^\\n]+\\n\\s*:\\s/.test(t)).map(t => t.trim().replace(/\\s+/g, ' ').slice(0, 60));
  const mathjaxSrc = Array.from(document.querySelectorAll('script[src*="mathjax"]')).map(e => e.src);
  // Raw TeX a reader would see: a dollar sign or a backslash command in the text outside typeset
  // math and code (generated Markdown printed as CommonMark leaves "$\\rho = 0.02$" raw).
  const prose = clone.textContent;
  const rawTex = [];
  const texRe = /\\$[^$\\n]{0,40}|\\\\[A-Za-z|{]+/g;
  let t;
  while ((t = texRe.exec(prose)) && rawTex.length < 5) rawTex.push(prose.slice(Math.max(0, t.index - 20), t.index + 30).replace(/\\s+/g, ' '));
  // Headers, and numbers in cells, must not break inside a word: each word's range has its
  // client rectangles on one line.
  const brokenWords = [];
  col.querySelectorAll('table th, table td').forEach(cell => {
    const header = cell.tagName === 'TH';
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    let node;
    while ((node = walker.nextNode())) {
      const wordRe = /\\S+/g;
      let m;
      while ((m = wordRe.exec(node.data))) {
        if (!header && !/\\d/.test(m[0])) continue;
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const tops = new Set(Array.from(range.getClientRects()).filter(r => r.width > 0).map(r => Math.round(r.top)));
        if (tops.size > 1) brokenWords.push((header ? 'header ' : 'cell ') + m[0]);
      }
    }
  });
  const provenance = (document.querySelector('.samedge-provenance') || {}).textContent || '';
  const runLinks = Array.from(col.querySelectorAll('a[href$="record.csv"], a[href$="config.json"]')).map(a => a.href);
  return {rawTex, brokenWords, provenance, runLinks, proseText: prose.toLowerCase(), imgs, mathCount: math.length, wide, underNumber, figures, terms, mathjaxSrc, column: colRight - colLeft, typeset: document.querySelectorAll('mjx-container').length, untypeset,
          errors, undefinedMacros, rawDollars: clone.textContent.includes('$$'), tables: headers,
          hasMathJax: !!document.querySelector('script[src*="mathjax"]')};
}"""


def _meta_refresh(context: BrowserContext, base_url: str, page_path: str) -> Optional[str]:
    """The target of a page's ``<meta http-equiv="Refresh">`` redirect, if it has one."""
    with urlopen(base_url + page_path, timeout=30) as r:
        head = r.read().decode("utf-8", "replace")
    m = re.search(r'http-equiv="refresh"\s+content="\d+;\s*url=([^"]+)"', head, re.I)
    return m.group(1) if m else None


def check_page(
    context: BrowserContext,
    base_url: str,
    page_path: str,
    mathjax: Optional[Path],
    screenshot_dir: Optional[Path] = None,
    experiments: frozenset = frozenset(),
    withhold_mathjax: bool = False,
) -> PageReport:
    """Open one page and return what is wrong with it (``report.problems``). ``mathjax``: a local
    mathjax@3 for CDN requests (None: block them); ``withhold_mathjax``: block MathJax altogether."""
    report = PageReport(page_path)
    host = urlparse(base_url).netloc
    redirect = _meta_refresh(context, base_url, page_path)
    page = context.new_page()

    def route(r: Route) -> None:
        url = r.request.url
        if withhold_mathjax and ("mathjax" in urlparse(url).path.lower()):
            report.blocked.append(url)
            r.abort()
        elif urlparse(url).netloc == host:
            r.continue_()
        elif mathjax is not None and url.startswith(MATHJAX_CDN):
            local = mathjax / urlparse(url).path[len(urlparse(MATHJAX_CDN).path) :]
            if local.is_file():
                r.fulfill(path=str(local))
            else:
                r.fulfill(status=404, body="not in the local MathJax copy")
        else:
            report.blocked.append(url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: report.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: report.console_errors.append(f"uncaught: {e}"))
    try:
        resp = page.goto(base_url + page_path, wait_until="load", timeout=60_000)
        report.status = resp.status if resp else None
        if report.status != 200:
            report.problems.append(f"HTTP status {report.status}")
        if redirect:  # index.html: let the meta refresh finish before inspecting anything
            page.wait_for_url(urljoin(base_url + page_path, redirect), timeout=30_000)
            page.wait_for_load_state("load")
        # Lazy images load only when near the viewport: make them eager, then wait for all.
        page.evaluate("() => document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
        page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=30_000)
        if page.evaluate("() => !!document.querySelector('script[src*=\"mathjax\"]')"):
            try:
                page.wait_for_function(
                    "() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30_000
                )
                page.evaluate("() => MathJax.startup.promise")
            except Exception as err:  # MathJax never started: the math is reported as not typeset below
                report.problems.append(f"MathJax did not start: {str(err).splitlines()[0]}")
        info = page.evaluate(INSPECT)
        if screenshot_dir is not None:
            shot = screenshot_dir / (page_path.replace("/", "__").removesuffix(".html") + ".png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            report.screenshot = str(shot)
    finally:
        page.close()

    report.images = len(info["imgs"])
    report.math_elements, report.typeset, report.tables = info["mathCount"], info["typeset"], len(info["tables"])
    broken = [i["src"] for i in info["imgs"] if not i["ok"]]
    if broken:
        report.problems.append(f"images not loaded: {broken}")
    if info["untypeset"]:
        report.problems.append(
            f"{len(info['untypeset'])} math element(s) not typeset by MathJax, e.g. {info['untypeset'][:2]}"
        )
    if info["errors"]:
        report.problems.append(f"MathJax errors (merror): {info['errors'][:3]}")
    if info["undefinedMacros"]:
        report.problems.append(f"undefined TeX macros: {info['undefinedMacros'][:3]}")
    if info["rawDollars"]:
        report.problems.append("raw $$ left in the text (unparsed math)")
    if page_path in MATH_PAGES and report.typeset == 0:
        report.problems.append("no math typeset on a page that must have math")
    if page_path in experiments:
        if not any(RESULTS_HEADER in h for h in info["tables"]):
            report.problems.append(f"no results table (a table with a '{RESULTS_HEADER}' column)")
    if page_path in experiments or page_path in FIGURE_PAGES:
        if report.images == 0:
            report.problems.append("no figure on a page that must have figures (a kernel without the inline backend?)")
    report.column_px = info["column"]
    if info["wide"]:
        report.problems.append(f"wider than the content column ({info['column']:.0f} px): {info['wide'][:4]}")
    if info["underNumber"]:
        report.problems.append(f"equations running under their number: {info['underNumber'][:4]}")
    small = [
        f"{f['src']}: {f['shown']:.0f} of {f['natural']} px"
        for f in info["figures"]
        if f["natural"] > 0 and f["shown"] < min(0.8 * f["natural"], MIN_FIGURE_PX)
    ]
    if small:
        report.problems.append(
            f"figures shown below 80% of their natural width and below {MIN_FIGURE_PX} px: {small[:4]}"
        )
    uncaptioned = [f["src"] for f in info["figures"] if not (f["caption"] and f["numbered"])]
    if uncaptioned:
        report.problems.append(f"figures without a numbered caption: {uncaptioned[:4]}")
    if info["rawTex"]:
        report.problems.append(f"raw TeX outside typeset math: {info['rawTex'][:3]}")
    internal = [w for w in INTERNAL_WORDS if w in info["proseText"]]
    if internal:
        report.problems.append(f"internal words in the text: {internal}")
    if info["brokenWords"]:
        report.problems.append(f"table words broken across lines: {info['brokenWords'][:5]}")
    if page_path not in SPHINX_PAGES and not all(w in info["provenance"] for w in PROVENANCE):
        report.problems.append(f"no provenance footer (commit, preset, torch): {info['provenance']!r}")
    if page_path in run_pages():
        if not any(u.endswith("record.csv") for u in info["runLinks"]):
            report.problems.append("no links to the runs' record.csv")
        for url in info["runLinks"][:2]:
            try:
                with urlopen(url, timeout=30) as r:
                    if r.status != 200:
                        report.problems.append(f"run record link {url}: HTTP {r.status}")
            except Exception as err:  # a 404 raises
                report.problems.append(f"run record link {url}: {err}")
    if info["terms"]:
        report.problems.append(f"unparsed definition lists ('Term : text' paragraphs): {info['terms'][:3]}")
    remote = [u for u in info["mathjaxSrc"] if urlparse(u).netloc != host]
    if remote:
        report.problems.append(f"MathJax loaded from the network, not from the site: {remote[:1]}")
    if report.console_errors:
        report.problems.append(f"console errors: {report.console_errors[:5]}")
    return report


@pytest.fixture(scope="module")
def site() -> Path:
    if not (SITE / "index.html").is_file():
        pytest.fail(f"no built book at {SITE}: run `jupyter-book build .` first (or set SAMEDGE_BOOK_HTML)")
    return SITE


def test_every_page_renders(site):
    """Every page of the built book passes every check; screenshots and report.json are saved."""
    pages = site_pages(site)
    experiments = frozenset(experiment_pages())
    assert "book/derivation.html" in pages and experiments & set(pages), pages
    mj = mathjax_dir()  # only needed for a site that loads MathJax from its CDN
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    with serve(site) as base, chromium() as context:
        reports = [check_page(context, base, p, mj, ARTIFACTS, experiments) for p in pages]
    summary = {
        "site": str(site),
        "pages": len(reports),
        "images": sum(r.images for r in reports),
        "typeset_math": sum(r.typeset for r in reports),
        "blocked_requests": sum(len(r.blocked) for r in reports),
        "reports": [asdict(r) for r in reports],
    }
    (ARTIFACTS / "report.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\n{len(reports)} pages, {summary['images']} images, {summary['typeset_math']} typeset formulas, "
        f"{summary['blocked_requests']} blocked non-local requests; screenshots in {ARTIFACTS}"
    )
    bad = {r.page: r.problems for r in reports if r.problems}
    assert not bad, json.dumps(bad, indent=2)
    by_page = {r.page: r for r in reports}
    assert by_page["book/derivation.html"].typeset > 50  # the derivation is mostly equations


def _break_site(site: Path, dest: Path, experiment_page: str) -> str:
    """Copy the site to ``dest``, delete one image file of ``experiment_page`` and break an
    equation of the derivation (an extra closing brace); returns the deleted image's src."""
    shutil.copytree(site, dest, ignore=shutil.ignore_patterns("_sources"))
    html = (dest / experiment_page).read_text()
    src = re.search(r'<img[^>]+src="([^"]+)"', html).group(1)
    (dest / experiment_page).parent.joinpath(src).resolve().unlink()
    deriv = dest / "book" / "derivation.html"
    text = deriv.read_text()
    assert "\\frac{" in text
    deriv.write_text(text.replace("\\frac{", "\\frac}{", 1))
    return src


def _break_reading(page: Path) -> None:
    """On ``page`` (with at least two figures): shrink the first figure to 150 px, remove the second
    figure's caption, and add a wide table, a long numbered equation and an unparsed definition list."""
    text = page.read_text()
    text = re.sub(r"<img ", '<img style="width: 150px" ', text, count=1)
    captions = [m.start() for m in re.finditer(r"<figcaption", text)]
    assert len(captions) >= 2, "the page needs two captioned figures"
    end = text.index("</figcaption>", captions[1]) + len("</figcaption>")
    text = text[: captions[1]] + text[end:]
    wide = '<table><tr><td style="white-space: nowrap">' + "a wide table cell " * 40 + "</td></tr></table>"
    long_eq = (
        '<div class="math notranslate nohighlight"><span class="eqno">(99)</span>\\['
        + " + ".join(f"x_{{{i}}}" for i in range(80))
        + "\\]</div>"
    )
    term = "<p>Exact Hessian-vector products\n: an unparsed definition list</p>"
    term += "<p>At $\\rho = 0.02$ the issue's target was met.</p>"
    term += (
        '<table class="samedge-table"><tr><th style="width: 3em; max-width: 3em; overflow-wrap: anywhere">'
        'accuracy</th></tr><tr><td style="width: 3em; max-width: 3em; overflow-wrap: anywhere">8.7e-04</td></tr></table>'
    )
    marker = '<section id="'
    at = text.index(marker, text.index(marker) + 1)  # before the page's second section
    page.write_text(text[:at] + wide + long_eq + term + text[at:])


def test_the_checks_catch_breakage(site, tmp_path):
    """On a broken copy of the site the same checks fail: a deleted image file is reported on its
    page, an equation with an extra brace as a MathJax error, withheld MathJax as untypeset math
    (and a console error for the blocked script); on the quadratic chapter a shrunk figure, a
    removed caption, a wide table, a long equation and an unparsed definition list."""
    experiments = sorted(frozenset(experiment_pages()) & set(site_pages(site)))
    assert experiments
    broken = tmp_path / "html"
    src = _break_site(site, broken, experiments[0])
    _break_reading(broken / "book" / "quadratic.html")
    mj = mathjax_dir()
    with serve(broken) as base, chromium() as context:
        exp = check_page(context, base, experiments[0], mj, experiments=frozenset(experiments))
        deriv = check_page(context, base, "book/derivation.html", mj)
        no_mathjax = check_page(context, base, "book/intro.html", mj, withhold_mathjax=True)
        reading = check_page(context, base, "book/quadratic.html", mj)
        intact = check_page(context, base, "book/intro.html", mj)
    assert any("images not loaded" in p and src in p for p in exp.problems), exp.problems
    assert any("MathJax errors" in p for p in deriv.problems), deriv.problems
    assert any("not typeset" in p for p in no_mathjax.problems) and no_mathjax.blocked, no_mathjax
    assert any("console errors" in p for p in no_mathjax.problems), no_mathjax.problems
    found = " ".join(reading.problems)
    assert "a wide table cell" in found and "(99)" in found, reading.problems  # the table; the equation
    assert "figures shown below 80%" in found and "figures without a numbered caption" in found, reading.problems
    assert "unparsed definition lists" in found, reading.problems
    assert "raw TeX outside typeset math" in found and "\\rho" in found, reading.problems
    assert "internal words" in found and "the issue's target" in found, reading.problems
    assert "table words broken across lines" in found and "header accuracy" in found, reading.problems
    assert "cell 8.7e-04" in found, reading.problems
    assert intact.problems == [], intact.problems  # the page that was not broken still passes
