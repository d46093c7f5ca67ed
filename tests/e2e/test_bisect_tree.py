"""Bisection of a kernel git tree, for real (issue 19): Debian's linux-source-6.12 with a
planted series (tests/e2e/planted_tree.py: a flaky commit, one that does not build, the
culprit), the minimal config, the bochs lane. The bisection is killed (kill -9, the whole
process group) once it has recorded its first steps, resumed with `--resume`, and must name
the planted culprit, with the checks (the culprit again: bad; the bad end with it reverted:
good) and without running again anything it had recorded. The user's tree is untouched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rig.artifacts import Cache, default_cache_root
from tests.e2e.planted_tree import planted_tree

REPO = Path(__file__).resolve().parents[2]


def _git(tree: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(tree), *args], check=True, capture_output=True,
                          text=True).stdout  # fmt: skip


def _state(tree: Path) -> tuple[str, ...]:
    """What the bisection must not change in the user's tree."""
    return (
        _git(tree, "rev-parse", "HEAD"), _git(tree, "for-each-ref"),
        _git(tree, "status", "--porcelain=v2", "--branch", "--untracked-files=no"),
        _git(tree, "worktree", "list", "--porcelain"),
        str(sorted(p.name for p in (tree / ".git").glob("BISECT_*"))),
    )  # fmt: skip


def test_a_planted_regression_is_found_after_kill_9_and_resume(tmp_path: Path) -> None:
    tree = planted_tree(Cache(default_cache_root()))
    culprit = _git(tree, "rev-parse", "rig-culprit^{commit}").strip()
    before = _state(tree)
    runs = tmp_path / "runs"
    base = [sys.executable, "-m", "rig", "bisect", "--runs-dir", str(runs),
            "--junit", str(tmp_path / "bisect.xml")]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        [*base, "--kernel-tree", str(tree), "--good", "rig-base", "--bad", "rig-end",
         "--lane", "bochs", "--cpu", "haswell"],
        cwd=REPO, env=env, stdout=(tmp_path / "first.log").open("w"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    # kill -9 once both ends and one step are recorded (the run in flight is lost)
    deadline = time.monotonic() + 2400
    steps: Path | None = None
    while time.monotonic() < deadline and first.poll() is None:
        found = list(runs.glob("*/steps.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 3:
            steps = found[0]
            break
        time.sleep(2)
    log = (tmp_path / "first.log").read_text()
    assert steps is not None, f"no 3 records before the end or the deadline:\n{log[-4000:]}"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    recorded = steps.read_text().splitlines()
    again = subprocess.run([*base, "--resume", str(steps.parent)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=2400)  # fmt: skip
    out = again.stdout + again.stderr
    print(log[-3000:], out[-6000:])
    assert again.returncode == 0, out[-4000:]
    assert f"first bad commit: {culprit}" in out, out[-4000:]
    assert "CR4.VMXE is the virtualization layer's" in out  # the culprit's subject
    # what was recorded before the kill was not run again; the file only grew
    records = [json.loads(line) for line in steps.read_text().splitlines()]
    assert steps.read_text().splitlines()[: len(recorded)] == recorded
    keys = [(r["label"], r["role"], r["run"]) for r in records]
    assert len(keys) == len(set(keys)), keys
    by_label = {r["label"]: r for r in records}
    nobuild = _git(tree, "rev-parse", "rig-nobuild^{commit}").strip()
    assert by_label[nobuild]["mark"] == "skip" and by_label[nobuild]["facts"]["unbuildable"]
    marks = {(r["role"], r["mark"]) for r in records if r["label"] == culprit}
    assert ("step", "bad") in marks and ("verify", "bad") in marks, records
    assert any(r["role"] == "revert" and r["mark"] == "good" for r in records), records
    # git's own log of the bisection, replayable, marks only commits the rig tested
    bisect_log = (steps.parent / "bisect.log").read_text()
    tested = {r["label"] for r in records}
    for line in bisect_log.splitlines():
        if line.startswith("git bisect ") and line.split()[2] in ("good", "bad", "skip"):
            assert line.split()[3] in tested, line
    assert _state(tree) == before
