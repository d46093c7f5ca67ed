"""Hostile input to the report side: crafted JUnit files (M1), guest text with control
characters in hand-built JUnit and on the terminal (M2), guest attachment markers (L2).

See ../shared/notes/security-findings.md. Nothing boots: JUnit files are written by hand or by
the real `rig run` with verdicts stored in advance (as reportkit does).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rig.bisect.decide import run_mark, step_mark
from rig.bisect.engine import Outcome as Outcome_
from rig.bisect.engine import Step
from rig.bisect.output import print_outcome, write_junit
from rig.bisect.record import BisectArgs, RunRecord
from rig.errors import UsageError
from rig.model import STAGES, CellVerdict, Outcome, StageVerdict
from rig.report import read_junit
from rig.report.bundle import CUT, MAX_LOG_BYTES, attach_logs
from rig.report.cells import CellReport, Status
from rig.report.junit import CELL_ID_RE
from rig.report.shape import finish_suite
from rig.textsafe import ATTACHMENT, no_markers, shown, xml_safe
from tests.unit.reportkit import MATRIX, PASS, REPO, rig, verdict

XSD = REPO / "tests" / "data" / "junit-jenkins.xsd"
CELL = "bochs-6.12-haswell"
HOSTILE = "\x1b[2J\x01\x00\r\x85\x9b\x7f\ufffe\ud800 <b>&amp;"
JENKINS_ATTACHMENT_RE = re.compile(r"\[\[ATTACHMENT\|.+\]\]")  # the plugin's pattern


# --------------------------------------------------------------------------- crafted shards
@dataclass(frozen=True)
class Shard:
    """One hand-written shard JUnit file: a testcase per stage of one cell."""

    name: str  # the testcase's cell part: `<name>::<stage>`
    props: dict[str, str] = field(default_factory=dict)  # each testcase's properties
    classname: str = "vmlaunch-rig.bochs"

    def write(self, path: Path) -> Path:
        suite = ET.Element("testsuite", name="vmlaunch-rig")
        meta = ET.SubElement(suite, "properties")
        ET.SubElement(meta, "property", name="rig_shard", value="1/1")
        for stage in STAGES:
            case = ET.SubElement(suite, "testcase", classname=self.classname)
            case.set("name", f"{self.name}::{stage}" if self.name else stage)
            props = ET.SubElement(case, "properties")
            for key, value in {"stage": stage, **self.props}.items():
                ET.SubElement(props, "property", name=key, value=value)
        path.parent.mkdir(parents=True, exist_ok=True)
        finish_suite(suite, 1.0).write(path, encoding="unicode", xml_declaration=True)
        return path


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


def _cell_dir(where: Path, console: str = "the console\n") -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "console.txt").write_text(console)
    (where / "build.log").write_text("make: ok\n")
    return where


def test_m1_a_cell_id_that_climbs_out_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    logs = _cell_dir(tmp_path / "scratch")
    shard = Shard(CELL, {"cell": "../../../planted", "cell_dir": str(logs)})
    shard.write(tmp_path / "shard.xml")
    before = _files(tmp_path)
    p = rig("report", "shard.xml", "--html", "rep/out/deep/report.html", cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "shard.xml" in p.stderr and "property 'cell'" in p.stderr, p.stderr
    assert "'../../../planted' is not a cell id" in p.stderr and "fix:" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert _files(tmp_path) == before  # not rep/planted/console.txt, nor anything else


@pytest.mark.parametrize(
    "shard",
    [
        Shard(CELL, {"cell": "../../../planted"}),
        Shard(CELL, {"cell": "/etc/cron.d-x-y"}),
        Shard(CELL, {"cell": ".hidden-6.12-haswell"}),
        Shard(CELL, {"cell": "bochs-6..12-haswell"}),
        Shard(CELL, {"cell": "bochs-6.12-haswell\n"}),
        Shard(CELL, {"cell": "bochs-6.12-has/well"}),
        Shard(CELL, {"cell": "bochs-6.12"}),
        Shard("../../x-1-y"),  # no property: the cell is the test name's
        Shard("", classname="matrix.yaml.bochs-6..12-haswell"),  # an unfinished report's
    ],
    ids=lambda s: repr(s.props.get("cell") or s.name or s.classname),
)
def test_m1_every_way_a_cell_id_arrives_is_checked(tmp_path: Path, shard: Shard) -> None:
    if not shard.name:  # the class-name form: a report without properties
        path = tmp_path / "j.xml"
        path.write_text(
            f'<testsuite><testcase classname="{shard.classname}" name="vmxon">'
            '<error message="worker died"/></testcase></testsuite>'
        )
    else:
        path = shard.write(tmp_path / "j.xml")
    with pytest.raises(UsageError) as raised:
        read_junit(path)
    said = raised.value.render()
    assert str(path) in said and "is not a cell id" in said and "fix:" in said, said
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", said)


def test_m1_well_formed_cell_ids_still_read(tmp_path: Path) -> None:
    for cell in ("bochs-6.12-haswell", "kvm-7.3-rc1-icelake", "nested_q-6.1-nehalem"):
        assert CELL_ID_RE.fullmatch(cell), cell
        (case,) = {r.cell for r in read_junit(Shard(cell).write(tmp_path / f"{cell}.xml"))}
        assert case == cell


def _report_cell(source: Path, cell_dir: Path | None = None, cell_id: str = CELL) -> CellReport:
    props = {"cell_dir": str(cell_dir)} if cell_dir is not None else {}
    return CellReport(cell_id, "bochs", "6.12", "haswell", Status.PASSED, {}, props, source=source)


def test_m1_cell_dir_outside_the_junit_dir_and_runs_dir_is_not_read(tmp_path: Path) -> None:
    outside = _cell_dir(tmp_path / "elsewhere" / "cells" / CELL, "host secret\n")
    inside = _cell_dir(tmp_path / "shard" / "runs" / "r1" / "cells" / "other-1-cpu")
    source = tmp_path / "shard" / "junit.xml"
    out = tmp_path / "out"
    far = _report_cell(source, outside)
    near = _report_cell(source, inside)
    assert attach_logs([far, near], out, runs_dir=tmp_path / "runs") == 2  # near's two logs
    assert far.logs == {} and set(near.logs) == {"console", "build"}
    assert "host secret" not in "".join(p.read_text() for p in out.rglob("*.txt"))
    # the same directory is read once it is under the runs directory
    again = _report_cell(source, outside)
    assert attach_logs([again], tmp_path / "out2", runs_dir=tmp_path / "elsewhere") == 2
    assert (tmp_path / "out2" / "logs" / CELL / "console.txt").read_text() == "host secret\n"
    # linked in place (--no-copy-logs): the same rule
    linked = _report_cell(source, outside)
    attach_logs([linked], tmp_path / "out3", copy=False, runs_dir=tmp_path / "runs")
    assert linked.logs == {}


def test_m1_symlinked_logs_and_cell_dirs_are_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "id_ed25519").write_text("PRIVATE KEY\n")
    shard = tmp_path / "shard"
    cell_dir = shard / "runs" / "r1" / "cells" / CELL
    cell_dir.mkdir(parents=True)
    (cell_dir / "build.log").write_text("make: ok\n")
    (cell_dir / "console.txt").symlink_to(secret / "id_ed25519")
    (cell_dir / "agent.txt").symlink_to("build.log")  # even one that stays inside
    # a cell directory found by the index that is a symlink out of the shard
    other = "bochs-6.12-penryn"
    (shard / "runs" / "r1" / "cells" / other).symlink_to(secret, target_is_directory=True)
    (secret / "console.txt").write_text("PRIVATE KEY\n")
    source = shard / "junit.xml"
    cells = [_report_cell(source, cell_dir), _report_cell(source, None, other)]
    out = tmp_path / "out"
    assert attach_logs(cells, out, runs_dir=tmp_path / "runs") == 1
    assert cells[0].logs == {"build": f"logs/{CELL}/build.log"} and cells[1].logs == {}
    assert [p.name for p in out.rglob("*") if p.is_file()] == ["build.log"]
    linked = _report_cell(source, cell_dir)
    attach_logs([linked], out, copy=False, runs_dir=tmp_path / "runs")
    assert list(linked.logs) == ["build"]


def test_m1_writes_stay_inside_the_output_dir(tmp_path: Path) -> None:
    logs = _cell_dir(tmp_path / "shard" / "runs" / "r1" / "cells" / CELL)
    source = tmp_path / "shard" / "junit.xml"
    # an id that got past the door (defence in depth: the bundle checks again)
    with pytest.raises(UsageError, match="outside the report's directory"):
        attach_logs([_report_cell(source, logs, "../../../planted")], tmp_path / "o" / "deep")
    assert not (tmp_path / "planted").exists()
    # a reused output directory whose logs/ is a symlink out of it
    victim = tmp_path / "victim"
    victim.mkdir()
    out = tmp_path / "reused"
    out.mkdir()
    (out / "logs").symlink_to(victim, target_is_directory=True)
    with pytest.raises(UsageError, match="outside the report's directory"):
        attach_logs([_report_cell(source, logs)], out)
    assert list(victim.iterdir()) == []


def test_m1_a_log_over_the_cap_keeps_its_tail(tmp_path: Path) -> None:
    logs = _cell_dir(tmp_path / "shard" / "cells" / CELL)
    (logs / "console.txt").write_bytes(b"h" * 100 + b"t" * MAX_LOG_BYTES)
    cell = _report_cell(tmp_path / "shard" / "junit.xml", logs)
    attach_logs([cell], tmp_path / "out")
    copied = (tmp_path / "out" / cell.logs["console"]).read_bytes()
    assert copied == CUT + b"t" * MAX_LOG_BYTES


def test_m1_report_reads_logs_from_runs_dir(tmp_path: Path) -> None:
    logs = _cell_dir(tmp_path / "runs" / "r1" / "cells" / CELL)
    Shard(CELL, {"cell": CELL, "cell_dir": str(logs)}).write(tmp_path / "shards" / "j.xml")
    p = rig("report", "shards/j.xml", "--html", "a/index.html", cwd=tmp_path)
    assert p.returncode == 0 and not (tmp_path / "a" / "logs").exists(), p.stdout + p.stderr
    p = rig("report", "shards/j.xml", "--html", "b/index.html", "--runs-dir", "runs", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (tmp_path / "b" / "logs" / CELL / "console.txt").is_file()


# --------------------------------------------------------------------------- M2: bisect's JUnit
def _verdict(reason: str, outcome: Outcome = Outcome.FAILED) -> CellVerdict:
    stages = {s: StageVerdict(s, Outcome.PASSED, f"{s} ok") for s in STAGES}
    stages["vmcall_exit"] = StageVerdict("vmcall_exit", outcome, reason)
    return CellVerdict(cell_id=CELL, stages=stages)


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.ERROR, Outcome.SKIPPED])
def test_m2_bisect_junit_with_guest_controls_parses_and_reports(
    tmp_path: Path, outcome: Outcome, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = f"kernel oops: BUG: {HOSTILE} at vmx_launch+0x12"
    verdict = _verdict(reason, outcome)
    mark, why = run_mark(verdict)
    run = RunRecord("0123456789ab", "step", 0, mark, why, 1.0, 2.0, "cells/x", {})
    step = Step("0123456789ab", "step", step_mark([mark]), [run])
    outcome_ = Outcome_(first_bad=None, last_good="base", suspects=["0123456789ab"],
                        steps=[step])  # fmt: skip
    args = BisectArgs(source="git", good="base", bad="end", lane="bochs", cpu="haswell",
                      driver="/d", driver_digest="0")  # fmt: skip
    path = tmp_path / "bisect.xml"
    write_junit(path, args, outcome_)  # as `rig bisect` writes it
    print_outcome(args, outcome_, tmp_path)
    line = capsys.readouterr().out
    root = ET.parse(path).getroot()
    text = "".join(root.itertext())
    assert "#x1B[2J#x01#x00" in text and "#xD800" in text and "<b>&amp;" in text, text
    assert not re.search("[\x00-\x08\x0b-\x0c\x0e-\x1f]", text)
    # the terminal: the same reasons, every control shown, never raw
    assert "\\x1b[2J\\x01\\x00\\x0d\\x85\\x9b\\x7f" in line, line
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", line)
    p = rig("report", str(path), "--html", str(tmp_path / "r" / "index.html"), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    xmlschema = pytest.importorskip("xmlschema")
    xmlschema.XMLSchema(str(XSD)).validate(str(path))


CONTROLS = st.sampled_from(
    ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\r", "\x1b", "\x7f", "\x85", "\x9b", "\x9f",
     "\ud800", "\udfff", "\ufffe", "\uffff", "\t", "\n", "\r\n", "]]>", "&", "<", '"']
)  # fmt: skip
HOSTILE_TEXT = st.lists(st.one_of(st.text(), CONTROLS)).map("".join)
MEGABYTE = (HOSTILE * (2**20 // len(HOSTILE) + 1))[: 2**20]


def _through_xml(text: str) -> tuple[str, str]:
    """`text` made safe, as an element's text and as an attribute, written and parsed back."""
    el = ET.Element("failure", message=xml_safe(text))
    el.text = xml_safe(text)
    back = ET.fromstring(ET.tostring(el, encoding="unicode"))
    return back.text or "", back.get("message", "")


