"""JUnit shape, the comparison with a baseline, history, coverage and the whole-matrix plumbing.

Runs go through the real `rig run` and plugin with verdicts stored in advance (reportkit):
nothing boots.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rig.model import Outcome
from rig.report import by_cell, read_junit, read_run
from rig.report.cells import BAD, Status
from rig.report.compare import Change, Snapshot, classify, compare
from rig.report.history import Night, dump, flakiness, load
from tests.unit.reportkit import (
    DEAD,
    LAUNCH_FAILS,
    MATRIX,
    PASS,
    REPO,
    STAGES,
    TCG,
    fake_run,
    rig,
)

XSD = REPO / "tests" / "data" / "junit-jenkins.xsd"


def _validate(path: Path) -> None:
    xmlschema = pytest.importorskip("xmlschema")
    xmlschema.XMLSchema(str(XSD)).validate(str(path))


def test_junit_shape_names_clean_messages_console_once_one_error(tmp_path: Path) -> None:
    cells = {"bochs-6.12-haswell": LAUNCH_FAILS, "bochs-6.12-penryn": DEAD, "tcg-6.12-penryn": TCG}
    proc, junit = fake_run(tmp_path, "a", cells, "-n", "2")
    assert proc.returncode == 3, proc.stdout + proc.stderr  # an infrastructure error wins
    out = proc.stdout
    # live progress and the end-of-run pointers
    assert "rig: bochs-6.12-haswell: started" in out
    assert "rig: bochs-6.12-haswell: FAILED vmlaunch: vmlaunch VMfailValid" in out
    assert "run directory: " in out and "cells/bochs-6.12-haswell/console.txt" in out
    root = ET.parse(junit).getroot()
    cases = {c.get("name", ""): c for c in root.iter("testcase")}
    assert "bochs-6.12-haswell::vmlaunch" in cases
    assert cases["bochs-6.12-haswell::vmlaunch"].get("classname") == "vmlaunch-rig.bochs"
    failure = cases["bochs-6.12-haswell::vmlaunch"].find("failure")
    assert failure is not None
    assert failure.get("message") == "vmlaunch VMfailValid, error 8 <invalid host>"
    # a dead cell: one error (its first stage), the rest not reached
    errors = [n for n, c in cases.items() if c.find("error") is not None]
    assert errors == ["bochs-6.12-penryn::build"]
    error = cases["bochs-6.12-penryn::build"].find("error")
    assert error is not None
    assert error.get("message") == "infrastructure: the guest never booted (timeout)"
    for stage in STAGES[1:]:
        skipped = cases[f"bochs-6.12-penryn::{stage}"].find("skipped")
        assert skipped is not None and skipped.get("message", "").startswith("not reached: ")
    for case in cases.values():  # no runner prefixes anywhere
        for node in case:
            assert not (node.get("message") or "").startswith(("Failed:", "failed on", "Skipped"))
    # the console once per cell: on the failing stage, else on the last
    for cell in cells:
        with_console = [
            n
            for n, c in cases.items()
            if n.startswith(cell + "::") and "console <b>" in "".join(c.itertext())
        ]
        assert len(with_console) == 1, (cell, with_console)
    assert "console <b>" in "".join(cases["bochs-6.12-haswell::vmlaunch"].itertext())
    assert "console <b>" in "".join(cases["tcg-6.12-penryn::teardown"].itertext())
    # run metadata and log paths
    run = read_run(junit)
    assert run.meta["rig_run_id"] == "run-a" and run.meta["rig_driver_digest"]
    props = {
        p.get("name"): p.get("value") for p in cases["tcg-6.12-penryn::build"].iter("property")
    }
    assert str(props["log_console"]).endswith("cells/tcg-6.12-penryn/console.txt")
    # read back: the reader knows the new names
    table = by_cell(read_junit(junit))
    assert table["bochs-6.12-haswell"]["vmlaunch"].outcome is Outcome.FAILED
    assert table["bochs-6.12-icelake"]["build"].outcome is Outcome.SKIPPED
    _validate(junit)


def test_bisect_junit_has_counts_and_validates(tmp_path: Path) -> None:
    from rig.report.shape import finish_suite

    suite = ET.Element("testsuite", name="vmlaunch-rig-bisect")
    for i, tag in enumerate(("failure", None, "skipped", "error")):
        case = ET.SubElement(
            suite,
            "testcase",
            classname="vmlaunch-rig-bisect.bochs",
            name=f"bochs-6.{i}-haswell::try1",
            time="1.0",
        )
        if tag:
            ET.SubElement(case, tag, message=tag).text = "why"
    path = tmp_path / "bisect.xml"
    finish_suite(suite, 4.0).write(path, encoding="unicode", xml_declaration=True)
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "4"
    inner = root.find("testsuite")
    assert inner is not None
    assert (inner.get("failures"), inner.get("errors"), inner.get("skipped")) == ("1", "1", "1")
    _validate(path)


@pytest.mark.parametrize(
    ("before", "after", "change"),
    [
        (Status.PASSED, Status.FAILED, Change.NEW_FAILURE),
        (Status.SKIPPED, Status.ERROR, Change.NEW_FAILURE),
        (None, Status.FAILED, Change.NEW_FAILURE),
        (Status.FAILED, Status.PASSED, Change.FIXED),
        (Status.ERROR, Status.PASSED, Change.FIXED),
        (Status.PASSED, Status.HOST, Change.NEW_SKIP),
        (Status.EXCLUDED, Status.PASSED, Change.NOW_RUNS),
        (Status.FAILED, Status.ERROR, Change.STILL_FAILING),
        (Status.PASSED, None, Change.GONE),
        (None, Status.PASSED, Change.NEW_CELL),
        (Status.PASSED, Status.PASSED, Change.UNCHANGED),
        (Status.EXCLUDED, Status.IMPOSSIBLE, Change.UNCHANGED),
    ],
)
def test_classify(before: Status | None, after: Status | None, change: Change) -> None:
    def snap(s: Status | None) -> Snapshot | None:
        return None if s is None else Snapshot(s)

    assert classify(snap(before), snap(after)) is change


def test_compare_orders_what_needs_a_person_first() -> None:
    before = {
        "a": Snapshot(Status.PASSED),
        "b": Snapshot(Status.FAILED),
        "c": Snapshot(Status.PASSED),
    }
    after = {
        "a": Snapshot(Status.FAILED),
        "b": Snapshot(Status.PASSED),
        "d": Snapshot(Status.PASSED),
    }
    deltas = compare(before, after)
    assert [(d.cell, d.change) for d in deltas] == [
        ("a", Change.NEW_FAILURE),
        ("b", Change.FIXED),
        ("c", Change.GONE),
        ("d", Change.NEW_CELL),
    ]
    assert deltas[0].text == "passed \u2192 failed"


def test_report_compares_with_a_deliberately_changed_previous_run(tmp_path: Path) -> None:
    prev, _ = fake_run(
        tmp_path,
        "prev",
        {"bochs-6.12-haswell": PASS, "bochs-6.12-penryn": LAUNCH_FAILS, "tcg-6.12-penryn": TCG},
    )
    assert prev.returncode == 1, prev.stdout
    now, junit = fake_run(
        tmp_path,
        "now",
        {"bochs-6.12-haswell": LAUNCH_FAILS, "bochs-6.12-penryn": PASS, "tcg-6.12-penryn": DEAD},
    )
    assert now.returncode == 3, now.stdout
    out = tmp_path / "out"
    p = rig(
        "report",
        str(junit),
        "--compare",
        str(tmp_path / "prev" / "junit.xml"),
        "--html",
        str(out / "index.html"),
        "--markdown",
        str(out / "summary.md"),
        "--history-out",
        str(out / "history.json"),
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 new failure, 1 fixed" in p.stdout
    summary = (out / "summary.md").read_text()
    assert "| bochs-6.12-haswell | new failure | passed \u2192 failed |" in summary
    assert "| bochs-6.12-penryn | fixed | failed \u2192 passed |" in summary
    assert "| tcg-6.12-penryn | new failure | passed \u2192 error |" in summary
    page = (out / "index.html").read_text()
    assert 'data-change="new failure"' in page and 'data-change="fixed"' in page
    assert "vmlaunch VMfailValid, error 8 &lt;invalid host&gt;" in page  # escaped, plain text
    assert (out / "logs" / "bochs-6.12-haswell" / "console.txt").is_file()
    assert 'href="logs/bochs-6.12-haswell/console.txt"' in page
    # the history written tonight is tomorrow's baseline; still failing the next night
    again = rig(
        "report",
        str(junit),
        "--history",
        str(out / "history.json"),
        "--html",
        str(tmp_path / "again" / "index.html"),
        cwd=tmp_path,
    )
    assert again.returncode == 0 and "2 still failing" in again.stdout, again.stdout


def test_history_keeps_nights_and_measures_flakiness(tmp_path: Path) -> None:
    seq = [Status.PASSED, Status.FAILED, Status.PASSED, Status.FAILED, Status.EXCLUDED]
    nights = [
        Night({"finished": str(i)}, {"x": Snapshot(s), "y": Snapshot(Status.PASSED)})
        for i, s in enumerate(seq)
    ]
    dump(nights, tmp_path / "h.json")
    loaded = load(tmp_path / "h.json")
    assert [n.cells["x"].status for n in loaded] == seq
    flaky = flakiness(loaded)
    assert flaky["x"].flips == 3 and flaky["x"].flaky and flaky["x"].strip == "PFPFX"
    assert flaky["y"].flips == 0 and not flaky["y"].flaky


def test_report_fails_when_coverage_goes(tmp_path: Path) -> None:
    _, junit = fake_run(
        tmp_path,
        "a",
        {"bochs-6.12-haswell": PASS, "bochs-6.12-penryn": PASS, "tcg-6.12-penryn": TCG},
    )
    plan = json.loads(rig("matrix", "--json", cwd=tmp_path / "a").stdout)
    plan.append(
        {
            "id": "bochs-6.12-skylake",
            "lane": "bochs",
            "kernel": "6.12",
            "cpu": "skylake",
            "cpu_model": "x",
            "skip_reason": None,
        }
    )
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    p = rig(
        "report",
        str(junit),
        "--expect",
        "plan.json",
        "--expect-shards",
        "2",
        "--html",
        "r/index.html",
        cwd=tmp_path,
    )
    assert p.returncode == 3, p.stdout + p.stderr
    assert "1 planned cells have no result" in p.stdout and "1/2, 2/2" in p.stdout
    assert 'data-status="missing"' in (tmp_path / "r" / "index.html").read_text()


def test_a_shard_that_sent_nothing_is_exactly_its_cells_missing(tmp_path: Path) -> None:
    """A plan of 4 shards, JUnit from 1/4, 3/4 and 4/4 only: the runnable cells of 2/4, and
    only they, are reported as lost (status missing, a bad one), and the exit code is 3."""
    models = ("penryn", "haswell", "nehalem", "westmere", "skylake", "icelake", "broadwell")
    matrix = MATRIX.replace(
        "  icelake: {bochs: corei7_icelake_u}\n",
        "".join(f"  {m}: {{bochs: bx_{m}}}\n" for m in models[2:]),
    )
    verdicts = {f"bochs-6.12-{m}": PASS for m in models} | {"tcg-6.12-penryn": TCG}
    junits = []
    for i in (1, 3, 4):
        proc, junit = fake_run(
            tmp_path, f"s{i}", verdicts, "--all", "--shard", f"{i}/4", matrix=matrix
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        junits.append(str(junit))
    where = tmp_path / "s1"
    plan = json.loads(rig("matrix", "--all", "--json", "--shards", "4", cwd=where).stdout)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    lost = {
        c["id"]
        for c in json.loads(rig("matrix", "--all", "--shard", "2/4", "--json", cwd=where).stdout)
        if not c["skip_reason"]
    }
    assert len(lost) >= 2
    runnable = {c["id"] for c in plan["cells"] if not c["skip_reason"]}
    p = rig(
        "report",
        *junits,
        "--expect",
        "plan.json",
        "--expect-shards",
        "4",
        "--history-out",
        "h.json",
        "--html",
        "r/index.html",
        cwd=tmp_path,
    )
    assert p.returncode == 3, p.stdout + p.stderr
    assert f"{len(lost)} planned cells have no result" in p.stdout
    assert "shards without a result: 2/4" in p.stdout
    night = load(tmp_path / "h.json")[-1].cells
    assert {c for c, s in night.items() if s.status is Status.MISSING} == lost
    assert all(night[c].status is Status.PASSED for c in runnable - lost)
    assert {c for c, s in night.items() if s.status in BAD} == lost


def test_matrix_json_all_and_shards_partition_the_matrix() -> None:
    every = json.loads(rig("matrix", "--all", "--json", cwd=REPO).stdout)
    ids = [c["id"] for c in every]
    assert len(ids) == len(set(ids)) and {"kvm-7.3-icelake", "tcg-5.10-penryn"} <= set(ids)
    assert {"lane", "kernel", "cpu", "cpu_model", "skip_reason"} <= set(every[0])
    parts = [
        [
            c["id"]
            for c in json.loads(
                rig("matrix", "--all", "--shard", f"{i}/3", "--json", cwd=REPO).stdout
            )
        ]
        for i in (1, 2, 3)
    ]
    assert sorted(i for part in parts for i in part) == sorted(ids)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    plan = json.loads(rig("matrix", "--all", "--json", "--shards", "3", cwd=REPO).stdout)
    assert plan["shards"] == ["1/3", "2/3", "3/3"] and len(plan["cells"]) == len(ids)
    default = json.loads(rig("matrix", "--json", cwd=REPO).stdout)
    assert all(c["skip_reason"] is None for c in default)  # the default slice can all run


def test_run_all_shard_runs_exactly_that_shard(tmp_path: Path) -> None:
    proc, junit = fake_run(
        tmp_path,
        "s",
        {"bochs-6.12-haswell": PASS, "bochs-6.12-penryn": PASS, "tcg-6.12-penryn": TCG},
        "--all",
        "--shard",
        "2/2",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    want = [
        c["id"]
        for c in json.loads(
            rig("matrix", "--all", "--shard", "2/2", "--json", cwd=tmp_path / "s").stdout
        )
    ]
    assert sorted(by_cell(read_junit(junit))) == sorted(want)
    assert read_run(junit).meta["rig_shard"] == "2/2"
    bad = rig("run", "--shard", "3/2", cwd=tmp_path / "s")
    assert bad.returncode == 2 and "shard" in bad.stderr
    assert rig("--version", cwd=tmp_path).stdout.startswith("rig ")
