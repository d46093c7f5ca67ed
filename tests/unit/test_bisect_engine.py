"""The bisection engine without booting: what a run and a step say (decide), the records a
resume reads (record), the search over a list and over a real git tree with a fake Tester
(engine), and what it prints and writes (output).

The fake testers answer from a truth table (a list) or from the file `f` of the commit they
are given, read by `git show` in the rig's clone (a revert commit exists only there), and
count their calls, so that a resumed bisection can be shown to repeat no run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rig.bisect.decide import (
    LOW_CONFIDENCE,
    RunMark,
    StepRuns,
    confidence,
    flaky,
    run_mark,
    step_mark,
)
from rig.bisect.engine import (
    BisectAborted,
    EndsWrong,
    Step,
    Stepper,
    bisect_git,
    bisect_list,
    verify,
)
from rig.bisect.engine import Outcome as Found
from rig.bisect.engine import Tester as Probe
from rig.bisect.git import RigClone
from rig.bisect.output import print_outcome, write_junit
from rig.bisect.record import BisectArgs, Records, RunRecord
from rig.bisect.search import Mark
from rig.errors import ExitCode, UsageError
from rig.model import STAGES, CellVerdict, KernelSpec, Outcome, StageVerdict

OUTCOMES = st.sampled_from(list(Outcome))
STAGE_OR_NONE = st.one_of(st.none(), st.sampled_from(STAGES))
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # what `shown` never lets through
XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
HOSTILE = "oops \x1b[2J\x01\x00\r\x85\x9b\x7f\ufffe\ud800 <b>&amp; at vmx_launch"


# =========================================================================== decide
def verdict(**outcomes: Outcome) -> CellVerdict:
    stages = {s: StageVerdict(s, outcomes.get(s, Outcome.PASSED), f"{s} said so") for s in STAGES}
    return CellVerdict(cell_id="bochs-k-haswell", stages=stages)


@pytest.mark.parametrize(
    ("outcomes", "stage", "mark", "reason"),
    [
        ({}, None, RunMark.GOOD, "vmcall_exit passed"),
        ({}, "vmxon", RunMark.GOOD, "vmxon passed"),
        ({"vmlaunch": Outcome.FAILED}, None, RunMark.BAD, "vmlaunch: vmlaunch said so"),
        ({"vmlaunch": Outcome.FAILED}, "vmlaunch", RunMark.BAD, "vmlaunch: "),
        ({"teardown": Outcome.FAILED}, None, RunMark.BAD, "teardown: "),
        ({"build": Outcome.FAILED}, None, RunMark.BAD, "build: build said so"),
        # a failure before the stage under test: the kernel broke something else first
        ({"vmxon": Outcome.FAILED}, "vmlaunch", RunMark.SKIP, "vmxon failed before vmlaunch"),
        ({"build": Outcome.FAILED}, "vmxon", RunMark.SKIP, "build failed before vmxon"),
        # a failure after it is not what is bisected
        ({"teardown": Outcome.FAILED}, "vmlaunch", RunMark.GOOD, "vmlaunch passed"),
        ({"vmcall_exit": Outcome.SKIPPED}, None, RunMark.SKIP, "vmcall_exit was not judged"),
        ({s: Outcome.SKIPPED for s in STAGES}, None, RunMark.SKIP, "vmcall_exit was not judged"),
        ({"vmxon": Outcome.SKIPPED}, "vmxon", RunMark.SKIP, "vmxon was not judged"),
        # an infrastructure error anywhere, even after the stage or beside a failure
        ({"vmxon": Outcome.ERROR, "vmlaunch": Outcome.FAILED}, None, RunMark.INFRA, "vmxon: "),
        ({"teardown": Outcome.ERROR}, "vmxon", RunMark.INFRA, "teardown: teardown said so"),
        ({"build": Outcome.ERROR}, None, RunMark.INFRA, "build: "),
    ],
)
def test_run_mark(
    outcomes: dict[str, Outcome], stage: str | None, mark: RunMark, reason: str
) -> None:
    got, why = run_mark(verdict(**outcomes), stage)
    assert got is mark
    assert why.startswith(reason), why


@settings(max_examples=300, deadline=None)
@given(outcomes=st.fixed_dictionaries({s: OUTCOMES for s in STAGES}), stage=STAGE_OR_NONE)
def test_run_mark_properties(outcomes: dict[str, Outcome], stage: str | None) -> None:
    mark, reason = run_mark(verdict(**outcomes), stage)
    assert reason
    if Outcome.ERROR in outcomes.values():
        assert mark is RunMark.INFRA  # never GOOD or BAD: the rig could not judge
        return
    upto = STAGES if stage is None else STAGES[: STAGES.index(stage) + 1]
    if mark is RunMark.BAD:
        failed = [s for s in upto if outcomes[s] is Outcome.FAILED]
        assert failed and (stage is None or failed[0] == stage)
        assert reason.startswith(f"{failed[0]}: ")
    if mark is RunMark.GOOD:
        assert all(outcomes[s] is not Outcome.FAILED for s in upto)
        assert outcomes[stage or "vmcall_exit"] is Outcome.PASSED
    if stage is not None:  # what happens after the stage under test changes nothing
        later = {s: Outcome.FAILED for s in STAGES[STAGES.index(stage) + 1 :]}
        assert run_mark(verdict(**{**outcomes, **later}), stage)[0] is mark


RUNS = st.lists(st.sampled_from(list(RunMark)), max_size=30)


def _count(runs: Sequence[RunMark], mark: RunMark) -> int:
    return sum(r is mark for r in runs)


@settings(max_examples=500, deadline=None)
@given(runs=RUNS, data=st.data())
def test_step_mark_properties(runs: list[RunMark], data: st.DataObject) -> None:
    mark = step_mark(runs)
    bad, good = _count(runs, RunMark.BAD), _count(runs, RunMark.GOOD)
    valid = bad + good
    assert step_mark(data.draw(st.permutations(runs))) is mark  # the order does not matter
    if mark is Mark.GOOD:
        assert bad == 0
    if not runs or 2 * valid < len(runs):
        assert mark is Mark.SKIP  # mostly skipped or infrastructure: blames nobody
    elif bad == 0:
        assert mark is Mark.GOOD
    elif valid <= 11:
        assert mark is Mark.BAD  # any bad run among a few valid ones is a bad step
    if mark is Mark.BAD:  # more bad runs keep it bad
        assert step_mark([*runs, RunMark.BAD]) is Mark.BAD


@given(n=st.integers(1, 30))
def test_all_good_runs_are_a_good_step(n: int) -> None:
    assert step_mark([RunMark.GOOD] * n) is Mark.GOOD


def test_step_mark_by_example() -> None:
    G, B, S, I = RunMark.GOOD, RunMark.BAD, RunMark.SKIP, RunMark.INFRA  # noqa: E741
    assert step_mark([]) is Mark.SKIP
    assert step_mark([B, *[G] * 9]) is Mark.BAD  # one bad run in ten: a flaky bug is a bug
    assert step_mark([B, S, S]) is Mark.SKIP  # mostly could not judge
    assert step_mark([B, S]) is Mark.BAD  # half valid is enough
    assert step_mark([G, I, I]) is Mark.SKIP
    assert step_mark([G, G, S, I]) is Mark.GOOD
    assert step_mark([B, *[G] * 11]) is Mark.SKIP  # below valid/6: documented, not bad


def test_confidence_is_one_when_the_bad_end_always_fails() -> None:
    steps = [StepRuns(Mark.GOOD, (RunMark.GOOD,)) for _ in range(8)]
    assert confidence(steps, [RunMark.BAD, RunMark.BAD, RunMark.INFRA]) == 1.0
    assert confidence([], [RunMark.GOOD, RunMark.BAD]) == 1.0  # no good step to doubt


def test_confidence_is_lower_with_a_flaky_bad_end() -> None:
    steps = [StepRuns(Mark.GOOD, (RunMark.GOOD,)), StepRuns(Mark.BAD, (RunMark.BAD,))]
    half = confidence(steps, [RunMark.BAD, RunMark.GOOD])
    assert half == pytest.approx(0.5)  # one good run of a bug that shows half the time
    assert half < LOW_CONFIDENCE
    assert confidence(steps * 2, [RunMark.BAD, RunMark.GOOD]) == pytest.approx(0.25)
    # BAD and SKIP steps cannot hide the bug: they change nothing
    more = [*steps, StepRuns(Mark.SKIP, (RunMark.SKIP,)), StepRuns(Mark.BAD, (RunMark.BAD,))]
    assert confidence(more, [RunMark.BAD, RunMark.GOOD]) == pytest.approx(half)


@settings(max_examples=200, deadline=None)
@given(
    bad=st.integers(1, 10),
    good=st.integers(0, 10),
    steps=st.lists(st.integers(1, 8), max_size=6),
    n=st.integers(1, 8),
)
def test_confidence_is_monotone_in_the_good_runs(
    bad: int, good: int, steps: list[int], n: int
) -> None:
    bad_end = [RunMark.BAD] * bad + [RunMark.GOOD] * good

    def with_runs(last: int) -> float:
        good_steps = [StepRuns(Mark.GOOD, (RunMark.GOOD,) * k) for k in [*steps, last]]
        return confidence(good_steps, bad_end)

    assert 0.0 < with_runs(n) <= 1.0
    assert with_runs(n) <= with_runs(n + 1)  # more good runs: more sure the step was good
    if good and steps == [] and n < 8:  # (before the floats round to 1.0)
        assert with_runs(n) < with_runs(n + 1)
    # one more GOOD step never raises it
    extra = [StepRuns(Mark.GOOD, (RunMark.GOOD,) * k) for k in [*steps, n, 1]]
    assert confidence(extra, bad_end) <= with_runs(n)
    assert (confidence(extra, bad_end) == 1.0) == (good == 0)


def test_flaky() -> None:
    one_of_three = StepRuns(Mark.BAD, (RunMark.BAD, RunMark.GOOD, RunMark.GOOD))
    two_of_three = StepRuns(Mark.BAD, (RunMark.BAD, RunMark.BAD, RunMark.GOOD))
    assert flaky([one_of_three]) and not flaky([two_of_three])
    assert not flaky([StepRuns(Mark.GOOD, (RunMark.GOOD,) * 3)])


# =========================================================================== record
def args(**changes: Any) -> BisectArgs:
    base = BisectArgs(source="git", good="v6.1", bad="v6.2", lane="bochs", cpu="haswell",
                      driver="/src/driver", driver_digest="0123abcd")  # fmt: skip
    return replace(base, **changes)


def test_bisect_args_round_trip(tmp_path: Path) -> None:
    for a in (
        args(),
        args(
            stage="vmlaunch",
            repeat=3,
            fix=True,
            first_parent=True,
            max_infra=0,
            params=("break_field=x", "hold_vmx=1"),
            tree="/k",
            config="debian:6.12",
            patch="/p.diff",
            suite="bookworm",
            debian="trixie-security:6.12",
            bad="caf\u00e9 \x1b[2J",
        ),
    ):
        a.save(tmp_path)
        assert BisectArgs.load(tmp_path) == a
        assert isinstance(BisectArgs.load(tmp_path).params, tuple)


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[]", b"null", b'"x"', b'{"source": "git"}', b"\xff\xfe{",
     json.dumps({**asdict(args()), "nope": 1}).encode(),
     json.dumps({**asdict(args()), "params": 5}).encode()],
)  # fmt: skip
def test_a_broken_bisect_json_is_a_usage_error(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "bisect.json").write_bytes(data)
    with pytest.raises(UsageError) as err:
        BisectArgs.load(tmp_path)
    assert "not a bisection's record" in err.value.what and err.value.fix
    assert err.value.exit_code == ExitCode.USAGE


def test_missing_bisect_json_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"bisect\.json"):
        BisectArgs.load(tmp_path / "nowhere")


def rec(label: str, role: str = "step", run: int = 0, mark: RunMark = RunMark.GOOD,
        reason: str = "ok", **facts: object) -> RunRecord:  # fmt: skip
    return RunRecord(label, role, run, mark, reason, 1.5, 2.5, f"/runs/{label}", dict(facts))


def test_records_append_and_reload(tmp_path: Path) -> None:
    records = Records(tmp_path)
    assert records.all == [] and not records.path.exists()
    made = [rec("a", "good-end"), rec("b", run=0, mark=RunMark.INFRA, reason=HOSTILE),
            rec("b", run=1, mark=RunMark.BAD, image_digest="d1"),
            rec("c", mark=RunMark.SKIP, unbuildable=True)]  # fmt: skip
    for r in made:
        records.add(r)
    again = Records(tmp_path)
    assert again.all == made
    assert again.runs("b", "step") == made[1:3] and again.runs("b", "verify") == []
    assert again.runs("a", "step") == [] and again.runs("a", "good-end") == [made[0]]
    lines = records.path.read_text().splitlines()
    assert len(lines) == 4 and all(line.isascii() for line in lines)  # one record a line


def test_a_line_cut_by_a_kill_is_dropped_and_the_records_go_on(tmp_path: Path) -> None:
    path = tmp_path / "steps.jsonl"
    head = rec("a").line() + "\n" + rec("b").line() + "\n"
    whole = rec("c").line()
    for tail in (whole[:1], whole[: len(whole) // 2], whole[:-1], "\n", "{}\n"):
        path.write_text(head + tail)  # the run in flight, killed mid-write
        resumed = Records(tmp_path)
        assert [r.label for r in resumed.all] == ["a", "b"]
        assert path.read_text() == head + tail  # reading writes nothing
        resumed.add(rec("d"))  # the resumed bisection goes on writing ...
        resumed.add(rec("e"))
        assert [r.label for r in Records(tmp_path).all] == ["a", "b", "d", "e"]  # ... readably
        assert path.read_text() == head + rec("d").line() + "\n" + rec("e").line() + "\n"


def test_a_bad_line_in_the_middle_is_refused(tmp_path: Path) -> None:
    (tmp_path / "steps.jsonl").write_text(
        rec("a").line() + "\n" + "garbage\n" + rec("b").line() + "\n"
    )
    with pytest.raises(UsageError, match=r"steps.jsonl:2: not a run record"):
        Records(tmp_path)
    (tmp_path / "steps.jsonl").write_text(
        rec("a").line() + "\n" + '{"label": "x"}\n' + rec("b").line() + "\n"
    )
    with pytest.raises(UsageError, match=r":2:"):
        Records(tmp_path)


# =========================================================================== engine (list)
def spec(label: str) -> KernelSpec:
    return KernelSpec(name=label, suite="trixie", abi=f"{label}-amd64")


@dataclass
class Script:
    """A fake Tester answering from a truth table: `mark(label, run)`; the labels in
    `unbuildable` do not build, `infra[label]` first runs are infrastructure errors. It
    raises KeyboardInterrupt (a Ctrl-C) at its call number `interrupt_at`."""

    mark: Callable[[str, int], RunMark]
    unbuildable: frozenset[str] = frozenset()
    infra: dict[str, int] = field(default_factory=dict)
    interrupt_at: int | None = None
    calls: list[tuple[str, str, int]] = field(default_factory=list)

    def __call__(self, spec: KernelSpec, label: str, role: str, run: int) -> RunRecord:
        if self.interrupt_at is not None and len(self.calls) >= self.interrupt_at:
            raise KeyboardInterrupt
        assert spec.name == label
        self.calls.append((label, role, run))
        if label in self.unbuildable:
            return RunRecord(label, role, run, RunMark.SKIP, "kernel does not build",
                             facts={"unbuildable": True})  # fmt: skip
        if run < self.infra.get(label, 0):
            return RunRecord(label, role, run, RunMark.INFRA, "bochs died")
        m = self.mark(label, run)
        return RunRecord(label, role, run, m, f"{label} run {run}: {m.value}", 10.0, 20.0)


def first_bad_at(k: int) -> Callable[[str, int], RunMark]:
    return lambda label, _run: RunMark.BAD if int(label[1:]) >= k else RunMark.GOOD


def names(n: int) -> list[str]:
    return [f"k{i}" for i in range(n)]


def stepper(run_dir: Path, tester: Probe, repeats: int = 1, max_infra: int = 3) -> Stepper:
    said: list[str] = []
    return Stepper(Records(run_dir), tester, repeats, max_infra, say=said.append)


def called_twice(calls: Sequence[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    return [c for i, c in enumerate(calls) if c in calls[:i]]


@settings(max_examples=100, deadline=None)
@given(n=st.integers(2, 40), data=st.data())
def test_bisect_list_finds_the_first_bad(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, n - 1), label="first bad")
    broken = data.draw(st.sets(st.integers(1, max(1, n - 2))), label="unbuildable")
    unbuildable = frozenset(f"k{i}" for i in broken if 0 < i < n - 1)
    repeats = data.draw(st.integers(1, 3), label="repeats")
    tester = Script(first_bad_at(k), unbuildable)
    with tempfile.TemporaryDirectory() as tmp:
        found = bisect_list(names(n), spec, stepper(Path(tmp), tester, repeats))
    assert f"k{k}" in found.suspects
    assert all(s in unbuildable or s == found.suspects[-1] for s in found.suspects)
    if f"k{k}" not in unbuildable and f"k{k - 1}" not in unbuildable:
        assert (found.first_bad, found.last_good) == (f"k{k}", f"k{k - 1}")
    else:
        assert found.first_bad in (None, f"k{k}")
    assert not called_twice(tester.calls)
    per_label = {label: [c for c in tester.calls if c[0] == label] for label, _, _ in tester.calls}
    for label, calls in per_label.items():
        assert len(calls) == (1 if label in unbuildable else repeats), (label, calls)
    assert tester.calls[0][:2] == ("k0", "good-end") and tester.calls[repeats][:2] == (
        f"k{n - 1}", "bad-end")  # fmt: skip
    assert found.confidence == 1.0 and not found.flaky
    assert [s.label for s in found.steps] == list(dict.fromkeys(c[0] for c in tester.calls))


@pytest.mark.parametrize(
    ("script", "end"),
    [
        (Script(lambda _l, _r: RunMark.BAD), "old end k0 tested bad, not good"),
        (Script(lambda _l, _r: RunMark.GOOD), "new end k9 tested good, not bad"),
        (Script(first_bad_at(3), unbuildable=frozenset({"k0"})), "old end k0 tested skip"),
        (Script(first_bad_at(3), infra={"k9": 99}), "new end k9 tested skip"),
    ],
)
def test_ends_that_do_not_test_as_said(tmp_path: Path, script: Script, end: str) -> None:
    with pytest.raises(EndsWrong) as err:
        bisect_list(names(10), spec, stepper(tmp_path, script))
    assert end in err.value.what and err.value.fix
    assert err.value.exit_code == ExitCode.USAGE
    assert {c[1] for c in script.calls} == {"good-end", "bad-end"}  # no step was run


def test_an_infrastructure_error_is_retried(tmp_path: Path) -> None:
    tester = Script(first_bad_at(5), infra={"k4": 1, "k9": 1})
    s = stepper(tmp_path, tester)
    found = bisect_list(names(10), spec, s)
    assert found.first_bad == "k5"
    assert [c for c in tester.calls if c[0] == "k4"] == [("k4", "step", 0), ("k4", "step", 1)]
    step = next(x for x in found.steps if x.label == "k4")
    assert step.mark is Mark.GOOD and [r.mark for r in step.runs] == [RunMark.INFRA, RunMark.GOOD]
    assert s.infra_steps == 0
    assert [r.mark for r in Records(tmp_path).runs("k4", "step")] == [RunMark.INFRA, RunMark.GOOD]


def test_a_label_that_stays_infra_is_skipped_and_counted(tmp_path: Path) -> None:
    tester = Script(first_bad_at(7), infra={"k5": 99})
    s = stepper(tmp_path, tester, repeats=2)
    found = bisect_list(names(12), spec, s)
    assert found.first_bad == "k7"
    step = next(x for x in found.steps if x.label == "k5")
    assert step.mark is Mark.SKIP and s.infra_steps == 1
    assert len([c for c in tester.calls if c[0] == "k5"]) == 5  # 2 * repeats + 1 tries
    assert found.confidence == 1.0  # an all-INFRA step is no GOOD step


@pytest.mark.parametrize("max_infra", [0, 1, 3])
def test_past_max_infra_the_bisection_stops(tmp_path: Path, max_infra: int) -> None:
    inner = {f"k{i}": 99 for i in range(1, 31)}
    tester = Script(first_bad_at(20), infra=inner)
    s = stepper(tmp_path, tester, max_infra=max_infra)
    with pytest.raises(BisectAborted) as err:
        bisect_list(names(32), spec, s)
    assert err.value.exit_code == ExitCode.INFRA and err.value.fix
    assert s.infra_steps == max_infra + 1
    assert len({c[0] for c in tester.calls if c[1] == "step"}) == max_infra + 1


def test_an_unbuildable_label_is_run_once(tmp_path: Path) -> None:
    tester = Script(first_bad_at(5), unbuildable=frozenset({"k4", "k5"}))
    s = stepper(tmp_path, tester, repeats=3)
    found = bisect_list(names(10), spec, s)
    assert [c for c in tester.calls if c[0] in ("k4", "k5")] == [("k4", "step", 0),
                                                                 ("k5", "step", 0)]  # fmt: skip
    assert s.infra_steps == 0  # not the rig's trouble
    assert found.first_bad is None and found.suspects == ["k4", "k5", "k6"]
    assert found.last_good == "k3"


def test_a_flaky_bug_lowers_the_confidence(tmp_path: Path) -> None:
    # the bug shows in one run of three: steps of 3 runs are BAD when any run is
    def flaky_bug(label: str, run: int) -> RunMark:
        return RunMark.BAD if int(label[1:]) >= 6 and run == 0 else RunMark.GOOD

    found = bisect_list(names(12), spec, stepper(tmp_path, Script(flaky_bug), repeats=3))
    assert found.first_bad == "k6" and found.flaky
    goods = sum(s.mark is Mark.GOOD for s in found.steps)
    assert found.confidence == pytest.approx((1 - (2 / 3) ** 3) ** goods)
    assert found.confidence < LOW_CONFIDENCE


def _same(a: Found, b: Found) -> None:
    assert (a.first_bad, a.last_good, a.suspects) == (b.first_bad, b.last_good, b.suspects)
    assert [(s.label, s.role, s.mark, s.runs) for s in a.steps] == [
        (s.label, s.role, s.mark, s.runs) for s in b.steps
    ]
    assert (a.confidence, a.flaky, a.checks, a.notes) == (b.confidence, b.flaky, b.checks, b.notes)


def _list_run(run_dir: Path, tester: Script, repeats: int) -> Found:
    s = stepper(run_dir, tester, repeats)
    found = bisect_list(names(16), spec, s)
    verify(found, spec, s)
    return found


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 15),
    repeats=st.integers(1, 2),
    broken=st.sets(st.integers(1, 14), max_size=3),
    flaky_infra=st.sets(st.integers(0, 15), max_size=3),
    stop=st.integers(0, 40),
)
def test_resume_repeats_no_run_and_finds_the_same(
    k: int, repeats: int, broken: set[int], flaky_infra: set[int], stop: int
) -> None:
    def script(interrupt_at: int | None = None) -> Script:
        return Script(first_bad_at(k), frozenset(f"k{i}" for i in broken),
                      {f"k{i}": 1 for i in flaky_infra}, interrupt_at)  # fmt: skip

    with tempfile.TemporaryDirectory() as whole, tempfile.TemporaryDirectory() as cut:
        once = script()
        expected = _list_run(Path(whole), once, repeats)
        first = script(interrupt_at=stop)
        if stop < len(once.calls):
            with pytest.raises(KeyboardInterrupt):
                _list_run(Path(cut), first, repeats)
        else:
            _list_run(Path(cut), first, repeats)
        recorded = {(r.label, r.role, r.run) for r in Records(Path(cut)).all}
        assert recorded == set(first.calls)
        second = script()
        resumed = _list_run(Path(cut), second, repeats)  # a new Stepper on the same records
    assert not recorded & set(second.calls)  # nothing recorded is run again
    assert first.calls + second.calls == once.calls  # the same work, split in two
    _same(resumed, expected)
    if resumed.first_bad is not None:
        assert resumed.checks["verify"].mark is Mark.BAD


def test_resume_after_a_kill_mid_write(tmp_path: Path) -> None:
    first = Script(first_bad_at(9), interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        bisect_list(names(16), spec, stepper(tmp_path, first))
    with (tmp_path / "steps.jsonl").open("a") as fh:
        fh.write('{"label": "k3", "role": "st')  # killed while writing the 5th record
    second = Script(first_bad_at(9))
    found = bisect_list(names(16), spec, stepper(tmp_path, second))
    third = Script(first_bad_at(9))
    again = bisect_list(names(16), spec, stepper(tmp_path, third))  # and once more
    assert found.first_bad == again.first_bad == "k9"
    assert not set(first.calls) & set(second.calls) and third.calls == []


# =========================================================================== engine (git)
GIT_ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "LC_ALL": "C",
}
N = 20


def git(repo: Path, *argv: str, stdin: str | None = None) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *argv], input=stdin, capture_output=True,
                          text=True, env=GIT_ENV, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _data(text: str) -> str:
    return f"data {len(text.encode())}\n{text}\n"


@dataclass(frozen=True)
class Commit:
    name: str  # its tag and subject
    f: str  # the file the tester reads
    parents: tuple[str, ...] = ()
    branch: str = "main"


def make_repo(path: Path, plan: Sequence[Commit]) -> dict[str, str]:
    """A repository at `path` made by one `git fast-import`: each commit holds `f` and, so
    that a revert of one commit onto later ones applies, a file add_NAME per ancestor."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, env=GIT_ENV)
    mark = {c.name: i + 1 for i, c in enumerate(plan)}
    ancestry: dict[str, set[str]] = {}
    stream: list[str] = []
    for t, c in enumerate(plan):
        ancestry[c.name] = {c.name}.union(*(ancestry[p] for p in c.parents))
        stream.append(f"commit refs/heads/{c.branch}\nmark :{mark[c.name]}\n")
        stream.append(f"committer T <t@e> {1_700_000_000 + t} +0000\n" + _data(c.name))
        stream += [("merge" if j else "from") + f" :{mark[p]}\n" for j, p in enumerate(c.parents)]
        stream.append("deleteall\nM 100644 inline f\n" + _data(c.f))
        stream += [f"M 100644 inline add_{a}\n" + _data("") for a in sorted(ancestry[c.name])]
    stream += [f"reset refs/tags/{name}\nfrom :{m}\n" for name, m in mark.items()]
    git(path, "fast-import", "--quiet", stdin="".join(stream))
    git(path, "reset", "-q", "--hard", "main")
    return {name: git(path, "rev-parse", name) for name in mark}


