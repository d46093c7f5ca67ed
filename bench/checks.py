"""What a run must show: the checks of `rig run` arms (bench/pairs.py's Check).

    rig_verdicts(expect, junit) -> Check   exit status 0 and each cell's stage outcomes
    expected_stages(vmx=True)              the outcomes of a good cell on a lane with(out) VMX
    verdict_problems(got, expect)          what differs, cell by cell and stage by stage
    rig_run_argv(*args, junit)             `python -m rig run ARGS` writing into the workdir

The plainest check, exit status 0, is pairs.exit_status (an Arm's default).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from bench.pairs import WORKDIR, Check, Proc, exit_status
from rig.model import STAGES


def expected_stages(vmx: bool = True) -> dict[str, str]:
    """The verdicts of a good cell: all five stages passed on a lane with VMX; on a lane
    without (tcg) the driver declines no_vmx: build and teardown pass, the rest are skipped."""
    if vmx:
        return dict.fromkeys(STAGES, "passed")
    return {s: "passed" if s in ("build", "teardown") else "skipped" for s in STAGES}


def verdict_problems(
    got: Mapping[str, Mapping[str, tuple[str, str]]],
    expect: Mapping[str, Mapping[str, str]],
) -> list[str]:
    """cell -> stage -> (outcome, message) against cell -> stage -> outcome: what differs.
    A missing cell or stage, an extra cell and a different outcome are all problems."""
    problems: list[str] = []
    for cell, stages in expect.items():
        have = got.get(cell)
        if have is None:
            problems.append(f"{cell}: no verdict (cell missing from the run's results)")
            continue
        for stage, want in stages.items():
            if stage not in have:
                problems.append(f"{cell}::{stage}: no verdict (expected {want})")
                continue
            outcome, message = have[stage]
            if outcome != want:
                first = message.strip().splitlines()[0] if message.strip() else ""
                problems.append(
                    f"{cell}::{stage}: {outcome} (expected {want})"
                    + (f": {first}" if first else "")
                )
    for cell, verdicts in got.items():
        if cell not in expect:
            seen = sorted({outcome for outcome, _ in verdicts.values()})
            problems.append(f"{cell}: in the run but not expected ({', '.join(seen)})")
    return problems


def rig_verdicts(expect: Mapping[str, Mapping[str, str]], junit: str = "junit.xml") -> Check:
    """A check for `rig run ... --junit {workdir}/JUNIT`: exit status 0 and, read back from the
    JUnit the run wrote (rig.report.read_junit / by_cell), each cell's stage outcomes exactly as
    `expect` (cell id -> stage -> "passed" | "skipped" | "failed" | "error")."""

    def check(proc: Proc, workdir: Path) -> str | None:
        from rig.report import by_cell, read_junit  # the rig's own reader of its JUnit

        problems: list[str] = []
        path = workdir / junit
        if not path.is_file():
            problems.append(f"no JUnit written ({path.name})")
        else:
            try:
                table = by_cell(read_junit(path))
            except Exception as exc:  # a JUnit we cannot read is a failed run, not a crash
                problems.append(f"JUnit unreadable: {type(exc).__name__}: {exc}")
            else:
                got = {
                    cell: {s: (r.outcome.value, r.message) for s, r in stages.items()}
                    for cell, stages in table.items()
                }
                problems += verdict_problems(got, expect)
        status = exit_status(proc, workdir)
        if status is not None:
            problems.append(status)
        return "; ".join(problems) or None

    return check


def rig_run_argv(*args: str, junit: str = "junit.xml") -> list[str]:
    """`python -m rig run ARGS` writing its JUnit and run directories into the run's workdir."""
    return [
        sys.executable,
        "-m",
        "rig",
        "run",
        *args,
        "--junit",
        f"{WORKDIR}/{junit}",
        "--runs-dir",
        f"{WORKDIR}/runs",
    ]
