"""Data resolution, the MNIST loader against the real files, and the offline errors."""

import os
import urllib.error
from pathlib import Path

import pytest
import torch

from samedge import data

REAL = os.environ.get("SAMEDGE_DATA_DIR")
needs_real = pytest.mark.skipif(
    not REAL or not (Path(REAL) / "MNIST" / "raw").is_dir(),
    reason="set SAMEDGE_DATA_DIR to a directory holding MNIST/raw",
)


def test_resolution_order(monkeypatch, tmp_path):
    """Explicit argument beats the environment variable, which beats the per-user cache."""
    monkeypatch.setenv("SAMEDGE_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("SAMEDGE_DATA_DIR")
    assert data.resolve_data_dir() == tmp_path / "cache" / "samedge" / "data"


@needs_real
def test_mnist_real_files():
    """First n examples in file order, /256 then centred by the training mean, one-hot targets."""
    train, test = data.load_mnist(500, 50, data_dir=REAL)
    assert train.inputs.shape == (500, 784) and test.inputs.shape == (50, 784)
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # MNIST's published first labels
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert float(train.inputs.mean(0).abs().max()) < 1e-6  # every pixel centred over the training subset
    # Independent reference: read the IDX file by hand (16-byte header, uint8 pixels).
    blob = (Path(REAL) / "MNIST" / "raw" / "train-images-idx3-ubyte").read_bytes()
    pixels = torch.frombuffer(bytearray(blob[16 : 16 + 500 * 784]), dtype=torch.uint8).float().reshape(500, 784) / 256
    assert torch.allclose(train.inputs, pixels - pixels.mean(0, keepdim=True), atol=1e-6)
    assert torch.equal(train.targets.argmax(1), train.labels)
    assert torch.allclose(train.targets.sum(1), torch.ones(500))


def test_missing_offline_names_files_url_and_variable(monkeypatch, tmp_path):
    """No data and no network: a DataError naming the expected files, the URL and SAMEDGE_DATA_DIR."""

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    monkeypatch.setattr("torchvision.datasets.utils.urllib.request.urlopen", offline, raising=False)
    with pytest.raises(data.DataError) as err:
        data.load_mnist(10, 10, data_dir=tmp_path)
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert data.MNIST_URL in msg and "SAMEDGE_DATA_DIR" in msg


def test_no_download_flag(tmp_path):
    """download=False on an empty directory fails at once with the missing files listed."""
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte"):
        data.load_mnist(10, 10, data_dir=tmp_path, download=False)


@needs_real
def test_truncated_file_rejected(tmp_path):
    """A truncated copy of a real file fails its checksum with a message naming the file."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in data.MNIST_FILES:
        src = Path(REAL) / "MNIST" / "raw" / f
        (raw / f).write_bytes(src.read_bytes()[:1000] if f.startswith("train-images") else src.read_bytes())
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte is corrupt or truncated"):
        data.load_mnist(10, 10, data_dir=tmp_path, download=False)


@pytest.mark.parametrize("n_train", [0, -1, 60001, 2.5])
def test_bad_sizes(n_train):
    """Sizes outside what MNIST has are a ValueError naming n_train."""
    with pytest.raises(ValueError, match="n_train"):
        data.load_mnist(n_train, 10)