def line_of(bug: Callable[[int], bool], n: int = N) -> list[Commit]:
    """c0 .. c{n-1} on main, `f` holding BUG where bug(i)."""
    return [Commit(f"c{i}", "BUG\n" if bug(i) else "ok\n", (f"c{i - 1}",) if i else ())
            for i in range(n)]  # fmt: skip


MERGE_PLAN = [  # main: m0 m1 [side: s1 s2(BUG) s3] m2 merge m3 m4
    Commit("m0", "ok\n"), Commit("m1", "ok\n", ("m0",)),
    Commit("s1", "ok\n", ("m1",), "side"), Commit("s2", "BUG\n", ("s1",), "side"),
    Commit("s3", "BUG\n", ("s2",), "side"), Commit("m2", "ok\n", ("m1",)),
    Commit("merge", "BUG\n", ("m2", "s3")), Commit("m3", "BUG\n", ("merge",)),
    Commit("m4", "BUG\n", ("m3",)),
]  # fmt: skip


@dataclass
class TreeTester:
    """A fake Tester for a git tree: BAD where the commit's `f` (read by `git show` in the
    rig's clone) says BUG."""

    clone: Path
    interrupt_at: int | None = None
    calls: list[tuple[str, str, int]] = field(default_factory=list)

    def __call__(self, spec: KernelSpec, label: str, role: str, run: int) -> RunRecord:
        if self.interrupt_at is not None and len(self.calls) >= self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append((label, role, run))
        assert spec.kind == "tree" and spec.tree == str(self.clone)
        f = git(self.clone, "show", f"{spec.ref}:f")
        mark = RunMark.BAD if "BUG" in f else RunMark.GOOD
        return RunRecord(label, role, run, mark, f"f says {f}", 1.0, 2.0,
                         facts={"image_digest": spec.ref})  # fmt: skip


