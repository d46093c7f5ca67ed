"""Run registry/sweeper with real processes, and host checks against fake /proc and /sys."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rig import procs as recorded
from rig import runs
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


# --------------------------------------------------------------------------- L4: recorded pids
SLEEP = [sys.executable, "-c", "import time; time.sleep(300)"]


class Procs:
    """Processes a test starts; every one is killed and reaped at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []
        self.pids: list[int] = []  # grandchildren (not ours to wait for)

    def start(self, argv: list[str], *, session: bool = True, **kw: Any) -> int:
        proc = subprocess.Popen(argv, start_new_session=session, **kw)
        self.started.append(proc)
        return proc.pid

    def close(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.started:
            proc.kill()
            proc.wait()


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.close()


def alive(pid: int) -> bool:
    return recorded.running(recorded.PidRecord(pid))  # there, and not a zombie


def dies(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_a_pid_file_records_the_start_time_and_older_ones_still_read(
    tmp_path: Path, procs: Procs
) -> None:
    pid = procs.start(["sleep", "300"])
    recorded.record_pid(tmp_path / "emulator.pid", pid)
    start = recorded.start_time(pid)
    assert start is not None
    assert (tmp_path / "emulator.pid").read_text() == f"{pid} start={start}\n"
    assert recorded.read_pid(tmp_path / "emulator.pid") == recorded.PidRecord(pid, start)
    (tmp_path / "old.pid").write_text(f"{pid}\n")  # the format before start times
    assert recorded.read_pid(tmp_path / "old.pid") == recorded.PidRecord(pid, None)
    (tmp_path / "link.pid").symlink_to(tmp_path / "old.pid")
    assert recorded.read_pid(tmp_path / "link.pid") is None  # never read through a symlink
    for bad in ("", "x", "1", "12 start=x"):
        (tmp_path / "bad.pid").write_text(bad)
        assert recorded.read_pid(tmp_path / "bad.pid") is None


def test_sweep_cell_kills_only_what_the_rig_recorded(tmp_path: Path, procs: Procs) -> None:
    """L4: a process merely naming the cell (a `tail -f console.txt` stand-in for less)
    lives on; the recorded emulator dies; a recorded pid now held by another process (pid
    reuse: its start time differs) or by another user lives on."""
    cell = tmp_path / "run-1" / "cells" / "bochs-6.12-haswell"
    cell.mkdir(parents=True)
    (cell / "console.txt").write_text("booting\n")
    viewer = procs.start(["tail", "-f", str(cell / "console.txt")], stdout=subprocess.DEVNULL)
    emulator = procs.start(["sleep", "300"])
    recorded.record_pid(cell / "emulator.pid", emulator)
    reused = procs.start(["sleep", "300"])
    start = recorded.start_time(reused)
    assert start is not None
    (cell / "child.pid").write_text(f"{reused} start={start - 1}\n")
    assert runs.sweep_cell(cell, settle_s=5) == 1
    assert not alive(emulator)
    assert alive(viewer) and alive(reused)
    if os.getuid() == 0:  # recorded correctly, but another user's process now
        other = procs.start(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "sleep", "300"])  # fmt: skip
        deadline = time.monotonic() + 10
        while recorded.uid_of(other) != 65534 and time.monotonic() < deadline:
            time.sleep(0.02)  # setpriv changes its uid after it started
        recorded.record_pid(cell / "child.pid", other)
        assert runs.sweep_cell(cell, settle_s=1) == 0
        assert alive(other)
    assert alive(viewer)


SPAWN_CHILD = (
    "import subprocess, time; c = subprocess.Popen(['sleep', '300']); "
    "print(c.pid, flush=True); time.sleep(300)"
)


@pytest.mark.parametrize("with_start", [True, False])
def test_the_group_is_killed_only_when_the_recorded_process_is_known_to_lead_it(
    tmp_path: Path, procs: Procs, with_start: bool
) -> None:
    """killpg only with a matching start time and pgid == pid; an older record (pid only,
    command line naming the cell) kills the process itself, never its group."""
    cell = tmp_path / "run-1" / "cells" / "c"
    cell.mkdir(parents=True)
    leader = procs.start([sys.executable, "-c", SPAWN_CHILD, f"{cell}/x"], stdout=subprocess.PIPE)
    out = procs.started[-1].stdout
    assert out is not None
    member = int(out.readline())
    procs.pids.append(member)
    if with_start:
        recorded.record_pid(cell / "emulator.pid", leader)
    else:
        (cell / "emulator.pid").write_text(f"{leader}\n")
    assert runs.sweep_cell(cell, settle_s=5) == 1
    assert dies(leader)
    assert dies(member) if with_start else alive(member)


def test_a_process_not_leading_its_group_is_killed_alone(tmp_path: Path, procs: Procs) -> None:
    cell = tmp_path / "run-1" / "cells" / "c"
    cell.mkdir(parents=True)
    pid = procs.start(["sleep", "300"], session=False)  # in this test's own process group
    recorded.record_pid(cell / "emulator.pid", pid)
    assert runs.sweep_cell(cell, settle_s=5) == 1  # and pytest is still here
    assert dies(pid)


def _fake_qemu(procs: Procs, domain: str) -> int:
    return procs.start([*SLEEP, "-name", f"guest={domain},debug-threads=on"])


def test_sweep_cell_kills_the_qemu_libvirt_recorded_for_the_cells_domain(
    tmp_path: Path, procs: Procs
) -> None:
    pool = tmp_path / "cache" / "libvirt-embed"
    cell = tmp_path / "runs" / "run-1" / "cells" / "tcg-6.12-penryn"
    cell.mkdir(parents=True)
    domain = "rig-run-1-tcg-6.12-penryn"
    plan = {"uri": "embed", "name": domain, "embed_pool": str(pool)}
    (cell / "domain-plan.json").write_text(json.dumps(plan))
    qemu, other = _fake_qemu(procs, domain), _fake_qemu(procs, "rig-run-2-tcg-6.12-penryn")
    for slot, pid, name in (("slot-0", other, domain), ("slot-1", qemu, domain)):
        (pool / slot / "run" / "qemu").mkdir(parents=True)
        (pool / slot / "run" / "qemu" / f"{name}.pid").write_text(f"{pid}")
    assert runs.sweep_cell(cell, settle_s=5) == 1  # slot-0's pid is another domain's QEMU
    assert dies(qemu) and alive(other)


# --------------------------------------------------------------------------- L4: symlinks
def _planted_run(root: Path, procs: Procs) -> tuple[Path, int]:
    """A run dir outside the runs root, with scratch, a pid file and a process naming it."""
    cell = root / "cells" / "c"
    (cell / "initramfs").mkdir(parents=True)
    (cell / "initramfs" / "keep").write_text("x")
    (cell / "boot.iso").write_text("iso")
    pid = procs.start([*SLEEP, str(cell)])
    recorded.record_pid(cell / "emulator.pid", pid)
    return cell, pid


def test_sweep_never_follows_a_symlinked_run_or_cell_dir(tmp_path: Path, procs: Procs) -> None:
    """L4: runs/planted -> ../elsewhere once lost elsewhere/cells/c/{initramfs,vm}."""
    root = tmp_path / "runs"
    (root / "real" / "cells").mkdir(parents=True)
    victim_cell, victim_pid = _planted_run(tmp_path / "elsewhere", procs)
    other_cell, other_pid = _planted_run(tmp_path / "other", procs)
    (root / "planted").symlink_to("../elsewhere")
    (root / "real" / "cells" / "c").symlink_to(other_cell)
    (root / "linked-cells").mkdir()
    (root / "linked-cells" / "cells").symlink_to(other_cell.parent)
    result = runs.sweep(root)
    assert result.processes_killed == 0 and result.scratch_removed == 0
    assert alive(victim_pid) and alive(other_pid)
    for cell in (victim_cell, other_cell):
        assert (cell / "initramfs" / "keep").exists() and (cell / "boot.iso").exists()
        assert (cell / "emulator.pid").exists()
    assert len(result.skipped) == 3 and all("a symlink" in s for s in result.skipped)
    assert not (tmp_path / "elsewhere" / "run.lock").exists()  # no lock taken out there


def test_sweep_removes_a_symlinked_scratch_entry_but_not_its_target(tmp_path: Path) -> None:
    cell = tmp_path / "runs" / "dead" / "cells" / "c"
    cell.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    (cell / "vm").symlink_to(victim)
    (cell / "boot.iso").symlink_to(victim / "keep")
    (tmp_path / "runs" / "dead" / "run.lock").symlink_to(victim / "keep")
    assert runs.sweep(tmp_path / "runs").runs_checked == 0  # a symlinked lock: left alone
    (tmp_path / "runs" / "dead" / "run.lock").unlink()
    result = runs.sweep(tmp_path / "runs")
    assert result.scratch_removed == 2
    assert not (cell / "vm").is_symlink() and not (cell / "boot.iso").is_symlink()
    assert (victim / "keep").read_text() == "x"


def test_sweep_embed_pool_skips_symlinked_slots(tmp_path: Path, procs: Procs) -> None:
    pool, elsewhere = tmp_path / "pool", tmp_path / "elsewhere"
    for slot, domain in ((pool / "slot-0", "rig-a-c"), (elsewhere, "rig-b-c")):
        (slot / "run" / "qemu").mkdir(parents=True)
        (slot / "rig.lock").touch()
        pid = _fake_qemu(procs, domain)
        (slot / "run" / "qemu" / f"{domain}.pid").write_text(f"{pid}\n")
    (pool / "slot-1").symlink_to(elsewhere)
    assert runs.sweep_embed_pool(pool) == 1
    outside = int((elsewhere / "run" / "qemu" / "rig-b-c.pid").read_text())
    assert alive(outside)


def test_a_runs_root_named_through_a_symlink_is_still_swept(tmp_path: Path) -> None:
    cell = tmp_path / "disk" / "dead" / "cells" / "c"
    (cell / "initramfs").mkdir(parents=True)
    (tmp_path / "runs").symlink_to(tmp_path / "disk")
    assert runs.sweep(tmp_path / "runs").scratch_removed == 1
    assert not (cell / "initramfs").exists()
