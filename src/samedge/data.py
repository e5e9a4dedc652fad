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
    "load_cifar10",
    "cifar10_classes",
    "load_shakespeare",
    "random_crops",
    "verify_file",
    "one_hot",
]

DATA_DIR_ENV_VAR = "SAMEDGE_DATA_DIR"


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
    env = os.environ.get(DATA_DIR_ENV_VAR)
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
            f"expected {sha256[:16]}...). Delete it to download it again, or point {DATA_DIR_ENV_VAR} at a good copy."
        )
    _verified[key] = digest


def fetch_file(url: str, dest: Path, sha256: Optional[str] = None) -> None:
    """Download ``url`` to ``dest`` through a temporary file, verifying the checksum before the rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out)
        if sha256:
            h = hashlib.sha256(Path(tmp).read_bytes())
            if h.hexdigest() != sha256:
                raise DataError(
                    f"download of {url} has the wrong sha256 ({h.hexdigest()}, expected {sha256}); try again"
                )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _offline_error(what: str, root: Path, files: list, url: str, err: Exception) -> DataError:
    listing = "\n  ".join(str(root / f) for f in files)
    return DataError(
        f"{what} is not in {root} and could not be downloaded from {url} ({err}).\n"
        f"Expected files:\n  {listing}\n"
        f"Put them there, pass data_dir=..., or set the environment variable {DATA_DIR_ENV_VAR} to a directory that has them."
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
        raise _offline_error(
            "MNIST", root, [f"MNIST/raw/{f}" for f in missing], MNIST_URL, FileNotFoundError("download=False")
        )
    for f, digest in MNIST_FILES.items():
        verify_file(raw / f, digest, "MNIST")


def load_mnist(
    n_train: int = MNIST_TRAIN_SIZE,
    n_test: int = 10000,
    data_dir: Optional[str | os.PathLike] = None,
    download: bool = True,
) -> tuple[Split, Split]:
    """First ``n_train`` training and ``n_test`` test examples: pixels /256, centred by the
    training subset's per-pixel mean (both splits), flattened to 784; one-hot targets.

    This is the authors' preprocessing: ``mu = mean(train_batch, axis=0)`` over the full batch."""
    for name, n, top in (("n_train", n_train, MNIST_TRAIN_SIZE), ("n_test", n_test, MNIST_TEST_SIZE)):
        if not (isinstance(n, (int, np.integer)) and 1 <= n <= top) and not (name == "n_test" and n == 0):
            raise ValueError(f"{name} must be an integer in [1, {top}], got {n!r}")
    root = resolve_data_dir(data_dir)
    _ensure_mnist(root, download)
    from torchvision.datasets import MNIST

    train = MNIST(str(root), train=True, download=False)
    test = MNIST(str(root), train=False, download=False)
    xtr = train.data[:n_train].to(torch.get_default_dtype()).reshape(n_train, -1) / 256
    mean = xtr.mean(0, keepdim=True)
    xte = test.data[:n_test].to(torch.get_default_dtype()).reshape(n_test, -1) / 256
    ytr, yte = train.targets[:n_train], test.targets[:n_test]
    return (Split(xtr - mean, one_hot(ytr, 10), ytr), Split(xte - mean, one_hot(yte, 10), yte))


# --- CIFAR-10 (the official binary version) -------------------------------------------------

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # of the archive, checked by torchvision on download
CIFAR_DIR = "cifar-10-batches-bin"
CIFAR_RECORD = 3073  # 1 label byte, then 1024 R, 1024 G, 1024 B bytes (row-major 32x32)
CIFAR_PER_BATCH, CIFAR_TEST_SIZE = 10000, 10000
CIFAR_TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
CIFAR_TRAIN_SIZE = CIFAR_PER_BATCH * len(CIFAR_TRAIN_FILES)
CIFAR_TEST_FILE, CIFAR_META_FILE = "test_batch.bin", "batches.meta.txt"
# SHA-256 of the official files (as extracted from the archive above). test_batch.bin may also
# be the offline mirror's partial copy (its first 1000 images), accepted by its own sum or,
# for any other partial copy, by its structure (a whole number of valid records).
CIFAR_SHA256 = {
    "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
    "test_batch.bin": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
    "batches.meta.txt": "2ce042b1e0b48db4bb214408e6414ba18b2731c24af244f2d6c112fddf31af00",
}
CIFAR_TEST_MIRROR_SHA256 = "8314c96d7cd65618193bab23acdd5d4c4af15bf6dd00a1781d55beedf3be1ef5"


