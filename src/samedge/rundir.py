"""The files of one run directory: errors that name the file and the fix, atomic writes that
survive a full disk, checkpoint reading that refuses damaged files, and the one-writer lock.

A run directory holds ``config.json`` (written when the run starts), ``checkpoint.pt`` (while
it runs), ``record.csv`` and then ``summary.json`` (written last: its presence marks a finished
run) and the lock file ``.lock``. What the record must contain is checked in ``record``."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

import torch

from . import files

__all__ = [
    "RunDirError",
    "DamagedRunError",
    "RunDirBusyError",
    "RunDirWriteError",
    "CONFIG",
    "RECORD",
    "SUMMARY",
    "CHECKPOINT",
    "LOCK",
    "RunLock",
    "damaged",
    "atomic_write_text",
    "atomic_write_bytes",
    "save_checkpoint",
    "load_checkpoint",
    "is_finished",
    "prepare_run_dir",
    "read_config",
    "check_fingerprint",
    "remove_temporaries",
]

CONFIG, RECORD, SUMMARY, CHECKPOINT, LOCK = "config.json", "record.csv", "summary.json", "checkpoint.pt", ".lock"
_FINGERPRINT = re.compile(r"-([0-9a-f]{10})$")  # RunConfig.run_name() ends with -<fingerprint>


class RunDirError(RuntimeError):
    """A run directory cannot be used as asked (it holds another configuration, is a file, ...);
    the message names the path, what is wrong and the fix."""


class DamagedRunError(RunDirError):
    """A file in a run directory is unreadable, mistyped or inconsistent with the others
    (``path``: the file; ``what``: what is wrong with it)."""

    def __init__(self, message: str, path: Optional[Path] = None, what: str = ""):
        super().__init__(message)
        self.path, self.what = path, what


class RunDirBusyError(RunDirError):
    """Another process is writing this run directory."""


class RunDirWriteError(RunDirError, files.WriteError):
    """A file of the run could not be written (disk full, read-only or unwritable directory);
    what was saved before is intact."""


def damaged(path: Path, what: str, fix: Optional[str] = None) -> DamagedRunError:
    """The error for a damaged ``path``: what is wrong and (by default) delete the directory."""
    fix = fix or f"delete the run directory {path.parent} to recompute the run"
    return DamagedRunError(f"{path} is damaged: {what}; {fix}", path, what)


def _write_error(path: Path, err: OSError) -> RunDirWriteError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        how = (
            f"the disk holding {path.parent} is full ({err.strerror}); free space there (or point the "
            "results directory elsewhere) and run again: the run resumes from its last checkpoint"
        )
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        how = (
            f"{path.parent} is not writable ({err.strerror}); make it writable or choose another results "
            "directory (finished runs can be read from a read-only directory)"
        )
    else:
        how = f"{err.strerror or err}; check the directory {path.parent}"
    return RunDirWriteError(f"could not write {path}: {how}. Files saved before are unchanged.")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``files.atomic_write_bytes`` with a run directory's error (RunDirWriteError)."""
    files.atomic_write_bytes(path, data, _write_error)


