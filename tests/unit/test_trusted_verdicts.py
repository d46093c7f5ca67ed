"""The judge's rules that make a verdict trustworthy (issue: verdicts you can trust).

Real consoles from real runs (tests/data/consoles/*: the kernel's console.txt and the guest
agent's agent.txt, as the lanes wrote them) are judged here against their expected verdicts,
and again with kernel noise woven into them: whole lines and lines split in two, anywhere a
kernel can print. The verdict must not change.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig.errors import UsageError
from rig.guest.protocol import complete_lines, merge_channels
from rig.model import (
    STAGES,
    Arranged,
    BootEnd,
    BootResult,
    Cell,
    CellVerdict,
    CpuSpec,
    KernelSpec,
    LaneSpec,
    ModuleBuild,
    Outcome,
    StageVerdict,
    worst,
)
from rig.runner import RunConfig, arrangements
from rig.runs import VERDICT_FILE, read_verdict, verdict_for
from rig.verdict import judge, parse_guest
from rig.verdict.profiles import Profile, profile_named

DATA = Path(__file__).resolve().parent.parent / "data" / "consoles"
ROOT = Path(__file__).resolve().parents[2]

BOCHS = LaneSpec(name="bochs", backend="bochs", vmx=True)
TCG = LaneSpec(name="tcg", backend="libvirt", vmx=False, domain_type="qemu")
KERNEL = KernelSpec(name="6.12", suite="trixie", abi="6.12.117+deb13-amd64")
CPUS = {
    "haswell": CpuSpec(
        "haswell",
        {"bochs": "corei7_haswell_4770", "kvm": "Haswell-noTSX", "nested": "Haswell-noTSX"},
    ),
    "generic": CpuSpec("generic", {"bochs": "bx_generic"}),
    "icelake": CpuSpec("icelake", {"bochs": "corei7_icelake_u"}),
    "skylake": CpuSpec(
        "skylake", {"bochs": "corei7_skylake_x", "nested": "Skylake-Server-noTSX-IBRS"}
    ),
    "penryn": CpuSpec(
        "penryn", {"bochs": "core2_penryn_t9600", "tcg": "Penryn", "nested": "Penryn"}
    ),
}
NESTED = LaneSpec(name="nested", backend="nested", vmx=True)
LANES = {"bochs": BOCHS, "tcg": TCG, "nested": NESTED}
BUILD_OK = ModuleBuild(name="vmlaunch", ok=True, log="", ko=Path("/x/vmlaunch.ko"))


def golden_cases() -> list[Path]:
    return sorted(p for p in DATA.iterdir() if (p / "expected.json").exists())


def reasons(case: Path) -> dict[str, str]:
    """Words each stage's reason must contain (expected.json `reasons`)."""
    meta = json.loads((case / "expected.json").read_text())
    return dict(meta.get("reasons", {}))


def profile_of(case: Path) -> Profile:
    """The module profile the case's lines are read by (expected.json `profile`; ours)."""
    return profile_named(json.loads((case / "expected.json").read_text()).get("profile"))


def load_case(case: Path) -> tuple[Cell, BootResult, Arranged, dict[str, str]]:
    meta = json.loads((case / "expected.json").read_text())
    cell = Cell(lane=LANES[meta["lane"]], kernel=KERNEL, cpu=CPUS[meta["cpu"]], timeout_s=400)
    boot = BootResult(
        console=(case / "console.txt").read_text(),
        agent=(case / "agent.txt").read_text() if (case / "agent.txt").exists() else "",
        end=BootEnd(meta.get("end", "poweroff")),
        duration_s=1.0,
        detail=meta.get("detail", ""),
        triple_fault=bool(meta.get("triple_fault", False)),
    )
    arranged_why = meta.get("arranged", {})
    arranged = Arranged(
        frozenset(arranged_why),
        tuple(sorted(arranged_why.items())),
        witness=bool(meta.get("witness", False)),
        beside=str(meta.get("beside", "")),
        crash=bool(meta.get("crash", False)),
    )
    return cell, boot, arranged, meta["stages"]


def outcomes(v: CellVerdict) -> dict[str, str]:
    return {s: sv.outcome.value for s, sv in v.stages.items()}


@pytest.mark.parametrize("case", golden_cases(), ids=lambda p: p.name)
def test_golden_console_gets_its_expected_verdict(case: Path) -> None:
    cell, boot, arranged, expected = load_case(case)
    verdict = judge(cell, BUILD_OK, boot, arranged, profile_of(case))
    assert outcomes(verdict) == expected
    for stage, words in reasons(case).items():
        assert words in verdict.stages[stage].reason, (stage, verdict.stages[stage].reason)


