"""Kernel oopses, panics, warnings and stalls in a stream of kernel lines."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rig.guest.protocol import MARKER_RE

OOPS_MAX_LINES = 60


# Each trigger is the start of a kernel message, as the kernel prints it (after the optional
# `<level>` and `[timestamp]`): a word such as "double fault" inside some module's chatter is
# no oops (a property test weaves such lines into real consoles).
KERNEL_PREFIX_RE = re.compile(r"\s*(?:<\d>)?\s*(?:\[\s*\d+\.\d+\]\s*)?")
OOPS_TRIGGERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("panic", re.compile(r"Kernel panic - not syncing")),
    ("bug", re.compile(r"(?:watchdog: )?BUG: ")),
    ("bug", re.compile(r"kernel BUG at ")),
    ("oops", re.compile(r"Oops: ")),
    ("gpf", re.compile(r"general protection fault")),
    ("invalid_opcode", re.compile(r"invalid opcode: ")),
    ("double_fault", re.compile(r"PANIC: double fault")),
    ("warning", re.compile(r"WARNING: CPU: \d+ PID: \d+")),
    ("stall", re.compile(r"rcu: INFO: \S+ (?:self-)?detected stalls?")),
    ("hung_task", re.compile(r"INFO: task \S+ blocked for more than")),
)


def _message_at(line: str) -> int:
    """Where a kernel line's message starts: after its `<level>` and `[timestamp]`."""
    start = KERNEL_PREFIX_RE.match(line)
    return start.end() if start else 0


def kernel_message(line: str) -> str:
    """A kernel line's message: without its `<level>`, its `[timestamp]` and outer blanks."""
    return line[_message_at(line) :].strip()


def oops_kind(line: str) -> str | None:
    """The kind of kernel trouble a line starts, or None."""
    at = _message_at(line)
    return next((k for k, rx in OOPS_TRIGGERS if rx.match(line, at)), None)


OOPS_END_RE = re.compile(r"---\[ end (?:trace|Kernel panic)")


@dataclass(frozen=True)
class Oops:
    kind: str  # panic | bug | oops | gpf | warning | ...
    first: str  # the line that triggered it
    text: str  # the block, up to its `---[ end trace` line
    index: int  # line number within its stream


def find_oopses(lines: Sequence[str], start: int) -> list[Oops]:
    found: list[Oops] = []
    i = start
    while i < len(lines):
        line = lines[i]
        kind = None
        if "vmlaunch: cpu=" not in line and not MARKER_RE.match(line):
            kind = oops_kind(line)
        if kind is None:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and j - i < OOPS_MAX_LINES:
            if MARKER_RE.match(lines[j]):
                break
            j += 1
            if OOPS_END_RE.search(lines[j - 1]):
                break
        found.append(Oops(kind, line.strip(), "\n".join(lines[i:j]), i))
        i = j
    return found
