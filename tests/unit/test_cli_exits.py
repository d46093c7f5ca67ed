"""Exit codes the nightly acts on: bad input is 2 before anything is built, the rig's own
crash is 3 with its traceback, bisection says found (0), inconclusive (1) or infra (3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rig import cli
from rig.artifacts import Artifacts
from rig.model import STAGES, Cell, CellVerdict, KernelArtifacts, KernelSpec, Outcome, StageVerdict
from rig.runner import CellRunner

REPO = Path(__file__).resolve().parents[2]
SKIP_ONLY = """\
version: 1
kernels:
  "6.12": {suite: trixie, abi: "6.12.117+deb13-amd64", version: "6.12.117-1"}
cpus:
  haswell: {bochs: corei7_haswell_4770}
lanes:
  bochs: {backend: bochs, vmx: true}
exclude:
  - {lane: bochs, cpu: haswell, reason: "kept out on purpose by this test"}
default_slice: {lanes: [bochs], kernels: ["6.12"], cpus: [haswell]}
"""


def rig(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rig", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def test_a_bad_module_parameter_is_exit_2_before_anything_is_built(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    p = rig("run", "--lane", "bochs", "--kernel", "6.12", "--cpu", "haswell", "--param",
            "novalue", "--cache", str(cache), "--runs-dir", str(tmp_path / "r"),
            cwd=REPO)  # fmt: skip
    assert p.returncode == 2, p.stdout + p.stderr
    assert "novalue" in p.stderr and "name=value" in p.stderr
    assert not cache.exists()  # nothing fetched, nothing compiled


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--timeout", "0"], "--timeout"),
        (["--repeat", "1001"], "--repeat"),
        (["--feature-control", "0x1ffffffff"], "32-bit"),
        (["--require-lane", "nosuch"], "no such lane"),
        (["--inject", "smi"], "invalid choice: 'smi'"),
        (["--beside", "xen"], "invalid choice: 'xen'"),
    ],
)
def test_every_option_is_checked_first(tmp_path: Path, args: list[str], words: str) -> None:
    p = rig("run", "--lane", "bochs", "--cpu", "haswell", *args, "--cache",
            str(tmp_path / "c"), "--runs-dir", str(tmp_path / "r"), cwd=REPO)  # fmt: skip
    assert p.returncode == 2, p.stdout + p.stderr
    assert words in p.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ('"6.12": {suite', '"6.12\\n": {suite', "kernel name '6.12\\n' is not valid"),
        ("{bochs: corei7_haswell_4770}", '{bochs: "corei7_haswell_4770\\n"}',
         "CPU model 'corei7_haswell_4770\\n' is not valid"),
    ],
)  # fmt: skip
def test_a_name_with_a_trailing_newline_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, words: str
) -> None:
    """L3: such a model once reached `rig matrix --json` (and would split the bochsrc's cpu:)."""
    assert old in SKIP_ONLY
    (tmp_path / "m.yaml").write_text(SKIP_ONLY.replace(old, new))
    assert cli.main(["matrix", "--matrix", str(tmp_path / "m.yaml"), "--json"]) == 2
    out, err = capsys.readouterr()
    assert words in err and "m.yaml:" in err, err
    assert "corei7_haswell_4770\\n" not in out


def test_a_module_parameter_with_a_trailing_newline_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """L3: `hold_vmx=1\\n` once passed and wrote a second line into the agent's plan."""
    cache = tmp_path / "cache"
    got = cli.main(["run", "--lane", "bochs", "--kernel", "6.12", "--cpu", "haswell",
                    "--param", "hold_vmx=1\n", "--cache", str(cache),
                    "--runs-dir", str(tmp_path / "r")])  # fmt: skip
    assert got == 2
    assert "'hold_vmx=1\\n' is not of the form name=value" in capsys.readouterr().err
    assert not cache.exists()


def test_a_required_lane_the_selection_does_not_run_is_exit_2(tmp_path: Path) -> None:
    p = rig("run", "--lane", "bochs", "--require-lane", "tcg", "--runs-dir", str(tmp_path),
            cwd=REPO)  # fmt: skip
    assert p.returncode == 2 and "no cell of that lane" in p.stderr, p.stderr


def test_any_matrix_file_name_is_taken(tmp_path: Path) -> None:
    (tmp_path / "nightly-cells.yml").write_text(SKIP_ONLY)
    p = rig("run", "--matrix", str(tmp_path / "nightly-cells.yml"), "--junit",
            str(tmp_path / "j.xml"), "--runs-dir", str(tmp_path / "r"), cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "5 skipped" in p.stdout


def test_an_unexpected_exception_is_exit_3_with_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(_args: object) -> int:
        raise KeyError("a bug of the rig")

    monkeypatch.setattr(cli, "cmd_doctor", broken)
    assert cli.main(["doctor"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "not a verdict on the driver" in err


def _verdict(cell: Cell, outcome: Outcome) -> CellVerdict:
    return CellVerdict(cell.id, {s: StageVerdict(s, outcome, "synthetic") for s in STAGES})


@pytest.mark.parametrize(
    ("marks", "rc", "words"),
    [
        ({"5.10": Outcome.PASSED, "6.1": Outcome.PASSED, "6.12": Outcome.FAILED}, 0,
         "first bad kernel: 6.12"),
        ({"5.10": Outcome.PASSED, "6.1": Outcome.SKIPPED, "6.12": Outcome.FAILED}, 1,
         "inconclusive"),
        ({"5.10": Outcome.PASSED, "6.1": Outcome.ERROR, "6.12": Outcome.FAILED}, 3,
         "inconclusive"),
    ],
)  # fmt: skip
def test_bisect_exit_codes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    marks: dict[str, Outcome],
    rc: int,
    words: str,
) -> None:
    def run(_self: CellRunner, cell: Cell, index: int = 0) -> CellVerdict:
        return _verdict(cell, marks[cell.kernel.name])

    def kernel(_self: Artifacts, spec: KernelSpec) -> KernelArtifacts:
        return KernelArtifacts(spec, tmp_path / "vmlinuz", tmp_path, tmp_path)

    monkeypatch.setattr(CellRunner, "run", run)
    monkeypatch.setattr(Artifacts, "kernel", kernel)  # no download: the cells are scripted
    got = cli.main(["bisect", "--matrix", str(REPO / "matrix.yaml"), "--lane", "bochs",
                    "--cpu", "haswell", "--good", "5.10", "--bad", "6.12",
                    "--junit", str(tmp_path / "b.xml"),
                    "--runs-dir", str(tmp_path / "r")])  # fmt: skip
    assert got == rc
    assert words in capsys.readouterr().out
