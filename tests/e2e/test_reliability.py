"""Reliability on real boots (QEMU/TCG: fast, and these faults need no VMX).

- a driver that panics or oopses the guest fails its cell within seconds, with the oops text;
- a driver that hangs fails at the cell timeout with the console tail;
- a driver that prints without end is stopped at the channel cap: an infrastructure error,
  with bounded files, verdict and JUnit;
- a guest that cannot boot, and a broken emulator set-up, are infrastructure errors (exit 3);
- kill -9 of the rig leaves no QEMU, domain or scratch file behind once `rig clean` ran;
- kill -9 of one pytest-xdist worker is an infrastructure error of its cell only, and the run
  still ends with nothing left behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rig.guest.protocol import TRANSCRIPT_CAP
from rig.lanes.base import CHANNEL_CAP
from rig.model import STAGES, Outcome
from rig.report import CaseResult, by_cell, read_junit
from rig.runs import processes_mentioning
from tests.e2e.conftest import RigRunner

REPO = Path(__file__).resolve().parents[2]
DRIVERS = REPO / "tests" / "drivers"
TCG = ("--lane", "tcg", "--kernel", "6.12", "--cpu", "penryn")


def _qemu_guests(runs_dir: Path) -> list[str]:
    """QEMU processes of guests booted from files of this test's runs (not other runs')."""
    return [cmd for _pid, cmd in processes_mentioning(str(runs_dir)) if "qemu-system" in cmd]


def _rig_argv(junit: Path, runs: Path, *extra: str) -> list[str]:
    """`rig run` on the TCG cell, as a user would type it."""
    return [sys.executable, "-m", "rig", "run", *TCG, "--junit", str(junit),
            "--runs-dir", str(runs), *extra]  # fmt: skip


def _wait_for_guest(runs: Path, timeout_s: float = 300) -> None:
    """Until a cell of the run has a console, i.e. its guest is booting."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not list(runs.glob("*/cells/*/console.txt")):
        time.sleep(0.5)
    assert list(runs.glob("*/cells/*/console.txt")), "guest never started"


def test_panicking_driver_fails_fast_with_the_panic_text(rig: RigRunner) -> None:
    run = rig(*TCG, "--driver", str(DRIVERS / "panic"))
    assert run.rc == 1, run.output[-3000:]
    cell = run.cells["tcg-6.12-penryn"]
    failed = [s for s, r in cell.items() if r.outcome is Outcome.FAILED]
    assert failed, {s: r.outcome for s, r in cell.items()}
    message = cell[failed[0]].message
    assert "Kernel panic" in message or "panic" in message.lower()
    # how long the rig waited after the panic appeared (the grace for the trace to flush)
    assert re.search(r"stopped \d+\.\d s after the panic reached the console", message), message
    assert not any(r.outcome is Outcome.ERROR for r in cell.values())
    assert not _qemu_guests(run.runs_dir)


def test_oopsing_driver_fails_with_the_oops(rig: RigRunner) -> None:
    run = rig(*TCG, "--driver", str(DRIVERS / "oops"))
    assert run.rc == 1, run.output[-3000:]
    cell = run.cells["tcg-6.12-penryn"]
    msgs = "\n".join(r.message for r in cell.values() if r.outcome is Outcome.FAILED)
    assert "NULL pointer" in msgs or "Oops" in msgs or "BUG:" in msgs, msgs


def test_hanging_driver_fails_at_the_timeout_with_console_tail(rig: RigRunner) -> None:
    run = rig(*TCG, "--driver", str(DRIVERS / "hang"), "--timeout", "60")
    assert run.rc == 1, run.output[-3000:]
    cell = run.cells["tcg-6.12-penryn"]
    msgs = "\n".join(r.message for r in cell.values() if r.outcome is Outcome.FAILED)
    assert "hang" in msgs.lower() or "timeout" in msgs.lower(), msgs
    assert not _qemu_guests(run.runs_dir)


def test_a_guest_that_prints_without_end_is_stopped_at_the_cap(rig: RigRunner) -> None:
    """A driver stuck in a printk loop would write gigabytes: the watcher stops the guest once
    a channel passes CHANNEL_CAP; the cell is an infrastructure ERROR; what the rig keeps of it
    (the console file, verdict.json, the JUnit) stays bounded."""
    run = rig(*TCG, "--driver", str(DRIVERS / "endless"), "--timeout", "400")
    assert run.rc == 3, run.output[-3000:]
    cell = run.cells["tcg-6.12-penryn"]
    assert cell["build"].outcome is Outcome.PASSED
    assert cell["vmxon"].outcome is Outcome.ERROR, cell["vmxon"].message
    assert "the guest wrote more than 16 MiB on console.txt: stopped" in cell["vmxon"].message
    cell_dir = next(run.runs_dir.glob("*/cells/tcg-6.12-penryn"))
    console = (cell_dir / "console.txt").stat().st_size
    assert CHANNEL_CAP < console < 2 * CHANNEL_CAP, console  # stopped soon after the cap
    assert (cell_dir / "verdict.json").stat().st_size < 3 * TRANSCRIPT_CAP
    assert run.junit.stat().st_size < 6 * TRANSCRIPT_CAP
    assert not _qemu_guests(run.runs_dir)


