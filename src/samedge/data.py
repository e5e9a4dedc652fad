"""Datasets of the paper's experiments, resolved from a local directory or downloaded.

Data directory, in order: the ``data_dir`` argument, the ``SAMEDGE_DATA_DIR`` environment
variable, else a per-user cache (``$XDG_CACHE_HOME/samedge/data``, default ``~/.cache``).
Files are checked against known SHA-256 sums before use; a download goes to a temporary name
and is renamed only once verified.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

__all__ = [
    "DataError",
    "Split",
    "resolve_data_dir",
    "load_mnist",
    "verify_file",
    "one_hot",
]

ENV_VAR = "SAMEDGE_DATA_DIR"


class DataError(RuntimeError):
    """A dataset is missing, incomplete or corrupt; the message says how to fix it."""


@dataclass
class Split:
    """Inputs and targets of one split; ``labels`` are class indices (or tokens) when meaningful."""

    inputs: torch.Tensor
    targets: torch.Tensor
    labels: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.inputs)

    def to(self, device: torch.device | str, dtype: Optional[torch.dtype] = None) -> "Split":
        """Move to ``device`` (floating tensors also to ``dtype``)."""
        def mv(t):
            if t is None:
                return None
            return t.to(device=device, dtype=dtype) if (dtype is not None and t.is_floating_point()) else t.to(device)
        return Split(mv(self.inputs), mv(self.targets), mv(self.labels))


def resolve_data_dir(data_dir: Optional[str | os.PathLike] = None) -> Path:
    """The data directory: argument, else $SAMEDGE_DATA_DIR, else the per-user cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "samedge" / "data"


def sha256_of(path: Path) -> str:
    """SHA-256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_verified: dict = {}  # (path, size, mtime) -> sha256: hash each file once per process


def verify_file(path: Path, sha256: str, what: str) -> None:
    """Raise DataError if ``path`` is missing or its SHA-256 is not ``sha256``."""
    if not path.is_file():
        raise DataError(f"{what}: expected file {path} does not exist")
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    digest = _verified.get(key) or sha256_of(path)
    if digest != sha256:
        raise DataError(
            f"{what}: {path} is corrupt or truncated ({st.st_size} bytes, sha256 {digest[:16]}..., "
            f"expected {sha256[:16]}...). Delete it to download it again, or point {ENV_VAR} at a good copy."
        )
    _verified[key] = digest


def download(url: str, dest: Path, sha256: Optional[str] = None, md5: Optional[str] = None) -> None:
    """Download ``url`` to ``dest`` through a temporary file, verifying the checksum before the rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out)
        for algo, want in (("sha256", sha256), ("md5", md5)):
            if want:
                h = hashlib.new(algo)
                h.update(Path(tmp).read_bytes())
                if h.hexdigest() != want:
                    raise DataError(f"download of {url} has the wrong {algo} ({h.hexdigest()}, expected {want}); try again")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _offline_error(what: str, root: Path, files: list, url: str, err: Exception) -> DataError:
    listing = "\n  ".join(str(root / f) for f in files)
    return DataError(
        f"{what} is not in {root} and could not be downloaded from {url} ({err}).\n"
        f"Expected files:\n  {listing}\n"
        f"Put them there, pass data_dir=..., or set the environment variable {ENV_VAR} to a directory that has them."
    )


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float one-hot targets for the squared loss."""
    return torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.get_default_dtype())


# --- MNIST ---------------------------------------------------------------------------------

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = {  # the original IDX files, uncompressed, as torchvision.datasets.MNIST stores them
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_TRAIN_SIZE, MNIST_TEST_SIZE = 60000, 10000


def _ensure_mnist(root: Path, download_ok: bool) -> None:
    raw = root / "MNIST" / "raw"
    missing = [f for f in MNIST_FILES if not (raw / f).is_file()]
    if missing and download_ok:
        from torchvision.datasets import MNIST

        try:  # torchvision downloads the .gz files with its own md5 checks, then extracts them
            MNIST(str(root), train=True, download=True)
            MNIST(str(root), train=False, download=True)
        except (urllib.error.URLError, OSError, RuntimeError) as err:
            raise _offline_error("MNIST", root, [f"MNIST/raw/{f}" for f in MNIST_FILES], MNIST_URL, err) from err
    elif missing:
        raise _offline_error("MNIST", root, [f"MNIST/raw/{f}" for f in missing], MNIST_URL, FileNotFoundError("download=False"))
    for f, digest in MNIST_FILES.items():
        verify_file(raw / f, digest, "MNIST")


def load_mnist(
    n_train: int = 60000,
    n_test: int = 10000,
    data_dir: Optional[str | os.PathLike] = None,
    download: bool = True,
) -> tuple[Split, Split]:
    """First ``n_train`` training and ``n_test`` test examples: pixels /256, centred by the
    training subset's mean pixel, flattened to 784; one-hot targets (the authors' preprocessing)."""
    for name, n, top in (("n_train", n_train, MNIST_TRAIN_SIZE), ("n_test", n_test, MNIST_TEST_SIZE)):
        if not (isinstance(n, (int, np.integer)) and 1 <= n <= top) and not (name == "n_test" and n == 0):
            raise ValueError(f"{name} must be an integer in [1, {top}], got {n!r}")
    root = resolve_data_dir(data_dir)
    _ensure_mnist(root, download)
    from torchvision.datasets import MNIST

    train = MNIST(str(root), train=True, download=False)
    test = MNIST(str(root), train=False, download=False)
    xtr = train.data[:n_train].to(torch.get_default_dtype()).reshape(n_train, -1) / 256
    mean = xtr.mean()
    xte = test.data[:n_test].to(torch.get_default_dtype()).reshape(n_test, -1) / 256
    ytr, yte = train.targets[:n_train], test.targets[:n_test]
    return (Split(xtr - mean, one_hot(ytr, 10), ytr), Split(xte - mean, one_hot(yte, 10), yte))
