"""Real boots: these tests run the rig for real (Bochs, QEMU/TCG through embedded libvirt)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from rig.model import Outcome
from rig.report import CaseResult, by_cell, read_junit
from rig.runs import read_verdict

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.slow)


@dataclass
class RigRun:
    rc: int
    output: str
    cells: dict[str, dict[str, CaseResult]]
    junit: Path
    runs_dir: Path
    duration_s: float

    def cell_dir(self, cell_id: str) -> Path:
        """This run's directory of the cell (from its `run directory:` line: runs of one
        test share runs_dir)."""
        m = re.search(r"^run directory: (\S+)$", self.output, re.M)
        assert m, self.output[-2000:]
        return Path(m[1]) / "cells" / cell_id

    def outcomes(self, cell_id: str) -> dict[str, Outcome]:
        """Each stage's outcome of the cell, from the JUnit."""
        return {stage: case.outcome for stage, case in self.cells[cell_id].items()}

    def reasons(self, cell_id: str) -> dict[str, str]:
        """Each stage's reason, from the cell's stored verdict (the JUnit carries a reason
        only for a stage that did not pass)."""
        verdict = read_verdict(next(self.runs_dir.glob(f"*/cells/{cell_id}")))
        assert verdict is not None, f"no verdict.json for {cell_id}"
        return {stage: v.reason for stage, v in verdict.stages.items()}


class RigRunner(Protocol):
    """The `rig` fixture: runs `python -m rig run ARGS...` and reads its JUnit."""

    def __call__(self, *args: str, timeout: float = ...) -> RigRun: ...


@pytest.fixture
def rig(tmp_path: Path) -> RigRunner:
    """Run `python -m rig run ...` as a user would; parse its JUnit."""
    import time

    def run(*args: str, timeout: float = 1500) -> RigRun:
        junit = tmp_path / "junit.xml"
        runs = tmp_path / "runs"
        argv = [sys.executable, "-m", "rig", "run", "--junit", str(junit),
                "--runs-dir", str(runs), *args]  # fmt: skip
        t0 = time.monotonic()
        proc = subprocess.run(
            argv, cwd=REPO, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        dt = time.monotonic() - t0
        out = proc.stdout + proc.stderr
        print(out[-6000:])
        cells = by_cell(read_junit(junit)) if junit.exists() else {}
        return RigRun(proc.returncode, out, cells, junit, runs, dt)

    return run


BUSY_DECLINE = re.compile(r"if \((?P<cond>[^\n]*)\)\n(?P<ret>\s*return [^\n]*\"vmx_busy\"[^\n]*;)")


WINDOW_RECHECK = "if (cr4 & X86_CR4_VMXE) {"  # vml_window.c: the same check with IRQs off


def driver_with_busy_check(tmp_path: Path, condition: str) -> Path:
    """A copy of driver/ whose vmx_busy refusal tests `condition` instead (1: always
    refuse, 0: never; then its re-check inside the IRQs-off window goes too)."""
    copy = tmp_path / "driver"
    shutil.copytree(REPO / "driver", copy, ignore=shutil.ignore_patterns("*.o", "*.ko", ".*"))
    patched = 0
    for src in copy.glob("*.c"):
        text, n = BUSY_DECLINE.subn(rf"if ({condition})\n\g<ret>", src.read_text())
        if n:
            src.write_text(text)
            patched += n
    assert patched == 1, "the driver's vmx_busy refusal was not found where the test looks"
    if condition == "0":
        window = copy / "vml_window.c"
        text = window.read_text()
        assert text.count(WINDOW_RECHECK) == 1, "the window's re-check moved"
        window.write_text(text.replace(WINDOW_RECHECK, "if (0) {"))
    return copy