def tree_spec(clone: RigClone) -> Callable[[str], KernelSpec]:
    def spec_of(sha: str) -> KernelSpec:
        return KernelSpec(name=sha[:12], suite="trixie", abi="", tree=str(clone.dest), ref=sha)

    return spec_of


def tree(root: Path, plan: Sequence[Commit]) -> tuple[RigClone, dict[str, str]]:
    """The user's repository at root/user, and the rig's clone of it at root/run/tree."""
    shas = make_repo(root / "user", plan)
    return RigClone.open(root / "user", root / "run" / "tree"), shas


def git_bisect(
    clone: RigClone, tester: TreeTester, old: str, new: str, *, fix: bool = False,
    first_parent: bool = False, image_of: Callable[[str], str | None] = lambda _sha: None,
) -> Found:  # fmt: skip
    """What rig/bisect/command.py does with a tree: bisect_git, then verify; the records in
    the clone's run directory."""
    s = stepper(clone.dest.parent, tester)
    logs: list[str] = []
    found = bisect_git(clone, old, new, tree_spec(clone), s, fix=fix,
                       first_parent=first_parent, save_log=logs.append)  # fmt: skip
    assert logs and all("git bisect start" in log for log in logs)
    assert found.log == logs[-1]
    verify(found, tree_spec(clone), s, clone=clone, new_end=new, fix=fix, image_of=image_of)
    return found


