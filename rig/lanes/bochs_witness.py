"""The bochs lane's witness beneath the guest: Bochs' own log of the guest's VMX instructions.

Bochs 2.7 emulates VMX in software (cpu/vmx.cc) and says what it did in bochs.log:

    debug (module cpu0)  VMLAUNCH VMCS ptr: 0x000000000318c000
                         VMRESUME VMCS ptr: 0x...
                         VMEXIT reason = 18 (VMCALL) qualification=0x0
    error (module cpu0)  VMFAIL: VMCS host state invalid CR0 0x80050033    (a VM-instruction
                         VMENTER FAIL: VMCS guest invalid CR0                 failure, or a check
                         VMEXIT: Guest State Checks Failed                     of a failed entry)

A successful VMXON, VMXOFF, VMCLEAR or VMPTRLD is not logged at any level (only their failures
are), so this witness has no vmxon/vmxoff/vmclear/vmptrld events: Bochs logs a VMLAUNCH or
VMRESUME only in VMX operation (it raises #UD first otherwise), and a VMCS pointer other than
all-ones only after a VMPTRLD. A failed VM entry (guest state, MSR loading) is logged as its
check lines, then "VMEXIT: Guest State Checks Failed", then the exit line with the basic
reason (33, 34; Bochs masks bit 31 in that line): one entry_fail event. The VM-instruction
error number of a VMfail is not logged; it is derived here from which check Bochs names
(SDM vol. 3C 31.4), None where the message does not decide it (VMfailInvalid has none).

Everything VMX in the guest is in this log: after the driver's runs the teardown witness
(kvm_intel running a VM) adds its own VMLAUNCH/VMRESUME lines and exits. Nothing in the log
marks where the driver's part ends (the VMCS pointer differs from KVM's, but also between the
driver's own runs). The lane reports; rig.verdict judges. An entry_fail's `said` is its check
lines and the exit line joined by " | ".

    filtered_log(log) -> fifo               what Bochs writes to the fifo reaches `log` filtered
                                            (VMX debug lines, every error/panic line), capped
    vmx_lines(path, cap) -> (lines, ended, cut)  the VMX lines of a bochs.log, streamed, bounded
    beneath_from_bochs_log(text) -> Beneath
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from rig.model import Beneath, VmxEvent

SOURCE = "Bochs"
# what it can show at all: no successful VMXON, VMXOFF, VMCLEAR or VMPTRLD is ever logged
SEES = frozenset({"vmlaunch", "vmresume", "exit", "vmfail", "entry_fail"})
MAX_LINES = 50_000  # VMX lines kept from one log (a driver's 10000 round trips fit)
MAX_LINE = 1100  # Bochs formats a message into 1024 bytes, plus its prefix

LOG_CAP = 16 * 2**20  # bytes of filtered bochs.log kept; the rest is drained and left out
CUT_MARK = "rig: bochs.log cut here, the rest of Bochs' log was left out"
# What reaches bochs.log with the witness on: cpu0's debug level is millions of lines a boot
# (page walks, RDTSC, IRET: ~340 MB, 5.9 M lines for one 6.12 cell); only its VMX lines and the
# lines of the other levels (error, panic; info is off) are kept. grep -E, C locale. The cost
# is Bochs formatting and writing (one write(2) a line, it flushes each) that debug level:
# measured +17..+60 s wall, +75 s CPU (user +35 s, sys +40 s) on 170-190 s 6.12 boots of a
# loaded 2-core machine; grep itself 0.2 s CPU for 342 MB. bochs.log grows by ~25 lines.
FILTER = r"^[0-9]+[iep]\[|\] VM"

# Bochs' prefix (`logprefix: %t%e%d`): 11+ digit tick, level letter, [module]; then the message.
_PREFIX = re.compile(r"^\s*\d+[a-z]\[[^\]]{0,16}\]\s?")
_LAUNCH = re.compile(r"\b(VMLAUNCH|VMRESUME) VMCS ptr: (0x[0-9a-fA-F]+)")
_EXIT = re.compile(r"\bVMEXIT reason = (\d+) \(")
_ENTRY_FAILED = re.compile(r"VMEXIT: (Guest State Checks Failed|Error when loading guest MSR)")
_CHECK = re.compile(
    r"\b(VMFAIL: |VMENTER FAIL: |FAIL: VMCS |VMENTER: .*Checks Failed"
    r"|(VMXON|VMPTRLD): not expected|VMXON: invalid|VM(READ|WRITE): (not supported|write to))"
)
_END = re.compile(r">>PANIC<<|soft power off|bx_pc_system_c::exit|Last time is")
KEEP = re.compile(f"{_LAUNCH.pattern}|{_EXIT.pattern}|{_ENTRY_FAILED.pattern}|{_CHECK.pattern}")
"""A bochs.log line the witness reads (the parser's input; everything else is left out)."""

ENTRY_FAILURE_REASONS = frozenset({33, 34, 41})  # basic reasons of a failed VM entry only

# The VM-instruction error of a VMfail, from the check Bochs names (first match wins).
_VMFAIL_ERROR: tuple[tuple[re.Pattern[str], int | None], ...] = (
    (re.compile(r"with invalid VMCS ptr|VMXON: "), None),  # VMfailInvalid
    (re.compile(r"VMLAUNCH with non-clear VMCS"), 4),
    (re.compile(r"VMRESUME with non-launched VMCS"), 5),
    (re.compile(r"blocked by MOV_SS"), 26),
    (re.compile(r"VMCLEAR with invalid physical address"), 2),
    (re.compile(r"VMLEAR with VMXON ptr"), 3),  # sic, Bochs 2.7
    (re.compile(r"VMPTRLD with VMXON ptr"), 10),
    (re.compile(r"VMPTRLD: not expected"), 11),
    (re.compile(r"VMFAIL: invalid or not page aligned"), 9),  # VMPTRLD's
    (re.compile(r"VM(READ|WRITE): not supported field"), 12),
    (re.compile(r"VMWRITE: write to read only"), 13),
    (re.compile(r"\bhost\b"), 8),
    (re.compile(r"VMCS (EXEC|VMEXIT|VMENTRY) CTRL|VMENTRY|VMFUNC|VM Functions|save_VMX"), 7),
)


def _copy_capped(src: IO[bytes], log: Path, cap: int) -> None:
    """Copy the filter's output into `log` up to `cap` bytes, then drain it (never block it)."""
    written = 0
    with log.open("wb") as out:
        while chunk := src.read(64 * 1024):
            if written < cap:
                part = chunk[: cap - written]
                out.write(part)
                written += len(part)
                if written >= cap:
                    out.write(f"\n{CUT_MARK}\n".encode())
                out.flush()


@contextlib.contextmanager
def filtered_log(log: Path, cap: int = LOG_CAP) -> Iterator[Path]:
    """A fifo for Bochs' `log:`; what Bochs writes there reaches `log` filtered and capped.

    grep (dying with us) reads the fifo; a thread copies its output. On exit, Bochs must have
    ended: a grep still waiting for a writer (Bochs never opened its log) is released.
    """
    fifo = log.with_name(log.name + ".fifo")
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo, 0o600)
    argv = ["setpriv", "--pdeathsig", "KILL", "--", "grep", "-a", "-E", FILTER, str(fifo)]
    env = {"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    grep = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    assert grep.stdout is not None
    copier = threading.Thread(target=_copy_capped, args=(grep.stdout, log, cap), daemon=True)
    copier.start()
    try:
        yield fifo
    finally:
        deadline = time.monotonic() + 60
        while grep.poll() is None and time.monotonic() < deadline:
            # A writer that comes and goes: EOF for a grep still opening or reading the fifo.
            with contextlib.suppress(OSError):  # ENXIO: no reader (yet, or any more)
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            with contextlib.suppress(subprocess.TimeoutExpired):
                grep.wait(timeout=0.1)
        if grep.poll() is None:
            grep.kill()
            grep.wait()
        copier.join(timeout=60)
        grep.stdout.close()
        fifo.unlink(missing_ok=True)


def _message(line: str) -> str:
    """Bochs' own words: the line without its tick/level/module prefix."""
    return _PREFIX.sub("", line.rstrip("\r\n"), count=1)[:MAX_LINE]


def vmfail_error(message: str) -> int | None:
    """The VM-instruction error Bochs' VMfail message implies (None: not decided by it)."""
    for pattern, error in _VMFAIL_ERROR:
        if pattern.search(message):
            return error
    return None


def vmx_lines(path: Path, cap: int = MAX_LINES) -> tuple[list[str], bool, bool]:
    """The lines of a bochs.log the witness reads, streamed: (lines, ended, cut).

    `ended`: Bochs logged its own end (the guest's ACPI soft power off, a panic, its exit);
    `cut`: the log was cut at LOG_CAP (filtered_log) or held more than `cap` VMX lines.
    Memory stays bounded whatever the size of the file: an overlong line is skipped.
    """
    lines: list[str] = []
    ended = cut = False
    with path.open("rb") as f:
        while True:
            raw = f.readline(64 * 1024)
            if not raw:
                break
            if not raw.endswith(b"\n"):  # an overlong line: skip the rest of it
                while raw and not raw.endswith(b"\n"):
                    raw = f.readline(64 * 1024)
                continue
            line = raw.decode("utf-8", errors="replace")
            if CUT_MARK in line:
                cut = True
            elif _END.search(line):
                ended = True
                lines.append(line.rstrip("\n")[:MAX_LINE])
            elif KEEP.search(line):
                if len(lines) >= cap:
                    cut = True
                    continue
                lines.append(line.rstrip("\n")[:MAX_LINE])
    return lines, ended, cut


def beneath_from_bochs_log(text: str, *, ended: bool | None = None, cut: bool = False) -> Beneath:
    """The VMX events in a bochs.log (whole, or the lines vmx_lines kept), in order.

    `ended`: whether Bochs logged its end (None: look for it in `text`); a log without its end
    (Bochs killed at a timeout or after a guest panic) or `cut` is complete=False with a note:
    an absence of events in it proves nothing.
    """
    events: list[VmxEvent] = []
    pending: list[str] = []  # check lines not yet known to be a VMfail or an entry failure
    entry_failed = False
    saw_end = False

    def flush() -> None:
        for msg in pending:
            events.append(VmxEvent("vmfail", vmfail_error(msg), msg))
        pending.clear()

    for line in text.splitlines():
        if _END.search(line):
            saw_end = True
            continue
        msg = _message(line)
        if m := _LAUNCH.search(msg):
            flush()
            entry_failed = False
            events.append(VmxEvent(m.group(1).lower(), None, msg, vmcs=int(m.group(2), 16)))
        elif m := _EXIT.search(msg):
            reason = int(m.group(1))
            if entry_failed or reason in ENTRY_FAILURE_REASONS:
                said = " | ".join([*pending, msg])
                pending.clear()
                events.append(VmxEvent("entry_fail", reason, said))
            else:
                flush()
                events.append(VmxEvent("exit", reason, msg))
            entry_failed = False
        elif _ENTRY_FAILED.search(msg):
            entry_failed = True
            pending.append(msg)
        elif _CHECK.search(msg):
            pending.append(msg)
    if entry_failed:  # the exit line of a failed entry never came
        said = " | ".join(pending)
        pending.clear()
        events.append(VmxEvent("entry_fail", None, said))
    flush()
    ended = saw_end if ended is None else ended
    notes = []
    if cut:
        notes.append("Bochs' log was cut at its size cap; the rest was left out")
    if not ended:
        notes.append("Bochs' log has no end (Bochs stopped before the guest powered off)")
    return Beneath(SOURCE, tuple(events), complete=not notes, note="; ".join(notes), sees=SEES)


def beneath_from_file(path: Path) -> Beneath:
    """The witness of one cell from its bochs.log (a missing log: nothing seen, incomplete)."""
    if not path.exists():
        return Beneath(SOURCE, (), complete=False, note="Bochs wrote no log", sees=SEES)
    lines, ended, cut = vmx_lines(path)
    return beneath_from_bochs_log("\n".join(lines), ended=ended, cut=cut)
