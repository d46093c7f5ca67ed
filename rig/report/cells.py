"""From testcases to cells: one status per cell and per stage, skips told apart.

A cell's status, worst first: error (infrastructure), failed (the driver), then, for a cell
whose every stage was skipped, the kind of skip; else passed (some stages may be skipped: the
tcg lane declines VMX by design). The kinds of skip:

    excluded    a known kernel bug: an `exclude` entry of matrix.yaml
    impossible  the lane has no model of that CPU: the cell cannot exist
    host        the runner cannot run the lane (no nested KVM, a tool missing)
    blocked     not reached: the cell's one infrastructure error is on an earlier stage
    skipped     any other stated reason (e.g. the driver declined VMX, as arranged)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from rig.model import STAGES, Outcome
from rig.report.junit import CaseResult, by_cell
from rig.report.shape import NOT_REACHED, clean_message


class Status(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    EXCLUDED = "excluded"
    IMPOSSIBLE = "impossible"
    HOST = "host"
    BLOCKED = "blocked"
    SKIPPED = "skipped"
    MISSING = "missing"  # planned, but no result came back (a shard died or never ran)


BAD = frozenset({Status.FAILED, Status.ERROR, Status.MISSING})
SKIPS = frozenset({Status.EXCLUDED, Status.IMPOSSIBLE, Status.HOST, Status.BLOCKED, Status.SKIPPED})

LABELS: dict[Status, tuple[str, str]] = {
    # status: (letter shown beside the colour, words)
    Status.PASSED: ("P", "passed"),
    Status.FAILED: ("F", "failed: the driver misbehaved"),
    Status.ERROR: ("E", "error: infrastructure, no verdict on the driver"),
    Status.EXCLUDED: ("X", "skipped: known kernel bug (matrix.yaml exclude)"),
    Status.IMPOSSIBLE: ("-", "skipped: the lane has no such CPU model"),
    Status.HOST: ("H", "skipped: this runner cannot run the lane"),
    Status.BLOCKED: ("B", "not reached: an earlier stage errored"),
    Status.SKIPPED: ("S", "skipped (reason stated)"),
    Status.MISSING: ("?", "missing: planned, no result"),
}


def skip_kind(reason: str) -> Status:
    text = clean_message(reason)
    if text.startswith("excluded in "):
        return Status.EXCLUDED
    if "has no CPU model for" in text or "has no model for" in text:
        return Status.IMPOSSIBLE
    if "cannot run on this host" in text:
        return Status.HOST
    if text.startswith(NOT_REACHED):
        return Status.BLOCKED
    return Status.SKIPPED


def stage_status(case: CaseResult) -> Status:
    if case.outcome is Outcome.SKIPPED:
        return skip_kind(case.message)
    return Status(case.outcome.value)


@dataclass(frozen=True)
class StageReport:
    stage: str
    status: Status
    reason: str  # first line, plain text
    detail: str  # the whole message: reason and guest evidence


@dataclass
class CellReport:
    id: str
    lane: str
    kernel: str
    cpu: str
    status: Status
    stages: dict[str, StageReport]
    properties: dict[str, str] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)  # kind -> link (filled by the bundle)
    source: Path | None = None  # the JUnit file it came from

    @property
    def bad_stage(self) -> StageReport | None:
        want = {Status.ERROR} if self.status is Status.ERROR else {Status.FAILED}
        return next((st for st in self.stages.values() if st.status in want), None)

    @property
    def reason(self) -> str:
        bad = self.bad_stage
        if bad is not None:
            return bad.reason
        skipped = [st for st in self.stages.values() if st.status in SKIPS]
        return skipped[0].reason if skipped else ""

    @property
    def summary(self) -> str:
        """One phrase: `pass`, `pass (3 skipped: why)`, `FAILED vmlaunch: why`, ..."""
        bad = self.bad_stage
        if bad is not None:
            return f"{self.status.value.upper()} {bad.stage}: {bad.reason[:140]}"
        if self.status is Status.MISSING:
            return "MISSING: planned, no result came back"
        skipped = [st for st in self.stages.values() if st.status in SKIPS]
        if not skipped:
            return "pass"
        why = skipped[0].reason[:100]
        if self.status in SKIPS:
            return f"skipped: {why}"
        return f"pass ({len(skipped)} skipped: {why})"


def cell_status(stages: dict[str, StageReport]) -> Status:
    found = [st.status for st in stages.values()]
    for bad in (Status.ERROR, Status.FAILED):
        if bad in found:
            return bad
    if found and all(s in SKIPS for s in found):
        return found[0]
    return Status.PASSED


def _parts(cell_id: str, props: dict[str, str]) -> tuple[str, str, str]:
    lane, _, rest = cell_id.partition("-")
    kernel, _, cpu = rest.rpartition("-")
    return props.get("lane") or lane, props.get("kernel") or kernel, props.get("cpu") or cpu


def cells_of(results: list[CaseResult], source: Path | None = None) -> dict[str, CellReport]:
    cells: dict[str, CellReport] = {}
    for cell_id, cases in by_cell(results).items():
        props: dict[str, str] = {}
        for stage in STAGES:
            if stage in cases:
                props.update(cases[stage].properties)
        stages = {}
        for stage in STAGES:
            case = cases.get(stage)
            if case is None:
                continue
            message = case.message.strip()
            first = message.splitlines()[0] if message else ""
            stages[stage] = StageReport(stage, stage_status(case), first, message)
        lane, kernel, cpu = _parts(cell_id, props)
        cells[cell_id] = CellReport(
            cell_id, lane, kernel, cpu, cell_status(stages), stages, props, source=source
        )
    return cells


def missing_cell(row: dict[str, str | None]) -> CellReport:
    """A planned cell (a row of `rig matrix --json`) no result came back for."""
    cell_id = str(row["id"])
    if row.get("skip_reason"):  # a cell that could not run anyway: show why
        kind = skip_kind(str(row["skip_reason"]))
        stage = StageReport(STAGES[0], kind, str(row["skip_reason"]), str(row["skip_reason"]))
        status = kind
    else:
        stage = StageReport(STAGES[0], Status.MISSING, "no result", "no result came back")
        status = Status.MISSING
    lane, kernel, cpu = str(row["lane"]), str(row["kernel"]), str(row["cpu"])
    return CellReport(cell_id, lane, kernel, cpu, status, {STAGES[0]: stage})


def cell_summary(stages: dict[str, CaseResult]) -> str:
    """One phrase for a cell's testcases (see CellReport.summary)."""
    return next(iter(cells_of(list(stages.values())).values())).summary
