"""What every lane backend provides, and the console watcher they share.

A backend turns a BootSpec into a BootResult. It owns every process and file it creates through
context managers, and it judges nothing about the driver: it reports how the boot ended
(poweroff, panic seen on the console, timeout, emulator failure) and hands the console on.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rig.model import Beneath, BootEnd, BootResult, BootSpec
from rig.procs import record_pid

# A panic ends the guest; after one we give the console a moment to flush the trace, then stop.
PANIC_RE = re.compile(r"Kernel panic - not syncing|reboot: Restarting system")
PANIC_GRACE_S = 2.0
POWEROFF_RE = re.compile(r"reboot: Power down|reboot: System halted")
# A kernel that oopsed while booting (before the guest's RIG-BEGIN) and then went silent will
# not reach the test: stop after this long without console output instead of at the timeout.
BOOT_OOPS_RE = re.compile(r"\b(?:BUG: |Oops: |invalid opcode: |general protection fault)")
BOOT_OOPS_STALL_S = 150.0


class Backend(Protocol):
    """A lane's way of booting a guest."""

    @property
    def name(self) -> str: ...

    @property
    def firmware_step(self) -> bool:
        """True when the lane can set MSRs as a firmware would (BootSpec.feature_control)."""
        ...

    @property
    def injects(self) -> frozenset[str]:
        """The events (BootSpec.inject) the lane can inject into its guest from outside."""
        ...

    @property
    def restores(self) -> bool:
        """True when the lane restores saved guests (GuestImage.warm, --snapshot)."""
        ...

    def unavailable(self) -> str | None:
        """Why this host cannot run the lane (None when it can). Cheap; no side effects."""
        ...

    def boot(self, spec: BootSpec) -> BootResult:
        """Boot the guest to its end. Never raises for guest behaviour; InfraError for setup."""
        ...


CONSOLE_FILE = "console.txt"  # the guest kernel's console (first serial port)
AGENT_FILE = "agent.txt"  # the guest agent's protocol channel (second serial port)
L1_CONSOLE_FILE = "l1-console.txt"  # the nested lanes' L1 console
BENEATH_FILE = "beneath.txt"  # what the witness beneath the guest saw, for people


TRIPLE_FAULT_RE = re.compile(r"triple fault|3rd \(\d+\) exception|shutdown status", re.IGNORECASE)
"""How an emulator says the guest triple-faulted (Bochs: `3rd (13) exception with no
resolution`; QEMU: a shutdown on triple fault)."""


@dataclass
class ConsoleWatch:
    """Outcome of watching a console file until the guest ends."""

    end: BootEnd
    detail: str
    duration_s: float
    panic_line: str = ""
    panic_to_stop_s: float | None = None


CHANNEL_CAP = 16 * 2**20
"""Bytes a guest may write on one channel file (its console, its agent's channel, a nested L1
console): a whole boot with five runs writes under 1 MiB. Past it the guest is stopped
(BootEnd.FLOOD, an infrastructure error) and only the first CHANNEL_CAP bytes are read."""
_OVERLAP = 256  # bytes of the previous read searched again: a pattern split between reads