def marked_in(log: str) -> set[str]:
    """The commits a bisection log marks good or bad."""
    words = [line.split() for line in log.splitlines() if line.startswith("git bisect ")]
    return {w[3] for w in words if w[2] in ("good", "bad", "fixed", "broken")}


@pytest.mark.parametrize("k", [1, 7, 19])
def test_bisect_git_finds_the_commit_and_verifies_it(tmp_path: Path, k: int) -> None:
    clone, sha = tree(tmp_path, line_of(lambda i: i >= k))
    tester = TreeTester(clone.dest)
    found = git_bisect(clone, tester, "c0", "c19", image_of=lambda commit: commit)
    culprit = sha[f"c{k}"]
    assert (found.first_bad, found.last_good, found.suspects) == (
        culprit, sha[f"c{k - 1}"], [culprit])  # fmt: skip
    assert found.about["subject"] == f"c{k}" and found.about["author"] == "T <t@e>"
    assert f"# first bad commit: [{culprit}]" in found.log
    assert found.checks["verify"].mark is Mark.BAD
    assert found.checks["revert"].mark is Mark.GOOD  # the bad end without the culprit
    assert found.notes == [] and found.confidence == 1.0
    assert not called_twice(tester.calls)
    assert len([c for c in tester.calls if c[1] == "step"]) <= 5
    # git marked only the commits that were tested, and the ends
    tested = {c[0] for c in tester.calls if c[1] in ("step", "good-end", "bad-end")}
    assert marked_in(found.log) <= tested
    assert [c[1] for c in tester.calls][-2:] == ["verify", "revert"]


