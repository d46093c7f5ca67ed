"""The controller's side of a matrix run: live progress, the JUnit's shape, the summary.

Registered by rig.plugin in the process that reports (the xdist controller, or the only
process without xdist); it sees every stage's report as it arrives:

- a line when a cell starts and when it ends (its verdict and how long it took);
- each matrix testcase reshaped as rig.report.shape describes (the cell in the name, clean
  messages), and the run's metadata as the testsuite's properties;
- at the end, the verdict table, the run directory and the console of every cell that did not
  pass.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest
from _pytest.junitxml import shorten_message, xml_key

from rig.model import STAGES, Outcome, worst
from rig.report.shape import LOG_FILES, case_name, classname, clean_message
from rig.runs import VERDICT_FILE


def _ours(nodeid: str) -> tuple[str, str] | None:
    parts = str(nodeid).split("::")
    return (parts[-2], parts[-1]) if len(parts) >= 3 and parts[-1] in STAGES else None


def _outcome(report: pytest.TestReport) -> Outcome | None:
    if report.skipped:
        return Outcome.SKIPPED
    if report.failed:
        return Outcome.ERROR if report.when != "call" else Outcome.FAILED
    return Outcome.PASSED if report.when == "call" else None


def tree_digest(root: Path) -> str:
    """sha256 over a source tree's file names and contents (build products left out)."""
    h = hashlib.sha256()
    skip = (".o", ".ko", ".mod", ".mod.c", ".cmd", ".order", ".symvers")
    if root.is_dir():
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if not path.name.endswith(skip):
                h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _commit(root: Path) -> str:
    if os.environ.get("GITHUB_SHA"):
        return os.environ["GITHUB_SHA"]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)  # fmt: skip
    except OSError:
        return ""
    return out.stdout.strip()


def _empty_output(node: ET.Element) -> bool:
    """junitxml's captured-output block with nothing but its `--- Captured X ---` headers."""
    lines = [ln for ln in (node.text or "").splitlines() if ln.strip()]
    return all(ln.startswith("-") and ln.endswith("-") and "Captured" in ln for ln in lines)


def _shape(
    element: ET.Element | None, reporter: Any, props: dict[str, Any], cell: str, stage: str
) -> None:
    """One testcase as rig.report.shape says: the cell in its name, the verdict as message,
    no empty output blocks. `element` is the finished testcase; else the open reporter's."""
    lane = str(props.get("lane") or cell.split("-", 1)[0])
    attrs = element.attrib if element is not None else reporter.attrs
    attrs.update(name=case_name(cell, stage), classname=classname(lane))
    nodes = list(element) if element is not None else reporter.nodes
    for node in nodes:
        if node.tag in ("failure", "error", "skipped"):
            text = str(node.get("message") or "")
            if node.tag != "skipped" and props.get("reason"):
                text = str(props["reason"])
            node.set("message", shorten_message(clean_message(text)))
            if node.tag == "skipped":
                node.text = node.get("message")
        if element is not None and node.tag in ("system-out", "system-err") and _empty_output(node):
            element.remove(node)


