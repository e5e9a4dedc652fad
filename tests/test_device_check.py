"""benchmarks/device_check.py, the one-shot GPU check of the `paper` presets, runs in CI at tiny sizes
on the CPU (the same code path: timings, measurements, torch.compile, TF32 and determinism checks),
so that it still works the day a GPU is lent for it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("SAMEDGE_DATA_DIR")
pytestmark = pytest.mark.skipif(not DATA or not Path(DATA).is_dir(), reason="set SAMEDGE_DATA_DIR to the data mirror")

TASKS = ["mnist", "cifar10", "shakespeare"]
RECORDS = "identical records (2 runs)"


def table(text: str) -> tuple:
    """(header cells, rows of cells) of the report's markdown table."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return cells[0], cells[1:]


def filled(column: str, cell: str) -> bool:
    """A number (first), or n/a / failed with its reason; the records column says identical."""
    if column == RECORDS:
        return cell.startswith("identical (")
    return bool(re.match(r"-?\d", cell) or re.match(r"(n/a \(\S.*\)|failed: \S)", cell))


def test_device_check_runs_tiny_on_cpu(tmp_path):
    """Exit 0; one row per task with every column filled; TF32 off and determinism both PASS;
    the compiled step and HVP agree with eager to float32 round-off."""
    out = tmp_path / "DEVICE.md"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TORCHINDUCTOR_COMPILE_THREADS": "1",
    }
    # aot_eager: dynamo and AOTAutograd as with inductor, without its C++ builds (minutes on one thread).
    argv = ["--device", "cpu", "--tiny", "--threads", "1", "--compile-backend", "aot_eager", "--out", str(out)]
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "device_check.py"), *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = out.read_text()
    head, rows = table(text)
    assert head[0] == "task" and RECORDS in head
    assert [row[0] for row in rows] == TASKS
    for row in rows:
        assert len(row) == len(head), row
        bad = {h: c for h, c in zip(head[1:], row[1:]) if not filled(h, c)}
        assert not bad, f"{row[0]}: unfilled cells {bad}"
        cells = dict(zip(head, row))
        assert re.match(r"\d", cells["compiled SAM step ms"]), cells
        assert "above" not in cells["compiled vs eager rel. diff (step / HVP / end loss / end norm)"], cells
    assert re.search(r"^- TF32 off: .*\): PASS", text, re.M), text
    assert re.search(r"^- Determinism: .*: PASS$", text, re.M), text
    assert "torch 2" in text and "commit " in text