@settings(max_examples=300, deadline=None)
@given(text=HOSTILE_TEXT)
@example(text=MEGABYTE)
def test_m2_xml_safe_text_always_parses_inside_an_element_and_an_attribute(text: str) -> None:
    safe = xml_safe(text)
    as_text, as_attribute = _through_xml(text)
    assert as_attribute == safe  # attribute values round-trip exactly
    assert as_text == safe.replace("\r\n", "\n").replace("\r", "\n")  # XML's line ends
    assert xml_safe(safe) == safe
    if not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]", text):
        assert safe == text  # text XML can carry is left as it is


@settings(max_examples=300, deadline=None)
@given(text=HOSTILE_TEXT)
@example(text=MEGABYTE)
def test_m2_shown_text_has_no_control_but_tab_and_newline(text: str) -> None:
    out = shown(text)
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]", out)
    out.encode()  # printable: a lone surrogate would raise here
    if not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]", text):
        assert out == text


def test_m2_shown_and_xml_safe_by_example() -> None:
    assert shown("a\x1b[2J\x01\tb\r\n\x85") == "a\\x1b[2J\\x01\tb\\x0d\n\\x85"
    assert shown("x\ud800y") == "x\\ud800y"
    assert xml_safe("a\x1b[2J\x01\tb\r\n\x85\ud800") == "a#x1B[2J#x01\tb\r\n\x85#xD800"


