"""Test-session environment for the unit tests and for the notebooks nbval executes.

Notebooks run at the smoke preset and write their results into a throwaway directory;
kernels started by nbval inherit this environment.
"""

import os
import tempfile

os.environ.setdefault("SAMEDGE_PRESET", "smoke")
os.environ.setdefault("SAMEDGE_RESULTS_DIR", tempfile.mkdtemp(prefix="samedge-test-results-"))
os.environ.setdefault("MPLBACKEND", "Agg")

# The browser test of the built book (tests/browser) needs a built book, Chromium, Playwright and
# a local MathJax: collected only when asked for, as .ci/run does after building the book:
#   SAMEDGE_BROWSER_TEST=1 pytest tests/browser
if os.environ.get("SAMEDGE_BROWSER_TEST") != "1":
    collect_ignore = ["tests/browser"]
