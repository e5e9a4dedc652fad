"""The CIFAR-10 loader against the real binary files, its errors, and the cifar10 task."""

import os
import shutil
import urllib.error
from pathlib import Path

import pytest
import torch

from samedge import data
from samedge.tasks import get_task

REAL = os.environ.get("SAMEDGE_DATA_DIR")
CIFAR = Path(REAL) / "cifar-10-batches-bin" if REAL else None
needs_real = pytest.mark.skipif(
    not REAL or not (CIFAR / "data_batch_1.bin").is_file(),
    reason="set SAMEDGE_DATA_DIR to a directory holding cifar-10-batches-bin",
)
pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one thread is faster on a shared machine
RECORD = 3073


def by_hand(path: Path, n: int):
    """Independent reference: labels and pixels/256 of the first n records, decoded byte by byte."""
    blob = path.read_bytes()
    labels = [blob[i * RECORD] for i in range(n)]
    pixels = torch.tensor(list(blob[: n * RECORD]), dtype=torch.float32).reshape(n, RECORD)[:, 1:]
    # 1024 R, then 1024 G, then 1024 B bytes, each a row-major 32x32 plane.
    return labels, pixels.reshape(n, 3, 32, 32) / 256


def offline(*a, **k):
    raise urllib.error.URLError("no network")


def copy_layout(dst: Path, *, train=None, test=None):
    """A cifar-10-batches-bin folder in ``dst`` with (possibly altered) copies of the real files."""
    folder = dst / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    shutil.copy(CIFAR / "batches.meta.txt", folder)
    (folder / "data_batch_1.bin").write_bytes(train if train is not None else (CIFAR / "data_batch_1.bin").read_bytes())
    (folder / "test_batch.bin").write_bytes(test if test is not None else (CIFAR / "test_batch.bin").read_bytes())
    return folder


@needs_real
def test_cifar_real_files():
    """File order, published labels, NCHW layout, /256 and the per-pixel training-mean centring."""
    train, test = data.load_cifar10(300, 50, data_dir=REAL)
    assert train.inputs.shape == (300, 3, 32, 32) and test.inputs.shape == (50, 3, 32, 32)
    assert train.inputs.dtype == torch.float32
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # CIFAR-10's first training labels
    assert data.cifar10_classes(REAL)[int(train.labels[0])] == "frog"  # image 0 is a frog
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    labels, pixels = by_hand(CIFAR / "data_batch_1.bin", 300)
    assert train.labels.tolist() == labels
    mean = pixels.mean(0, keepdim=True)
    assert float(train.inputs.mean(0).abs().max()) < 1e-6  # every pixel and channel centred
    assert torch.allclose(train.inputs, pixels - mean, atol=1e-6)
    test_labels, test_pixels = by_hand(CIFAR / "test_batch.bin", 50)
    assert test.labels.tolist() == test_labels
    assert torch.allclose(test.inputs, test_pixels - mean, atol=1e-6)  # test centred by the *training* mean
    # One pixel by hand: image 0, row 5, column 7, channel G is byte 1 + 1024 + 5*32 + 7 of record 0.
    raw = (CIFAR / "data_batch_1.bin").read_bytes()
    assert float(train.inputs[0, 1, 5, 7] + mean[0, 1, 5, 7]) == pytest.approx(
        raw[1 + 1024 + 5 * 32 + 7] / 256, abs=1e-6
    )
    assert torch.equal(train.targets.argmax(1), train.labels) and torch.allclose(train.targets.sum(1), torch.ones(300))


@needs_real
def test_too_many_training_images_is_a_clear_error(monkeypatch):
    """Only data_batch_1 present: n_train > 10000 fails naming what is there, never a shortfall."""
    with pytest.raises(data.DataError, match=r"n_train=10001 .* only 10000 .*Use n_train <= 10000"):
        data.load_cifar10(10001, 10, data_dir=REAL, download=False)
    monkeypatch.setattr("urllib.request.urlopen", offline)  # a failed download says the same
    with pytest.raises(data.DataError, match=r"only 10000 .*data_batch_2.bin"):
        data.load_cifar10(25000, 10, data_dir=REAL)


@needs_real
def test_too_many_test_images_is_a_clear_error():
    """The mirror's partial test_batch.bin holds 1000 images: asking for more says so."""
    have = (CIFAR / "test_batch.bin").stat().st_size // RECORD
    data.load_cifar10(10, have, data_dir=REAL)
    with pytest.raises(data.DataError, match=rf"n_test={have + 1} .*only {have}.*n_test <= {have}"):
        data.load_cifar10(10, have + 1, data_dir=REAL)


