"""Run registry/sweeper with real processes, and host checks against fake /proc and /sys."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from rig.hostcheck import kvm_usable
from rig.runs import run_lock, sweep


def test_sweeper_kills_leftovers_of_dead_runs_only(tmp_path: Path) -> None:
    dead = tmp_path / "run-dead" / "cells" / "bochs-6.12-haswell"
    live = tmp_path / "run-live" / "cells" / "tcg-6.12-penryn"
    dead.mkdir(parents=True)
    live.mkdir(parents=True)
    # A stray "emulator" whose command line names its cell directory, in its own group.
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", str(dead)], start_new_session=True
    )
    (dead / "emulator.pid").write_text(f"{stray.pid}\n")
    (dead / "boot.iso").write_bytes(b"iso")
    (tmp_path / "run-dead" / "run.lock").write_text("1\n")
    innocent = subprocess.Popen(["sleep", "300"], start_new_session=True)
    (live / "emulator.pid").write_text(f"{innocent.pid}\n")
    try:
        with run_lock(tmp_path / "run-live"):
            result = sweep(tmp_path)
        assert result.runs_checked == 1
        assert result.processes_killed == 1
        time.sleep(0.2)
        assert stray.poll() is not None
        assert innocent.poll() is None  # a live run's processes are never touched
        assert not (dead / "boot.iso").exists()
        assert (live / "emulator.pid").exists()
    finally:
        innocent.kill()
        stray.kill()
        innocent.wait()
        stray.wait()


def test_recycled_pid_is_not_killed(tmp_path: Path) -> None:
    cell = tmp_path / "run-x" / "cells" / "c1"
    cell.mkdir(parents=True)
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    (cell / "emulator.pid").write_text(f"{other.pid}\n")
    try:
        assert sweep(tmp_path).processes_killed == 0
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def _fake_host(tmp_path: Path, flags: str, nested: str | None) -> tuple[Path, Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    dev = tmp_path / "kvm"
    dev.write_text("")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    sysmod = tmp_path / "module"
    if nested is not None:
        (sysmod / "kvm_intel/parameters").mkdir(parents=True)
        (sysmod / "kvm_intel/parameters/nested").write_text(nested + "\n")
    else:
        sysmod.mkdir()
    return dev, cpuinfo, sysmod


def test_kvm_usable_needs_vmx_kvm_intel_and_nested(tmp_path: Path) -> None:
    assert kvm_usable(tmp_path / "nokvm") is not None
    dev, cpuinfo, sysmod = _fake_host(tmp_path, "fpu sse2 svm hypervisor", None)
    why = kvm_usable(dev, cpuinfo, sysmod)
    assert why is not None and "vmx" in why
    dev, cpuinfo, sysmod = _fake_host(tmp_path / "b", "fpu vmx", None)
    assert "kvm_intel is not loaded" in (kvm_usable(dev, cpuinfo, sysmod) or "")
    dev, cpuinfo, sysmod = _fake_host(tmp_path / "c", "fpu vmx", "N")
    assert "nested" in (kvm_usable(dev, cpuinfo, sysmod) or "")
    dev, cpuinfo, sysmod = _fake_host(tmp_path / "d", "fpu vmx", "Y")
    assert kvm_usable(dev, cpuinfo, sysmod) is None


def test_sweep_cell_kills_what_names_the_cell_and_nothing_else(tmp_path: Path) -> None:
    """A crashed attempt's emulator still writing into the cell: gone before the cell reboots."""
    import subprocess
    import sys

    from rig.runs import sweep_cell

    cell, other = tmp_path / "cells" / "c", tmp_path / "cells" / "c2"
    code = "import time; time.sleep(60)"
    left = subprocess.Popen([sys.executable, "-c", code, f"{cell}/console.txt"])
    bystander = subprocess.Popen([sys.executable, "-c", code, f"{other}/console.txt"])
    try:
        assert sweep_cell(cell) == 1
        assert left.wait(10) == -9
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