@pytest.mark.parametrize("k", [1, 9, 19])
def test_bisect_git_fix_finds_the_first_fixed_commit(tmp_path: Path, k: int) -> None:
    clone, sha = tree(tmp_path, line_of(lambda i: i < k))
    # the ends swapped: the old end fails (the caller's --bad), the new end passes
    found = git_bisect(clone, TreeTester(clone.dest), "c0", "c19", fix=True)
    assert found.first_bad == sha[f"c{k}"] and found.last_good == sha[f"c{k - 1}"]
    assert "--term-new=fixed" in found.log
    assert found.checks["verify"].mark is Mark.GOOD  # the fix, run again, still passes
    assert found.checks["revert"].mark is Mark.BAD  # the new end without the fix fails
    assert found.notes == [] and found.confidence == 1.0


def test_bisect_git_ends_wrong(tmp_path: Path) -> None:
    clone, _ = tree(tmp_path, line_of(lambda i: i < 5))  # bad c0..c4, fixed from c5
    for old, new, fix, what in (
        ("c0", "c19", False, "the old end [0-9a-f]{40} tested bad, not good"),
        ("c6", "c19", False, "the new end [0-9a-f]{40} tested good, not bad"),
        ("c0", "c4", True, "the new end [0-9a-f]{40} tested bad, not good"),
        ("c6", "c19", True, "the old end [0-9a-f]{40} tested good, not bad"),
    ):
        tester = TreeTester(clone.dest)
        run_dir = tmp_path / f"{old}-{new}-{fix}"
        run_dir.mkdir()
        with pytest.raises(EndsWrong, match=what):
            bisect_git(clone, old, new, tree_spec(clone), stepper(run_dir, tester),
                       fix=fix)  # fmt: skip
        assert [c[1] for c in tester.calls] == ["good-end", "bad-end"]