def test_the_golden_corpus_covers_every_kind_of_ending() -> None:
    kinds = {json.loads((c / "expected.json").read_text()).get("end", "poweroff")
             for c in golden_cases()}  # fmt: skip
    assert {"poweroff", "timeout"} <= kinds
    verdicts = {v for c in golden_cases() for v in load_case(c)[3].values()}
    assert {"passed", "failed", "skipped"} <= verdicts


# --------------------------------------------------------------------------- kernel noise
NOISE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 :=.-_()[]", max_size=70)


def _weave(lines: list[str], noise: list[tuple[int, str, bool]]) -> list[str]:
    """Insert kernel lines (whole, or split in two lines as a pr_cont would) at positions."""
    out = list(lines)
    for pos, text, split in sorted(noise, reverse=True):
        line = f"[   12.345678] rigflood: {text}"
        new = [line[: len(line) // 2], line[len(line) // 2 :]] if split else [line]
        out[pos % (len(out) + 1) : pos % (len(out) + 1)] = new
    return out


def _in_dump(agent: list[str], noise: list[tuple[int, str, bool]]) -> list[str]:
    """Kernel lines inside the agent's dmesg dumps (the kernel log has them too)."""
    spans = [i for i, line in enumerate(agent) if line == "RIG-DMESG-BEGIN"]
    out = list(agent)
    for pos, text, _split in sorted(noise, reverse=True):
        if not spans:
            break
        begin = spans[pos % len(spans)]
        out.insert(begin + 1 + pos % 3, f"[   12.345679] rigflood: {text}")
    return out


@pytest.mark.parametrize("case", golden_cases(), ids=lambda p: p.name)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(noise=st.lists(st.tuples(st.integers(0, 10_000), NOISE, st.booleans()), max_size=25))
def test_kernel_noise_never_changes_a_verdict(
    case: Path, noise: list[tuple[int, str, bool]]
) -> None:
    cell, boot, arranged, expected = load_case(case)
    console = _weave(complete_lines(boot.console), noise)
    agent = _in_dump(complete_lines(boot.agent), noise)
    noisy = BootResult(
        console="\n".join(console) + "\n",
        agent="\n".join(agent) + "\n",
        end=boot.end,
        duration_s=boot.duration_s,
        detail=boot.detail,
    )
    assert outcomes(judge(cell, BUILD_OK, noisy, arranged, profile_of(case))) == expected


# --------------------------------------------------------------------------- channels
def _case(name: str) -> BootResult:
    return load_case(DATA / name)[1]


def test_merge_places_each_runs_kernel_lines_inside_that_run() -> None:
    boot = _case("bochs-6.12-haswell-pass-2runs")
    merged = merge_channels(boot.agent, boot.console)
    run1 = merged.index(next(ln for ln in merged if ln.startswith("RIG-RUN 1 ")))
    marker = next(i for i, ln in enumerate(merged) if "rig: run=1 step=insmod" in ln)
    begin = merged.index(next(ln for ln in merged if ln.startswith("RIG-BEGIN ")))
    assert begin < run1 < marker
    assert all("Linux version" not in ln for ln in merged[begin:])  # boot lines come first
    report = parse_guest(boot)
    assert [r.number for r in report.runs] == [0, 1]
    assert all(r.dump_complete for r in report.runs)


def test_an_unterminated_last_line_is_never_evidence() -> None:
    """`reason=0x12` cut to `reason=0x1` by a dying guest is not a valid record."""
    boot = _case("bochs-6.12-haswell-pass-2runs")
    agent = boot.agent[: boot.agent.index("RIG-END")]
    cut = agent.rindex("reason=0x12") + len("reason=0x1")
    truncated = BootResult(console="", agent=agent[:cut], end=BootEnd.EMULATOR, duration_s=1,
                           detail="Bochs stopped")  # fmt: skip
    lines = complete_lines(truncated.agent)
    assert not any("reason=0x1" in ln and "reason=0x12" not in ln for ln in lines)
    cell = Cell(lane=BOCHS, kernel=KERNEL, cpu=CPUS["haswell"])
    v = judge(cell, BUILD_OK, truncated)
    assert (
        v.stages["vmcall_exit"].outcome is not Outcome.FAILED
        or "0x1 " not in v.stages["vmcall_exit"].reason
    )


def test_a_second_rig_begin_is_an_infrastructure_error() -> None:
    boot = _case("bochs-6.12-haswell-pass-2runs")
    head = boot.agent[: boot.agent.index("RIG-RUN 1")]
    rebooted = BootResult(console=boot.console, agent=head + boot.agent, end=BootEnd.POWEROFF,
                          duration_s=1)  # fmt: skip
    v = judge(Cell(lane=BOCHS, kernel=KERNEL, cpu=CPUS["haswell"]), BUILD_OK, rebooted)
    assert {s: sv.outcome for s, sv in v.stages.items() if s != "build"} == dict.fromkeys(
        STAGES[1:], Outcome.ERROR
    )
    assert "second RIG-BEGIN" in v.stages["vmxon"].reason


def test_last_run_complete_but_no_rig_end_and_a_timeout_fails_teardown() -> None:
    boot = _case("bochs-6.12-haswell-pass-2runs")
    cut = boot.agent[: boot.agent.index("RIG-END")]
    hung = BootResult(console=boot.console, agent=cut, end=BootEnd.TIMEOUT, duration_s=400,
                      detail="no poweroff within the 400 s cell timeout")  # fmt: skip
    v = judge(Cell(lane=BOCHS, kernel=KERNEL, cpu=CPUS["haswell"]), BUILD_OK, hung)
    assert v.stages["teardown"].outcome is Outcome.FAILED
    assert "guest hung after rmmod" in v.stages["teardown"].reason
    assert all(v.stages[s].outcome is Outcome.PASSED for s in STAGES[:-1])


# --------------------------------------------------------------------------- arrangements
def _config(tmp_path: Path, **kw: object) -> RunConfig:
    return RunConfig(run_id="r", run_dir=tmp_path, driver=tmp_path, **kw)  # type: ignore[arg-type]


def test_arrangements_come_from_what_the_run_set_up(tmp_path: Path) -> None:
    hog = tmp_path / "vmxhog"
    hog.mkdir()
    (hog / "ARRANGES").write_text("vmx_busy\n")
    quiet = tmp_path / "flood"
    quiet.mkdir()
    assert arrangements(_config(tmp_path)).declines == frozenset()
    assert arrangements(_config(tmp_path, preload=(quiet,))).declines == frozenset()
    assert arrangements(_config(tmp_path, preload=(hog,))).declines == {"vmx_busy"}
    assert arrangements(_config(tmp_path, feature_control=0x1)).declines == {"vmx_disabled_by_bios"}
    # locked with VMX on, or left open: nothing is refused
    assert arrangements(_config(tmp_path, feature_control=0x5)).declines == frozenset()
    assert arrangements(_config(tmp_path, feature_control=0x0)).declines == frozenset()
    clear = arrangements(_config(tmp_path, kernel_args=("clearcpuid=vmx,pku",)))
    assert clear.declines == {"vmx_disabled_by_kernel"}
    (hog / "ARRANGES").write_text("feeling_lazy\n")
    with pytest.raises(UsageError, match="not a refusal"):
        arrangements(_config(tmp_path, preload=(hog,)))


def test_the_repo_fixture_that_holds_vmx_declares_it() -> None:
    hog = ROOT / "tests/drivers/vmxhog"
    assert arrangements(_config(ROOT, preload=(hog,))).declines == {"vmx_busy"}


def test_a_driver_that_launches_despite_an_arranged_busy_vmx_fails() -> None:
    boot = _case("bochs-6.12-haswell-pass-2runs")
    arranged = Arranged(frozenset({"vmx_busy"}), (("vmx_busy", "--preload vmxhog holds it"),))
    v = judge(Cell(lane=BOCHS, kernel=KERNEL, cpu=CPUS["haswell"]), BUILD_OK, boot, arranged)
    assert v.stages["vmxon"].outcome is Outcome.FAILED
    assert "did not decline" in v.stages["vmxon"].reason


# --------------------------------------------------------------------------- one order
def test_one_severity_order_error_outranks_failure() -> None:
    assert worst([Outcome.PASSED, Outcome.FAILED, Outcome.ERROR]) is Outcome.ERROR
    assert worst([Outcome.SKIPPED, Outcome.FAILED]) is Outcome.FAILED
    assert worst([]) is Outcome.PASSED


# --------------------------------------------------------------------------- one verdict
def _slow_judge(counter: str, cell_dir: str) -> None:
    def judge_once() -> CellVerdict:
        with open(counter, "a") as fh:
            fh.write("judged\n")
        import time

        time.sleep(0.5)
        stages = {s: StageVerdict(s, Outcome.PASSED, "ok") for s in STAGES}
        return CellVerdict(cell_id="c", stages=stages, timings={"boot": 1.5})

    verdict_for(Path(cell_dir), "c", judge_once)


def test_a_cell_is_judged_once_whatever_process_asks(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    cell_dir = tmp_path / "cells" / "c"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_slow_judge, args=(str(counter), str(cell_dir))) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert counter.read_text().count("judged") == 1
    stored = read_verdict(cell_dir)
    assert stored is not None and stored.timings == {"boot": 1.5}
    assert {sv.outcome for sv in stored.stages.values()} == {Outcome.PASSED}


def test_a_judge_that_raises_becomes_a_stored_error_verdict(tmp_path: Path) -> None:
    calls = []

    def broken() -> CellVerdict:
        calls.append(1)
        raise KeyError("surprise")

    first = verdict_for(tmp_path, "c", broken)
    again = verdict_for(tmp_path, "c", broken)
    assert len(calls) == 1  # stored, never retried stage by stage
    assert (tmp_path / VERDICT_FILE).exists()
    for v in (first, again):
        assert {sv.outcome for sv in v.stages.values()} == {Outcome.ERROR}
        assert "KeyError" in v.stages["build"].reason
        assert "Traceback" in v.stages["build"].evidence


# --------------------------------------------------------------------------- collection
def _collect(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return proc.stdout + proc.stderr


def test_matrix_items_are_collected_only_when_asked_for(tmp_path: Path) -> None:
    """A bare pytest in a project with a matrix*.yaml collects none of it."""
    (tmp_path / "matrix.yaml").write_text((ROOT / "matrix.yaml").read_text())
    (tmp_path / "test_other.py").write_text("def test_x():\n    pass\n")
    bare = _collect(tmp_path)
    assert "test_other.py::test_x" in bare and "matrix.yaml::" not in bare
    named = _collect(tmp_path, "matrix.yaml")
    assert "matrix.yaml::bochs-6.12-haswell::build" in named
    # any file name, when named
    (tmp_path / "nightly-cells.yml").write_text((ROOT / "matrix.yaml").read_text())
    other = _collect(tmp_path, "nightly-cells.yml", "--rig-lane", "tcg")
    assert re.search(r"nightly-cells\.yml::tcg-6\.12-penryn::teardown", other)


def test_a_driver_line_with_something_spliced_in_front_is_not_evidence() -> None:
    from rig.verdict import parse_driver_line

    spliced = "[   12.3] rigflood: noise vmlaunch: cpu=0 exit ok reason=0x12"
    assert parse_driver_line(spliced) is None
    assert parse_driver_line("RIG-STEP insmod rc=0vmlaunch: cpu=- unload ok") is None
    rec = parse_driver_line("[   10.465625] vmlaunch: cpu=0 exit ok reason=0x12 basic=18")
    assert rec is not None and rec.number("reason") == 0x12
    assert parse_driver_line("<6>[    1.000000] vmlaunch: cpu=- unload ok") is not None


def test_every_refusal_the_judge_knows_is_named_for_arrangements() -> None:
    from rig.model import DECLINE_REASONS
    from rig.verdict.grammar import DECLINES

    assert set(DECLINES) == set(DECLINE_REASONS)


def test_kernel_trouble_words_inside_a_modules_chatter_are_no_oops() -> None:
    """Found by the noise property: a module line saying "double fault" failed a good run."""
    from rig.verdict.oops import oops_kind

    assert oops_kind("[   12.345678] rigflood: double fault") is None
    assert oops_kind("[   12.3] rigflood: general protection fault in my words") is None
    assert oops_kind("[    3.1] PANIC: double fault, error_code: 0x0") == "double_fault"
    assert oops_kind("[    3.1] general protection fault, probably for non-canonical") == "gpf"
    assert oops_kind("<4>[   20.1] watchdog: BUG: soft lockup - CPU#0 stuck for 22s!") == "bug"
    assert oops_kind("[   20.0] Oops: 0000 [#1] PREEMPT SMP NOPTI") == "oops"


@given(
    level=st.sampled_from(["", "<4>", "<6> "]),
    stamp=st.floats(min_value=0, max_value=99999, allow_nan=False).map(lambda t: f"[{t:12.6f}] "),
    message=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60),
)
def test_a_kernel_message_is_the_line_without_its_level_and_timestamp(
    level: str, stamp: str, message: str
) -> None:
    """Reasons quote KVM's and the kernel's words; a message that itself holds '] ' (e.g.
    'Oops: 0000 [#1] SMP') is quoted whole, not cut at its own bracket."""
    from rig.verdict.oops import kernel_message

    assert kernel_message(f"{level}{stamp}{message}") == message.strip()
