"""The tiny_shakespeare loader, crops, download path and errors, and the shakespeare task."""

import io
import math
import os
import urllib.error
from pathlib import Path

import pytest
import torch

from samedge import data
from samedge.config import RunConfig
from samedge.loop import run
from samedge.tasks import EVAL_BATCH_SEED, get_task

REAL = os.environ.get("SAMEDGE_DATA_DIR")
TEXT = Path(REAL) / "tinyshakespeare" / "input.txt" if REAL else None
needs_real = pytest.mark.skipif(
    not REAL or not TEXT.is_file(), reason="set SAMEDGE_DATA_DIR to a directory holding tinyshakespeare/input.txt"
)
pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one thread is faster on a shared machine
TINY = dict(num_layers=1, num_heads=2, key_size=4, model_size=8, sequence_length=12, eval_batch_size=6, n_test_crops=10)


@pytest.fixture(scope="module")
def text():
    return data.load_shakespeare(REAL)


@needs_real
def test_split_is_last_10000_lines(text):
    """Training text = all but the last 10000 lines, test = those lines, ASCII codepoints as tokens."""
    train, test = text
    raw = TEXT.read_bytes()
    n_lines = raw.count(b"\n")
    assert n_lines == 40000 and raw.endswith(b"\n")
    cut = 0  # by hand: the byte after the 30000th newline
    for _ in range(n_lines - 10000):
        cut = raw.index(b"\n", cut) + 1
    as_bytes = lambda t: t.numpy().astype("uint8").tobytes()
    assert len(train) == cut and len(test) == len(raw) - cut
    assert as_bytes(train) == raw[:cut] and as_bytes(test) == raw[cut:]
    assert bytes(train[:14].tolist()) == b"First Citizen:"
    assert test.count_nonzero() == len(test) and int(max(train.max(), test.max())) < data.VOCAB_SIZE  # no pad, ASCII
    assert train.dtype == torch.int64


@needs_real
def test_random_crops(text):
    """Crops of L+1 characters of the text, targets = inputs shifted by one, reproducible from the generator."""
    train, _ = text
    raw = TEXT.read_bytes()
    x, y = data.random_crops(train, 5, 20, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (5, 20)
    assert torch.equal(x[:, 1:], y[:, :-1])
    for i in range(5):
        assert bytes(x[i].tolist()) + bytes([int(y[i, -1])]) in raw
    x2, y2 = data.random_crops(train, 5, 20, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, data.random_crops(train, 5, 20, torch.Generator().manual_seed(4))[0])


@needs_real
def test_modified_copy_rejected(tmp_path):
    """A one-character change (or a truncation) fails the sha256 check, naming the file."""
    (tmp_path / "tinyshakespeare").mkdir()
    raw = bytearray(TEXT.read_bytes())
    raw[1000] = ord("#")
    (tmp_path / "tinyshakespeare" / "input.txt").write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match="input.txt is corrupt or truncated"):
        data.load_shakespeare(tmp_path, download=False)
    (tmp_path / "tinyshakespeare" / "input.txt").write_bytes(bytes(raw[:5000]))
    with pytest.raises(data.DataError, match="corrupt or truncated"):
        data.load_shakespeare(tmp_path, download=False)


def test_missing_offline_names_file_url_and_variable(monkeypatch, tmp_path):
    """No file and no network: a DataError naming the file, the URL and SAMEDGE_DATA_DIR; no partial file."""

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(data.DataError) as err:
        data.load_shakespeare(tmp_path)
    msg = str(err.value)
    assert "tinyshakespeare/input.txt" in msg and data.SHAKESPEARE_URL in msg and "SAMEDGE_DATA_DIR" in msg
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    with pytest.raises(data.DataError, match="download=False"):
        data.load_shakespeare(tmp_path, download=False)


@needs_real
def test_download_verifies_then_renames(monkeypatch, tmp_path):
    """A download is checked against the sha256 before it takes the file's name; a bad one leaves nothing."""
    served = {"body": b"not shakespeare"}
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout=None: io.BytesIO(served["body"]))
    with pytest.raises(data.DataError, match="wrong sha256"):
        data.load_shakespeare(tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    served["body"] = TEXT.read_bytes()
    train, test = data.load_shakespeare(tmp_path)
    assert (tmp_path / "tinyshakespeare" / "input.txt").read_bytes() == served["body"]
    assert len(train) + len(test) == len(served["body"])


@pytest.mark.parametrize(
    "options, name",
    [
        ({"num_layer": 2}, "num_layer"),
        ({"model_size": 0}, "model_size"),
        ({"num_heads": -2}, "num_heads"),
        ({"sequence_length": 3.5}, "sequence_length"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"n_test_crops": True}, "n_test_crops"),
    ],
)
def test_task_option_validation(options, name):
    """Unknown keys and non-positive sizes are a ValueError naming the option."""
    with pytest.raises(ValueError, match=name):
        get_task("shakespeare").validate(options)


