"""The full-VM lane (`--guest vm`) on QEMU/TCG: a real Debian guest, the driver compiled inside
it against the guest's own headers, loaded over SSH; the driver declines (no VMX under TCG).

The guest image is built once per kernel and cached (rig.guest.vm.image: about 2 minutes the first
time); one VM cell then takes 1.5-5 minutes under TCG on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.artifacts import Cache, default_cache_root
from rig.errors import InfraError
from rig.guest.vm import cell as vmguest
from rig.guest.vm.image import VmImages
from rig.lanes import LibvirtBackend
from rig.matrix import load_matrix
from rig.model import Outcome
from rig.runs import processes_mentioning
from tests.e2e.conftest import RigRunner

REPO = Path(__file__).resolve().parents[2]

CELL = "tcg-6.12-penryn"
VM_SCRATCH = (
    "overlay.qcow2", "seed.img", "id_ed25519", "id_ed25519.pub", "ssh_host_ed25519_key",
    "ssh_host_ed25519_key.pub", "vm", "child.pid",
)  # fmt: skip


def _processes_of(run_dir: Path) -> list[str]:
    """QEMU or libvirt-child processes of this run (other runs may share the machine)."""
    marks = (f"guest=rig-{run_dir.name}-", str(run_dir))
    return [cmd for _pid, cmd in processes_mentioning(*marks)]


def test_vm_guest_compiles_in_the_guest_and_the_driver_declines_under_tcg(rig: RigRunner) -> None:
    run = rig("--lane", "tcg", "--guest", "vm", "--kernel", "6.12", "--cpu", "penryn")
    assert run.rc == 0, run.output[-3000:]
    cell = run.cells[CELL]
    assert cell["build"].outcome is Outcome.PASSED, cell["build"].message
    # built by the guest's own kbuild, not the host's toolchain chroot
    assert "make -C /lib/modules/$(uname -r)/build M=/root/rig/driver" in cell["build"].system_out
    assert cell["teardown"].outcome is Outcome.PASSED, cell["teardown"].message
    for stage in ("vmxon", "vmlaunch", "vmcall_exit"):
        assert cell[stage].outcome is Outcome.SKIPPED, (stage, cell[stage].message)
        assert "VMX" in cell[stage].message
    # the transcript came from a real Debian guest over SSH, in the console protocol
    console = cell["teardown"].system_out
    assert "RIG-BEGIN" in console and "RIG-END" in console
    assert "RIG-CPU vmx=0" in console
    assert "reboot: Power down" in console  # powered off over SSH, not destroyed
    # nothing left behind: no domain, no QEMU, no libvirt child, no overlay, seed disk or key
    cell_dir = next(run.runs_dir.glob(f"*/cells/{CELL}"))
    assert not _processes_of(cell_dir.parent.parent)
    leftovers = [p.name for p in cell_dir.rglob("*") if p.name in VM_SCRATCH]
    assert not leftovers, leftovers
    assert (cell_dir / "console.txt").exists() and (cell_dir / "build.log").exists()


def test_ssh_that_never_answers_is_an_infrastructure_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the VM gets a seed disk that is not the rig's, so rig-seed.service
    fails and ssh.service (which requires it) never starts. The guest boots; SSH never
    answers. The rig must give up at its boot limit with an InfraError carrying the console
    tail, and leave no domain, QEMU, overlay, seed disk or key behind."""

    @contextlib.contextmanager
    def foreign_seed(workdir: Path, public_key: str, host_private: Path) -> Iterator[Path]:
        image = workdir / "seed.img"
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "notrigseed", str(image),
                        "2M"], check=True)  # fmt: skip
        try:
            yield image
        finally:
            image.unlink(missing_ok=True)

    monkeypatch.setattr(vmguest, "seed_disk", foreign_seed)
    cell = load_matrix(REPO / "matrix.yaml").cell("tcg", "6.12", "penryn")
    cache = default_cache_root()
    image = VmImages(Cache(cache)).image(cell.kernel)
    workdir = tmp_path / "runs" / "ssh-never" / "cells" / cell.id
    workdir.mkdir(parents=True)
    plan = vmguest.VmCellPlan(
        run_id="ssh-never", cell_id=cell.id, driver=REPO / "driver", cpu_model="Penryn",
        workdir=workdir, timeout_s=60, boot_to_ssh_s=120,
    )  # fmt: skip
    backend = LibvirtBackend(name="tcg", embed_pool=cache / "libvirt-embed")
    t0 = time.monotonic()
    with pytest.raises(InfraError) as raised:
        vmguest.run_vm_cell(plan, image, backend)
    waited = time.monotonic() - t0
    message = str(raised.value)
    assert "sshd did not answer" in message and "120 s" in message, message
    assert "serial console tail" in message
    assert waited < 120 + 90, waited  # the boot limit, plus powering the domain off
    assert not _processes_of(workdir.parent.parent)
    leftovers = [p.name for p in workdir.rglob("*") if p.name in VM_SCRATCH]
    assert not leftovers, leftovers