def test_a_merge_culprit_is_noted(tmp_path: Path) -> None:
    clone, sha = tree(tmp_path, MERGE_PLAN)
    found = git_bisect(clone, TreeTester(clone.dest), "m1", "m4", first_parent=True)
    assert found.first_bad == sha["merge"] and found.last_good == sha["m2"]
    assert found.checks["revert"].mark is Mark.GOOD  # reverted against its mainline
    assert len(found.notes) == 1 and "the culprit is a merge" in found.notes[0]


def test_a_culprit_whose_image_is_its_parents_is_noted(tmp_path: Path) -> None:
    clone, sha = tree(tmp_path, line_of(lambda i: i >= 7))
    asked: list[str] = []

    def image_of(commit: str) -> str:
        asked.append(commit)
        return "same-digest"

    found = git_bisect(clone, TreeTester(clone.dest), "c0", "c19", image_of=image_of)
    assert sorted(asked) == sorted([sha["c7"], sha["c6"]])
    assert len(found.notes) == 1 and "same as its parent's" in found.notes[0]


def test_bisect_git_resumes_from_its_records(tmp_path: Path) -> None:
    plan = line_of(lambda i: i >= 13)
    clone, sha = tree(tmp_path / "whole", plan)
    once = TreeTester(clone.dest)
    expected = git_bisect(clone, once, "c0", "c19")
    clone, _ = tree(tmp_path, plan)
    first = TreeTester(clone.dest, interrupt_at=4)  # the two ends, two steps, then Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        git_bisect(clone, first, "c0", "c19")
    assert [c[1] for c in first.calls] == ["good-end", "bad-end", "step", "step"]
    again = RigClone.open(tmp_path / "user", clone.dest)  # a new run: the same clone, records
    second = TreeTester(again.dest)
    resumed = git_bisect(again, second, "c0", "c19")
    assert resumed.first_bad == expected.first_bad == sha["c13"]
    assert not set(first.calls) & set(second.calls)  # nothing recorded is run again
    assert [c[:2] for c in first.calls + second.calls] == [c[:2] for c in once.calls]
    assert [(s.label, s.role, s.mark) for s in resumed.steps] == [
        (s.label, s.role, s.mark) for s in expected.steps]  # fmt: skip
    assert resumed.checks["revert"].mark is Mark.GOOD
    # resumed once more after it ended (killed before it printed) a second later, when the
    # revert commit is made anew with another date: still nothing recorded is run again
    time.sleep(1.1)
    third = TreeTester(again.dest)
    after = git_bisect(RigClone.open(tmp_path / "user", clone.dest), third, "c0", "c19")
    assert third.calls == []
    assert after.first_bad == sha["c13"] and after.checks["revert"].mark is Mark.GOOD


