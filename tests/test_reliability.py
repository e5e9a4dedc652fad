"""Reliability: a run killed with SIGKILL (mid-run or during its final write) resumes to the
identical record, keeping every checkpointed row; one writer per run directory, and a killed
writer leaves no stale lock; a full disk or a read-only directory is a clear error that leaves
the previous state loadable; checkpoints are plain tensors (weights_only); a diverging notebook
still renders; corrupt data is refused."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from samedge.columns import TIMING_COLUMNS
from samedge.config import RunConfig
from samedge.data import DataError, verify_file
from samedge.loop import CHECKPOINT, run
from samedge.record import RunRecord
from samedge.rundir import LOCK, RunDirBusyError, RunDirWriteError, RunLock

DATA = os.environ.get("SAMEDGE_DATA_DIR")
pytestmark = pytest.mark.skipif(
    not DATA or not (Path(DATA) / "MNIST" / "raw").is_dir(),
    reason="set SAMEDGE_DATA_DIR to a directory holding MNIST/raw",
)
ROOT = Path(__file__).resolve().parents[1]

CFG = dict(
    task="mnist",
    eta=0.3,
    rho=0.05,
    steps=40,
    measure_every=3,
    seed=3,
    checkpoint_every=2,
    options=dict(n_train=128, n_test=32, width=16, depth=2),
)

# The child slows itself after each checkpoint, so the parent can kill it mid-run.
CHILD = """
import json, sys, time
import samedge.loop as loop
import samedge.rundir as rundir
from samedge.config import RunConfig
save = rundir.save_checkpoint
def slow_save(path, state):
    save(path, state)
    time.sleep(0.15)
rundir.save_checkpoint = slow_save
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
    assert (d / LOCK).exists()  # the killed child's lock file is left: it must not block the restart
    saved = torch.load(d / CHECKPOINT, weights_only=True)
    resumed = run(cfg, d, progress=False)
    fresh = run(cfg, progress=False)
    a, b = resumed.frame.drop(columns=TIMING_COLUMNS), fresh.frame.drop(columns=TIMING_COLUMNS)
    assert a["step"].tolist() == list(range(0, 40, 3)) + [40]
    assert a.equals(b)
    assert not (d / CHECKPOINT).exists()
    kept = resumed.rows[: len(saved["rows"])]  # the rows the killed run had computed, timings included
    assert len(saved["rows"]) >= 4 and kept == saved["rows"]


# The child stops for good (until killed) just before renaming the temporary file onto argv[3]
# during the final save: the kill lands mid-write of record.csv, or between it and summary.json.
FINAL_CHILD = """
import json, os, sys, time
from pathlib import Path
import samedge.loop as loop
from samedge.config import RunConfig
replace = os.replace
def stalled_replace(src, dst):
    if Path(dst).name == sys.argv[3]:
        Path(sys.argv[4]).write_text("at the rename")
        time.sleep(600)
    replace(src, dst)
os.replace = stalled_replace
loop.run(RunConfig(**json.loads(sys.argv[1])), sys.argv[2], progress=False)
"""


@pytest.mark.parametrize("target", ["record.csv", "summary.json"])
def test_sigkill_during_final_write(tmp_path, target):
    """SIGKILL while the finished run writes record.csv (its temporary file written, not renamed)
    or after record.csv but before summary.json: the restart cleans the temporary file, resumes
    from the last checkpoint (its rows kept verbatim, timings too) and gives the uninterrupted
    record; the directory is never taken for a finished run in between."""
    kw = dict(CFG, steps=12, checkpoint_every=5)  # checkpoints at 5 and 10; measurements 0, 3, ..., 12
    cfg = RunConfig(**kw)
    d, marker = tmp_path / cfg.run_name(), tmp_path / "marker"
    child = subprocess.Popen(
        [sys.executable, "-c", FINAL_CHILD, json.dumps(kw), str(d), target, str(marker)], env=os.environ.copy()
    )
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None and not marker.exists():
        time.sleep(0.02)
    assert marker.exists(), f"the child ended (rc {child.poll()}) or hung before its final write"
    child.send_signal(signal.SIGKILL)
    child.wait()
    names = sorted(p.name for p in d.iterdir())
    assert "summary.json" not in names and any(n.startswith(target + ".") and n.endswith(".tmp") for n in names)
    assert ("record.csv" in names) == (target == "summary.json")
    saved = torch.load(d / CHECKPOINT, weights_only=True)
    assert saved["step"] == 10
    with pytest.raises(Exception, match="summary.json is damaged: it is missing"):
        RunRecord.load(d)  # not a finished run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = run(cfg, d, progress=False)
    assert any("final save was cut short; resuming from its checkpoint" in str(w.message) for w in caught) == (
        target == "summary.json"
    )
    fresh = run(cfg, progress=False)
    a, b = resumed.frame.drop(columns=TIMING_COLUMNS), fresh.frame.drop(columns=TIMING_COLUMNS)
    assert a["step"].tolist() == [0, 3, 6, 9, 12] and a.equals(b)
    assert resumed.rows[: len(saved["rows"])] == saved["rows"] and len(saved["rows"]) == 4
    assert sorted(p.name for p in d.iterdir()) == [LOCK, "config.json", "record.csv", "summary.json"]
    assert RunRecord.load(d).frame.equals(resumed.frame)


