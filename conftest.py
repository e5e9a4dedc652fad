"""Test-session environment for the unit tests and for the notebooks nbval executes.

Notebooks run at the smoke preset and write their results into a throwaway directory;
kernels started by nbval inherit this environment.
"""
import os
import tempfile

os.environ.setdefault("SAMEDGE_PRESET", "smoke")
os.environ.setdefault("SAMEDGE_RESULTS_DIR", tempfile.mkdtemp(prefix="samedge-test-results-"))
os.environ.setdefault("MPLBACKEND", "Agg")