def _check_cifar_test_file(path: Path) -> int:
    """Number of images in test_batch.bin, after checking it is the official file, the offline
    mirror's partial copy, or at least a whole number of valid records (a partial split)."""
    if not path.is_file():
        raise DataError(f"CIFAR-10: expected file {path} does not exist")
    size = path.stat().st_size
    n = size // CIFAR_RECORD
    if size == 0 or size % CIFAR_RECORD:
        raise DataError(
            f"CIFAR-10: {path} is corrupt or truncated ({size} bytes, not a positive multiple of the "
            f"{CIFAR_RECORD}-byte record). Delete it to download it again, or point {DATA_DIR_ENV_VAR} at a good copy."
        )
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    digest = _verified.get(key) or sha256_of(path)
    _verified[key] = digest
    if digest in (CIFAR_SHA256[CIFAR_TEST_FILE], CIFAR_TEST_MIRROR_SHA256):
        return n
    if n >= CIFAR_TEST_SIZE:  # as long as the official file but a different sum: corrupt
        raise DataError(
            f"CIFAR-10: {path} is corrupt ({size} bytes, sha256 {digest[:16]}..., expected "
            f"{CIFAR_SHA256[CIFAR_TEST_FILE][:16]}...). Delete it to download it again, or point {DATA_DIR_ENV_VAR} at a good copy."
        )
    labels = np.frombuffer(path.read_bytes(), dtype=np.uint8).reshape(n, CIFAR_RECORD)[:, 0]
    if labels.max() > 9:
        raise DataError(f"CIFAR-10: {path} is corrupt (a label byte is {int(labels.max())}, not a class 0-9)")
    return n