def test_unbootable_guest_is_an_infrastructure_error(rig: RigRunner, tmp_path: Path) -> None:
    """A Bochs CPU model that does not exist: the emulator refuses, the driver is not blamed."""
    matrix = tmp_path / "matrix.yaml"
    text = (REPO / "matrix.yaml").read_text()
    broken = text.replace("bochs: core2_penryn_t9600", "bochs: no_such_cpu", 1)
    assert broken != text
    matrix.write_text(broken)
    run = rig("--matrix", str(matrix), "--lane", "bochs", "--kernel", "6.12", "--cpu", "penryn",
              "--timeout", "60")  # fmt: skip
    assert run.rc == 3, run.output[-3000:]
    cell = run.cells["bochs-6.12-penryn"]
    for stage in ("vmxon", "vmlaunch", "vmcall_exit", "teardown"):
        assert cell[stage].outcome is Outcome.ERROR, (stage, cell[stage].outcome)


def test_kill_9_of_the_rig_leaves_nothing_behind(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    argv = _rig_argv(tmp_path / "j.xml", runs, "--timeout", "120")
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_guest(runs)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The libvirt child gets SIGTERM from the kernel (parent death) and destroys its domain.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _qemu_guests(runs):
        time.sleep(0.5)
    clean = subprocess.run(
        [sys.executable, "-m", "rig", "clean", "--runs-dir", str(runs)],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "checked 1 dead runs" in clean.stdout, clean.stdout
    assert not _qemu_guests(runs)
    scratch = ("boot.iso", "initrd.gz", "child.pid")
    leftovers = [p.name for p in runs.rglob("*") if p.name in scratch]
    assert not leftovers, leftovers


def test_full_disk_is_an_infrastructure_error(rig: RigRunner, tmp_path: Path) -> None:
    """The run directory on a 512 KiB tmpfs: the guest image cannot be written (ENOSPC)."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(small)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        junit = tmp_path / "j.xml"
        argv = _rig_argv(junit, small / "runs")
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-2000:]
        cell = by_cell(read_junit(junit))["tcg-6.12-penryn"]
        # a dead cell is one error (on its first stage); the others were not reached
        error = _first_error(cell)
        assert "No space left" in error.message, error.message
        assert all(c.outcome is not Outcome.PASSED for c in cell.values())
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def _first_error(cell: dict[str, CaseResult]) -> CaseResult:
    """A dead cell's one error: JUnit has it on its first stage, the rest `not reached`."""
    errors = [cell[s] for s in STAGES if s in cell and cell[s].outcome is Outcome.ERROR]
    assert errors, {s: c.outcome for s, c in cell.items()}
    return errors[0]


def test_libvirt_connection_lost_mid_boot_is_an_error_and_leaves_no_guest(tmp_path: Path) -> None:
    """The process holding the libvirt connection dies while the guest boots."""
    runs = tmp_path / "runs"
    junit = tmp_path / "j.xml"
    argv = _rig_argv(junit, runs, "--driver", str(DRIVERS / "hang"), "--timeout", "120")
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    child: list[tuple[int, str]] = []
    while time.monotonic() < deadline and not child:
        if list(runs.glob("*/cells/*/console.txt")):
            child = [(pid, cmd) for pid, cmd in processes_mentioning(str(runs))
                     if "libvirt_child" in cmd and "setpriv" not in cmd]  # fmt: skip
        time.sleep(0.5)
    assert child, "the libvirt child never started"
    os.kill(child[0][0], signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 3, out[-3000:]
    cell = by_cell(read_junit(junit))["tcg-6.12-penryn"]
    assert "libvirt" in _first_error(cell).message
    assert not _qemu_guests(runs)  # the run's end swept the orphaned QEMU


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_ends_the_run_as_infrastructure_and_leaves_nothing(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    argv = _rig_argv(tmp_path / "j.xml", runs, "--driver", str(DRIVERS / "hang"),
                     "--timeout", "120")  # fmt: skip
    out = tmp_path / "rig.out"
    with out.open("wb") as sink:
        # As from a terminal: SIGINT at its default. (A test run started in the background by
        # a non-interactive shell inherits SIGINT ignored, and so would the rig: it would then
        # rightly ignore this Ctrl-C.)
        proc = subprocess.Popen(argv, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                preexec_fn=_sigint_default)  # fmt: skip
    _wait_for_guest(runs)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        # Say where it was stuck before failing: the processes and the logs of the cell.
        state = [cmd for _pid, cmd in processes_mentioning(str(runs))]
        logs = {p.name: p.read_text(errors="replace")[-1500:]
                for p in runs.glob("*/cells/*/*") if p.suffix in (".log", ".txt")}  # fmt: skip
        proc.kill()
        said = out.read_text(errors="replace")[-2000:]
        pytest.fail(f"rig did not exit 120 s after SIGINT\nprocesses: {state}\n"
                    f"rig output: {said}\nlogs: {logs}")  # fmt: skip
    assert rc == 3, out.read_text(errors="replace")[-2000:]
    assert not _qemu_guests(runs)
    assert not [p for _pid, p in processes_mentioning(str(runs))]


def test_concurrent_runs_of_the_same_cell_do_not_collide(tmp_path: Path) -> None:
    """Two rig runs at once, same cell, same runs directory and cache: separate run ids,
    domain names, embedded libvirt roots and work directories; both judged correctly."""
    runs = tmp_path / "runs"
    procs = []
    for i in range(2):
        argv = _rig_argv(tmp_path / f"j{i}.xml", runs)
        procs.append(subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))  # fmt: skip
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    for i in range(2):
        cell = by_cell(read_junit(tmp_path / f"j{i}.xml"))["tcg-6.12-penryn"]
        assert cell["teardown"].outcome is Outcome.PASSED
    assert len(list(runs.iterdir())) == 2  # two run directories, one per run


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_kill_9_of_one_worker_is_an_error_of_its_cell_only(tmp_path: Path) -> None:
    """`rig run -n 2` over two TCG cells; one worker is killed while its guest boots."""
    runs = tmp_path / "runs"
    junit = tmp_path / "j.xml"
    argv = [sys.executable, "-m", "rig", "run", "--lane", "tcg", "--kernel", "6.12",
            "--cpu", "penryn", "--cpu", "nehalem", "-n", "2", "--junit", str(junit),
            "--runs-dir", str(runs)]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    worker, victim_cell = None, ""
    while time.monotonic() < deadline and worker is None and proc.poll() is None:
        for pid, cmd in processes_mentioning(str(runs)):
            cell = re.search(r"/cells/([^/\s]+)/domain-plan\.json", cmd)
            if "libvirt_child" not in cmd or "setpriv" in cmd or cell is None:
                continue
            chain = [pid]  # the libvirt child, its parents... up to the xdist worker
            while chain[-1] > 1 and _ppid(chain[-1]) != proc.pid:
                chain.append(_ppid(chain[-1]))
            if chain[-1] > 1:
                worker, victim_cell = chain[-1], cell[1]
                break
        time.sleep(0.2)
    assert worker is not None, "no worker with a booting guest was found"
    os.kill(worker, signal.SIGKILL)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 3, out[-3000:]
    results = read_junit(junit)
    errors = [r for r in results if r.outcome is Outcome.ERROR]
    assert [r.cell for r in errors] == [victim_cell], ([(r.cell, r.stage) for r in errors], out)
    assert "worker" in errors[0].message and "infrastructure" in errors[0].message
    # xdist gives the dead worker's cell to a fresh worker: its stages still get real verdicts
    for cell_id in {r.cell for r in results}:
        last = {r.stage: r for r in results if r.cell == cell_id}
        assert last["teardown"].outcome is Outcome.PASSED, (cell_id, last["teardown"].message)
    # and the report keeps the crash visible
    assert by_cell(results)[victim_cell][errors[0].stage].outcome is Outcome.ERROR
    # once the run has ended: no QEMU, no libvirt child, no scratch file of the killed worker
    assert not [cmd for _pid, cmd in processes_mentioning(str(runs))]
    assert not _qemu_guests(runs)
    scratch = ("boot.iso", "initrd.gz", "child.pid", "emulator.pid", "domain-plan.json")
    assert not [p for p in runs.rglob("*") if p.name in scratch]
