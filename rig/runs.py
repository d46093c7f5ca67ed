"""A run on disk: its id, its directory and lock, its cells' verdicts, and the sweeper.

Every run owns `runs/<run-id>/` and holds a lock on it while alive; each cell of it lives in
`cells/<cell-id>/`. A run that died (kill -9, power loss) leaves its directory unlocked; the
next run, or `rig clean`, kills the emulator processes recorded there (only if their command
line still names that directory, so a recycled pid is never hit) and deletes the scratch.

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
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from filelock import FileLock

from rig.model import STAGES, CellVerdict, Outcome, StageVerdict

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
    return lock_held(run_dir / "run.lock")


def lock_held(lock: Path) -> bool:
    """Some live process holds an flock on `lock` (a run, a libvirt child's embed slot)."""
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


def sweep_cell(cell_dir: Path, settle_s: float = 10.0) -> int:
    """Kill what an earlier attempt at this cell left running, before it is booted again.

    A pytest-xdist worker killed mid-boot leaves its libvirt child finishing, its QEMU (or
    Bochs) still writing into the cell's console and agent files; xdist hands the cell to a
    fresh worker at once. Only the holder of the cell's verdict lock calls this: no live
    process has a claim on the cell's files then, so every process naming them is a leftover.
    """
    mark = f"{cell_dir}/"
    found = processes_mentioning(mark)
    for pid, _cmd in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + settle_s
    while processes_mentioning(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(found)


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


VERDICT_FILE = "verdict.json"
VERDICT_FORMAT = 1


def verdict_to_json(verdict: CellVerdict) -> dict[str, Any]:
    return {
        "format": VERDICT_FORMAT,
        "cell": verdict.cell_id,
        "stages": {
            s: {"outcome": v.outcome.value, "reason": v.reason, "evidence": v.evidence}
            for s, v in verdict.stages.items()
        },
        "timings": verdict.timings,
        "console": verdict.console,
        "build_log": verdict.build_log,
        "emulator_log": verdict.emulator_log,
    }


def verdict_from_json(data: dict[str, Any]) -> CellVerdict:
    if data.get("format") != VERDICT_FORMAT:
        raise ValueError(f"verdict format {data.get('format')!r}, expected {VERDICT_FORMAT}")
    stages = {
        s: StageVerdict(s, Outcome(v["outcome"]), str(v["reason"]), str(v.get("evidence", "")))
        for s, v in data["stages"].items()
    }
    return CellVerdict(
        cell_id=str(data["cell"]),
        stages=stages,
        console=str(data.get("console", "")),
        build_log=str(data.get("build_log", "")),
        emulator_log=str(data.get("emulator_log", "")),
        timings={k: float(v) for k, v in data.get("timings", {}).items()},
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