class Progress:
    def __init__(self, config: pytest.Config, run_dir_of: Callable[[pytest.Config], Path]):
        self.config = config
        self.run_dir_of = run_dir_of
        self.started: dict[str, float] = {}
        self.outcomes: dict[str, dict[str, Outcome]] = {}
        self.reasons: dict[str, dict[str, str]] = {}
        self.lanes: dict[str, str] = {}
        self.t0 = time.monotonic()

    def _say(self, line: str) -> None:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            if tr._tw.width_of_current_line:  # after pytest's progress characters
                tr._tw.line()
            tr.write_line(f"rig: {line}")

    # ------------------------------------------------------------------ progress
    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        ours = _ours(nodeid)
        if ours and ours[0] not in self.started:
            self.started[ours[0]] = time.monotonic()
            self._say(f"{ours[0]}: started")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Generator[None, Any, Any]:
        ours = _ours(report.nodeid)
        xml = self.config.stash.get(xml_key, None)
        key = (report.id, getattr(report, "node", None))
        reporter = xml.node_reporters.get(key) if ours and xml is not None else None
        result = yield
        if ours is None:
            return result
        cell, stage = ours
        props = dict(report.user_properties)
        if xml is not None:
            reporter = reporter or xml.node_reporters.get(key)
        if xml is not None and reporter is not None:
            # After teardown junitxml has frozen the testcase into its element: shape that.
            frozen = report.when == "teardown" and key not in xml.node_reporters
            element = reporter.to_xml() if frozen else None
            _shape(element, reporter, props, cell, stage)
        self.lanes.setdefault(cell, str(props.get("lane") or cell.split("-", 1)[0]))
        outcome = _outcome(report)
        if outcome is not None:
            seen = self.outcomes.setdefault(cell, {})
            seen[stage] = worst([seen.get(stage, Outcome.PASSED), outcome])
            why = clean_message(str(props.get("reason") or report.longreprtext or ""))
            self.reasons.setdefault(cell, {}).setdefault(stage, why.splitlines()[0] if why else "")
        if stage == STAGES[-1] and report.when == "teardown":
            self._say(f"{cell}: {self.verdict(cell)} ({self._took(cell)})")
        return result

    def _took(self, cell: str) -> str:
        start = self.started.get(cell)
        return f"{time.monotonic() - start:.0f} s" if start is not None else "?"

    def verdict(self, cell: str) -> str:
        seen, why = self.outcomes.get(cell, {}), self.reasons.get(cell, {})
        for bad in (Outcome.ERROR, Outcome.FAILED):
            stage = next((s for s in STAGES if seen.get(s) is bad), None)
            if stage is not None:
                return f"{bad.value.upper()} {stage}: {why.get(stage, '')[:160]}"
        skipped = [s for s in STAGES if seen.get(s) is Outcome.SKIPPED]
        if skipped and len(skipped) == len(seen):
            return f"SKIPPED: {why.get(skipped[0], '')[:160]}"
        return "PASSED" + (f" ({len(skipped)} stages skipped)" if skipped else "")

    # ------------------------------------------------------------------ JUnit
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        xml = self.config.stash.get(xml_key, None)
        if xml is None or not self.outcomes:
            return
        from rig.paths import PROJECT_ROOT, version

        opt = self.config.option
        driver = Path(opt.rig_driver).resolve() if opt.rig_driver else PROJECT_ROOT / "driver"
        run_dir = self.run_dir_of(self.config)
        facts = {
            "version": version(),
            "run_id": run_dir.name,
            "run_dir": str(run_dir),
            "finished": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "duration_s": f"{time.monotonic() - self.t0:.0f}",
            "host": platform.node(),
            "commit": _commit(PROJECT_ROOT),
            "driver_digest": tree_digest(driver),
            "shard": opt.rig_shard or "",
            "selection": " ".join(
                ["--all"] * bool(opt.rig_all)
                + [
                    f"--{n} {v}"
                    for n in ("lane", "kernel", "cpu")
                    for v in getattr(opt, f"rig_{n}")
                ]
            ),
            "ci_run": os.environ.get("GITHUB_RUN_ID", ""),
            "ci_url": (
                f"{os.environ['GITHUB_SERVER_URL']}/{os.environ['GITHUB_REPOSITORY']}/actions/runs/"
                f"{os.environ['GITHUB_RUN_ID']}"
                if all(
                    os.environ.get(k)
                    for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")
                )
                else ""
            ),
        }
        for name, value in facts.items():
            xml.add_global_property(f"rig_{name}", value)

    # ------------------------------------------------------------------ summary
    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.outcomes:
            return
        tr = terminalreporter
        tr.section("vmlaunch-rig matrix")
        width = max(len(c) for c in self.outcomes)
        tr.write_line("cell".ljust(width) + "  " + "  ".join(s.ljust(11) for s in STAGES))
        words = {Outcome.PASSED: "ok", Outcome.FAILED: "FAILED", Outcome.ERROR: "ERROR",
                 Outcome.SKIPPED: "SKIPPED"}  # fmt: skip
        for cell in sorted(self.outcomes):
            row = self.outcomes[cell]
            tr.write_line(cell.ljust(width) + "  " + "  ".join(
                (words[row[s]] if s in row else "-").ljust(11) for s in STAGES))  # fmt: skip
        run_dir = self.run_dir_of(self.config)
        tr.write_line(f"run directory: {run_dir}")
        bad = [c for c in sorted(self.outcomes)
               if worst(self.outcomes[c].values()) in (Outcome.FAILED, Outcome.ERROR)]  # fmt: skip
        for cell in bad:
            cell_dir = run_dir / "cells" / cell
            console = cell_dir / LOG_FILES["console"]
            where = console if console.is_file() else cell_dir / VERDICT_FILE
            tr.write_line(f"  {cell}: {self.verdict(cell)}")
            tr.write_line(f"    {where}")