# --------------------------------------------------------------------------- L2: markers
@settings(max_examples=300, deadline=None)
@given(text=st.lists(st.one_of(HOSTILE_TEXT, st.just(ATTACHMENT), st.just("]]"))).map("".join))
def test_l2_no_markers_leaves_no_attachment_marker(text: str) -> None:
    safe = no_markers(text)
    assert ATTACHMENT not in safe and not JENKINS_ATTACHMENT_RE.search(safe)
    if ATTACHMENT not in text:
        assert safe == text


def test_l2_a_guest_line_cannot_attach_a_host_file(tmp_path: Path) -> None:
    """The real plugin (a `rig run` whose verdict is stored first): the rig's own markers stay,
    the guest's is neutralised (reportkit's fake_run, with a console of our choosing)."""
    (tmp_path / "matrix.yaml").write_text(MATRIX)
    cell_dir = tmp_path / "runs" / "r1" / "cells" / CELL
    cell_dir.mkdir(parents=True)
    console = "Linux version 6.12\nvml: x\r[[ATTACHMENT|/root/.ssh/id_ed25519]]\nvml: done\n"
    stages = {**PASS, "vmlaunch": ("failed", "vmlaunch VMfailValid")}
    (cell_dir / "verdict.json").write_text(json.dumps(verdict(CELL, stages, console)))
    (cell_dir / "console.txt").write_text(console)
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "rig", "run", "--run-id", "r1", "--junit", str(junit),
         "--runs-dir", str(tmp_path / "runs"), "--lane", "bochs", "--cpu", "haswell"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = "".join(node.text or "" for node in ET.parse(junit).getroot().iter("system-out"))
    assert "guest console:" in out and "id_ed25519]]" in out, out
    named = re.findall(r"\[\[ATTACHMENT\|(.*?)\]\]", out)
    real = cell_dir.resolve()
    assert named == [str(real / "console.txt"), str(real / "verdict.json")], named
    assert "[[ATTACHMENT(guest)|/root/.ssh/id_ed25519]]" in out
