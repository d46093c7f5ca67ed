"""The initramfs guest flavour: a busybox appliance whose /init runs the guest agent.

    initramfs_image(kernel, modules, ...) -> GuestImage

The module is built on the host (rig.artifacts); the image carries it, the agent
(guests/agent/rig-agent) and the plan the agent reads. Every lane boots it: Bochs from a GRUB
ISO of its own making, libvirt lanes directly.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rig.artifacts import KVM_MODULES, Artifacts, Cache, require_file, require_tool, write_cpio
from rig.errors import InfraError, RigError
from rig.guest.base import GuestJob, GuestRun
from rig.guest.carrier import GATE_RUNS, gate_facts, warm_start
from rig.guest.crash import CRASH_KERNEL_MIB, DRAIN, DRAIN_AT, add_crash_kernel
from rig.lanes import Backend
from rig.lanes.base import tail
from rig.model import BootSpec, GuestImage, KernelArtifacts, Probe, restore_stands_for
from rig.options import check_kernel_arg, check_param
from rig.paths import BUSYBOX, DEFAULT_DRIVER, GUESTS_DIR

BASE_CMDLINE = (
    "console=ttyS0,115200 quiet loglevel=4 panic=-1 oops=panic "
    "modprobe.blacklist=kvm_intel,kvm kvm.enable_virt_at_load=0"
)


def write_plan(
    rig_dir: Path,
    modules: Sequence[tuple[Path, int, Sequence[str]]],
    *,
    run_id: str,
    cell_id: str,
    preload: Sequence[Path] = (),
    crash: bool = False,
) -> None:
    """What the agent reads (guests/agent/rig-agent): ids, modules/, and the plan (`crash`:
    each module is loaded once and the guest crashed with it loaded)."""
    (rig_dir / "modules").mkdir(parents=True, exist_ok=True)
    (rig_dir / "run-id").write_text(run_id + "\n")
    (rig_dir / "cell-id").write_text(cell_id + "\n")
    plan = []
    for ko in preload:
        shutil.copy2(ko, rig_dir / "modules" / ko.name)
        plan.append(f"{ko.name} keep")
    for ko, repeat, params in modules:
        for p in params:
            check_param(p)
        shutil.copy2(ko, rig_dir / "modules" / ko.name)
        plan.append(" ".join([ko.name, "crash" if crash else str(int(repeat)), *params]))
    (rig_dir / "plan").write_text("\n".join(plan) + "\n")
    shutil.copy2(GUESTS_DIR / "agent/rig-agent", rig_dir / "rig-agent")


def initramfs_image(
    kernel: KernelArtifacts,
    modules: Sequence[tuple[Path, int, Sequence[str]]],
    *,
    run_id: str,
    cell_id: str,
    workdir: Path,
    preload: Sequence[Path] = (),
    kernel_args: Sequence[str] = (),
    witness: Sequence[Path] = (),
    beside: str | None = None,
    crash: KernelArtifacts | None = None,
    warm: Cache | None = None,
) -> GuestImage:
    """The appliance: loads each (ko, repeat, params) in turn, dumps dmesg after each run.

    `preload` modules are loaded first and stay loaded (a fixture of the test, e.g. one that
    holds VMX); `kernel_args` are appended to the guest's command line; `witness` files (the
    kernel's KVM modules and kvm-witness) make the agent run the teardown witness. `warm`: the
    cache of a run that restores snapshots where the lane can: a Debian kernel's image also
    comes split (GuestImage.warm, rig.guest.carrier); other kernels boot fresh.
    """
    require_tool("cpio")
    require_file(BUSYBOX)
    for arg in kernel_args:
        check_kernel_arg(arg)
    root = workdir / "initramfs"
    shutil.rmtree(root, ignore_errors=True)
    (root / "bin").mkdir(parents=True)
    for d in ("proc", "sys", "dev", "lib"):
        (root / d).mkdir(exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    shutil.copy2(DRAIN, root / DRAIN_AT)
    shutil.copy2(GUESTS_DIR / "initramfs/init", root / "init")
    (root / "init").chmod(0o755)
    write_plan(root / "rig", modules, run_id=run_id, cell_id=cell_id, preload=preload,
               crash=crash is not None)  # fmt: skip
    if crash is not None:
        add_crash_kernel(root, crash, workdir)
        kernel_args = [*kernel_args, f"crashkernel={CRASH_KERNEL_MIB}M"]
    if witness:
        (root / "rig/witness").mkdir()
        for path in witness:
            shutil.copy2(path, root / "rig/witness" / path.name)
    if beside:
        (root / "rig/beside").write_text(beside + "\n")
    cmdline = " ".join([BASE_CMDLINE, *kernel_args])
    start = None
    if warm is not None and crash is None and kernel.spec.kind == "debian":
        start = warm_start(warm, kernel, root / "rig", workdir, cmdline)
    initrd = workdir / "initrd.gz"
    write_cpio(root, initrd, compress=True)
    shutil.rmtree(root)
    return GuestImage(kernel=kernel.vmlinuz, initrd=initrd, cmdline=cmdline, warm=start)


class InitramfsFlavour:
    """The module built on the host against the cell's kernel, booted in the appliance."""

    name = "initramfs"

    def unsupported(self, job: GuestJob, lane: Backend) -> str | None:
        if job.feature_control is not None and not lane.firmware_step:
            return (
                f"lane {lane.name} boots the kernel directly, with no firmware step: "
                "--feature-control needs a lane that boots through a boot loader (bochs)"
            )
        if job.beside and not job.cell.lane.vmx:
            return f"--beside {job.beside} needs a VMX lane: lane {lane.name} has no VMX"
        missing = [e for e in job.inject if e not in lane.injects]
        if missing:
            return (
                f"lane {lane.name} cannot inject {', '.join(missing)} into its guest "
                "(--inject): the nested lane's L1 QEMU can, from its monitor"
            )
        return None

    def run(self, job: GuestJob, lane: Backend) -> GuestRun:
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        kernel = job.artifacts.kernel(job.cell.kernel)
        timings["kernel"] = time.monotonic() - t0
        t0 = time.monotonic()
        build = job.artifacts.module(kernel, job.driver)
        timings["build"] = time.monotonic() - t0
        (job.workdir / "build.log").write_text(build.log)
        if not build.ok or build.ko is None:
            return GuestRun(build, None, timings)
        try:
            preload = [_fixture(job.artifacts, kernel, src) for src in job.preload]
            wanted = job.witness or job.beside is not None
            witness = witness_files(job.artifacts, kernel) if wanted else []
            t0 = time.monotonic()
            image = initramfs_image(
                kernel,
                [(build.ko, job.repeat, job.module_params)],
                run_id=job.run_id,
                cell_id=job.cell.id,
                workdir=job.workdir,
                preload=preload,
                kernel_args=job.kernel_args,
                witness=witness,
                beside=job.beside,
                crash=kernel if job.crash else None,
                warm=job.artifacts.cache if wants_snapshot(job, lane) else None,
            )
            if image.warm is not None:
                probe = Probe(image=lambda: gate_probe(job, kernel), facts=gate_facts)
                image = replace(image, warm=replace(image.warm, probe=probe))
            timings["image"] = time.monotonic() - t0
            spec = BootSpec(
                image=image,
                cpu_model=job.cpu_model,
                memory_mib=job.cell.memory_mib,
                vcpus=job.cell.vcpus,
                timeout_s=job.timeout_s,
                workdir=job.workdir,
                feature_control=job.feature_control,
                inject=job.inject,
                expect_crash=job.crash,
                cpu_witness=job.cpu_witness,
            )
            t0 = time.monotonic()
            job.mark_boot()
            boot = lane.boot(spec)
            timings["boot"] = time.monotonic() - t0
        except (RigError, OSError) as exc:
            return GuestRun(build, None, timings, error=exc)
        finally:
            shutil.rmtree(job.workdir / "crash-initramfs", ignore_errors=True)
            for scratch in ("boot.iso", "initrd.gz", "carrier.img"):
                (job.workdir / scratch).unlink(missing_ok=True)
            shutil.rmtree(job.workdir / "initramfs", ignore_errors=True)
            shutil.rmtree(job.workdir / "gate-probe", ignore_errors=True)
        return GuestRun(build, boot, timings, witness=bool(witness))


