"""Runs of `rig run` whose verdicts are stored in advance: the real plugin and JUnit, no boot.

Every process of a run reads a cell's verdict from `runs/<run-id>/cells/<cell>/verdict.json`
when one is there (rig.runs.verdict_for); writing those first gives any verdict we need.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STAGES = ("build", "vmxon", "vmlaunch", "vmcall_exit", "teardown")

MATRIX = """\
version: 1
kernels:
  "6.12": {suite: trixie, abi: "6.12.117+deb13-amd64", version: "6.12.117-1"}
cpus:
  haswell: {bochs: corei7_haswell_4770}
  penryn: {bochs: core2_penryn_t9600, tcg: Penryn}
  icelake: {bochs: corei7_icelake_u}
lanes:
  bochs: {backend: bochs, vmx: true}
  tcg: {backend: libvirt, vmx: false, domain_type: qemu}
exclude:
  - {lane: bochs, cpu: icelake, reason: "kernel hangs on Bochs icelake"}
default_slice: {lanes: [bochs, tcg], kernels: ["6.12"], cpus: [haswell, penryn, icelake]}
"""

PASS = {s: ("passed", f"{s} ok") for s in STAGES}
TCG = {
    **PASS,
    **{s: ("skipped", "guest CPU has no VMX") for s in ("vmxon", "vmlaunch", "vmcall_exit")},
}
LAUNCH_FAILS = {**PASS, "vmlaunch": ("failed", "vmlaunch VMfailValid, error 8 <invalid host>")}
DEAD = {s: ("error", "infrastructure: the guest never booted (timeout)") for s in STAGES}


def verdict(cell: str, stages: dict[str, tuple[str, str]], console: str) -> dict[str, object]:
    return {
        "format": 1,
        "cell": cell,
        "stages": {
            s: {"outcome": o, "reason": r, "evidence": f"[ 1.0] vml: {s}"}
            for s, (o, r) in stages.items()
        },
        "timings": {"boot": 12.5},
        "console": console,
        "build_log": "make: ok\n",
        "emulator_log": "",
    }


def fake_run(
    tmp: Path,
    name: str,
    cells: dict[str, dict[str, tuple[str, str]]],
    *args: str,
    matrix: str = MATRIX,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`rig run` in tmp/name with these cells' verdicts stored first; returns (process, JUnit)."""
    where = tmp / name
    where.mkdir(parents=True)
    (where / "matrix.yaml").write_text(matrix)
    run_id = f"run-{name}"
    for cell, stages in cells.items():
        cell_dir = where / "runs" / run_id / "cells" / cell
        cell_dir.mkdir(parents=True)
        console = f"Linux version 6.12\n{cell} console <b>&amp;\nvmlaunch: exit reason 0x12\n"
        (cell_dir / "verdict.json").write_text(json.dumps(verdict(cell, stages, console)))
        (cell_dir / "console.txt").write_text(console)
        (cell_dir / "build.log").write_text("make: ok\n")
    junit = where / "junit.xml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rig",
            "run",
            "--run-id",
            run_id,
            "--junit",
            str(junit),
            "--runs-dir",
            str(where / "runs"),
            *args,
        ],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, junit


def rig(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rig", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