@needs_real
def test_task_needs_a_batch_size():
    """Training on random crops has no full batch: batch_size=None is a clear error."""
    with pytest.raises(ValueError, match="batch_size"):
        get_task("shakespeare").build(TINY, None, "cpu", torch.float32, REAL)


@needs_real
def test_task_batches_model_and_causality():
    """Minibatches from the run's generator, a fixed eval batch of test crops, logits (B, L, 128), causal."""
    torch.manual_seed(0)
    built = get_task("shakespeare").build(TINY, 4, "cpu", torch.float32, REAL)
    x, y = built.sample(0, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 12) and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(built.sample(7, torch.Generator().manual_seed(0))[0], x)  # the generator decides
    ex, ey = built.eval_batch
    _, test = data.load_shakespeare(REAL)
    rx, ry = data.random_crops(test, 6, 12, torch.Generator().manual_seed(EVAL_BATCH_SEED))
    assert torch.equal(ex, rx) and torch.equal(ey, ry)  # fixed test crops, the same in every build
    with torch.no_grad():
        out = built.model(x)
    assert out.shape == (4, 12, data.VOCAB_SIZE) and math.isfinite(float(built.loss(out, y)))
    changed = x.clone()
    changed[:, 8] = (changed[:, 8] % 100) + 1  # a different (nonzero) future token at position 8
    with torch.no_grad():
        a, b = built.model(x), built.model(changed)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6) and not torch.allclose(a[:, 8:], b[:, 8:])
    metrics = built.evaluate(built.model)
    assert set(metrics) == {"test_loss", "test_accuracy"}
    assert metrics["test_loss"] == pytest.approx(math.log(128), rel=0.2)  # near-uniform at initialization


@needs_real
def test_loop_measures_minibatch_and_eval_batch():
    """A short stochastic SAM run records both the minibatch and the fixed eval-batch ratios."""
    cfg = RunConfig(task="shakespeare", eta=0.1, rho=0.1, steps=4, measure_every=2, batch_size=4, options=TINY)
    rec = run(cfg, data_dir=REAL, progress=False)
    df = rec.frame
    assert df["step"].tolist() == [0, 2, 4]
    for _, row in df.iterrows():
        assert row["ratio"] == pytest.approx(row["op_norm"] / row["edge"], rel=1e-9)
        assert row["eval_ratio"] == pytest.approx(row["eval_op_norm"] / row["eval_edge"], rel=1e-9)
    assert rec.summary["complete"] and "test_loss" in rec.summary


@needs_real
def test_loop_eval_batch_numbers_match_an_independent_computation():
    """At step 0 the eval-batch loss, gradient norm and ||H||_op equal a separate computation
    (plain torch.func gradient; forward-over-reverse HVPs with a tight Lanczos)."""
    from torch.func import functional_call, grad_and_value

    from samedge.hessian import HessianOperator, lanczos
    from samedge.losses import parameters_of
    from samedge.vectors import norm

    cfg = RunConfig(task="shakespeare", eta=0.1, rho=0.1, steps=1, measure_every=1, batch_size=4, options=TINY, seed=3)
    row = run(cfg, data_dir=REAL, progress=False).frame.iloc[0]
    torch.manual_seed(cfg.seed)  # the loop seeds before building the task: the same initial weights
    built = get_task("shakespeare").build(TINY, 4, "cpu", torch.float32, REAL)
    params = parameters_of(built.model)
    ex, ey = built.eval_batch
    fn = lambda p: built.loss(functional_call(built.model, p, (ex,)), ey)
    g, loss = grad_and_value(fn)(params)
    op = HessianOperator(fn, params, "forward_over_reverse")
    ref = lanczos(op, op.size, which="LM", tol=1e-7, max_iter=300, dtype=torch.float32, seed=11)
    assert row["eval_loss"] == pytest.approx(float(loss), rel=1e-6)
    assert row["eval_grad_norm"] == pytest.approx(float(norm(g)), rel=1e-5)
    assert row["eval_op_norm"] == pytest.approx(abs(float(ref.eigenvalues[0])), rel=2e-3)