@needs_real
@pytest.mark.parametrize("alter", ["truncate", "flip"])
def test_corrupt_training_file_rejected(tmp_path, alter):
    """A truncated or one-byte-modified data_batch_1.bin fails its checksum, naming the file."""
    blob = bytearray((CIFAR / "data_batch_1.bin").read_bytes())
    if alter == "truncate":
        blob = blob[: 100 * RECORD]
    else:
        blob[12345] ^= 1
    copy_layout(tmp_path, train=bytes(blob))
    with pytest.raises(data.DataError, match="data_batch_1.bin is corrupt or truncated"):
        data.load_cifar10(10, 10, data_dir=tmp_path, download=False)


@needs_real
def test_corrupt_test_file_rejected(tmp_path):
    """test_batch.bin cut mid-record, or with an impossible label, is rejected with a clear message."""
    good = (CIFAR / "test_batch.bin").read_bytes()
    copy_layout(tmp_path / "a", test=good[: 10 * RECORD + 5])
    with pytest.raises(data.DataError, match="test_batch.bin is corrupt or truncated"):
        data.load_cifar10(10, 5, data_dir=tmp_path / "a", download=False)
    bad = bytearray(good[: 20 * RECORD])
    bad[3 * RECORD] = 200
    copy_layout(tmp_path / "b", test=bytes(bad))
    with pytest.raises(data.DataError, match="label byte is 200"):
        data.load_cifar10(10, 5, data_dir=tmp_path / "b", download=False)
    # A whole number of valid records is a partial split: usable up to its size.
    copy_layout(tmp_path / "c", test=good[: 20 * RECORD])
    assert len(data.load_cifar10(10, 20, data_dir=tmp_path / "c", download=False)[1]) == 20


def test_missing_offline_names_files_url_and_variable(monkeypatch, tmp_path):
    """No files and no network: a DataError naming the expected files, the URL and SAMEDGE_DATA_DIR."""
    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(data.DataError) as err:
        data.load_cifar10(10, 10, data_dir=tmp_path)
    msg = str(err.value)
    assert "cifar-10-batches-bin/data_batch_1.bin" in msg and "test_batch.bin" in msg
    assert data.CIFAR_URL in msg and "SAMEDGE_DATA_DIR" in msg
    assert not any(tmp_path.iterdir())  # a failed download leaves nothing behind in the data directory
    with pytest.raises(data.DataError, match="download=False"):
        data.load_cifar10(10, 10, data_dir=tmp_path, download=False)


@pytest.mark.parametrize("n_train", [0, -1, 50001, 2.5])
def test_bad_sizes(n_train):
    """Sizes outside what CIFAR-10 has are a ValueError naming n_train."""
    with pytest.raises(ValueError, match="n_train"):
        data.load_cifar10(n_train, 10)


@pytest.mark.parametrize(
    "options, name",
    [
        ({"n_trian": 10}, "n_trian"),
        ({"base_channels": 0}, "base_channels"),
        ({"num_blocks": 2.0}, "num_blocks"),
        ({"layers_per_block": -1}, "layers_per_block"),
        ({"n_train": 60000}, "n_train"),
        ({"num_blocks": 6}, "num_blocks"),
    ],
)
def test_task_option_validation(options, name):
    """Unknown keys and bad sizes are a ValueError naming the option."""
    with pytest.raises(ValueError, match=name):
        get_task("cifar10").validate(options)


@needs_real
def test_task_builds_cnn_on_real_data():
    """The cifar10 task: full batch of real images, CNN logits (n, 10), squared loss, test metrics."""
    torch.manual_seed(0)
    built = get_task("cifar10").build(dict(n_train=32, n_test=16, base_channels=4), None, "cpu", torch.float32, REAL)
    x, y = built.sample(0, torch.Generator())
    assert x.shape == (32, 3, 32, 32) and y.shape == (32, 10) and built.num_train == 32 and built.eval_batch is None
    out = built.model(x)
    assert out.shape == (32, 10) and torch.isfinite(built.loss(out, y))
    metrics = built.evaluate(built.model)
    assert set(metrics) == {"test_loss", "test_accuracy", "final_train_loss", "final_train_accuracy"}
    assert 0 <= metrics["test_accuracy"] <= 1 and 0 <= metrics["final_train_accuracy"] <= 1
    xb, _ = (
        get_task("cifar10")
        .build(dict(n_train=32, n_test=16, base_channels=4), 8, "cpu", torch.float32, REAL)
        .sample(0, torch.Generator().manual_seed(1))
    )
    assert xb.shape == (8, 3, 32, 32)  # minibatch when batch_size is given
