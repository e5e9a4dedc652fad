"""The figures and tables draw and name the edge each record was compared with: lines checked
against closed-form edges (2(1+beta)/eta, Adam's (2+2 beta1)/((1-beta1) eta), 2/eta), legends,
titles and table columns read back from the matplotlib objects and DataFrames."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

matplotlib.use("Agg")

from samedge import SAM, EdgeMonitor, plots  # noqa: E402
from samedge.analysis import LOSS_NOTE, MEDIAN_EDGE, MEDIAN_RATIO, RULE, interpret_ratios, loss_note, ratio_table  # noqa: E402
from samedge.config import RunConfig  # noqa: E402
from samedge.record import RunRecord  # noqa: E402

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")
ETA = 0.05


def _record(kind: str, label=None):
    """A monitor's record of 6 steps of a tiny regression under ``kind``, measured every 2 steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 5, generator=gen, dtype=F64), torch.randn(12, 3, generator=gen, dtype=F64)
    if kind == "gd":
        opt = torch.optim.SGD(model.parameters(), lr=ETA)
    elif kind == "momentum":
        opt = torch.optim.SGD(model.parameters(), lr=ETA, momentum=0.9)
    elif kind == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:  # SAM over heavy-ball SGD
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=ETA, momentum=0.9)
    mon = EdgeMonitor(model, nn.MSELoss(), (x, y), opt, every=2, train_mode=False)
    for _ in range(7):
        if isinstance(opt, SAM):
            nn.MSELoss()(model(x), y).backward()
            opt.first_step(zero_grad=True)
            nn.MSELoss()(model(x), y).backward()
            opt.second_step(zero_grad=True)
        else:
            opt.zero_grad()
            nn.MSELoss()(model(x), y).backward()
            opt.step()
        mon.step()
    return mon.record(label)


@pytest.fixture(scope="module")
def records():
    return {k: _record(k) for k in ("gd", "momentum", "adam", "sam_sgd")}


def _lines(fig):
    return [(line.get_label(), np.asarray(line.get_ydata(), dtype=float)) for ax in fig.axes for line in ax.get_lines()]


def test_sharpness_figure_draws_each_records_own_edge(records):
    """The momentum run's edge line is 2(1+beta)/eta, labelled so, with no 2/eta line; Adam's is
    (2+2 beta1)/((1-beta1) eta) beside lambda_max(P^-1 H); SAM over momentum SGD has its own edge;
    GD's edge line is 2/eta. 2/eta is added for another rule only when asked for."""
    mom, adam, sam, gd = records["momentum"], records["adam"], records["sam_sgd"], records["gd"]
    assert (mom.rule, adam.rule, sam.rule, gd.rule) == ("momentum", "adam", "sam_sgd", "gd")
    lines = dict(_lines(plots.plot_sharpness(mom)))
    assert np.allclose(lines["$2(1+\\beta)/\\eta$"], 2 * 1.9 / ETA)
    assert "$2/\\eta$" not in lines and not any(np.allclose(v, 2 / ETA) for v in lines.values())
    lines = dict(_lines(plots.plot_sharpness(mom, show_gd_edge=True)))
    assert np.allclose(lines["$2/\\eta$"], 2 / ETA)
    lines = dict(_lines(plots.plot_sharpness(adam)))
    assert np.allclose(lines["Adam edge"], (2 + 2 * 0.9) / (0.1 * 1e-3))
    assert "$\\lambda_{max}(P^{-1}H)$" in lines and "$2/\\eta$" not in lines
    lines = dict(_lines(plots.plot_sharpness(sam)))
    assert np.allclose(lines["SAM-over-SGD edge"], sam.frame["edge"]) and "$2/\\eta$" not in lines
    lines = dict(_lines(plots.plot_sharpness(gd)))
    assert np.allclose(lines["$2/\\eta$"], 2 / ETA)
    assert set(plots.EDGE_LABELS) >= {"gd", "momentum", "sgd", "sam", "usam", "sam_sgd", "adam", "adamw", "rmsprop"}


def test_titles_and_loss_notes_come_from_the_records(records):
    """A monitor's record has no loss convention: no squared-loss note and no 'SAM-edge' in the
    title of a momentum run, unless the caller passes a note; a run of a squared-loss task carries
    the note, a cross-entropy task's run does not."""
    title = plots.plot_sharpness(records["momentum"])._suptitle.get_text()
    assert "squared" not in title and "SAM" not in title and "2(1+" in title
    title = plots.plot_sharpness([records["momentum"], records["adam"]])._suptitle.get_text()
    assert "own edge" in title and "squared" not in title
    assert "my loss" in plots.plot_sharpness(records["momentum"], note="my loss")._suptitle.get_text()
    assert loss_note(records["momentum"]) is None
    run = dict(eta=0.1, rho=0.0, steps=10, measure_every=5)
    assert loss_note(RunRecord(RunConfig(task="mnist", **run))) == LOSS_NOTE
    assert loss_note(RunRecord(RunConfig(task="shakespeare", batch_size=4, **run))) is None
    title = plots.plot_edge_ratio([records["momentum"], records["adam"]]).axes[0].get_title()
    assert "SAM" not in title and "own edge" in title


def test_legend_entries_stay_unique_when_labels_repeat(records):
    """Two runs with the same label get two legend entries ('#2'), in every one-axes figure."""
    twins = [records["momentum"], _record("momentum")]
    for fig in (plots.plot_edge_ratio(twins), plots.plot_loss(twins)):
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        name = records["momentum"].label
        assert name in labels and f"{name} #2" in labels
    titles = [ax.get_title() for ax in plots.plot_sharpness(twins).axes if ax.get_title()]
    assert titles[0].startswith(name + ",") and titles[1].startswith(name + " #2,")


def test_ratio_table_names_the_edge_by_rule(records):
    """ratio_table's edge column is 'median edge' with a 'rule' column; its value is the
    run's own edge (2(1+beta)/eta for momentum), and the sentence speaks of that edge, not GD's."""
    recs = [records["momentum"], records["adam"], records["gd"]]
    t = ratio_table(recs)
    assert MEDIAN_EDGE == "median edge" and "SAM" not in MEDIAN_EDGE
    assert t[RULE].tolist() == ["momentum", "adam", "gd"]
    assert t[MEDIAN_EDGE].iloc[0] == pytest.approx(2 * 1.9 / ETA)
    assert t[MEDIAN_EDGE].iloc[1] == pytest.approx(38 / 1e-3)
    assert t[MEDIAN_EDGE].iloc[2] == pytest.approx(2 / ETA)
    text = interpret_ratios(t)
    mom_ratio = t[MEDIAN_RATIO].iloc[0]
    assert f"{records['momentum'].label}: the median of its sharpness over 2(1+beta)/eta" in text
    assert f"{mom_ratio:.3f}" in text and text.count("GD's sharpness") == 1
    assert f"GD's sharpness settles at {t[MEDIAN_RATIO].iloc[2]:.4f} x 2/eta" in text
