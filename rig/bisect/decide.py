"""What one run, and one step's runs, say to a bisection; and how much to trust the answer.

    run_mark(verdict, stage) -> RunMark      one run of a cell: good / bad / skip / infra
    step_mark(runs, repeats) -> Mark         the step's runs -> its mark (syzkaller's rules)
    confidence(steps, bad_end) -> float      how likely the culprit is right
    LOW_CONFIDENCE                           below it, the exit status says so

Rules (in the spirit of syzkaller's pkg/bisect, ../shared/notes/bisection.md):
- A run is BAD when the stage under test FAILED (`--stage`; default: any stage), and a stage
  before it FAILED makes the run SKIP (the kernel broke something else first). The build stage
  failing is BAD: the driver not building against a kernel that built is a regression.
- An infrastructure ERROR is INFRA: retried by the caller, never GOOD or BAD.
- A step of N runs is BAD when at least max(1, valid/6) runs are bad and at least half the
  runs were valid; GOOD when no run is bad and at least half were good; else SKIP. One bad run
  in ten is a bad step (a flaky bug is still a bug), but a step that mostly could not judge
  blames nobody.
- Confidence: each GOOD step could be a bad one whose bug did not show in its runs; with the
  bug showing in a fraction p of the runs at the bad end, a step of n good runs is right with
  probability 1-(1-p)^n; the culprit's confidence is the product over GOOD steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from rig.bisect.search import Mark
from rig.model import STAGES, CellVerdict, Outcome

LOW_CONFIDENCE = 0.66
"""syz-ci drops bisection results below this confidence (PR #4092)."""


class RunMark(StrEnum):
    GOOD = "good"
    BAD = "bad"
    SKIP = "skip"  # ran, but did not test the stage (an earlier stage failed, all skipped)
    INFRA = "infra"  # the rig could not judge (retried; then the step is skip)


def run_mark(verdict: CellVerdict, stage: str | None = None) -> tuple[RunMark, str]:
    """One run of the cell -> its mark and the reason that decided it."""
    if any(v.outcome is Outcome.ERROR for v in verdict.stages.values()):
        first = next(s for s, v in verdict.stages.items() if v.outcome is Outcome.ERROR)
        return RunMark.INFRA, f"{first}: {verdict.stages[first].reason}"
    order = STAGES if stage is None else STAGES[: STAGES.index(stage) + 1]
    for name in order:
        v = verdict.stages[name]
        if v.outcome is Outcome.FAILED:
            if stage is None or name == stage:
                return RunMark.BAD, f"{name}: {v.reason}"
            return RunMark.SKIP, f"{name} failed before {stage}: {v.reason}"
    target = stage or "vmcall_exit"
    if verdict.stages[target].outcome is Outcome.SKIPPED:
        return RunMark.SKIP, f"{target} was not judged: {verdict.stages[target].reason}"
    return RunMark.GOOD, f"{target} passed"


def step_mark(runs: Sequence[RunMark]) -> Mark:
    """A step's runs (retries of infrastructure errors left out) -> its mark."""
    total = len(runs)
    bad = sum(r is RunMark.BAD for r in runs)
    good = sum(r is RunMark.GOOD for r in runs)
    valid = bad + good
    if total == 0 or 2 * valid < total:
        return Mark.SKIP
    if bad >= max(1, valid // 6):
        return Mark.BAD
    if bad == 0 and 2 * good >= total:
        return Mark.GOOD
    return Mark.SKIP


@dataclass(frozen=True)
class StepRuns:
    """The marks of one step's runs, for the confidence figure."""

    mark: Mark
    runs: tuple[RunMark, ...]


def repro_chance(bad_end: Sequence[RunMark]) -> float:
    """How often the bug showed at the bad end (1.0 when every valid run there was bad)."""
    bad = sum(r is RunMark.BAD for r in bad_end)
    valid = bad + sum(r is RunMark.GOOD for r in bad_end)
    return bad / valid if valid else 1.0


def confidence(steps: Sequence[StepRuns], bad_end: Sequence[RunMark]) -> float:
    """The probability that no GOOD step was a bad one in disguise."""
    p = repro_chance(bad_end)
    out = 1.0
    for step in steps:
        if step.mark is Mark.GOOD:
            n = sum(r is RunMark.GOOD for r in step.runs)
            out *= 1.0 - (1.0 - p) ** n
    return out


def flaky(steps: Sequence[StepRuns]) -> bool:
    """A BAD step where the bug showed in fewer than half the valid runs."""
    for step in steps:
        bad = sum(r is RunMark.BAD for r in step.runs)
        valid = bad + sum(r is RunMark.GOOD for r in step.runs)
        if step.mark is Mark.BAD and valid and 2 * bad < valid:
            return True
    return False
