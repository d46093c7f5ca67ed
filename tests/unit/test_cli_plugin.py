"""The CLI's exit codes and the pytest plugin's collection, without booting anything."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rig.artifacts import HOST_FILES, HOST_TOOLS, require_file
from rig.errors import ExitCode, ToolMissing
from rig.model import Outcome
from rig.report import by_cell, read_junit

REPO = Path(__file__).resolve().parents[2]

# Every cell of this matrix is untestable by construction (excluded, or no model in the lane),
# so running it exercises collection, grouping, skips and JUnit without a guest.
SKIP_ONLY = """\
version: 1
kernels:
  "6.12": {suite: trixie, abi: "6.12.117+deb13-amd64", version: "6.12.117-1"}
cpus:
  haswell: {bochs: corei7_haswell_4770}
  penryn: {tcg: Penryn}
lanes:
  bochs: {backend: bochs, vmx: true}
  tcg: {backend: libvirt, vmx: false, domain_type: qemu}
exclude:
  - {lane: bochs, cpu: haswell, reason: "kept out on purpose by this test"}
default_slice: {lanes: [bochs, tcg], kernels: ["6.12"], cpus: [haswell]}
"""


def rig(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rig", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_skip_only_matrix_gives_five_skipped_cases_per_cell(tmp_path: Path) -> None:
    (tmp_path / "matrix.yaml").write_text(SKIP_ONLY)
    junit = tmp_path / "j.xml"
    p = rig("run", "--junit", str(junit), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    cells = by_cell(read_junit(junit))
    assert set(cells) == {"bochs-6.12-haswell", "tcg-6.12-haswell"}
    for cell in cells.values():
        assert sorted(cell) == sorted(["build", "vmxon", "vmlaunch", "vmcall_exit", "teardown"])
        assert all(case.outcome is Outcome.SKIPPED for case in cell.values())
    assert "kept out on purpose" in cells["bochs-6.12-haswell"]["vmxon"].message
    assert "no CPU model" in cells["tcg-6.12-haswell"]["build"].message
    props = cells["bochs-6.12-haswell"]["vmxon"].properties
    assert props["lane"] == "bochs" and props["kernel"] == "6.12" and props["stage"] == "vmxon"
    assert props["cpu_model"] == "corei7_haswell_4770"


def test_broken_matrix_is_exit_2_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "matrix.yaml").write_text(SKIP_ONLY.replace("vmx: true", "vmx: maybe"))
    p = rig("run", cwd=tmp_path)
    assert p.returncode == 2
    assert "matrix.yaml:" in p.stderr and "vmx" in p.stderr


def test_unknown_kernel_is_exit_2_naming_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / "matrix.yaml").write_text(SKIP_ONLY)
    p = rig("run", "--kernel", "9.99", cwd=tmp_path)
    assert p.returncode == 2
    assert "9.99" in p.stderr and "6.12" in p.stderr


def test_missing_driver_dir_and_bad_jobs_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "matrix.yaml").write_text(SKIP_ONLY)
    assert rig("run", "--driver", str(tmp_path / "nope"), cwd=tmp_path).returncode == 2
    assert rig("run", "-n", "lots", cwd=tmp_path).returncode == 2


def test_doctor_reports_every_lane(tmp_path: Path) -> None:
    (tmp_path / "matrix.yaml").write_text(SKIP_ONLY)
    p = rig("doctor", cwd=tmp_path)
    assert "bochs" in p.stdout and "tcg" in p.stdout
    assert "usable KVM" in p.stdout
    for tool, (package, _purpose) in HOST_TOOLS.items():
        assert re.search(rf"^  {re.escape(tool)} +ok  \[", p.stdout, re.M) or (
            f"MISSING (apt-get install {package})" in p.stdout
        ), tool
    for path in HOST_FILES:
        assert f"  {path} " in p.stdout, path


def test_a_missing_host_file_names_its_package_and_purpose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ToolMissing) as raised:
        require_file(tmp_path / "kexec")
    assert raised.value.exit_code is ExitCode.INFRA and "kexec" in raised.value.render()
    for path, (package, purpose) in list(HOST_FILES.items()):
        gone = tmp_path / path.name  # the same entry, at a path that does not exist
        monkeypatch.setitem(HOST_FILES, gone, (package, purpose))
        with pytest.raises(ToolMissing) as raised:
            require_file(gone)
        said = raised.value.render()
        assert package in said and purpose in said, said


def test_a_reader_that_goes_away_is_a_sigpipe_exit_not_an_internal_error(tmp_path: Path) -> None:
    (tmp_path / "matrix.yaml").write_text(SKIP_ONLY)
    proc = subprocess.Popen([sys.executable, "-m", "rig", "doctor"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the rig has printed anything (it is still importing)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "internal error" not in err and "Traceback" not in err


def test_html_report_escapes_and_covers_every_cell(tmp_path: Path) -> None:
    (tmp_path / "matrix.yaml").write_text(SKIP_ONLY)
    junit = tmp_path / "j.xml"
    rig("run", "--junit", str(junit), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    text = junit.read_text().replace("kept out on purpose", "<script>alert(1)</script>")
    junit.write_text(
        text.replace("<script>", "&lt;script&gt;").replace("</script>", "&lt;/script&gt;")
    )
    html = tmp_path / "r.html"
    p = rig("report", str(junit), "--html", str(html), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    page = html.read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count('aria-label="') >= 10  # 2 cells x 5 stages
    assert rig("report", str(tmp_path / "missing.xml"), cwd=tmp_path).returncode == 2


def test_bisect_refuses_unknown_or_reversed_kernels(tmp_path: Path) -> None:
    (tmp_path / "matrix.yaml").write_text(SKIP_ONLY)
    p = rig("bisect", "--lane", "bochs", "--cpu", "haswell", "--good", "6.12", "--bad", "9.9",
            cwd=tmp_path)  # fmt: skip
    assert p.returncode == 2 and "9.9" in p.stderr
    p = rig("bisect", "--lane", "bochs", "--cpu", "haswell", "--good", "6.12", "--bad", "6.12",
            cwd=tmp_path)  # fmt: skip
    assert p.returncode == 2


def test_bad_kernel_arg_or_missing_preload_is_exit_2_before_anything_starts(
    tmp_path: Path,
) -> None:
    (tmp_path / "matrix.yaml").write_text(SKIP_ONLY)
    runs = tmp_path / "runs"
    p = rig("run", "--kernel-arg", "init=/bin/sh;reboot", "--runs-dir", str(runs), cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "--kernel-arg" in p.stderr and "fix:" in p.stderr
    p = rig("run", "--preload", str(tmp_path / "nope"), "--runs-dir", str(runs), cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "--preload" in p.stderr
    assert not runs.exists()  # refused before any run directory was made


def test_a_dead_worker_is_reported_as_infrastructure() -> None:
    """xdist's crash report, passed through the plugin's hook: an <error> in setup."""
    import pytest

    from rig.plugin import pytest_handlecrashitem

    nodeid = "matrix.yaml::tcg-6.12-penryn::vmxon"
    rep = pytest.TestReport(nodeid=nodeid, location=("matrix.yaml", None, "x"), keywords={},
                            outcome="failed", longrepr=f"worker 'gw0' crashed while running "
                            f"'{nodeid}'", when="call")  # fmt: skip
    pytest_handlecrashitem(crashitem=nodeid, report=rep, sched=None)
    assert rep.when == "setup" and rep.failed
    assert str(rep.longrepr).startswith("infrastructure: worker 'gw0' crashed")
    other = pytest.TestReport(
        nodeid="tests/test_x.py::t", location=("x", None, "x"), keywords={},
        outcome="failed", longrepr="crash", when="call",
    )  # fmt: skip
    pytest_handlecrashitem(crashitem="tests/test_x.py::t", report=other, sched=None)
    assert other.when == "call" and other.longrepr == "crash"  # not ours: untouched


def test_markdown_report_has_one_row_per_cell_with_verdict_and_times() -> None:
    from rig.report import CaseResult, cells_of
    from rig.report.markdown import render_markdown

    def case(cell: str, stage: str, outcome: Outcome, msg: str = "") -> CaseResult:
        props = {"cell": cell, "stage": stage, "time_boot_s": "101.5", "time_build_s": "0.0"}
        return CaseResult(cell, stage, outcome, msg, props)

    stages = ("build", "vmxon", "vmlaunch", "vmcall_exit", "teardown")
    results = [case("bochs-6.12-haswell", s, Outcome.PASSED) for s in stages]
    vmx_stages = ("vmxon", "vmlaunch", "vmcall_exit")
    results += [
        case("tcg-6.12-penryn", s, Outcome.SKIPPED if s in vmx_stages else Outcome.PASSED,
             "guest CPU has no VMX")
        for s in stages
    ]  # fmt: skip
    results += [case("bochs-6.1-x", s, Outcome.FAILED if s == "vmlaunch" else Outcome.PASSED,
                     "vmlaunch VMfailValid | error 8\nmore") for s in stages]  # fmt: skip
    table = [ln for ln in render_markdown(list(cells_of(results).values())).splitlines()
             if ln.startswith("| ") and not ln.startswith("| cell")]  # fmt: skip
    assert len(table) == 3
    assert "3 cells" in render_markdown(list(cells_of(results).values()))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table}
    assert "| pass | " in rows["bochs-6.12-haswell"] and "101.5" in rows["bochs-6.12-haswell"]
    assert "pass (3 skipped: guest CPU has no VMX)" in rows["tcg-6.12-penryn"]
    assert "FAILED vmlaunch: vmlaunch VMfailValid \\| error 8 |" in rows["bochs-6.1-x"]


def test_a_stage_reported_twice_keeps_its_worse_result() -> None:
    """A dead worker's cell is rerun by xdist: the crash (error) must stay visible."""
    from rig.report import CaseResult, by_cell

    crash = CaseResult("tcg-6.12-penryn", "build", Outcome.ERROR, "worker 'gw1' crashed")
    rerun = CaseResult("tcg-6.12-penryn", "build", Outcome.PASSED, "")
    assert by_cell([crash, rerun])["tcg-6.12-penryn"]["build"] is crash
    assert by_cell([rerun, crash])["tcg-6.12-penryn"]["build"] is crash


def test_a_crash_report_without_properties_is_read_from_its_class_name(tmp_path: Path) -> None:
    """What junitxml writes for an item whose worker died (no teardown: no properties)."""
    from rig.report import read_junit

    junit = tmp_path / "j.xml"
    junit.write_text(
        '<testsuites><testsuite name="vmlaunch-rig">'
        '<testcase classname="matrix.yaml.tcg-6.12-nehalem" name="build" time="0">'
        "<error message=\"failed on setup with &quot;infrastructure: worker 'gw1' crashed"
        '&quot;">x</error></testcase>'
        '<testcase classname="tests.test_x" name="test_y" time="0"/>'
        "</testsuite></testsuites>"
    )
    (only,) = read_junit(junit)
    assert (only.cell, only.stage, only.outcome) == ("tcg-6.12-nehalem", "build", Outcome.ERROR)
    assert "worker 'gw1' crashed" in only.message