# Slowed like CHILD; prints the finished record's train_seconds, which no rerun would reproduce.
WRITER = CHILD.replace("loop.run(", "rec = loop.run(") + "print(json.dumps(rec.summary['train_seconds']))\n"


def test_second_writer_fails_or_waits(tmp_path):
    """Two real processes on one run directory: while the first runs, a second run() fails at
    once with RunDirBusyError naming the holder's pid; with lock_timeout it waits, and then
    returns the first one's finished record (reloaded, not recomputed)."""
    cfg = RunConfig(**CFG)
    d = tmp_path / cfg.run_name()
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, json.dumps(CFG), str(d)],
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None and not (d / CHECKPOINT).exists():
        time.sleep(0.02)
    assert child.poll() is None, "the first writer ended before the second could try"
    with pytest.raises(RunDirBusyError, match=rf"{d} is being written by another process \(pid {child.pid} on "):
        run(cfg, d, progress=False)
    assert child.poll() is None  # the refusal did not disturb the first writer
    rec = run(cfg, d, progress=False, lock_timeout=300)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    assert rec.summary["train_seconds"] == json.loads(out.strip().splitlines()[-1])
    assert rec.frame.equals(RunRecord.load(d).frame)


HOLD_AND_DIE = """
import os, signal, sys
from pathlib import Path
from samedge.rundir import RunLock
with RunLock(Path(sys.argv[1])):
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_no_stale_lock_after_sigkill(tmp_path):
    """A writer SIGKILLed while holding the lock leaves the lock file but no lock: the next
    writer takes it at once (timeout 0), and a held lock is refused within the process too."""
    d = tmp_path / "run"
    rc = subprocess.run([sys.executable, "-c", HOLD_AND_DIE, str(d)], env=os.environ.copy()).returncode
    assert rc == -signal.SIGKILL and "pid" in (d / LOCK).read_text()
    with RunLock(d, timeout=0):
        with pytest.raises(RunDirBusyError, match=f"pid {os.getpid()} on"):
            with RunLock(d, timeout=0):
                pass
    with RunLock(d, timeout=0):  # released on exit
        pass


@contextlib.contextmanager
def small_disk(path: Path, size: str = "1m"):
    """A tmpfs of ``size`` mounted at ``path`` (root only; the test is skipped otherwise)."""
    path.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small filesystem to fill")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({r.stderr.strip()}); run as root to test a full disk")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up to ``leave`` free bytes (tmpfs counts whole pages exactly)."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (st.f_bavail * st.f_frsize - leave))
    return filler


def test_disk_full_during_checkpoint(tmp_path):
    """ENOSPC while writing a checkpoint (for real, on a full tmpfs): RunDirWriteError naming
    the file and 'free space'; the previous checkpoint is intact and no temporary file is left;
    once space is freed the run resumes from it to the uninterrupted record."""
    kw = dict(CFG, steps=12, checkpoint_every=2)
    cfg = RunConfig(**kw)
    with small_disk(tmp_path / "disk") as disk:
        d = disk / cfg.run_name()
        run(cfg, d, progress=False, stop_after=4)
        before = (d / CHECKPOINT).read_bytes()
        assert len(before) > 8 * 4096
        filler = fill(disk, leave=4096)  # a page for config.json, none for a checkpoint
        with pytest.raises(
            RunDirWriteError,
            match=rf"could not write {d}/checkpoint.pt: the disk holding {d} is full "
            r"\(No space left on device\); free space there",
        ):
            run(cfg, d, progress=False)
        assert (d / CHECKPOINT).read_bytes() == before and not list(d.glob("*.tmp"))
        assert torch.load(d / CHECKPOINT, weights_only=True)["step"] == 4
        filler.unlink()
        resumed = run(cfg, d, progress=False)
    fresh = run(cfg, progress=False)
    assert resumed.frame.drop(columns=TIMING_COLUMNS).equals(fresh.frame.drop(columns=TIMING_COLUMNS))


def test_disk_full_during_record_write(tmp_path):
    """ENOSPC while writing record.csv at the end: RunDirWriteError saying 'free space'; no
    record.csv or summary.json (so the run is not taken for finished), the last checkpoint
    (step 20 of 20) loads; after freeing space the rerun gives the uninterrupted record."""
    kw = dict(CFG, steps=20, measure_every=1, checkpoint_every=5)  # 21 rows: record.csv > one 4 KiB page
    cfg = RunConfig(**kw)
    with small_disk(tmp_path / "disk") as disk:
        d = disk / cfg.run_name()
        run(cfg, d, progress=False, stop_after=20)
        before = (d / CHECKPOINT).read_bytes()
        filler = fill(disk, leave=4096)  # a page: config.json can be rewritten, record.csv cannot
        with pytest.raises(
            RunDirWriteError,
            match=rf"could not write {d}/record.csv: the disk holding {d} is full"
            r".*free space there .*Files saved before are unchanged",
        ):
            run(cfg, d, progress=False)
        assert sorted(p.name for p in d.iterdir()) == [LOCK, CHECKPOINT, "config.json"]
        assert (d / CHECKPOINT).read_bytes() == before
        assert torch.load(d / CHECKPOINT, weights_only=True)["step"] == 20
        other = RunConfig(**dict(kw, seed=9))  # a new run on the full disk fails at its first write
        with pytest.raises(
            RunDirWriteError, match=rf"could not write {disk / other.run_name()}/config.json: .*free space"
        ):
            run(other, disk / other.run_name(), progress=False)
        filler.unlink()
        resumed = run(cfg, d, progress=False)
    fresh = run(cfg, progress=False)
    assert len(fresh.rows) == 21
    assert resumed.frame.drop(columns=TIMING_COLUMNS).equals(fresh.frame.drop(columns=TIMING_COLUMNS))


def test_read_only_results_dir(tmp_path):
    """On a read-only filesystem (a remounted tmpfs: root ignores chmod) a finished run reloads
    (reading takes no lock); an unfinished or new run is RunDirWriteError 'not writable', and
    the checkpoint there is untouched."""
    done, part, new = (RunConfig(**dict(CFG, steps=6, seed=s)) for s in (1, 2, 3))
    with small_disk(tmp_path / "disk") as disk:
        first = run(done, disk / done.run_name(), progress=False)
        run(part, disk / part.run_name(), progress=False, stop_after=4)
        ck = (disk / part.run_name() / CHECKPOINT).read_bytes()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        assert run(done, disk / done.run_name(), progress=False).frame.equals(first.frame)
        for c in (part, new):
            with pytest.raises(
                RunDirWriteError,
                match=r"is not writable \(Read-only file system\); make it "
                r"writable or choose another results directory",
            ):
                run(c, disk / c.run_name(), progress=False)
        assert (disk / part.run_name() / CHECKPOINT).read_bytes() == ck


def test_checkpoint_loads_weights_only(tmp_path):
    """A checkpoint holds only tensors and plain containers: torch.load(weights_only=True) reads it."""
    cfg = RunConfig(**CFG)
    run(cfg, tmp_path, progress=False, stop_after=4)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["step"] == 4 and set(state["params"]) and isinstance(state["rows"], list)
    assert set(state["warm"]) == {"train", "eval", "ascent", "sam_map"} and state["warm"]["train"].ndim == 1


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
    pm.execute_notebook(
        str(ROOT / "book" / "mnist.ipynb"),
        str(out),
        cwd=str(ROOT / "book"),
        progress_bar=False,
        parameters=dict(preset="smoke", eta=1e4, rhos=[0.0], results_dir=str(tmp_path / "res")),
    )
    text = out.read_text()
    assert "GD diverged at step" in text and "Traceback" not in text
    summaries = list((tmp_path / "res").rglob("summary.json"))
    assert summaries and json.loads(summaries[0].read_text())["diverged"]