def _download_cifar(root: Path) -> None:
    """Download and extract the official archive (md5-checked by torchvision) in a temporary
    folder, then move the files missing from ``root/cifar-10-batches-bin`` there (each through a
    temporary name). Nothing is written under ``root`` unless the download succeeded."""
    from torchvision.datasets.utils import download_and_extract_archive

    tmp = Path(tempfile.mkdtemp(prefix="samedge-cifar-10-"))
    try:
        download_and_extract_archive(CIFAR_URL, download_root=str(tmp), md5=CIFAR_MD5, remove_finished=True)
        dest = root / CIFAR_DIR
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted((tmp / CIFAR_DIR).iterdir()):
            if not (dest / f.name).exists():
                part = dest / (f.name + ".part")
                shutil.move(str(f), str(part))
                os.replace(part, dest / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_cifar(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` records of a binary CIFAR-10 file: uint8 images (n, 3, 32, 32), labels (n,)."""
    with open(path, "rb") as f:
        blob = f.read(n * CIFAR_RECORD)
    rec = np.frombuffer(blob, dtype=np.uint8).reshape(n, CIFAR_RECORD)
    return rec[:, 1:].reshape(n, 3, 32, 32), rec[:, 0]


def load_cifar10(
    n_train: int = CIFAR_TRAIN_SIZE,
    n_test: int = 10000,
    data_dir: Optional[str | os.PathLike] = None,
    download: bool = True,
) -> tuple[Split, Split]:
    """First ``n_train`` training images (data_batch_1, then 2..5) and first ``n_test`` test images
    of the official binary CIFAR-10: pixels /256, centred by the training subset's per-pixel mean
    (both splits), NCHW float tensors (n, 3, 32, 32); one-hot targets, class indices as labels.

    The files are read from ``<data dir>/cifar-10-batches-bin/``; missing ones are downloaded
    there (the official archive, md5-checked) unless ``download=False``. Asking for more images
    than the files present hold is a DataError, never a silent shortfall."""
    top_train = CIFAR_TRAIN_SIZE
    for name, n, top in (("n_train", n_train, top_train), ("n_test", n_test, CIFAR_TEST_SIZE)):
        if not (isinstance(n, (int, np.integer)) and 1 <= n <= top) and not (name == "n_test" and n == 0):
            raise ValueError(f"{name} must be an integer in [1, {top}], got {n!r}")
    root = resolve_data_dir(data_dir)
    folder = root / CIFAR_DIR
    train_files = CIFAR_TRAIN_FILES[: -(-n_train // CIFAR_PER_BATCH)]
    needed = train_files + ([CIFAR_TEST_FILE] if n_test else []) + [CIFAR_META_FILE]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        err: Exception = FileNotFoundError("download=False")
        if download:
            try:
                _download_cifar(root)
            except (urllib.error.URLError, OSError, RuntimeError) as e:
                err = e
            missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        leading = 0  # training images available in order: data_batch_1, 2, ... without a gap
        while leading < len(CIFAR_TRAIN_FILES) and (folder / CIFAR_TRAIN_FILES[leading]).is_file():
            leading += 1
        if leading and all(f in CIFAR_TRAIN_FILES for f in missing):  # only further training batches lack
            have = CIFAR_PER_BATCH * leading
            raise DataError(
                f"CIFAR-10: n_train={n_train} asks for more training images than {folder} holds: only {have} "
                f"({', '.join(CIFAR_TRAIN_FILES[:leading])}), and the rest could not be downloaded from "
                f"{CIFAR_URL} ({err}). Use n_train <= {have}, or put the official {', '.join(missing)} there "
                f"(or point {DATA_DIR_ENV_VAR} at a directory that has them)."
            )
        raise _offline_error("CIFAR-10", root, [f"{CIFAR_DIR}/{f}" for f in missing], CIFAR_URL, err)
    for f in train_files + [CIFAR_META_FILE]:
        verify_file(folder / f, CIFAR_SHA256[f], "CIFAR-10")
    have_test = _check_cifar_test_file(folder / CIFAR_TEST_FILE) if n_test else 0
    if n_test > have_test:
        raise DataError(
            f"CIFAR-10: n_test={n_test} asks for more test images than {folder / CIFAR_TEST_FILE} holds "
            f"(only {have_test}: a partial copy of the test split). Use n_test <= {have_test}, or replace it "
            f"by the official test_batch.bin from {CIFAR_URL}."
        )
    xs, ys = [], []
    for i, f in enumerate(train_files):
        x, y = _read_cifar(folder / f, min(CIFAR_PER_BATCH, n_train - i * CIFAR_PER_BATCH))
        xs.append(x)
        ys.append(y)
    dt = torch.get_default_dtype()
    xtr = torch.from_numpy(np.concatenate(xs)).to(dt) / 256
    ytr = torch.from_numpy(np.concatenate(ys).astype(np.int64))
    mean = xtr.mean(0, keepdim=True)  # the authors' mu = mean(train_batch, axis=0)
    if n_test:
        x, y = _read_cifar(folder / CIFAR_TEST_FILE, n_test)
        xte, yte = torch.from_numpy(x.copy()).to(dt) / 256, torch.from_numpy(y.astype(np.int64))
    else:
        xte, yte = torch.zeros(0, 3, 32, 32, dtype=dt), torch.zeros(0, dtype=torch.int64)
    return Split(xtr - mean, one_hot(ytr, 10), ytr), Split(xte - mean, one_hot(yte, 10), yte)


def cifar10_classes(data_dir: Optional[str | os.PathLike] = None) -> list:
    """Class names from ``batches.meta.txt`` (verified), index = label."""
    path = resolve_data_dir(data_dir) / CIFAR_DIR / CIFAR_META_FILE
    verify_file(path, CIFAR_SHA256[CIFAR_META_FILE], "CIFAR-10")
    return [line for line in path.read_text().splitlines() if line.strip()]


# --- tiny_shakespeare -----------------------------------------------------------------------

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_FILE = "tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_TEST_LINES = 10000  # the paper holds out the last 10000 lines
VOCAB_SIZE, PAD = 128, 0  # ASCII codepoints as tokens; 0 is reserved for padding


def load_shakespeare(
    data_dir: Optional[str | os.PathLike] = None,
    download: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """tiny_shakespeare as two 1-D int64 token tensors (ASCII codepoints): the training text and
    the test text (its last 10000 lines). Read from ``<data dir>/tinyshakespeare/input.txt``,
    else downloaded there (sha256-checked) unless ``download=False``."""
    root = resolve_data_dir(data_dir)
    path = root / SHAKESPEARE_FILE
    if not path.is_file():
        err: Exception = FileNotFoundError("download=False")
        if download:
            try:
                fetch_file(SHAKESPEARE_URL, path, sha256=SHAKESPEARE_SHA256)
            except (urllib.error.URLError, OSError) as e:
                err = e
        if not path.is_file():
            raise _offline_error("tiny_shakespeare", root, [SHAKESPEARE_FILE], SHAKESPEARE_URL, err)
    verify_file(path, SHAKESPEARE_SHA256, "tiny_shakespeare")
    lines = path.read_bytes().splitlines(keepends=True)
    train = b"".join(lines[:-SHAKESPEARE_TEST_LINES])
    test = b"".join(lines[-SHAKESPEARE_TEST_LINES:])
    as_tokens = lambda b: torch.from_numpy(np.frombuffer(b, dtype=np.uint8).astype(np.int64))
    return as_tokens(train), as_tokens(test)


def random_crops(
    tokens: torch.Tensor, num: int, sequence_length: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` crops of ``sequence_length + 1`` tokens at uniformly random offsets drawn with
    ``gen``: inputs = crop[:-1], targets = crop[1:], each (num, sequence_length)."""
    span = sequence_length + 1
    if len(tokens) < span:
        raise DataError(f"text of {len(tokens)} tokens is shorter than one crop of {span}")
    starts = torch.randint(0, len(tokens) - span + 1, (num,), generator=gen)
    crops = tokens[(starts[:, None] + torch.arange(span)[None, :]).to(tokens.device)]
    return crops[:, :-1], crops[:, 1:]
