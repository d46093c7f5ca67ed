"""A run on disk: its id, its directory and lock, its cells' verdicts, and the sweeper.

Every run owns `runs/<run-id>/` and holds a lock on it while alive; each cell of it lives in
`cells/<cell-id>/`. A run that died (kill -9, power loss) leaves its directory unlocked; the
next run, or `rig clean`, kills the emulator processes recorded there (only while the pid is
still that process: its start time, or in older pid files its command line naming the cell)
and deletes the scratch. Symlinked run, cell and scratch entries are never followed.

One verdict per cell, judged once, stored as `cells/<id>/verdict.json` (`verdict_for`):
every process of a run (each pytest-xdist worker, under any `--dist` mode, and xdist's rerun
of a crashed worker's cell) asks there. The first takes the cell's lock, judges, and stores
the verdict; the others wait on the lock and read it. A judge that raises becomes a stored
ERROR verdict with its traceback: the stage items never judge, they only read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import stat
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from rig.model import STAGES, CellVerdict, Outcome, StageVerdict
from rig.procs import (
    PidRecord,
    args_of,
    cmdline_of,
    kill_recorded,
    read_pid,
    running,
    start_time,
    uid_of,
)

PIDFILES = ("emulator.pid", "child.pid")
NESTED = ("l0.iso", "l0-iso", "l2-cpio", "l2.cpio", "l2-carrier.img", "state")  # nested lane
SCRATCH = ("boot.iso", "initrd.gz", "initramfs", "iso", "domain-plan.json", "vm", *NESTED)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


@dataclass
class Sweep:
    runs_checked: int = 0
    processes_killed: int = 0
    scratch_removed: int = 0
    skipped: list[str] = field(default_factory=list)  # symlinks in the runs dir: not followed


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Create run_dir and hold a shared lock on it while this process of the run lives.

    Shared, because every xdist worker of a run holds one; the sweeper asks for an exclusive
    lock, which it gets only once no process of the run is left.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = (run_dir / "run.lock").open("a")
    fcntl.flock(fh, fcntl.LOCK_SH)
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    try:
        yield run_dir
    finally:
        fh.close()


def lock_held(lock: Path) -> bool:
    """Some live process holds an flock on `lock` (a run, a libvirt child's embed slot).

    A symlink is never opened (it could lead out of the runs dir or the cache): it counts as
    held, so that whatever it guards is left alone.
    """
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:  # ELOOP: a symlink
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def real_dir(path: Path) -> bool:
    """A directory itself, not a symlink to one (what the sweepers may descend into)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


# --------------------------------------------------------------------------- sweepers
def _children(path: Path, skipped: list[str]) -> list[Path]:
    """The real directories in `path` (a root the caller names, or itself a real directory);
    symlinks in it are reported in `skipped`, never followed."""
    if not path.is_dir():
        return []
    found = []
    for p in sorted(path.iterdir()):
        if p.is_symlink():
            skipped.append(f"{p} (a symlink, not followed)")
        elif real_dir(p):
            found.append(p)
    return found


def sweep(runs_root: Path) -> Sweep:
    """Clean up after every run under runs_root that is no longer alive.

    Run and cell directories that are symlinks are skipped (reported in `skipped`): nothing
    out of runs_root is read, locked, killed or deleted through one.
    """
    result = Sweep()
    for run_dir in _children(runs_root, result.skipped):
        if (run_dir / "run.lock").is_symlink():
            result.skipped.append(f"{run_dir / 'run.lock'} (a symlink, not followed)")
            continue
        if lock_held(run_dir / "run.lock"):
            continue
        result.runs_checked += 1
        cells = run_dir / "cells"
        if cells.is_symlink():
            result.skipped.append(f"{cells} (a symlink, not followed)")
            continue
        for cell_dir in _children(cells, result.skipped):
            for name in PIDFILES:
                rec = read_pid(cell_dir / name)
                if rec is not None and kill_recorded(rec, mark=str(cell_dir)):
                    result.processes_killed += 1
                (cell_dir / name).unlink(missing_ok=True)  # a symlink: the link only
            for name in SCRATCH:
                p = cell_dir / name
                if real_dir(p):
                    shutil.rmtree(p, ignore_errors=True)  # never follows a link inside
                    result.scratch_removed += 1
                elif p.exists() or p.is_symlink():
                    p.unlink(missing_ok=True)  # its owner may be removing it right now
                    result.scratch_removed += 1
    return result


def _domain_qemu(cell_dir: Path) -> PidRecord | None:
    """The QEMU of the cell's embedded libvirt domain, as libvirt recorded it in the slot.

    libvirt starts QEMU in a session of its own (not the libvirt child's group) and writes
    its pid to <slot>/run/qemu/<domain>.pid; the domain name (rig-<run id>-<cell>) is the
    cell's own, and the process must still carry it (`-name guest=<domain>,...`).
    """
    plan_file = cell_dir / "domain-plan.json"
    if plan_file.is_symlink() or not plan_file.is_file():
        return None
    with contextlib.suppress(ValueError, OSError, TypeError):
        plan = json.loads(plan_file.read_text())
        name = f"rig-{cell_dir.parent.parent.name}-{cell_dir.name}"
        if plan["uri"] != "embed" or plan["name"] != name:
            return None
        for slot in _children(Path(plan["embed_pool"]), []):
            if not (real_dir(slot / "run") and real_dir(slot / "run" / "qemu")):
                continue
            rec = read_pid(slot / "run" / "qemu" / f"{name}.pid")
            if rec is not None and _qemu_of(rec.pid, name):
                return PidRecord(rec.pid, start_time(rec.pid))  # the process just checked
    return None


def _qemu_of(pid: int, domain: str) -> bool:
    named = any(a == f"guest={domain}" or a.startswith(f"guest={domain},") for a in args_of(pid))
    return named and uid_of(pid) == os.getuid()


def sweep_cell(cell_dir: Path, settle_s: float = 10.0) -> int:
    """Kill what an earlier attempt at this cell left running, before it is booted again.

    A pytest-xdist worker killed mid-boot leaves its libvirt child finishing, its QEMU (or
    Bochs) still writing into the cell's console and agent files; xdist hands the cell to a
    fresh worker at once. Only the holder of the cell's verdict lock calls this. Only
    processes the rig recorded are killed: the pids in the cell's pid files (if still the
    same process: start time and uid), and the QEMU libvirt recorded for the cell's domain.
    Nothing is killed for merely naming the cell (a `less console.txt` lives on).
    """
    if not real_dir(cell_dir):
        return 0
    mark = f"{cell_dir}/"
    killed: list[PidRecord] = []
    for name in PIDFILES:
        rec = read_pid(cell_dir / name)
        if rec is not None and kill_recorded(rec, mark=mark):
            killed.append(rec)
    qemu = _domain_qemu(cell_dir)
    if qemu is not None and kill_recorded(qemu):
        killed.append(qemu)
    deadline = time.monotonic() + settle_s
    while any(running(r) for r in killed) and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(killed)


def sweep_embed_pool(pool: Path) -> int:
    """Kill QEMU processes left in unlocked embedded-libvirt slots (their owner died).

    Symlinked slots, locks and pid files are not followed.
    """
    killed = 0
    for slot in _children(pool, []):
        if not slot.name.startswith("slot-"):
            continue
        try:
            fd = os.open(slot / "rig.lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live run owns it
            qemus = slot / "run" / "qemu"
            pidfiles = sorted(qemus.glob("rig-*.pid")) if real_dir(slot / "run") else []
            for pidfile in pidfiles if real_dir(qemus) else []:
                rec = read_pid(pidfile)
                if rec is not None and _qemu_of(rec.pid, pidfile.stem):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(rec.pid, signal.SIGKILL)
                        killed += 1
        finally:
            os.close(fd)
    return killed


def processes_mentioning(*marks: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose command line contains one of `marks`
    (for tests and diagnostics: the sweepers never kill by command line)."""
    found: list[tuple[int, str]] = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            cmd = cmdline_of(int(proc.name))
            if cmd and any(m in cmd for m in marks):
                found.append((int(proc.name), cmd))
    return found


VERDICT_FILE = "verdict.json"
VERDICT_FORMAT = 1


def verdict_to_json(verdict: CellVerdict) -> dict[str, Any]:
    return {
        "format": VERDICT_FORMAT,
        "cell": verdict.cell_id,
        "stages": {
            s: {
                "outcome": v.outcome.value,
                "reason": v.reason,
                "evidence": v.evidence,
                "witness": v.witness,
            }
            for s, v in verdict.stages.items()
        },
        "timings": verdict.timings,
        "console": verdict.console,
        "build_log": verdict.build_log,
        "emulator_log": verdict.emulator_log,
        "restored": verdict.restored,
        "emulator": verdict.emulator,
    }


def verdict_from_json(data: dict[str, Any]) -> CellVerdict:
    if data.get("format") != VERDICT_FORMAT:
        raise ValueError(f"verdict format {data.get('format')!r}, expected {VERDICT_FORMAT}")
    stages = {
        s: StageVerdict(
            s,
            Outcome(v["outcome"]),
            str(v["reason"]),
            str(v.get("evidence", "")),
            str(v.get("witness", "")),
        )
        for s, v in data["stages"].items()
    }
    return CellVerdict(
        cell_id=str(data["cell"]),
        stages=stages,
        console=str(data.get("console", "")),
        build_log=str(data.get("build_log", "")),
        emulator_log=str(data.get("emulator_log", "")),
        timings={k: float(v) for k, v in data.get("timings", {}).items()},
        restored=str(data.get("restored", "")),
        emulator=str(data.get("emulator", "")),
    )


def crashed(cell_id: str, exc: BaseException) -> CellVerdict:
    """The verdict of a judge that raised: an infrastructure ERROR on every stage."""
    trace = "".join(traceback.format_exception(exc))
    reason = f"infrastructure: the rig failed unexpectedly: {type(exc).__name__}: {exc}"
    return CellVerdict(
        cell_id=cell_id,
        stages={s: StageVerdict(s, Outcome.ERROR, reason, trace) for s in STAGES},
    )


def read_verdict(cell_dir: Path) -> CellVerdict | None:
    path = cell_dir / VERDICT_FILE
    if not path.exists():
        return None
    return verdict_from_json(json.loads(path.read_text()))


def write_verdict(cell_dir: Path, verdict: CellVerdict) -> None:
    cell_dir.mkdir(parents=True, exist_ok=True)
    tmp = cell_dir / f".{VERDICT_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(verdict_to_json(verdict), indent=1))
    tmp.rename(cell_dir / VERDICT_FILE)


def verdict_for(cell_dir: Path, cell_id: str, judge: Callable[[], CellVerdict]) -> CellVerdict:
    """The cell's verdict: read if some process of the run stored it, else judged here once."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cell_dir / "verdict.lock")):
        stored = read_verdict(cell_dir)
        if stored is not None:
            return stored
        try:
            verdict = judge()
        except Exception as exc:  # every exception is a stored ERROR verdict, never a retry
            verdict = crashed(cell_id, exc)
        write_verdict(cell_dir, verdict)
        return verdict