def atomic_write_text(path: Path, text: str) -> None:
    """``files.atomic_write_text`` with a run directory's error (RunDirWriteError)."""
    files.atomic_write_text(path, text, _write_error)


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Save ``state`` (tensors and plain containers) atomically; serialised in memory first so
    that a full disk surfaces as an OSError on our write, not inside torch's zip writer."""
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(
    path: Path, device: str, keys: Iterable[str], like: Mapping[str, torch.Tensor], fingerprint: str
) -> Dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` for the configuration ``fingerprint``:
    exactly ``keys`` plus 'fingerprint', 'params' shaped like ``like`` and a 'generator' state.
    Anything else (truncated or garbage bytes, other keys, another run's checkpoint) raises
    DamagedRunError naming the file; the returned dict has no 'fingerprint' key."""
    path = Path(path)
    fix = f"delete {path} to restart the run from step 0 (or pass on_damaged_checkpoint='restart')"
    try:
        saved = torch.load(path, weights_only=True, map_location=device)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad bytes
        # Only torch's first sentence: the rest advises weights_only=False, unsafe for a file of unknown origin.
        first = str(err).split(". ")[0].strip()[:120]
        raise damaged(path, f"it cannot be read as a checkpoint ({type(err).__name__}: {first})", fix) from None
    if not isinstance(saved, dict):
        raise damaged(path, f"it holds a {type(saved).__name__}, not a checkpoint dict", fix)
    want = set(keys) | {"fingerprint", "params", "generator"}
    if set(saved) != want:
        missing, extra = sorted(want - set(saved)), sorted(set(saved) - want)
        raise damaged(
            path,
            f"its keys are wrong (missing {missing}, unexpected {extra}); it was written by "
            "another version of samedge or by another program",
            fix,
        )
    if saved.pop("fingerprint") != fingerprint:
        raise damaged(path, f"it belongs to another configuration (fingerprint not {fingerprint})", fix)
    params, gen = saved["params"], saved["generator"]
    if (
        not isinstance(params, dict)
        or set(params) != set(like)
        or any(
            not isinstance(params[k], torch.Tensor)
            or params[k].shape != like[k].shape
            or params[k].dtype != like[k].dtype
            for k in like
        )
    ):
        raise damaged(path, "its parameters do not match the model's names, shapes and dtypes", fix)
    if not isinstance(gen, torch.Tensor) or gen.dtype != torch.uint8:
        raise damaged(path, "its random generator state is not a byte tensor", fix)
    saved["generator"] = gen.cpu()
    step = saved.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0 or not isinstance(saved.get("rows"), list):
        raise damaged(path, f"its step ({step!r}) or rows are not a non-negative int and a list", fix)
    return saved


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run: its summary.json, written last, marks one (loading
    the record then checks the rest)."""
    return (Path(run_dir) / SUMMARY).is_file()


def prepare_run_dir(run_dir: Path) -> None:
    """Refuse a ``run_dir`` that is a file or lies under a file (a clear RunDirError, not a bare
    FileExistsError); it need not exist yet (it is created when the run starts)."""
    for p in [run_dir, *run_dir.parents]:
        if p.exists():
            if not p.is_dir():
                what = "the run directory" if p == run_dir else f"a parent of the run directory {run_dir}"
                raise RunDirError(
                    f"{p} is a file, not a directory, but it is {what}; move or delete that file, "
                    "or choose another results directory"
                )
            return


def read_config(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The configuration dict saved in ``run_dir/config.json``; None for a directory no run has
    written to yet. A damaged config.json, or run files without one, raise DamagedRunError."""
    meta = run_dir / CONFIG
    if not meta.exists():
        orphans = [n for n in (RECORD, SUMMARY, CHECKPOINT) if (run_dir / n).exists()]
        if orphans:
            raise damaged(meta, f"it is missing, so nothing tells which configuration made {orphans}")
        return None
    try:
        saved = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise damaged(meta, f"it is not valid JSON ({err})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise damaged(meta, "it has no 'config' object")
    if not isinstance(saved.get("env", {}), dict):
        raise damaged(meta, "its 'env' entry is not an object")
    return saved


def check_fingerprint(run_dir: Path, fingerprint: str) -> None:
    """A directory named ``...-<fingerprint>`` (as RunConfig.run_name() names it) must hold that
    configuration: a renamed directory or a replaced config.json is refused."""
    m = _FINGERPRINT.search(run_dir.name)
    if not m or m.group(1) == fingerprint:
        return
    if (run_dir / CONFIG).exists():
        raise damaged(
            run_dir / CONFIG,
            f"the directory name says configuration {m.group(1)} but the configuration "
            f"has fingerprint {fingerprint} (a renamed directory or a replaced config.json)",
        )
    raise RunDirError(
        f"{run_dir} is named for configuration {m.group(1)}, but this run's configuration has "
        f"fingerprint {fingerprint}: name the directory RunConfig.run_name() (or use a name that does "
        "not end in -<10 hex digits>)"
    )


def remove_temporaries(run_dir: Path) -> None:
    """Delete the temporary files of writes cut short by a killed writer (call under the lock)."""
    for p in run_dir.glob("*.tmp"):
        p.unlink(missing_ok=True)


class RunLock:
    """One writer per run directory: an exclusive ``flock`` on ``run_dir/.lock``, held from
    ``__enter__`` to ``__exit__``. The kernel drops it when its holder exits or is killed, so a
    SIGKILLed writer leaves no stale lock. A second writer waits up to ``timeout`` seconds
    (0: not at all) and then raises RunDirBusyError naming the holder's pid and host. The lock
    file stays (removing it would let two writers lock two different files)."""

    def __init__(self, run_dir: Path, timeout: float = 0.0, poll: float = 0.2):
        self.path, self.timeout, self.poll = Path(run_dir) / LOCK, float(timeout), poll
        self._file = None

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # Windows: no flock; filelock (a torch dependency) locks there
            import filelock

            self._file = filelock.FileLock(str(self.path), timeout=self.timeout)
            try:
                self._file.acquire()
            except filelock.Timeout:
                raise self._busy("") from None
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")
        except OSError as err:
            raise _write_error(self.path, err) from err
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.seek(0)
                    holder = f.read().strip()
                    f.close()
                    raise self._busy(holder) from None
                time.sleep(self.poll)
            except OSError as err:  # a filesystem without flock (some network mounts)
                warnings.warn(
                    f"cannot lock {self.path} ({err.strerror}); two writers on this run directory "
                    "would not be excluded",
                    RuntimeWarning,
                    stacklevel=2,
                )
                break
        try:  # who holds it, for the busy message; best effort (a full disk fails the run's next write anyway)
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            f.flush()
        except OSError:
            pass
        self._file = f
        return self

    def _busy(self, holder: str) -> RunDirBusyError:
        who = f" ({holder})" if holder else ""
        waited = f" after waiting {self.timeout:g} s" if self.timeout > 0 else ""
        return RunDirBusyError(
            f"{self.path.parent} is being written by another process{who}{waited}; wait for it to finish "
            "(then this run reloads its record), stop it, or pass lock_timeout=<seconds> to wait"
        )

    def __exit__(self, *exc) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        if hasattr(f, "release"):
            f.release()
        else:
            f.close()  # closing the descriptor drops the flock