def wants_snapshot(job: GuestJob, lane: Backend) -> bool:
    """--snapshot, on a lane that restores saved guests, for a run a save can stand for
    (rig.model.restore_stands_for: the rule the lanes follow too)."""
    stands = restore_stands_for(feature_control=job.feature_control,
                                cpu_witness=job.cpu_witness, inject=job.inject,
                                crash=job.crash)  # fmt: skip
    return job.snapshot and lane.restores and stands


def gate_probe(job: GuestJob, kernel: KernelArtifacts) -> GuestImage:
    """The snapshot gate's guest (GATE_RUNS): the rig's own driver as it is, then with each of
    its injected faults; a fresh initrd, and the same /rig as a carrier (its warm)."""
    build = job.artifacts.module(kernel, DEFAULT_DRIVER)
    if not build.ok or build.ko is None:
        raise InfraError(
            f"the rig's own driver, the snapshot gate's probe, did not build against "
            f"{kernel.spec.describe()}; last lines:\n{tail(build.log, 10)}",
            fix="run without --snapshot",
        )
    workdir = job.workdir / "gate-probe"
    workdir.mkdir(parents=True, exist_ok=True)
    runs = [(build.ko, 1, params) for params in GATE_RUNS]
    return initramfs_image(kernel, runs, run_id=job.run_id, cell_id=job.cell.id,
                           workdir=workdir, kernel_args=job.kernel_args,
                           warm=job.artifacts.cache)  # fmt: skip


def witness_files(artifacts: Artifacts, kernel: KernelArtifacts) -> list[Path]:
    """What the agent's teardown witness needs: the kernel's KVM modules and kvm-witness."""
    modules = artifacts.kvm_modules(kernel)
    return [*(modules / name for name, _ in KVM_MODULES), artifacts.witness()]


def _fixture(artifacts: Artifacts, kernel: KernelArtifacts, src: Path) -> Path:
    """A preloaded module: it must build cleanly, or the run cannot prove anything."""
    build = artifacts.module(kernel, src)
    if not build.ok or build.ko is None:
        raise InfraError(
            f"the preloaded module {src} did not build against {kernel.spec.abi}; "
            f"last lines:\n{tail(build.log, 10)}",
            fix="fix the fixture module, or run without --preload",
        )
    return build.ko
