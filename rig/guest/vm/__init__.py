"""The full-VM guest flavour: a disposable Debian VM that compiles the module itself."""

from __future__ import annotations

import time
from dataclasses import replace

from rig.errors import RigError
from rig.guest.base import GuestJob, GuestRun
from rig.guest.initramfs import witness_files
from rig.guest.vm.cell import VmCellPlan, run_vm_cell
from rig.guest.vm.image import VmImages
from rig.lanes import Backend
from rig.lanes.libvirt import DomainLane


class VmFlavour:
    """`build` is the compile inside the guest; the agent runs over SSH."""

    name = "vm"

    def unsupported(self, job: GuestJob, lane: Backend) -> str | None:
        if not isinstance(lane, DomainLane):
            return f"lane {lane.name} cannot run full-VM guests (they need disks and a network)"
        kernel = job.cell.kernel
        if kernel.kind != "debian":
            return (
                f"a full-VM guest installs the kernel's Debian packages; kernel {kernel.name} "
                f"({kernel.describe()}) has none: run it with --guest initramfs"
            )
        if (
            job.preload
            or job.kernel_args
            or job.feature_control is not None
            or job.inject
            or job.beside
            or job.crash
        ):
            return (
                "--preload, --kernel-arg, --feature-control, --inject, --beside and --crash "
                "apply to initramfs guests only (not --guest vm)"
            )
        return None

    def run(self, job: GuestJob, lane: Backend) -> GuestRun:
        assert isinstance(lane, DomainLane)  # unsupported() said so
        plan = VmCellPlan(
            run_id=job.run_id,
            cell_id=job.cell.id,
            driver=job.driver,
            cpu_model=job.cpu_model,
            workdir=job.workdir,
            timeout_s=job.timeout_s,
            memory_mib=job.cell.memory_mib,
            vcpus=job.cell.vcpus,
            module_params=job.module_params,
            repeat=job.repeat,
        )
        try:
            if job.witness:  # the VM boots the cell's kernel package: its own KVM modules
                kernel = job.artifacts.kernel(job.cell.kernel)
                plan = replace(plan, witness=tuple(witness_files(job.artifacts, kernel)))
            t0 = time.monotonic()
            image = VmImages(job.artifacts.cache, job.artifacts.progress).image(job.cell.kernel)
            image_s = time.monotonic() - t0
            job.mark_boot()
            vm = run_vm_cell(plan, image, lane, progress=job.artifacts.progress)
        except (RigError, OSError) as exc:
            return GuestRun(None, None, {}, error=exc)
        return GuestRun(
            vm.build, vm.boot, {"image": image_s, **vm.timings}, witness=bool(plan.witness)
        )
