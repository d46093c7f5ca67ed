"""Boot once, test many (real boots): a bochs cell restored from a saved guest is judged like a
booted one and the driver sees the same CPU.

The first `--snapshot` run boots the base guest (no /rig), which loads the CD-ROM's drivers
and waits; Bochs saves it (its Suspend button, over RFB) and the cell restores it, gets its
/rig on the CD and runs today's sequence. A second run restores the same save. A fresh boot
of the same cell must print the same capability lines (VMX basic, FEATURE_CONTROL, the
controls, the exit, the teardown) as the restored guests, and give the same verdicts.
"""

from __future__ import annotations

import re
from pathlib import Path

from rig.model import Outcome
from tests.e2e.conftest import RigRun, RigRunner

CELL = "bochs-6.12-haswell"
BOCHS = ("--lane", "bochs", "--kernel", "6.12", "--cpu", "haswell")
COMPARED = ("check", "vmcs", "exit", "vmxoff", "freed", "unload")
_LINE = re.compile(r"^\[\s*[\d.]+\] vmlaunch: cpu=(\S+) (\w+) (\w+)(.*)$")


def driver_facts(run: RigRun) -> list[str]:
    """The driver's capability and outcome lines of the cell, without timestamps."""
    m = re.search(r"^run directory: (\S+)$", run.output, re.M)
    assert m, run.output[-2000:]
    console = (Path(m[1]) / "cells" / CELL / "console.txt").read_text()
    facts = []
    for line in console.splitlines():
        m = _LINE.match(line)
        if m and m[2] in COMPARED:
            facts.append(f"cpu={m[1]} {m[2]} {m[3]}{m[4]}")
    return facts


def outcomes(run: RigRun) -> dict[str, Outcome]:
    return {stage: case.outcome for stage, case in run.cells[CELL].items()}


def test_a_restored_guest_is_judged_like_a_booted_one(rig: RigRunner) -> None:
    first = rig(*BOCHS, "--snapshot")
    assert first.rc == 0, first.output[-3000:]
    assert outcomes(first) == dict.fromkeys(outcomes(first), Outcome.PASSED)
    key = first.cells[CELL]["vmxon"].properties.get("snapshot", "")
    assert key.startswith("corei7_haswell_4770-"), first.cells[CELL]["vmxon"].properties

    again = rig(*BOCHS, "--snapshot")
    assert again.rc == 0, again.output[-3000:]
    assert again.cells[CELL]["vmxon"].properties.get("snapshot") == key  # the same save

    fresh = rig(*BOCHS)
    assert fresh.rc == 0, fresh.output[-3000:]
    assert "snapshot" not in fresh.cells[CELL]["vmxon"].properties
    assert outcomes(fresh) == outcomes(again)
    facts = driver_facts(fresh)
    assert {f.split()[1] for f in facts} == set(COMPARED), facts
    assert driver_facts(first) == facts
    assert driver_facts(again) == facts
