"""Kernels you built, for real (issue 19): the planted tree's base commit as a matrix kernel
({tree: DIR, ref: REF, config: minimal}, built by the rig), then that kernel as a build
directory of yours, `rig run --kernel PATH` (an O= directory with its `source` link, as
`make O=...` leaves it), each on bochs (haswell, penryn) and tcg (penryn): the driver is
built against it, the teardown witness loads its own KVM modules, the page witness reads its
tracepoints.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rig.artifacts import Artifacts, Cache, default_cache_root
from rig.artifacts.built import BZIMAGE, KVM_IN_BUILD
from rig.model import KernelSpec, Outcome
from rig.report import CaseResult
from tests.e2e.conftest import REPO, RigRunner
from tests.e2e.planted_tree import planted_tree

EXPECTED = {
    "bochs": dict.fromkeys(("build", "vmxon", "vmlaunch", "vmcall_exit", "teardown"),
                           Outcome.PASSED),
    "tcg": {"build": Outcome.PASSED, "vmxon": Outcome.SKIPPED, "vmlaunch": Outcome.SKIPPED,
            "vmcall_exit": Outcome.SKIPPED, "teardown": Outcome.PASSED},
}  # fmt: skip
CELLS = ("bochs-{k}-haswell", "bochs-{k}-penryn", "tcg-{k}-penryn")


def _check(run_cells: dict[str, dict[str, CaseResult]], kernel: str, output: str) -> None:
    for pattern in CELLS:
        cell = pattern.format(k=kernel)
        assert cell in run_cells, (cell, output[-3000:])
        got = {stage: case.outcome for stage, case in run_cells[cell].items()}
        assert got == EXPECTED[cell.split("-")[0]], (cell, got, output[-3000:])


def test_a_tree_kernel_and_its_build_directory_run_on_bochs_and_tcg(
    rig: RigRunner, tmp_path: Path
) -> None:
    cache = Cache(default_cache_root())
    tree = planted_tree(cache)
    matrix = tmp_path / "matrix.yaml"
    text = (REPO / "matrix.yaml").read_text()
    entry = f"  planted: {{tree: {tree}, ref: rig-base, config: minimal}}\n"
    matrix.write_text(text.replace("kernels:\n", "kernels:\n" + entry, 1))
    run = rig("--matrix", str(matrix), "--kernel", "planted", "--lane", "bochs", "--lane", "tcg",
              "--cpu", "haswell", "--cpu", "penryn", "-n", "2")  # fmt: skip
    assert run.rc == 0, run.output[-4000:]
    _check(run.cells, "planted", run.output)
    assert "every allocation of vmlaunch came back" in run.reasons("bochs-planted-haswell")[
        "teardown"]  # fmt: skip

    # the same kernel as a build directory of yours (`make O=DIR` leaves bzImage, .config,
    # Module.symvers, generated headers, its KVM modules and a `source` link): made from what
    # the rig kept of that build (the O= directory it used may belong to another tree's
    # clone: builds are shared by content)
    kernel = Artifacts(cache).kernel(
        KernelSpec(name="planted", suite="trixie", abi="", tree=str(tree), ref="rig-base",
                   config="minimal"))  # fmt: skip
    assert kernel.kbuild is not None and kernel.ksrc is not None and kernel.kvm_dir is not None
    out = tmp_path / "out"
    shutil.copytree(kernel.kbuild, out, symlinks=True)
    (out / BZIMAGE).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kernel.vmlinuz, out / BZIMAGE)
    for name, rel in KVM_IN_BUILD:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kernel.kvm_dir / name, out / rel)
    (out / "source").symlink_to(kernel.ksrc)
    release = (out / "include/config/kernel.release").read_text().strip()
    again = rig("--kernel", str(out), "--lane", "bochs", "--lane", "tcg",
                "--cpu", "haswell", "--cpu", "penryn", "-n", "2")  # fmt: skip
    assert again.rc == 0, again.output[-4000:]
    _check(again.cells, release, again.output)
