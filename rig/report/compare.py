"""Tonight against a baseline (last night): what turned red, what turned green.

Like KernelCI's `kci-dev results compare`, per cell, from its status (rig.report.cells):

    new failure    failed or errored tonight, not last night (or a new cell that fails)
    fixed          failed or errored last night, passes tonight
    new skip       ran last night (passed or failed), skipped tonight
    now runs       skipped last night, passes tonight
    still failing  failed or errored both nights (the stage or reason may have moved)
    gone           in the baseline, no result tonight: coverage was lost
    new cell       not in the baseline, passes or is skipped tonight
    unchanged      the same status both nights
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from rig.report.cells import BAD, SKIPS, CellReport, Status


@dataclass(frozen=True)
class Snapshot:
    """What a comparison needs of a cell: its status, and where and why it went bad."""

    status: Status
    detail: str = ""  # "vmlaunch: VMfailValid ..." for a bad cell, the skip reason for a skip

    @classmethod
    def of(cls, cell: CellReport) -> Snapshot:
        bad = cell.bad_stage
        if bad is not None:
            return cls(cell.status, f"{bad.stage}: {bad.reason}"[:300])
        return cls(cell.status, cell.reason[:300] if cell.status in SKIPS else "")


class Change(StrEnum):
    NEW_FAILURE = "new failure"
    FIXED = "fixed"
    NEW_SKIP = "new skip"
    NOW_RUNS = "now runs"
    STILL_FAILING = "still failing"
    GONE = "gone"
    NEW_CELL = "new cell"
    UNCHANGED = "unchanged"


ORDER = tuple(Change)
"""The order a report lists changes in: what needs a person first."""


@dataclass(frozen=True)
class Delta:
    cell: str
    change: Change
    before: Snapshot | None
    after: Snapshot | None

    @property
    def text(self) -> str:
        def word(s: Snapshot | None) -> str:
            return s.status.value if s is not None else "absent"

        return f"{word(self.before)} \u2192 {word(self.after)}"


def classify(before: Snapshot | None, after: Snapshot | None) -> Change:
    if after is None:
        return Change.GONE if before is not None else Change.UNCHANGED
    now_bad, now_skip = after.status in BAD, after.status in SKIPS
    if before is None:
        return Change.NEW_FAILURE if now_bad else Change.NEW_CELL
    was_bad, was_skip = before.status in BAD, before.status in SKIPS
    if now_bad:
        return Change.STILL_FAILING if was_bad else Change.NEW_FAILURE
    if now_skip:
        return Change.UNCHANGED if was_skip else Change.NEW_SKIP
    if was_bad:
        return Change.FIXED
    return Change.NOW_RUNS if was_skip else Change.UNCHANGED


def compare(before: Mapping[str, Snapshot], after: Mapping[str, Snapshot]) -> list[Delta]:
    """Every cell of either side, with its change; sorted by ORDER, then cell id."""
    deltas = [
        Delta(cell, classify(before.get(cell), after.get(cell)), before.get(cell), after.get(cell))
        for cell in sorted(set(before) | set(after))
    ]
    return sorted(deltas, key=lambda d: (ORDER.index(d.change), d.cell))


def counts(deltas: list[Delta]) -> dict[Change, int]:
    return {c: sum(1 for d in deltas if d.change is c) for c in ORDER}


def snapshots(cells: Mapping[str, CellReport]) -> dict[str, Snapshot]:
    return {cid: Snapshot.of(c) for cid, c in cells.items()}