@dataclass
class _Follow:
    """What the watcher has seen of a console: read from an offset, never twice whole."""

    path: Path
    offset: int = 0
    tail: str = ""  # the last _OVERLAP characters read, searched again with the next read
    began: bool = False
    oopsed: bool = False

    def read(self) -> str:
        """The text written since the last read (at most CHANNEL_CAP bytes in all)."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read(max(0, CHANNEL_CAP - self.offset))
        except FileNotFoundError:
            return ""
        self.offset += len(data)
        new = self.tail + data.decode(errors="replace")
        self.tail = new[-_OVERLAP:]
        self.began = self.began or "RIG-BEGIN" in new
        self.oopsed = self.oopsed or BOOT_OOPS_RE.search(new) is not None
        return new


def channel_files(console: Path) -> list[Path]:
    """The channel files of a guest: the watched console and its siblings (lanes write them
    side by side in the cell's work directory)."""
    names = (console.name, CONSOLE_FILE, AGENT_FILE, L1_CONSOLE_FILE)
    return [console.with_name(n) for n in dict.fromkeys(names)]


def flooded(files: Sequence[Path], cap: int = CHANNEL_CAP) -> str | None:
    """Which channel file the guest wrote past `cap` on (None: none)."""
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size > cap:
                return path.name
    return None


def watch_console(
    console: Path,
    *,
    alive: Callable[[], bool],
    timeout_s: float,
    poll_s: float = 0.25,
    boot_oops_stall_s: float = BOOT_OOPS_STALL_S,
    panic_ends: bool = True,
    cap: int = CHANNEL_CAP,
) -> ConsoleWatch:
    """Follow `console` until poweroff, panic, the emulator exits, the timeout, or a channel
    file past `cap` bytes (a panic does not end it when not `panic_ends`: a crash kernel is to
    boot after it). The console is read from where the last poll stopped."""
    start = time.monotonic()
    panic_at: float | None = None
    panic_line = ""
    changed_at = start
    follow = _Follow(console)
    files = channel_files(console)
    while True:
        now = time.monotonic()
        before = follow.offset
        text = follow.read()
        if follow.offset != before:
            changed_at = now
        if panic_at is None and panic_ends:
            m = PANIC_RE.search(text)
            if m:
                panic_at = now
                line_start = text.rfind("\n", 0, m.start()) + 1
                line_end = text.find("\n", m.end())
                panic_line = text[line_start : line_end if line_end >= 0 else len(text)].strip()
        if panic_at is not None and (now - panic_at >= PANIC_GRACE_S or not alive()):
            waited = f"stopped {now - panic_at:.1f} s after the panic reached the console"
            return ConsoleWatch(
                BootEnd.PANIC,
                f"guest panicked: {panic_line} ({waited})",
                now - start,
                panic_line=panic_line,
                panic_to_stop_s=now - panic_at,
            )
        if POWEROFF_RE.search(text):
            # Let the emulator finish writing, then report the normal end.
            deadline = now + 5
            while alive() and time.monotonic() < deadline:
                time.sleep(poll_s)
            return ConsoleWatch(BootEnd.POWEROFF, "guest powered off", time.monotonic() - start)
        too_much = flooded(files, cap)
        if too_much is not None:
            return ConsoleWatch(
                BootEnd.FLOOD,
                f"the guest wrote more than {cap // 2**20} MiB on {too_much}: stopped",
                now - start,
            )
        if not alive():
            return ConsoleWatch(
                BootEnd.EMULATOR, "emulator exited before the guest powered off", now - start
            )
        if now - changed_at >= boot_oops_stall_s and not follow.began and follow.oopsed:
            return ConsoleWatch(
                BootEnd.TIMEOUT,
                f"the guest kernel oopsed while booting and then printed nothing for "
                f"{boot_oops_stall_s:.0f} s",
                now - start,
            )
        if now - start >= timeout_s:
            return ConsoleWatch(
                BootEnd.TIMEOUT,
                f"no poweroff within the {timeout_s:.0f} s cell timeout",
                now - start,
            )
        time.sleep(poll_s)


@contextlib.contextmanager
def owned_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    stdout: Path,
    pidfile: Path | None = None,
    deathsig: str = "KILL",
    stdin_pipe: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start argv in its own process group, dying with us (PR_SET_PDEATHSIG via setpriv).

    On exit the whole group is killed and reaped, whatever happened inside the block. A child
    that must clean up after itself (the libvirt child destroys its domain) gets deathsig TERM.
    `stdin_pipe`: the child's stdin is a pipe (Bochs asked where to save), else /dev/null.
    """
    full = ["setpriv", "--pdeathsig", deathsig, "--", *argv]
    with stdout.open("wb") as out:
        proc = subprocess.Popen(
            full,
            cwd=cwd,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if pidfile is not None:
        record_pid(pidfile, proc.pid)  # with its start time: a sweep never kills a reused pid
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
        if pidfile is not None:
            pidfile.unlink(missing_ok=True)


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def read_text(path: Path, cap: int = CHANNEL_CAP) -> str:
    """A channel file's text, its first `cap` bytes at most."""
    try:
        with path.open("rb") as fh:
            return fh.read(cap).decode(errors="replace")
    except FileNotFoundError:
        return ""


def make_result(
    workdir: Path,
    watch: ConsoleWatch,
    emulator_log: str = "",
    detail: str = "",
    *,
    triple_fault: bool = False,
) -> BootResult:
    return BootResult(
        console=read_text(workdir / CONSOLE_FILE),
        agent=read_text(workdir / AGENT_FILE),
        end=watch.end,
        duration_s=watch.duration_s,
        emulator_log=emulator_log,
        detail=detail or watch.detail,
        panic_line=watch.panic_line,
        panic_to_stop_s=watch.panic_to_stop_s,
        triple_fault=triple_fault,
    )


def beneath_text(b: Beneath) -> str:
    """beneath.txt: a header, then one event a line: `kind reason said` (reason `-`: none)."""
    head = f"# {b.source}: {len(b.events)} events, complete={b.complete}"
    rows = [head + (f" ({b.note})" if b.note else "")]
    for e in b.events:
        reason = "-" if e.reason is None else str(e.reason)
        rows.append(f"{e.kind} {reason} {e.said}")
    return "\n".join(rows) + "\n"
