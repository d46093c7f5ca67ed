"""What `git bisect` says, read without running git: the states it announces, the end it
records in its log, and the check that a saved log holds only what the rig writes.

    parse_bisect_output(text) -> ToTest | Done | Inconclusive | None
    parse_log_state(log_text) -> Done | Inconclusive | None
    check_replay_log(log_text)          UsageError for a line the rig would not write

Pure functions over git 2.39's output (LC_ALL=C); rig/bisect/git.py runs git.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from rig.errors import UsageError

_SHA = r"[0-9a-f]{40}(?:[0-9a-f]{24})?"  # SHA-1 or SHA-256
_FULL_SHA = re.compile(_SHA)


@dataclass(frozen=True)
class ToTest:
    """The bisection wants `sha` tested; it is checked out in the clone's work tree."""

    sha: str
    left: int  # revisions left to test after this one
    steps: int  # roughly this many more steps


@dataclass(frozen=True)
class Done:
    """The search ended: the first BAD commit (with fix=True: the first fixed commit)."""

    first_bad: str


@dataclass(frozen=True)
class Inconclusive:
    """Only skipped commits are left: the answer is one of `candidates` (from RigClone: oldest
    first, topologically; from the parsers: in the order git printed them)."""

    candidates: tuple[str, ...]


BisectState = ToTest | Done | Inconclusive


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    subject: str
    author: str  # "Name <email>"
    date: str  # author date, strict ISO 8601
    parents: tuple[str, ...]

    @property
    def is_merge(self) -> bool:
        return len(self.parents) > 1


_BISECTING = re.compile(r"^Bisecting: (\d+) revisions? left to test after this \(roughly (\d+)")
_CHECKED_OUT = re.compile(rf"^\[({_SHA})\]")
_FIRST = re.compile(rf"^({_SHA}) is the first \S+ commit$")
_ONLY_SKIPPED = "There are only 'skip'ped commits left to test."


def parse_bisect_output(text: str) -> BisectState | None:
    """The state that the stdout of `git bisect start` or of a mark announces, or None when it
    announces none (an end still unknown). The first announcement wins, so a commit message
    that git shows after "is the first bad commit" cannot fake another. ValueError when the
    output is cut short."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if m := _BISECTING.match(line):
            nxt = _CHECKED_OUT.match(lines[i + 1]) if i + 1 < len(lines) else None
            if nxt is None:
                raise ValueError(f"'Bisecting:' line without the commit after it: {text!r}")
            return ToTest(nxt.group(1), int(m.group(1)), int(m.group(2)))
        if m := _FIRST.match(line):
            return Done(m.group(1))
        if line == _ONLY_SKIPPED:
            cands: list[str] = []
            for cand in lines[i + 2 :]:  # after "The first <term> commit could be any of:"
                if not _FULL_SHA.fullmatch(cand):
                    break
                cands.append(cand)
            if not cands:
                raise ValueError(f"'only skipped' without candidates: {text!r}")
            return Inconclusive(tuple(cands))
    return None


_LOG_FIRST = re.compile(rf"^# first \S+ commit: \[({_SHA})\]")
_LOG_POSSIBLE = re.compile(rf"^# possible first \S+ commit: \[({_SHA})\]")


def parse_log_state(log_text: str) -> Done | Inconclusive | None:
    """Whether a `git bisect log` says that the search ended (after its last command)."""
    lines = log_text.splitlines()
    cmds = [i for i, line in enumerate(lines) if line.startswith("git bisect ")]
    tail = lines[cmds[-1] + 1 :] if cmds else lines
    for line in tail:
        if m := _LOG_FIRST.match(line):
            return Done(m.group(1))
    possible = tuple(m.group(1) for line in tail if (m := _LOG_POSSIBLE.match(line)))
    return Inconclusive(possible) if possible else None


_REPLAY_CMD = re.compile(r"^git bisect (start|good|bad|skip|fixed|broken) (.+)$")
_START_OPTS = {"--first-parent", "--term-old=broken", "--term-new=fixed", "--"}


def check_replay_log(log_text: str) -> None:
    """UsageError for a log that does more than the rig's own logs: only `start` with the
    options the rig uses and full SHAs, and marks that name full SHAs (never the implicit
    HEAD). A hand-made log could say `--no-checkout`, and the builds would test the wrong tree."""
    for n, line in enumerate(log_text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = _REPLAY_CMD.match(line)
        try:
            args = shlex.split(m.group(2)) if m else []
        except ValueError:
            args = []
        allowed = _START_OPTS if m and m.group(1) == "start" else set()
        shas = [a for a in args if _FULL_SHA.fullmatch(a)]
        if not shas or not all(a in allowed or _FULL_SHA.fullmatch(a) for a in args):
            raise UsageError(
                f"line {n} of the bisection log is not one the rig writes: {line!r}",
                fix="replay only a log saved from RigClone.log()",
            )