# =========================================================================== output
def _step(label: str, role: str, mark: Mark, *runs: tuple[RunMark, str]) -> Step:
    return Step(label, role, mark, [RunRecord(label, role, i, m, why, 12.0, 30.0, f"/r/{i}")
                                    for i, (m, why) in enumerate(runs)])  # fmt: skip


def hostile_outcome(hostile: str = HOSTILE) -> Found:
    steps = [
        _step("k0", "good-end", Mark.GOOD, (RunMark.GOOD, "vmcall_exit passed")),
        _step("k9", "bad-end", Mark.BAD, (RunMark.BAD, f"vmlaunch: {hostile}")),
        _step("k5", "step", Mark.SKIP, (RunMark.SKIP, "kernel does not build: \x1b[31mred")),
        _step("k3", "step", Mark.SKIP, (RunMark.INFRA, "bochs\r\ndied"), (RunMark.INFRA, "x")),
        _step("k4", "step", Mark.GOOD, (RunMark.INFRA, "retried"), (RunMark.GOOD, "fine\r")),
        _step("k6", "step", Mark.BAD, (RunMark.GOOD, "ok"), (RunMark.BAD, f"vmxon: {hostile}")),
    ]
    verify_step = _step("k6", "verify", Mark.BAD, (RunMark.BAD, f"again {hostile}"))
    return Found(first_bad="k6", last_good="k4", suspects=["k6"], steps=[*steps, verify_step],
                 confidence=0.5, flaky=True, checks={"verify": verify_step},
                 notes=["the culprit tested bad when run again"],
                 about={"subject": f"x86: {hostile}", "author": "A \x1b]0;t\x07 <a@b>",
                        "date": "2024-01-01T00:00:00+00:00"})  # fmt: skip


