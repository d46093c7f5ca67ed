"""Bisection logic: properties over random histories with skips and flaky repeats."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rig.bisect import Mark, bisect, combine, mark_of
from rig.model import STAGES, CellVerdict, Outcome, StageVerdict


def _verdict(**outcomes: Outcome) -> CellVerdict:
    stages = {s: StageVerdict(s, outcomes.get(s, Outcome.PASSED), "") for s in STAGES}
    return CellVerdict(cell_id="c", stages=stages)


def test_marks_from_verdicts() -> None:
    assert mark_of(_verdict()) is Mark.GOOD
    assert mark_of(_verdict(vmlaunch=Outcome.FAILED)) is Mark.BAD
    assert mark_of(_verdict(vmxon=Outcome.ERROR)) is Mark.SKIP  # infrastructure never blames
    assert mark_of(_verdict(**{s: Outcome.SKIPPED for s in STAGES})) is Mark.SKIP
    assert mark_of(_verdict(vmcall_exit=Outcome.SKIPPED)) is Mark.SKIP


def test_repeats_combine_conservatively() -> None:
    assert combine([Mark.GOOD, Mark.BAD, Mark.GOOD]) is Mark.BAD
    assert combine([Mark.SKIP, Mark.GOOD]) is Mark.GOOD
    assert combine([Mark.SKIP, Mark.SKIP]) is Mark.SKIP


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=40),
    data=st.data(),
)
def test_bisect_finds_the_boundary_or_names_the_suspects(n: int, data: st.DataObject) -> None:
    first_bad = data.draw(st.integers(min_value=1, max_value=n - 1))
    inner = st.integers(min_value=1, max_value=max(1, n - 2))
    skips = {i for i in data.draw(st.sets(inner)) if i < n - 1}  # the ends are never skipped
    names = [f"k{i}" for i in range(n)]
    calls: list[str] = []

    def probe(name: str) -> Mark:
        calls.append(name)
        i = int(name[1:])
        if i in skips:
            return Mark.SKIP
        return Mark.BAD if i >= first_bad else Mark.GOOD

    result = bisect(names, probe)
    assert names[first_bad] in result.suspects
    assert all(int(s[1:]) in skips or s == result.earliest_bad for s in result.suspects)
    if first_bad not in skips and (first_bad - 1) not in skips:
        assert result.first_bad == names[first_bad]
    assert len(set(calls)) == len(calls)  # never probes a version twice


def test_flaky_bad_is_caught_by_repeats() -> None:
    flips = itertools.cycle([Mark.GOOD, Mark.BAD])  # version k2 fails every other run

    def probe(name: str) -> Mark:
        i = int(name[1:])
        if i == 2:
            return next(flips)
        return Mark.BAD if i >= 2 else Mark.GOOD

    assert bisect([f"k{i}" for i in range(5)], probe, repeats=3).first_bad == "k2"


def test_ends_are_verified() -> None:
    with pytest.raises(ValueError, match="good end"):
        bisect(["a", "b"], lambda _n: Mark.BAD)
    with pytest.raises(ValueError, match="bad end"):
        bisect(["a", "b"], lambda _n: Mark.GOOD)
