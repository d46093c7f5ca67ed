"""bench/pairs.py, the benchmarks' harness, on trivial arms: nothing boots, a few seconds in all.

A run that fails fails the benchmark (no ratio, exit status 1), pairs alternate ABBA after
the warmups, the JUnit check compares each cell's stages with what is expected.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from bench.checks import expected_stages, rig_verdicts
from bench.cli import cli_arm, main
from bench.pairs import MIN_PAIRS, Arm, CallArm, run_pairs
from bench.results import TABLE_HEAD, finish, machine_info, markdown_row, write_results
from rig.model import STAGES
from tests.unit.reportkit import LAUNCH_FAILS, PASS, TCG, fake_run

QUIET = lambda line: None  # noqa: E731


def test_true_vs_sleep_alternates_and_measures(tmp_path: Path) -> None:
    a = Arm("true", ["true"], cwd=tmp_path)
    b = Arm("sleep", ["sleep", "0.1"], cwd=tmp_path)
    result = run_pairs(a, b, pairs=MIN_PAIRS, warmup=1, log=QUIET, workroot=tmp_path)
    assert result.ok and result.failure is None
    order = [(r.phase, r.arm) for r in result.runs]
    assert order[:2] == [("warmup", "true"), ("warmup", "sleep")]
    timed = [arm for phase, arm in order if phase == "timed"]
    assert timed == ["true", "sleep", "sleep", "true"] * 2 + ["true", "sleep"]  # ABBA
    sa, sb = result.stats("true"), result.stats("sleep")
    assert sa is not None and sb is not None and sa.n == sb.n == MIN_PAIRS
    assert sb.min >= 0.1 and sa.min <= sa.median <= sa.max
    assert result.ratio is not None and result.ratio > 1
    assert len(result.pair_ratios) == MIN_PAIRS
    assert not list(tmp_path.glob("bench-*")), "a good run's directory is removed"
    path = write_results("selftest", result, machine_info(), out_dir=tmp_path, log=QUIET)
    data = json.loads(path.read_text())
    assert data["ok"] is True and data["ratio_b_over_a"] == pytest.approx(result.ratio, abs=1e-3)
    assert data["b"]["stats"]["median"] >= 0.1 and len(data["runs"]) == 2 + 2 * MIN_PAIRS
    machine = data["machine"]
    for key in ("nproc", "cpu_model", "kernel", "python", "git_commit", "loadavg_before"):
        assert key in machine
    assert len(machine["loadavg_after"]) == 3
    row = markdown_row("selftest", result, machine_info())
    assert row.count("|") == TABLE_HEAD.splitlines()[0].count("|")
    assert "measured: bench/results/selftest.json" in row


def test_a_failing_arm_fails_the_benchmark(tmp_path: Path) -> None:
    a = Arm("true", ["true"], cwd=tmp_path)
    b = Arm("false", ["false"], cwd=tmp_path)
    lines: list[str] = []
    result = run_pairs(a, b, pairs=MIN_PAIRS, warmup=1, log=lines.append, workroot=tmp_path)
    assert not result.ok and result.ratio is None
    assert result.failure is not None and "false (warmup 1) failed: exit status 1" in result.failure
    assert [r.arm for r in result.runs] == ["true", "false"], "stops at the first failed run"
    kept = result.runs[-1].workdir
    assert kept is not None and Path(kept, "stderr.txt").is_file(), "a failed run's files stay"
    assert finish("selftest-fails", result, out_dir=tmp_path, log=lines.append) == 1
    data = json.loads((tmp_path / "selftest-fails.json").read_text())
    assert data["ok"] is False and data["ratio_b_over_a"] is None
    assert any("BENCHMARK FAILED" in line for line in lines)
    assert "FAILED: false (warmup 1) failed" in markdown_row("x", result, machine_info())
    # failing in a timed pair (no warmup) fails it just the same
    late = run_pairs(a, b, pairs=MIN_PAIRS, warmup=0, log=QUIET, workroot=tmp_path)
    assert not late.ok and "pair 1/5" in (late.failure or "")


def test_timeout_and_raising_call_fail(tmp_path: Path) -> None:
    slow = Arm("slow", ["sleep", "30"], cwd=tmp_path, timeout_s=0.3)
    t0 = time.monotonic()
    out = slow.execute(tmp_path)
    assert out.failure == "timed out after 0.3 s" and time.monotonic() - t0 < 15

    def boom(workdir: Path) -> int:
        raise RuntimeError("no guest")

    arm = CallArm("boom", boom, lambda value, wd: None)
    assert "RuntimeError: no guest" in (arm.execute(tmp_path).failure or "")
    judged = CallArm("judged", lambda wd: 3, lambda value, wd: None if value == 4 else "not 4")
    assert judged.execute(tmp_path).failure == "not 4"


def _junit(path: Path, outcomes: dict[str, dict[str, str]]) -> None:
    cases = []
    for cell, stages in outcomes.items():
        for stage, outcome in stages.items():
            tag = {"passed": "", "failed": "failure", "skipped": "skipped", "error": "error"}
            body = f'<{tag[outcome]} message="{stage} went wrong"/>' if tag[outcome] else ""
            cases.append(
                f'<testcase classname="vmlaunch-rig.bochs" name="{cell}::{stage}">{body}</testcase>'
            )
    path.write_text(f"<testsuites><testsuite>{''.join(cases)}</testsuite></testsuites>")


def test_rig_verdicts_check(tmp_path: Path) -> None:
    cell, tcg = "bochs-6.12-haswell", "tcg-6.12-penryn"
    check = rig_verdicts({cell: expected_stages(), tcg: expected_stages(vmx=False)})
    ok = subprocess.CompletedProcess[str](["rig"], 0, "", "")
    _junit(tmp_path / "junit.xml", {cell: expected_stages(), tcg: expected_stages(vmx=False)})
    assert check(ok, tmp_path) is None
    bad = {**expected_stages(), "vmlaunch": "failed"}
    _junit(tmp_path / "junit.xml", {cell: bad, tcg: expected_stages(vmx=False)})
    why = check(subprocess.CompletedProcess[str](["rig"], 1, "", "rig: 1 failed"), tmp_path)
    assert why is not None
    assert f"{cell}::vmlaunch: failed (expected passed): vmlaunch went wrong" in why
    assert "exit status 1: rig: 1 failed" in why
    _junit(tmp_path / "junit.xml", {cell: expected_stages(vmx=False)})  # skips; a cell missing
    why = check(ok, tmp_path) or ""
    assert f"{cell}::vmxon: skipped (expected passed)" in why
    assert f"{tcg}: no verdict" in why
    _junit(tmp_path / "junit.xml", {cell: expected_stages(), tcg: expected_stages(vmx=False),
                                    "bochs-6.12-penryn": expected_stages()})  # fmt: skip
    assert "bochs-6.12-penryn: in the run but not expected (passed)" in (check(ok, tmp_path) or "")
    (tmp_path / "junit.xml").unlink()
    assert "no JUnit written" in (check(ok, tmp_path) or "")


def test_cli_fails_on_a_failing_command_and_refuses_few_pairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the failed run's kept directory
    argv = ["selftest", "--a", "true", "--b", "sleep 0.05", "--results", str(tmp_path)]
    assert main(argv) == 0
    assert json.loads((tmp_path / "selftest.json").read_text())["ok"] is True
    assert main([*argv[:3], "--b", "false", "--results", str(tmp_path)]) == 1
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--pairs", str(MIN_PAIRS - 1)])
    assert exc.value.code == 2


def test_rig_verdicts_on_a_real_rig_run_junit(tmp_path: Path) -> None:
    """The JUnit `rig run` itself writes (verdicts stored in advance: nothing boots)."""
    cells = ["--lane", "bochs", "--lane", "tcg", "--kernel", "6.12", "--cpu", "haswell",
             "--cpu", "penryn"]  # fmt: skip
    expect = {
        "bochs-6.12-haswell": expected_stages(),
        "bochs-6.12-penryn": expected_stages(),
        "tcg-6.12-penryn": expected_stages(vmx=False),
        "tcg-6.12-haswell": dict.fromkeys(STAGES, "skipped"),  # tcg has no Haswell: skipped
    }
    stored = {"bochs-6.12-haswell": PASS, "bochs-6.12-penryn": PASS, "tcg-6.12-penryn": TCG}
    proc, junit = fake_run(tmp_path, "good", stored, *cells)
    assert rig_verdicts(expect, junit.name)(proc, junit.parent) is None, proc.stdout
    stored["bochs-6.12-penryn"] = LAUNCH_FAILS
    proc, junit = fake_run(tmp_path, "bad", stored, *cells)
    why = rig_verdicts(expect, junit.name)(proc, junit.parent) or ""
    assert "bochs-6.12-penryn::vmlaunch: failed (expected passed): vmlaunch VMfailValid" in why
    assert "exit status 1" in why
    del expect["tcg-6.12-haswell"]  # a cell the run has and the benchmark does not expect
    why = rig_verdicts(expect, junit.name)(proc, junit.parent) or ""
    assert "tcg-6.12-haswell: in the run but not expected (skipped)" in why


def test_cli_rig_arms_are_checked_by_their_verdicts(tmp_path: Path) -> None:
    ap = argparse.ArgumentParser()
    arm = cli_arm(ap, "bochs", "rig run --kernel 6.12 --lane bochs", ["bochs-6.12-haswell"], [])
    argv = arm.command(tmp_path)
    assert argv[1:5] == ["-m", "rig", "run", "--kernel"]
    assert argv[-4:] == ["--junit", f"{tmp_path}/junit.xml", "--runs-dir", f"{tmp_path}/runs"]
    for passes, command in (([], "rig run --lane tcg"), (["bochs-6.12-haswell"], "true")):
        with pytest.raises(SystemExit) as exc:
            cli_arm(ap, "x", command, passes, [])
        assert exc.value.code == 2


def test_the_bochs_release_benchmark_changes_only_the_bochs_lanes_emulator(
    tmp_path: Path,
) -> None:
    from bench.bochs_release import matrix_with_emulator
    from rig.matrix import load_matrix
    from rig.paths import DEFAULT_MATRIX

    host = matrix_with_emulator(DEFAULT_MATRIX, "", tmp_path)
    trixie = matrix_with_emulator(DEFAULT_MATRIX, "trixie", tmp_path)
    assert load_matrix(host).lanes["bochs"].emulator == ""
    assert load_matrix(trixie).lanes["bochs"].emulator == "trixie"
    a, b = host.read_text().splitlines(), trixie.read_text().splitlines()
    assert len(a) == len(b)
    changed = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    assert len(changed) == 1 and changed[0][0].startswith("  bochs: {"), changed
