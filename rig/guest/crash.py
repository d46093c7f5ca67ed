"""The crash-path run's extras in the initramfs guest (docs/contract.md section 2, RIG-CRASH).

    add_crash_kernel(root, kernel, workdir)   kexec and its libraries, /rig/crash/{vmlinuz,
                                              initrd.gz,cmdline} into the image tree at root

With `--crash` the agent loads the driver, loads the cell's own kernel as the crash kernel
(`kexec -p`), and crashes the guest (sysrq c) with the driver loaded. The crash kernel's /init
(guests/crash/init) says on the agent's channel that it came up and whether /proc/vmcore is
there: the kernel's crash path got out of VMX operation (or never needed to) and jumped.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rig.artifacts import require_file, with_libraries, write_cpio
from rig.model import KernelArtifacts
from rig.paths import BUSYBOX, GUESTS_DIR, KEXEC

CRASH_KERNEL_MIB = 160  # crashkernel= of the first kernel: the crash kernel runs in it
CRASH_CMDLINE = "console=ttyS0,115200 loglevel=4 panic=-1 nr_cpus=1 reset_devices irqpoll"
DRAIN = GUESTS_DIR / "lib/drain.sh"
DRAIN_AT = "lib/rig-drain.sh"  # where the guests' /init scripts source it


def add_crash_kernel(root: Path, kernel: KernelArtifacts, workdir: Path) -> None:
    """Put kexec (with its libraries, at their own paths) and the crash kernel into root."""
    for path in with_libraries(require_file(KEXEC)):
        target = root / path.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)  # the file a symlink names, under the link's name
        target.chmod(0o755)
    crash = root / "rig/crash"
    crash.mkdir(parents=True)
    shutil.copyfile(kernel.vmlinuz, crash / "vmlinuz")
    (crash / "cmdline").write_text(CRASH_CMDLINE + "\n")
    tree = workdir / "crash-initramfs"
    shutil.rmtree(tree, ignore_errors=True)
    for d in ("bin", "proc", "sys", "dev", "lib"):
        (tree / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, tree / "bin/busybox")
    shutil.copy2(GUESTS_DIR / "crash/init", tree / "init")
    (tree / "init").chmod(0o755)
    shutil.copy2(DRAIN, tree / DRAIN_AT)
    write_cpio(tree, crash / "initrd.gz", compress=True)
    shutil.rmtree(tree)
