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

from rig.model import BootEnd, BootResult, BootSpec

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

    def unavailable(self) -> str | None:
        """Why this host cannot run the lane (None when it can). Cheap; no side effects."""
        ...

    def boot(self, spec: BootSpec) -> BootResult:
        """Boot the guest to its end. Never raises for guest behaviour; InfraError for setup."""
        ...


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


def watch_console(
    console: Path,
    *,
    alive: Callable[[], bool],
    timeout_s: float,
    poll_s: float = 0.25,
    boot_oops_stall_s: float = BOOT_OOPS_STALL_S,
    panic_ends: bool = True,
) -> ConsoleWatch:
    """Follow `console` until poweroff, panic, the emulator exits, or the timeout (a panic
    does not end it when not `panic_ends`: a crash kernel is to boot after it)."""
    start = time.monotonic()
    panic_at: float | None = None
    panic_line = ""
    seen, changed_at = -1, start
    while True:
        now = time.monotonic()
        text = console.read_text(errors="replace") if console.exists() else ""
        if len(text) != seen:
            seen, changed_at = len(text), now
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
        if not alive():
            return ConsoleWatch(
                BootEnd.EMULATOR, "emulator exited before the guest powered off", now - start
            )
        if (
            now - changed_at >= boot_oops_stall_s
            and "RIG-BEGIN" not in text
            and BOOT_OOPS_RE.search(text)
        ):
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
) -> Iterator[subprocess.Popen[bytes]]:
    """Start argv in its own process group, dying with us (PR_SET_PDEATHSIG via setpriv).

    On exit the whole group is killed and reaped, whatever happened inside the block. A child
    that must clean up after itself (the libvirt child destroys its domain) gets deathsig TERM.
    """
    full = ["setpriv", "--pdeathsig", deathsig, "--", *argv]
    with stdout.open("wb") as out:
        proc = subprocess.Popen(
            full,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if pidfile is not None:
        pidfile.write_text(f"{proc.pid}\n")
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if pidfile is not None:
            pidfile.unlink(missing_ok=True)


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


CONSOLE_FILE = "console.txt"  # the guest kernel's console (first serial port)
AGENT_FILE = "agent.txt"  # the guest agent's protocol channel (second serial port)


def read_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


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
