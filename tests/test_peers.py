"""benchmarks/peers.py and its report: the committed benchmarks/PEERS.md parses into the table the
book's appendix shows (always); with the peers installed (optional, like jax), each peer as the
script calls it finds the top eigenvalue of a tiny MLP's Hessian, checked against a dense float64
``eigvalsh`` computed here by ``torch.autograd.functional.hessian``, and counts its HVPs."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from samedge.losses import squared_loss
from samedge.models import MLP
from samedge.summary import read_markdown_table, report_sections

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import peers  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
REPORT = ROOT / "benchmarks" / "PEERS.md"
COLUMNS = [peers.METHOD, peers.SETTING, peers.TIME, peers.HVPS, peers.ERROR, peers.CONVERGED]


def test_report_parses_into_the_books_table():
    """PEERS.md has the two sections the book glues, one row per method of the script, and every row
    either numbers that parse (within the report's own target, convergence as "k of 3") or an error."""
    text = REPORT.read_text()
    sections = report_sections(text)
    book = (ROOT / "book" / "benchmarks.md").read_text()
    for title in (peers.EQUAL_ACCURACY, peers.SEARCH_TITLE):
        assert title in sections, f"PEERS.md has no section {title!r}"
        assert title in book, f"the book does not glue {title!r}"
    assert "PEERS.md" in book
    table = read_markdown_table(REPORT, peers.ERROR)
    assert list(table.columns) == COLUMNS
    assert list(table[peers.METHOD]) == [name for name, *_ in peers.SEARCH]
    target = float(re.search(r"Target: relative error <= ([\d.e+-]+)\.", text).group(1))
    for _, row in table.iterrows():
        if row[peers.SETTING].startswith(("fails", "no setting")):
            assert (row[[peers.TIME, peers.HVPS, peers.ERROR, peers.CONVERGED]] == "-").all()
            continue
        assert float(row[peers.TIME]) > 0 and float(row[peers.HVPS]) >= 1
        assert float(row[peers.ERROR]) <= target
        assert re.fullmatch(r"[0-3] of 3|not reported", row[peers.CONVERGED])
    ours = table.set_index(peers.METHOD).loc[peers.SEARCH[0][0]]
    assert ours[peers.CONVERGED] == "3 of 3"  # our stopping rule certifies every cold run it reports
    shown = sections[peers.SEARCH_TITLE].replace("\u2011", "-")  # the book shows non-breaking hyphens in tables
    search = [line.split("|")[1].strip() for line in shown.splitlines() if line.startswith("| ")]
    assert search[0] == peers.METHOD and set(search[1:]) <= set(table[peers.METHOD])


def test_a_peer_that_does_not_import_is_reported_with_how_to_install(monkeypatch):
    """peer_errors names the failing import; peers_missing adds the install command."""
    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "pyhessian":
            raise ModuleNotFoundError("No module named 'pyhessian'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    assert peers.peer_errors()["pyhessian"] == "ModuleNotFoundError: No module named 'pyhessian'"
    msg = peers.peers_missing()
    assert msg is not None and "pyhessian" in msg and "pip install --target" in msg and "PYTHONPATH" in msg


@pytest.fixture(scope="module")
def tiny():
    """A float64 MLP on 40 random examples, and the largest |eigenvalue| of its dense Hessian."""
    torch.manual_seed(0)
    model = MLP(12, 16, 2, 3).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 12, generator=gen, dtype=torch.float64)
    y = F.one_hot(torch.randint(0, 3, (40,), generator=gen), 3).double()
    named = dict(model.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in named.values()])

    def loss(v):
        sizes = [p.numel() for p in named.values()]
        parts = {k: c.reshape(p.shape) for (k, p), c in zip(named.items(), torch.split(v, sizes))}
        return squared_loss(functional_call(model, parts, (x,)), y)

    H = torch.autograd.functional.hessian(loss, flat)
    top = float(torch.linalg.eigvalsh(0.5 * (H + H.T)).abs().max())
    return model, x, y, top


# (function, setting, relative error it must reach, (min, max) HVPs it may count)
CASES = {
    # PyHessian divides by (||Hv|| + 1e-6) when it normalizes: a relative floor of order 1e-6.
    "pyhessian": (peers.pyhessian_power, (1e-10, 5000), 1e-5, (2, 5000)),
    # A fixed number of Lanczos steps, each one HVP.
    "eigenthings-lanczos": (peers.eigenthings_lanczos, 60, 1e-10, (60, 60)),
    "eigenthings-power": (peers.eigenthings_power, (1e-8, 5000), 1e-7, (2, 5000)),
    "curvlinops-arpack": (peers.curvlinops_arpack, 1e-10, 1e-9, (2, 531)),
}


@pytest.mark.skipif(peers.peers_missing() is not None, reason="the peers are not installed (optional)")
@pytest.mark.parametrize("case", list(CASES))
def test_each_peer_finds_the_dense_top_eigenvalue(tiny, case):
    """Each peer, called as the benchmark calls it, reaches the dense float64 top |eigenvalue| to the
    accuracy its setting asks for, reports convergence where it reports any, and counts its HVPs."""
    model, x, y, top = tiny
    fn, setting, tol, (lo, hi) = CASES[case]
    est = fn(model, x, y, setting, 0)
    assert abs(est.value - top) / top <= tol, (case, est.value, top)
    assert lo <= est.hvps <= hi, (case, est.hvps)
    assert est.converged in (None, True)
    assert all(p.grad is None for p in model.parameters())  # no graph left on the model for the next run


@pytest.mark.skipif(peers.peers_missing() is not None, reason="the peers are not installed (optional)")
def test_peers_agree_with_ours_at_the_benchmarks_loss(tiny):
    """The criterion module the peers get is our squared loss: in float32 on the same model, each peer's
    estimate at a tight setting equals samedge.sharpness's to float32 round-off."""
    model, x, y, _ = tiny
    m32 = MLP(12, 16, 2, 3)
    m32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    ours = peers.ours(m32, x.float(), y.float(), 1e-6, 0).value
    settings32 = {
        "pyhessian": (1e-6, 5000),
        "eigenthings-lanczos": 60,
        "eigenthings-power": (1e-5, 5000),
        "curvlinops-arpack": 1e-6,
    }
    for case, setting in settings32.items():
        fn = CASES[case][0]
        assert abs(fn(m32, x.float(), y.float(), setting, 0).value - ours) / ours < 1e-4, case
