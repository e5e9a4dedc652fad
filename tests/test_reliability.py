"""Reliability: a run killed with SIGKILL resumes to the identical record; checkpoints are
plain tensors (weights_only); a diverging notebook still renders; corrupt data is refused."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from samedge.config import RunConfig
from samedge.data import DataError, verify_file
from samedge.loop import CHECKPOINT, run
from samedge.record import TIMING_COLUMNS

DATA = os.environ.get("SAMEDGE_DATA_DIR")
pytestmark = pytest.mark.skipif(not DATA or not (Path(DATA) / "MNIST" / "raw").is_dir(),
                                reason="set SAMEDGE_DATA_DIR to a directory holding MNIST/raw")
ROOT = Path(__file__).resolve().parents[1]

CFG = dict(task="mnist", eta=0.3, rho=0.05, steps=40, measure_every=3, seed=3, checkpoint_every=2,
           options=dict(n_train=128, n_test=32, width=16, depth=2))

# The child slows itself after each checkpoint, so the parent can kill it mid-run.
CHILD = """
import json, sys, time
import samedge.loop as loop
from samedge.config import RunConfig
save = loop._save_checkpoint
def slow_save(path, state):
    save(path, state)
    time.sleep(0.15)
loop._save_checkpoint = slow_save
loop.run(RunConfig(**json.loads(sys.argv[1])), sys.argv[2], progress=False)
"""


def test_sigkill_then_resume_is_identical(tmp_path):
    """SIGKILL in the middle, restart in the same directory: same rows and values as an
    uninterrupted run, no duplicate or missing steps."""
    cfg = RunConfig(**CFG)
    d = tmp_path / cfg.run_name()
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(CFG), str(d)], env=os.environ.copy())
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and child.poll() is None:
        ck = d / CHECKPOINT
        if ck.exists():
            try:
                step = torch.load(ck, weights_only=True)["step"]
            except Exception:  # caught between write and rename: try again
                step = 0
            if step >= 10:
                child.send_signal(signal.SIGKILL)
                child.wait()
                killed_at = step
                break
        time.sleep(0.02)
    assert killed_at is not None, "the child finished or hung before it could be killed"
    assert not (d / "summary.json").exists()
    resumed = run(cfg, d, progress=False)
    fresh = run(cfg, progress=False)
    a, b = resumed.frame.drop(columns=TIMING_COLUMNS), fresh.frame.drop(columns=TIMING_COLUMNS)
    assert a["step"].tolist() == list(range(0, 40, 3)) + [40]
    assert a.equals(b)
    assert not (d / CHECKPOINT).exists()


def test_checkpoint_loads_weights_only(tmp_path):
    """A checkpoint holds only tensors and plain containers: torch.load(weights_only=True) reads it."""
    cfg = RunConfig(**CFG)
    run(cfg, tmp_path, progress=False, stop_after=4)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["step"] == 4 and set(state["params"]) and isinstance(state["rows"], list)
    assert state["v"].ndim == 1


def test_wrong_checksum_rejected(tmp_path):
    """A file whose bytes do not match the expected sha256 is refused with a clear message."""
    f = tmp_path / "x.bin"
    f.write_bytes(b"not the file")
    with pytest.raises(DataError, match="is corrupt or truncated.*Delete it"):
        verify_file(f, "0" * 64, "test data")
    with pytest.raises(DataError, match="does not exist"):
        verify_file(tmp_path / "missing.bin", "0" * 64, "test data")


def test_diverging_notebook_still_renders(tmp_path):
    """papermill with a huge eta: the run is recorded as diverged and every cell still runs."""
    pm = pytest.importorskip("papermill")
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(ROOT / "book" / "mnist.ipynb"), str(out), cwd=str(ROOT / "book"), progress_bar=False,
                        parameters=dict(preset="smoke", eta=1e4, rhos=[0.0], results_dir=str(tmp_path / "res")))
    text = out.read_text()
    assert "GD diverged at step" in text and "Traceback" not in text
    summaries = list((tmp_path / "res").rglob("summary.json"))
    assert summaries and json.loads(summaries[0].read_text())["diverged"]
