"""Processes the rig started, recorded so that a sweep kills them and nothing else.

    record_pid(pidfile, pid)      `PID start=TICKS` (TICKS: field 22 of /proc/PID/stat)
    read_pid(pidfile) -> PidRecord | None
    kill_recorded(record, mark)   SIGKILL, only while it still is the recorded process

Used by the lanes (which start emulators) and by rig.runs (which sweeps what killed runs left).
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PidRecord:
    """A process the rig started, as its pid file has it: `PID start=TICKS` (start: field 22
    of /proc/PID/stat, clock ticks after boot; None in the older `PID` format)."""

    pid: int
    start: int | None = None


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 (state) on ([] when there is no such process)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text.rsplit(")", 1)[-1].split()


def start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if len(fields) > 19 else None


def uid_of(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return None


def record_pid(pidfile: Path, pid: int) -> None:
    """Write the pid file of a process the rig just started (before it can be reused)."""
    start = start_time(pid)
    pidfile.write_text(f"{pid}\n" if start is None else f"{pid} start={start}\n")


def read_pid(pidfile: Path) -> PidRecord | None:
    """The record in a pid file (never through a symlink); None when absent or unreadable."""
    try:
        fd = os.open(pidfile, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd) as fh:
        words = fh.read(200).split()
    try:
        pid = int(words[0])
        start = int(words[1].removeprefix("start=")) if len(words) > 1 else None
    except (IndexError, ValueError):
        return None
    return PidRecord(pid, start) if pid > 1 else None


def running(rec: PidRecord) -> bool:
    """The pid runs (not a zombie) and, when the record has it, started at the recorded time."""
    fields = _stat(rec.pid)
    return bool(fields) and fields[0] not in "ZX" and rec.start in (None, int(fields[19]))


def _is_recorded(rec: PidRecord, mark: str | None) -> bool:
    """Still the process that was recorded: ours, and started when recorded (an older record
    without its start time: its command line must name `mark`, the cell dir)."""
    if not running(rec) or uid_of(rec.pid) != os.getuid():
        return False
    return rec.start is not None or (mark is not None and mark in cmdline_of(rec.pid))


def kill_recorded(rec: PidRecord, mark: str | None = None) -> bool:
    """SIGKILL a recorded process if it still is that process (see _is_recorded).

    Its whole process group only when it is known to lead one (start time checked and
    pgid == pid: the rig starts its emulators in sessions of their own); else itself only.
    """
    try:
        pidfd = os.pidfd_open(rec.pid)
    except OSError:
        return False  # gone
    try:
        if not _is_recorded(rec, mark):
            return False
        if rec.start is not None and int(_stat(rec.pid)[2]) == rec.pid:
            os.killpg(rec.pid, signal.SIGKILL)
        else:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except (ProcessLookupError, IndexError):
        return False
    finally:
        os.close(pidfd)


def args_of(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def cmdline_of(pid: int) -> str:
    return " ".join(args_of(pid)).strip()
