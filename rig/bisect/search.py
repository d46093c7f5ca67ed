"""Bisection by kernel version, with good / bad / skip verdicts and repeats.

Pure logic: `bisect(candidates, probe, repeats)` over an ordered list of kernel names where the
first is known good and the last known bad. A probe that cannot judge (infrastructure error,
a kernel that does not boot on the CPU model, a skipped cell) answers SKIP, and the search
steps around it, as `git bisect skip` does; it never blames a version it could not test.
Repeats guard against flaky results: a version is BAD if any repeat fails, GOOD only if every
repeat passes, SKIP if no repeat could judge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from rig.model import CellVerdict, Outcome, worst


class Mark(StrEnum):
    GOOD = "good"
    BAD = "bad"
    SKIP = "skip"


def mark_of(verdict: CellVerdict) -> Mark:
    """A cell's verdict as a bisection mark, by the one severity order (rig.model.worst): an
    infrastructure error anywhere makes the probe SKIP (it never blames a kernel), a failure
    BAD; a cell whose launch was never judged (all skipped, or vmcall_exit skipped) SKIP."""
    outcome = worst(sv.outcome for sv in verdict.stages.values())
    if outcome is Outcome.ERROR:
        return Mark.SKIP
    if outcome is Outcome.FAILED:
        return Mark.BAD
    if verdict.stages["vmcall_exit"].outcome is Outcome.SKIPPED:
        return Mark.SKIP  # the launch itself was never judged
    return Mark.GOOD


def combine(marks: Sequence[Mark]) -> Mark:
    """Marks of the repeats of one version -> the version's mark."""
    if Mark.BAD in marks:
        return Mark.BAD
    judged = [m for m in marks if m is not Mark.SKIP]
    if not judged:
        return Mark.SKIP
    return Mark.GOOD


@dataclass
class BisectResult:
    last_good: str  # the newest version that tested GOOD
    earliest_bad: str  # the oldest version that tested BAD
    suspects: list[str] = field(default_factory=list)  # could be the first bad (skips incl.)
    log: list[tuple[str, Mark, list[Mark]]] = field(default_factory=list)

    @property
    def first_bad(self) -> str | None:
        """The first bad version, or None when skipped versions hide the boundary."""
        return self.earliest_bad if self.suspects == [self.earliest_bad] else None


def bisect(
    candidates: Sequence[str],
    probe: Callable[[str], Mark],
    *,
    repeats: int = 1,
    verify_ends: bool = True,
) -> BisectResult:
    """Find the first BAD candidate between a GOOD first and a BAD last candidate."""
    if len(candidates) < 2:
        raise ValueError("bisection needs at least a good and a bad candidate")
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    log: list[tuple[str, Mark, list[Mark]]] = []
    cache: dict[int, Mark] = {}

    def test(i: int) -> Mark:
        if i not in cache:
            marks = [probe(candidates[i]) for _ in range(repeats)]
            cache[i] = combine(marks)
            log.append((candidates[i], cache[i], marks))
        return cache[i]

    lo, hi = 0, len(candidates) - 1  # invariant: lo is GOOD, hi is BAD
    if verify_ends:
        if test(lo) is not Mark.GOOD:
            raise ValueError(f"the good end {candidates[lo]} did not test good ({cache[lo]})")
        if test(hi) is not Mark.BAD:
            raise ValueError(f"the bad end {candidates[hi]} did not test bad ({cache[hi]})")
    skipped: set[int] = set()
    while hi - lo > 1:
        untested = [i for i in range(lo + 1, hi) if i not in skipped]
        if not untested:
            break
        mid = (lo + hi) // 2
        # Nearest untested index to the midpoint (step around skipped versions).
        pick = min(untested, key=lambda i: (abs(i - mid), i))
        mark = test(pick)
        if mark is Mark.GOOD:
            lo = pick
        elif mark is Mark.BAD:
            hi = pick
        else:
            skipped.add(pick)
    suspects = list(candidates[lo + 1 : hi + 1])
    return BisectResult(
        last_good=candidates[lo], earliest_bad=candidates[hi], suspects=suspects, log=log
    )
