"""Read the JUnit XML a run wrote back into typed results.

The JUnit file (written by pytest's junitxml from the plugin's items, shaped as
rig.report.shape says) is the run's record; the matrix table, the nightly HTML report, the
comparison with last night and bisection read it through here. Files of the older shape
(`classname="matrix.yaml.<cell>" name="<stage>"`) are read too.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from rig.errors import UsageError
from rig.model import SEVERITY, STAGES, Outcome
from rig.report.shape import clean_message, split_name

_CLASSNAME_RE = re.compile(r"(?:^|\.)matrix[^.]*\.ya?ml\.(?P<cell>[A-Za-z][A-Za-z0-9_.-]*)$")

CELL_ID_RE = re.compile(
    r"(?!.*\.\.)"  # no '..' anywhere
    r"[A-Za-z][A-Za-z0-9_]{0,31}"  # lane: an identifier (rig.matrix.schema)
    r"-[A-Za-z0-9][A-Za-z0-9._-]{0,31}"  # kernel: letters, digits, '.', '_', '-'
    r"-[A-Za-z][A-Za-z0-9_]{0,31}",  # CPU: an identifier
    re.ASCII,
)
"""A cell id, LANE-KERNEL-CPU, as rig.model.Cell.id forms it from matrix names (used with
fullmatch). A report names each cell's log directory after it: no '/', no leading dot, no '..'."""


@dataclass(frozen=True)
class CaseResult:
    cell: str  # "bochs-6.12-haswell"
    stage: str  # "vmxon"
    outcome: Outcome
    message: str
    properties: dict[str, str] = field(default_factory=dict)
    system_out: str = ""


@dataclass(frozen=True)
class RunResults:
    """One JUnit file: its testsuite properties (the run's metadata) and its matrix cases."""

    source: Path
    meta: dict[str, str]
    cases: list[CaseResult]


def read_run(path: Path) -> RunResults:
    """Raises ET.ParseError (not XML) and UsageError (a testcase names no valid cell id)."""
    root = ET.parse(path).getroot()  # noqa: S314 - our own file, written by pytest
    meta: dict[str, str] = {}
    for suite in root.iter("testsuite"):
        props = suite.find("properties")
        for p in props.iter("property") if props is not None else ():
            meta[p.get("name", "")] = p.get("value", "")
    return RunResults(path, meta, _cases(root, path))


def read_junit(path: Path) -> list[CaseResult]:
    return _cases(ET.parse(path).getroot(), path)  # noqa: S314 - as read_run


def _quoted(text: str) -> str:
    return repr(text[:80] + ("..." if len(text) > 80 else ""))  # repr: no raw control character


def _checked(cell: str, origin: str, case: ET.Element, path: Path) -> str:
    """The cell id, refused (exit 2) unless it has the matrix's shape: the report makes a
    directory of it, so a crafted JUnit file could otherwise write outside its bundle."""
    if CELL_ID_RE.fullmatch(cell):
        return cell
    raise UsageError(
        f"testcase {_quoted(case.get('name', ''))}: {origin} {_quoted(cell)} is not a "
        "cell id (LANE-KERNEL-CPU of matrix names: letters, digits, '_', '.', '-'; no '..')",
        where=str(path),
        fix="pass the JUnit files `rig run` wrote; this one was edited or corrupted",
    )


def _cases(root: ET.Element, path: Path) -> list[CaseResult]:
    results: list[CaseResult] = []
    for case in root.iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        stage, cell = case.get("name", ""), props.get("cell", "")
        origin = "property 'cell'"
        named = split_name(stage)
        if named is not None:
            cell, stage = props.get("cell") or named[0], named[1]
            origin = origin if props.get("cell") else "the cell in its name"
            props = {"cell": cell, "stage": stage, **props}
        if not props and stage in STAGES:
            # A report pytest never finished (an xdist worker died mid-item) has no
            # properties: the cell is in the class name, `<matrix file>.<cell id>`.
            m = _CLASSNAME_RE.search(case.get("classname", ""))
            if m:
                cell, props = m["cell"], {"cell": m["cell"], "stage": stage}
                origin = "the cell in its classname"
        if not cell or stage != props.get("stage"):
            continue  # not a matrix stage
        cell = _checked(cell, origin, case, path)
        outcome, message = Outcome.PASSED, ""
        for tag, oc in (("error", Outcome.ERROR), ("failure", Outcome.FAILED),
                        ("skipped", Outcome.SKIPPED)):  # fmt: skip
            el = case.find(tag)
            if el is not None:
                message = clean_message(el.get("message") or "")
                text = el.text or ""
                if text.strip() and message not in text:
                    message += "\n" + text
                outcome = oc
                break
        out = case.find("system-out")
        results.append(
            CaseResult(
                cell=cell,
                stage=stage,
                outcome=outcome,
                message=message.strip(),
                properties=props,
                system_out=(out.text or "") if out is not None else "",
            )
        )
    return results


def by_cell(results: list[CaseResult]) -> dict[str, dict[str, CaseResult]]:
    """cell -> stage -> result. A stage reported twice (pytest-xdist reruns the cell of a
    worker that died: the crash is an error, the rerun a verdict) keeps the worse result, so
    a report never hides the crash."""
    table: dict[str, dict[str, CaseResult]] = {}
    for r in results:
        stages = table.setdefault(r.cell, {})
        seen = stages.get(r.stage)
        if seen is None or SEVERITY[r.outcome] >= SEVERITY[seen.outcome]:
            stages[r.stage] = r
    return table
