"""One engine for the three sources: a list (matrix kernels, Debian versions) or `git bisect`.

    Stepper(records, tester, repeats, max_infra, say).step(label, spec, role) -> Step
    bisect_list(labels, spec_of, stepper) -> Outcome       the matrix's or a Debian line's
    bisect_git(clone, good, bad, spec_of, stepper, ...) -> Outcome    a kernel git tree
    verify(outcome, ...)                                   the culprit again, and reverted

The engine knows a probe only as a `Tester`, a function that runs one cell on one kernel
and answers a RunRecord (rig/bisect/command.py runs the real cell; tests give a fake). Every
run is recorded as it ends (rig/bisect/record.py) and looked up before it is run, so a resumed
bisection does only what is left. The ends are checked first: the good end must test GOOD
and the bad end BAD (EndsWrong otherwise, exit 2). Infrastructure errors are retried; a step
whose runs stay INFRA counts against max_infra, past which the bisection stops with no culprit
(BisectAborted, exit 3).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rig.bisect.decide import RunMark, StepRuns, confidence, flaky, step_mark
from rig.bisect.git import Done, Inconclusive, RigClone, ToTest
from rig.bisect.record import Records, RunRecord
from rig.bisect.search import Mark, bisect
from rig.errors import InfraError, UsageError
from rig.model import KernelSpec


class Tester(Protocol):
    def __call__(self, spec: KernelSpec, label: str, role: str, run: int) -> RunRecord: ...


class EndsWrong(UsageError):
    """The good end did not test good, or the bad end not bad (exit 2)."""


class BisectAborted(InfraError):
    """Too many steps the rig could not judge: no culprit is named (exit 3)."""


@dataclass
class Step:
    label: str
    role: str
    mark: Mark
    runs: list[RunRecord]

    @property
    def reason(self) -> str:
        """The reason of the runs that decided the mark (a bad run's, else a judged one's)."""
        for wanted in (RunMark.BAD, RunMark.GOOD, RunMark.SKIP, RunMark.INFRA):
            for r in self.runs:
                if r.mark is wanted:
                    return r.reason
        return ""

    def stage_reason(self, stage: str) -> str:
        """What a judged run of this step said of `stage` (from its facts), or ""."""
        for r in sorted(self.runs, key=lambda r: r.mark is RunMark.INFRA):
            said = r.facts.get("stages", {}).get(stage)
            if said:
                return f"{stage} {said[0]}: {said[1]}"
        return ""

    @property
    def seconds(self) -> float:
        return sum(r.build_s + r.boot_s for r in self.runs)

    def as_runs(self) -> StepRuns:
        return StepRuns(self.mark, tuple(r.mark for r in self.runs if r.mark is not RunMark.INFRA))


@dataclass
class Stepper:
    records: Records
    tester: Tester
    repeats: int = 1
    max_infra: int = 3
    say: Callable[[str], None] = print
    steps: list[Step] = field(default_factory=list)
    infra_steps: int = 0
    left: Callable[[], int] = lambda: 0  # roughly how many steps are left (for the estimate)

    def step(self, label: str, spec: KernelSpec, role: str) -> Step:
        """Test `spec` `repeats` times (what the records hold is not run again)."""
        runs = list(self.records.runs(label, role))
        attempts = len(runs)
        while True:
            judged = [r for r in runs if r.mark is not RunMark.INFRA]
            final = any(r.facts.get("unbuildable") or r.facts.get("unreachable") for r in runs)
            if final or len(judged) >= self.repeats or attempts >= 2 * self.repeats + 1:
                break
            t0 = time.monotonic()
            record = self.tester(spec, label, role, attempts)
            attempts += 1
            self.records.add(record)
            runs.append(record)
            self.say(f"  {role:8} {label[:16]:16} run {attempts}: {record.mark.value:5} "
                     f"{record.reason[:90]} ({time.monotonic() - t0:.0f} s)")  # fmt: skip
        marks = [r.mark for r in runs if r.mark is not RunMark.INFRA]
        missing = max(0, self.repeats - len(marks)) if not final else 0
        mark = step_mark([*marks, *[RunMark.SKIP] * missing])
        if missing and mark is Mark.SKIP:
            self.infra_steps += 1
            if self.infra_steps > self.max_infra:
                raise BisectAborted(
                    f"{self.infra_steps} steps could not be judged (infrastructure errors); "
                    "no culprit is named",
                    fix="look at the cells' logs in the run directory, then --resume it",
                )
        step = Step(label, role, mark, runs)
        self.steps.append(step)
        spent = [s.seconds for s in self.steps if s.seconds]
        eta = (sum(spent) / len(spent)) * self.left() if spent else 0.0
        self.say(f"{role} {label[:16]}: {mark.value} ({len(marks)} run(s)); "
                 f"~{self.left()} step(s) left, ~{eta / 60:.0f} min")  # fmt: skip
        return step


@dataclass
class Outcome:
    """What the bisection found."""

    first_bad: str | None
    last_good: str
    suspects: list[str]
    steps: list[Step]
    confidence: float = 1.0
    flaky: bool = False
    checks: dict[str, Step] = field(default_factory=dict)  # "verify", "revert"
    notes: list[str] = field(default_factory=list)  # merge, no-op image, ...
    log: str = ""  # git bisect log (git only)
    about: dict[str, str] = field(default_factory=dict)  # the culprit's subject, author, date
    next_step: str = ""  # what to bisect next (a package bisection: the upstream range)


def _check_ends(old: Step, new: Step, fix: bool) -> None:
    """The old end must test GOOD and the new one BAD (with fix: the other way round)."""
    for end, want, name in ((old, Mark.BAD if fix else Mark.GOOD, "old"),
                            (new, Mark.GOOD if fix else Mark.BAD, "new")):  # fmt: skip
        if end.mark is not want:
            hint = ("pick ends that really pass and fail (`rig run --kernel` shows it)"
                    if end.mark is not Mark.SKIP else
                    "an end that tests skip cannot anchor a bisection: its stage was not "
                    "judged (on a lane without VMX only build and teardown are: --stage "
                    "build), or its kernel did not build or boot")  # fmt: skip
            raise EndsWrong(
                f"the {name} end {end.label} tested {end.mark.value}, not {want.value}: "
                f"{end.reason}",
                fix=hint,
            )


def bisect_list(
    labels: Sequence[str], spec_of: Callable[[str], KernelSpec], stepper: Stepper
) -> Outcome:
    """Bisect an ordered list (oldest first) whose first item is good and last bad."""
    ends = {labels[0]: "good-end", labels[-1]: "bad-end"}
    first, last = stepper.step(labels[0], spec_of(labels[0]), "good-end"), None
    last = stepper.step(labels[-1], spec_of(labels[-1]), "bad-end")
    _check_ends(first, last, fix=False)
    left = [len(labels)]
    stepper.left = lambda: max(0, left[0].bit_length() - 1)

    def probe(label: str) -> Mark:
        step = stepper.step(label, spec_of(label), ends.get(label, "step"))
        left[0] = max(1, left[0] // 2)
        return step.mark

    result = bisect(labels, probe, repeats=1, verify_ends=False)
    bad_end = [r.mark for r in last.runs]
    judged = [s.as_runs() for s in stepper.steps]
    return Outcome(
        first_bad=result.first_bad, last_good=result.last_good, suspects=result.suspects,
        steps=stepper.steps, confidence=confidence(judged, bad_end), flaky=flaky(judged),
    )  # fmt: skip


def bisect_git(
    clone: RigClone, old_end: str, new_end: str, spec_of: Callable[[str], KernelSpec],
    stepper: Stepper, *, fix: bool = False, first_parent: bool = False,
    save_log: Callable[[str], None] = lambda _t: None,
) -> Outcome:  # fmt: skip
    """`git bisect` from the old end (good; with fix: failing) to the new end (bad; with fix:
    passing). Each mark names the tested commit; a commit is marked only from its records."""
    old, new = clone.resolve(old_end), clone.resolve(new_end)
    first = stepper.step(old, spec_of(old), "good-end")
    last = stepper.step(new, spec_of(new), "bad-end")
    _check_ends(first, last, fix)
    stepper.left = lambda: clone.remaining()[1] if clone.current() else 0
    good, bad = (new, old) if fix else (old, new)  # the caller's verdicts on the ends
    state = clone.start(good, bad, first_parent=first_parent, fix=fix)
    save_log(clone.log())
    while isinstance(state, ToTest):
        step = stepper.step(state.sha, spec_of(state.sha), "step")
        state = clone.mark(state.sha, step.mark)
        save_log(clone.log())
    bad_end = [r.mark for r in (first if fix else last).runs]
    judged = [s.as_runs() for s in stepper.steps]
    if isinstance(state, Done):
        culprit: str | None = state.first_bad
        info = clone.commit_info(state.first_bad)
        about = {"subject": info.subject, "author": info.author, "date": info.date}
        last_good = info.parents[0] if info.parents else old
        suspects = [state.first_bad]
    else:
        assert isinstance(state, Inconclusive)
        culprit, last_good, suspects = None, old, list(state.candidates)
        about = {}
    return Outcome(
        first_bad=culprit, last_good=last_good, suspects=suspects, steps=stepper.steps,
        confidence=confidence(judged, bad_end), flaky=flaky(judged), log=clone.log(),
        about=about,
    )  # fmt: skip


def verify(
    outcome: Outcome, spec_of: Callable[[str], KernelSpec], stepper: Stepper, *,
    clone: RigClone | None = None, new_end: str = "", fix: bool = False,
    image_of: Callable[[str], str | None] = lambda _sha: None,
) -> None:  # fmt: skip
    """The culprit run again (it must still test bad; with fix, good), and for a git tree the
    new end with the culprit reverted (it must test the other way); a merge and a culprit
    whose kernel image equals its parent's are noted. Results land in outcome.checks/notes."""
    culprit = outcome.first_bad
    if culprit is None:
        return
    want = Mark.GOOD if fix else Mark.BAD
    again = stepper.step(culprit, spec_of(culprit), "verify")
    outcome.checks["verify"] = again
    if again.mark is not want:
        outcome.notes.append(f"the culprit tested {again.mark.value} when run again")
    if clone is None:
        return
    info = clone.commit_info(culprit)
    if info.is_merge:
        outcome.notes.append("the culprit is a merge: bisect its branch (--first-parent off)")
    mine, parent = image_of(culprit), image_of(outcome.last_good)
    if mine is not None and mine == parent:
        outcome.notes.append(
            "the culprit's kernel image is the same as its parent's: the change is not in "
            "the kernel that ran (flaky, or outside the image)"
        )
    reverted = clone.revert_onto(culprit, clone.resolve(new_end))
    if reverted is None:
        outcome.notes.append("the culprit does not revert cleanly on the bad end: not checked")
        return
    # recorded under the culprit: the revert commit is made anew (another date, another SHA)
    # by each run, and a resumed one must find the run it already did
    back = stepper.step(culprit, spec_of(reverted), "revert")
    outcome.checks["revert"] = back
    if back.mark is not (Mark.BAD if fix else Mark.GOOD):
        outcome.notes.append(f"the bad end with the culprit reverted tested {back.mark.value}")
