"""What a matrix testcase looks like in JUnit: written by the plugin, read back by rig.report.

    <testcase classname="vmlaunch-rig.bochs" name="bochs-6.12-haswell::vmlaunch">
      <properties> cell, lane, kernel, cpu, stage, reason, log_* (the cell's logs) </properties>
      <failure message="vmlaunch VMfailValid, error 8 ...">the reason, the guest evidence</failure>
      <system-out>the guest console: on ONE stage of the cell (see `carrier`)</system-out>
    </testcase>

GitHub's reporters (dorny/test-reporter, mikepenz/action-junit-report, EnricoMi's) title an
annotation with the test's name (and class): the cell is in both. Jenkins splits classname at
its last dot: package `vmlaunch-rig`, class the lane. Messages are the verdict's own words,
never pytest's (`Failed: `, `failed on setup with "...`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping

from rig.model import SEVERITY, STAGES, Outcome
from rig.textsafe import xml_safe

SUITE = "vmlaunch-rig"
SEP = "::"
NOT_REACHED = "not reached: "
"""Prefix of the skip of stages after a dead cell's one error (the error is on the first)."""

LOG_FILES: dict[str, str] = {
    "console": "console.txt",  # the guest kernel's console (first serial port)
    "agent": "agent.txt",  # the guest agent's protocol channel (serial or SSH transcript)
    "build": "build.log",  # the driver's build
    "bochs": "bochs.log",  # the Bochs emulator's log
    "libvirt": "libvirt-child.log",  # the libvirt child's log (libvirt lanes)
    "l1_console": "l1-console.txt",  # the nested lanes' L1 (the KVM host inside Bochs): its console
    "l1_facts": "nested-facts.txt",  # its RIG-L1 facts: preflight, QEMU's dropped features
    "l1_trace": "l1-trace.txt",  # KVM's trace in L1: the nested lanes' witness beneath L2
    "beneath": "beneath.txt",  # what the witness beneath saw, one event a line
    "verdict": "verdict.json",  # the cell's judged verdict, every stage with its evidence
}
"""The per-cell files of `runs/<run-id>/cells/<cell-id>/` that reports link and CI uploads."""


def case_name(cell: str, stage: str) -> str:
    return f"{cell}{SEP}{stage}"


def split_name(name: str) -> tuple[str, str] | None:
    """`bochs-6.12-haswell::vmlaunch` -> (cell, stage); None for any other test."""
    cell, sep, stage = name.rpartition(SEP)
    return (cell, stage) if sep and cell and stage in STAGES else None


def classname(lane: str) -> str:
    return f"{SUITE}.{lane}"


_PYTEST_PREFIXES = ('failed on setup with "', 'failed on teardown with "', "Failed: ", "Skipped: ")


def clean_message(text: str) -> str:
    """A verdict's reason without pytest's wrapping and without a doubled `infrastructure: `."""
    line = text.strip()
    changed = True
    while changed:
        changed = False
        for prefix in _PYTEST_PREFIXES:
            if line.startswith(prefix):
                line = line.removeprefix(prefix)
                if prefix.endswith('"') and line.endswith('"'):
                    line = line[:-1]
                changed = True
    while line.startswith("infrastructure: infrastructure: "):
        line = line.removeprefix("infrastructure: ")
    return line


def carrier(outcomes: Mapping[str, Outcome]) -> str:
    """The one stage of a cell whose testcase carries the guest console: the first stage with
    the cell's worst outcome when that is a failure or an error, else the last stage (the
    guest's whole life has been seen by then)."""
    ordered = [s for s in STAGES if s in outcomes]
    if not ordered:
        return STAGES[-1]
    worst_seen = max(ordered, key=lambda s: SEVERITY[outcomes[s]])
    if outcomes[worst_seen] in (Outcome.FAILED, Outcome.ERROR):
        return next(s for s in ordered if outcomes[s] is outcomes[worst_seen])
    return ordered[-1]


def dead(outcomes: Mapping[str, Outcome], reasons: Mapping[str, str]) -> bool:
    """A cell that never reached the test: every stage the same infrastructure error. JUnit
    gets one error for it (its first stage), the other stages are skipped as not reached."""
    return (
        all(outcomes.get(s) is Outcome.ERROR for s in STAGES)
        and len({reasons.get(s, "") for s in STAGES}) == 1
    )


def finish_suite(suite: ET.Element, seconds: float) -> ET.ElementTree[ET.Element]:
    """A hand-built <testsuite> with its counts, inside <testsuites> with the totals: what
    JUnit schemas (Jenkins') and the GitHub reporters require. Every text and attribute value
    is made XML-1.0-safe (rig.textsafe.xml_safe): reasons quote guest lines, and ElementTree
    escapes markup but writes a control character raw, which no XML parser then reads."""
    for node in suite.iter():
        node.text = None if node.text is None else xml_safe(node.text)
        node.tail = None if node.tail is None else xml_safe(node.tail)
        for key, value in list(node.attrib.items()):
            node.set(key, xml_safe(value))
    cases = suite.findall("testcase")
    tally = {
        "tests": len(cases),
        "failures": sum(1 for c in cases if c.find("failure") is not None),
        "errors": sum(1 for c in cases if c.find("error") is not None),
        "skipped": sum(1 for c in cases if c.find("skipped") is not None),
    }
    for key, n in tally.items():
        suite.set(key, str(n))
    suite.set("time", f"{seconds:.3f}")
    root = ET.Element("testsuites", name=suite.get("name", SUITE), time=f"{seconds:.3f}")
    for key in ("tests", "failures", "errors"):
        root.set(key, str(tally[key]))
    root.append(suite)
    return ET.ElementTree(root)
