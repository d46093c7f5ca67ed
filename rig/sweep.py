"""Run registry and sweeper: every run owns a directory and holds a lock on it while alive.

A run that died (kill -9, power loss) leaves its directory unlocked; the next run, or
`rig clean`, kills the emulator processes recorded there (only if their command line still
names that directory, so a recycled pid is never hit) and deletes the scratch files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

PIDFILES = ("emulator.pid", "child.pid")
NESTED = ("l0.iso", "l0-iso", "l2-cpio", "l2.cpio")  # rig.lanes.nested's scratch
SCRATCH = ("boot.iso", "initrd.gz", "initramfs", "iso", "domain-plan.json", "vm", *NESTED)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


@dataclass
class Sweep:
    runs_checked: int = 0
    processes_killed: int = 0
    scratch_removed: int = 0


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


def _is_locked(run_dir: Path) -> bool:
    lock = run_dir / "run.lock"
    if not lock.exists():
        return False
    fh: IO[str]
    with lock.open("r") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def sweep(runs_root: Path) -> Sweep:
    """Clean up after every run under runs_root that is no longer alive."""
    result = Sweep()
    if not runs_root.exists():
        return result
    for run_dir in sorted(p for p in runs_root.iterdir() if p.is_dir()):
        if _is_locked(run_dir):
            continue
        result.runs_checked += 1
        for cell_dir in run_dir.glob("cells/*"):
            for name in PIDFILES:
                pidfile = cell_dir / name
                if not pidfile.exists():
                    continue
                with contextlib.suppress(ValueError, OSError):
                    pid = int(pidfile.read_text().strip())
                    if str(cell_dir) in _cmdline(pid):  # never a recycled pid of someone else
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(pid, signal.SIGKILL)
                            result.processes_killed += 1
                pidfile.unlink(missing_ok=True)
            for name in SCRATCH:
                p = cell_dir / name
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                    result.scratch_removed += 1
                elif p.exists():
                    p.unlink(missing_ok=True)  # its owner may be removing it right now
                    result.scratch_removed += 1
    return result


def sweep_embed_pool(pool: Path) -> int:
    """Kill QEMU processes left in unlocked embedded-libvirt slots (their owner died)."""
    killed = 0
    if not pool.exists():
        return killed
    for slot in sorted(pool.glob("slot-*")):
        lock = slot / "rig.lock"
        if not lock.exists():
            continue
        with lock.open("r") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live run owns it
            for pidfile in slot.glob("run/qemu/*.pid"):
                with contextlib.suppress(ValueError, OSError):
                    pid = int(pidfile.read_text().strip())
                    if "guest=rig-" in _cmdline(pid):
                        os.kill(pid, signal.SIGKILL)
                        killed += 1
    return killed


def processes_mentioning(*marks: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose command line contains one of `marks`."""
    found: list[tuple[int, str]] = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            cmd = _cmdline(int(proc.name))
            if cmd and any(m in cmd for m in marks):
                found.append((int(proc.name), cmd))
    return found
