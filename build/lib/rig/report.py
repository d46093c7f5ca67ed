"""Report stage: read the JUnit XML a run wrote back into typed results.

The JUnit file (written by pytest's junitxml from the plugin's items) is the run's record;
the matrix table, the nightly HTML report and bisection read it through here.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from rig.model import SEVERITY, STAGES, Outcome

_CLASSNAME_RE = re.compile(r"(?:^|\.)matrix[^.]*\.ya?ml\.(?P<cell>[A-Za-z][A-Za-z0-9_.-]*)$")


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
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        stage, cell = case.get("name", ""), props.get("cell", "")
        if not props and stage in STAGES:
            # A report pytest never finished (an xdist worker died mid-item) has no
            # properties: the cell is in the class name, `<matrix file>.<cell id>`.
            m = _CLASSNAME_RE.search(case.get("classname", ""))
            if m:
                cell, props = m["cell"], {"cell": m["cell"], "stage": stage}
        if not cell or stage != props.get("stage"):
            continue  # not a matrix stage
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


_COLOURS = {
    Outcome.PASSED: "#2e7d32",
    Outcome.FAILED: "#c62828",
    Outcome.ERROR: "#6a1b9a",
    Outcome.SKIPPED: "#9e9e9e",
}


def render_html(results: list[CaseResult], title: str = "vmlaunch-rig matrix") -> str:
    """A self-contained HTML page: one row per lane x kernel, one column per CPU, each cell
    showing its five stages; hovering a stage shows the verdict's reason. Built with
    ElementTree, so every name and message is escaped."""
    table = by_cell(results)
    rows: dict[tuple[str, str], dict[str, dict[str, CaseResult]]] = {}
    cpus: list[str] = []
    for cell_id, stages in table.items():
        any_case = next(iter(stages.values()))
        lane = any_case.properties.get("lane") or cell_id.split("-", 1)[0]
        kernel = any_case.properties.get("kernel", "?")
        cpu = any_case.properties.get("cpu") or cell_id.rsplit("-", 1)[-1]
        rows.setdefault((lane, kernel), {})[cpu] = stages
        if cpu not in cpus:
            cpus.append(cpu)
    html = ET.Element("html")
    head = ET.SubElement(html, "head")
    ET.SubElement(head, "meta", charset="utf-8")
    ET.SubElement(head, "title").text = title
    ET.SubElement(head, "style").text = (
        "body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px;text-align:center}"
        ".s{display:inline-block;width:14px;height:14px;margin:1px;border-radius:2px}"
    )
    body = ET.SubElement(html, "body")
    ET.SubElement(body, "h1").text = title
    counts = {o: sum(1 for r in results if r.outcome is o) for o in Outcome}
    ET.SubElement(body, "p").text = ", ".join(f"{n} {o.value}" for o, n in counts.items())
    legend = ET.SubElement(body, "p")
    legend.text = "stages, left to right: " + ", ".join(STAGES) + ". "
    for o, colour in _COLOURS.items():
        ET.SubElement(legend, "span", {"class": "s", "style": f"background:{colour}"})
        ET.SubElement(legend, "span").text = f" {o.value} "
    tab = ET.SubElement(body, "table")
    header = ET.SubElement(tab, "tr")
    for text in ("lane", "kernel", *cpus):
        ET.SubElement(header, "th").text = text
    for (lane, kernel), by_cpu in sorted(rows.items()):
        tr = ET.SubElement(tab, "tr")
        ET.SubElement(tr, "td").text = lane
        ET.SubElement(tr, "td").text = kernel
        for cpu in cpus:
            td = ET.SubElement(tr, "td")
            cell = by_cpu.get(cpu)
            if cell is None:
                td.text = "—"
                continue
            for stage in STAGES:
                case = cell.get(stage)
                if case is None:
                    continue
                ET.SubElement(td, "span", {
                    "class": "s",
                    "style": f"background:{_COLOURS[case.outcome]}",
                    "title": f"{stage}: {case.outcome.value}\n{case.message[:500]}",
                })  # fmt: skip
    return "<!DOCTYPE html>\n" + ET.tostring(html, encoding="unicode", method="html")


TIMES = ("kernel", "build", "image", "boot")
"""The per-cell timings the runner records (JUnit properties time_<name>_s)."""


def _first_line(message: str) -> str:
    """A verdict's reason without pytest's wrapping (`failed on setup with "Failed: ...`)."""
    line = message.splitlines()[0] if message else ""
    for prefix in ('failed on setup with "', "Failed: ", "infrastructure: "):
        line = line.removeprefix(prefix)
    return line[:140]


def cell_summary(stages: dict[str, CaseResult]) -> str:
    """One phrase for a cell: `pass`, `pass (3 skipped: why)`, or the first bad stage."""
    ordered = [stages[s] for s in STAGES if s in stages]
    for outcome, word in ((Outcome.ERROR, "ERROR"), (Outcome.FAILED, "FAILED")):
        bad = next((c for c in ordered if c.outcome is outcome), None)
        if bad is not None:
            return f"{word} {bad.stage}: {_first_line(bad.message)}"
    skipped = [c for c in ordered if c.outcome is Outcome.SKIPPED]
    if not skipped:
        return "pass"
    why = skipped[0].message.splitlines()[0][:100] if skipped[0].message else ""
    if len(skipped) == len(ordered):
        return f"skipped: {why}"
    return f"pass ({len(skipped)} skipped: {why})"


def render_markdown(results: list[CaseResult]) -> str:
    """A Markdown table, one row per cell, with its verdict and timings (seconds), e.g. for a
    GitHub job summary. Table cells are escaped (`|`, newlines)."""

    def esc(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    lines = [
        "| cell | verdict | " + " | ".join(f"{t} s" for t in TIMES) + " |",
        "|---|---|" + "---:|" * len(TIMES),
    ]
    for cell_id, stages in sorted(by_cell(results).items()):
        props: dict[str, str] = {}
        for case in stages.values():
            props.update(case.properties)
        times = [props.get(f"time_{t}_s", "") for t in TIMES]
        lines.append(
            f"| {esc(cell_id)} | {esc(cell_summary(stages))} | " + " | ".join(times) + " |"
        )
    return "\n".join(lines) + "\n"
