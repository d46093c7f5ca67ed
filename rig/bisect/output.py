"""What a bisection prints and writes: the culprit and why, and a JUnit testcase per step.

    print_outcome(args, outcome, run_dir)     the terminal's summary
    write_junit(path, args, outcome)          one testcase per step (and per check)

Reasons quote guest lines: the terminal shows control characters as `\\xNN`, the JUnit gets
them XML-1.0-safe (rig.report.shape.finish_suite), never raw.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from rig.bisect.decide import LOW_CONFIDENCE, RunMark
from rig.bisect.engine import Outcome, Step
from rig.bisect.record import BisectArgs
from rig.bisect.search import Mark
from rig.textsafe import shown


def _step_line(step: Step) -> str:
    build, boot = sum(r.build_s for r in step.runs), sum(r.boot_s for r in step.runs)
    head = f"{step.role:8} {step.label[:14]:14} {step.mark.value:4}"
    return f"{head}  (build {build:.0f} s, boot {boot:.0f} s) {shown(step.reason[:110])}"


def print_outcome(args: BisectArgs, outcome: Outcome, run_dir: Path) -> None:
    print(f"\nrig bisect: {len(outcome.steps)} steps ({args.source}, {args.lane}/{args.cpu})")
    for step in outcome.steps:
        print("  " + _step_line(step))
    noun = {"git": "commit", "debian": "version"}.get(args.source, "kernel")
    what = f"first fixed {noun}" if args.fix else f"first bad {noun}"
    if outcome.first_bad is None:
        suspects = shown(", ".join(s[:12] for s in outcome.suspects))
        print(
            f"inconclusive: the {what} is one of {suspects} (skipped steps hide the "
            f"boundary; last good: {outcome.last_good[:12]})"
        )
    else:
        print(f"{what}: {shown(outcome.first_bad)}")
        for key in ("subject", "author", "date"):
            if key in outcome.about:
                print(f"  {key}: {shown(outcome.about[key])}")
        culprit = next((s for s in outcome.steps if s.label == outcome.first_bad), None)
        parent = next((s for s in outcome.steps if s.label == outcome.last_good), None)
        if culprit is not None:
            print(f"  there:  {shown(culprit.reason[:200])}")
            stage = culprit.reason.split(":", 1)[0]
            said = parent.stage_reason(stage) if parent is not None else ""
            if parent is not None:
                print(
                    f"  before ({outcome.last_good[:12]}): {shown((said or parent.reason)[:200])}"
                )
    for name, step in outcome.checks.items():
        print(f"  check {name}: {step.mark.value} ({shown(step.reason[:120])})")
    for note in outcome.notes:
        print(f"  note: {shown(note)}")
    low = " (low: below 0.66, do not trust it alone)" if outcome.confidence < LOW_CONFIDENCE else ""
    print(
        f"  confidence {outcome.confidence:.2f}{low}{'; the bug is flaky' if outcome.flaky else ''}"
    )
    if outcome.next_step:
        print(f"  next: {shown(outcome.next_step)}")
    print(f"records: {run_dir} (steps.jsonl, bisect.json{', bisect.log' if outcome.log else ''})")


def write_junit(path: Path, args: BisectArgs, outcome: Outcome) -> None:
    from rig.report.shape import finish_suite

    suite = ET.Element("testsuite", name="vmlaunch-rig-bisect")
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("source", args.source),
        ("good", args.good),
        ("bad", args.bad),
        ("first_bad", outcome.first_bad or ""),
        ("confidence", f"{outcome.confidence:.2f}"),
    ):
        ET.SubElement(props, "property", name=key, value=value)
    total = 0.0
    steps = [*outcome.steps, *[s for s in outcome.checks.values() if s not in outcome.steps]]
    for step in steps:
        secs = sum(r.build_s + r.boot_s for r in step.runs)
        total += secs
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"vmlaunch-rig-bisect.{args.lane}",
            name=f"{step.role}:{step.label}",
            time=f"{secs:.3f}",
        )
        cp = ET.SubElement(case, "properties")
        for r in step.runs:
            ET.SubElement(cp, "property", name=f"run{r.run}", value=f"{r.mark.value}: {r.cell_dir}")
        text = "\n".join(f"run {r.run}: {r.mark.value}: {r.reason}" for r in step.runs)
        if step.runs and all(r.mark is RunMark.INFRA for r in step.runs):
            ET.SubElement(case, "error", message="infrastructure: cannot judge").text = text
        elif step.mark is Mark.BAD:
            ET.SubElement(case, "failure", message="bad").text = text
        elif step.mark is Mark.SKIP:
            ET.SubElement(case, "skipped", message="skip: cannot judge").text = text
        else:
            ET.SubElement(case, "system-out").text = text
    finish_suite(suite, total).write(path, encoding="unicode", xml_declaration=True)
