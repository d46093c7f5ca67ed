"""Report stage: read the JUnit XML a run wrote back into typed results.

The JUnit file (written by pytest's junitxml from the plugin's items) is the run's record;
the matrix table, the nightly HTML report and bisection read it through here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from rig.model import Outcome


@dataclass(frozen=True)
class CaseResult:
    cell: str  # "bochs-6.12-haswell"
    stage: str  # "vmxon"
    outcome: Outcome
    message: str
    properties: dict[str, str] = field(default_factory=dict)
    system_out: str = ""


def read_junit(path: Path) -> list[CaseResult]:
    root = ET.parse(path).getroot()  # noqa: S314 - our own file, written by pytest
    results: list[CaseResult] = []
    for case in root.iter("testcase"):
        name = case.get("name", "")
        if "[" not in name or not name.endswith("]"):
            continue
        stage, cell = name[:-1].split("[", 1)
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        outcome, message = Outcome.PASSED, ""
        for tag, oc in (("error", Outcome.ERROR), ("failure", Outcome.FAILED),
                        ("skipped", Outcome.SKIPPED)):  # fmt: skip
            el = case.find(tag)
            if el is not None:
                outcome, message = oc, (el.get("message") or "") + "\n" + (el.text or "")
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
    table: dict[str, dict[str, CaseResult]] = {}
    for r in results:
        table.setdefault(r.cell, {})[r.stage] = r
    return table