def test_write_junit_one_testcase_per_step_and_xml_safe(tmp_path: Path) -> None:
    found = hostile_outcome()
    path = tmp_path / "bisect.xml"
    write_junit(path, args(source="matrix"), found)
    raw = path.read_text()
    assert not XML_FORBIDDEN.search(raw)
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [f"{s.role}:{s.label}" for s in found.steps]
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["bad-end:k9", "step:k6", "verify:k6"]
    assert [c.get("name") for c in cases if c.find("error") is not None] == ["step:k3"]
    assert [c.get("name") for c in cases if c.find("skipped") is not None] == ["step:k5"]
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) \
        == ("7", "3", "1", "1")  # fmt: skip
    text = "".join(root.itertext())
    assert "#x1B[2J#x01#x00" in text and "#xD800" in text and "#xFFFE" in text
    assert "<b>&amp;" in text  # markup is text, escaped, not elements
    assert "bochs\n\ndied" not in text and "bochs\ndied" in text  # XML's line ends: \r\n -> \n
    assert not XML_FORBIDDEN.search(text)
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["first_bad"] == "k6" and props["confidence"] == "0.50"
    assert float(suite.get("time") or 0) == pytest.approx(42.0 * 10)


def test_write_junit_of_a_real_bisection(tmp_path: Path) -> None:
    s = stepper(tmp_path, Script(first_bad_at(5), unbuildable=frozenset({"k3"})))
    found = bisect_list(names(12), spec, s)
    verify(found, spec, s)
    write_junit(tmp_path / "j.xml", args(source="matrix"), found)
    cases = ET.parse(tmp_path / "j.xml").getroot().iter("testcase")
    by_name = {c.get("name"): c for c in cases}
    assert len(by_name) == len(found.steps)  # one testcase per step; verify counted once
    assert by_name["verify:k5"].find("failure") is not None
    assert by_name["step:k3"].find("skipped") is not None


def test_print_outcome_shows_controls_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # (no lone surrogate: a terminal cannot encode one, and guest text is decoded with
    # errors="replace", so none reaches a reason)
    print_outcome(args(source="matrix"), hostile_outcome(HOSTILE.replace("\ud800", "")), tmp_path)
    out = capsys.readouterr().out
    assert not RAW_CONTROL.search(out), out
    assert "\\x1b[2J\\x01\\x00\\x0d\\x85\\x9b\\x7f" in out  # the reasons, every control shown
    assert "subject: x86: oops \\x1b[2J" in out and "\\x1b]0;t\\x07" in out
    assert "first bad kernel: k6" in out and "confidence 0.50 (low" in out and "flaky" in out
    assert "check verify: bad" in out and "note: the culprit tested bad" in out


def test_print_outcome_inconclusive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = stepper(tmp_path, Script(first_bad_at(5), unbuildable=frozenset({"k4", "k5"})))
    found = bisect_list(names(10), spec, s)
    print_outcome(args(source="matrix", fix=False), found, tmp_path)
    out = capsys.readouterr().out
    assert "inconclusive: the first bad kernel is one of k4, k5, k6" in out
    assert "last good: k3" in out
