"""The bochs lane's boot media: Bochs 2.7 has no -kernel option, so it boots an El Torito
ISO whose GRUB loads the kernel and initrd, and which plays the firmware's part when the run
asks for an IA32_FEATURE_CONTROL value (GRUB writes it before Linux starts)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from rig.artifacts import require_tool
from rig.errors import InfraError, UsageError
from rig.model import GuestImage


def grub_config(image: GuestImage, feature_control: int | None = None) -> str:
    """grub.cfg of the boot ISO: optionally the firmware's IA32_FEATURE_CONTROL, then Linux."""
    if not re.fullmatch(r"[A-Za-z0-9_.,=/ -]*", image.cmdline):
        raise UsageError(
            f"kernel command line has characters GRUB would interpret: {image.cmdline!r}"
        )
    firmware = ""
    if feature_control is not None:
        if not 0 <= feature_control <= 0xFFFFFFFF:
            raise UsageError(f"IA32_FEATURE_CONTROL value {feature_control:#x} too big")
        # What a firmware does before any OS: set (and maybe lock) the MSR.
        firmware = f"  insmod wrmsr\n  wrmsr 0x3a {feature_control:#x}\n"
    return (
        "set timeout=0\nset default=0\n"
        "menuentry rig {\n"
        f"{firmware}"
        f"  linux /boot/vmlinuz {image.cmdline}\n"
        "  initrd /boot/initrd.gz\n}\n"
    )


def boot_iso(image: GuestImage, workdir: Path, feature_control: int | None = None) -> Path:
    """El Torito ISO with GRUB booting the kernel + initrd on the serial console."""
    require_tool("grub-mkrescue")
    require_tool("xorriso")
    tree = workdir / "iso"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "boot/grub").mkdir(parents=True)
    shutil.copy2(image.kernel, tree / "boot/vmlinuz")
    shutil.copy2(image.initrd, tree / "boot/initrd.gz")
    (tree / "boot/grub/grub.cfg").write_text(grub_config(image, feature_control))
    iso = workdir / "boot.iso"
    proc = subprocess.run(
        ["grub-mkrescue", "-o", str(iso), str(tree)],
        capture_output=True,
        text=True,
        check=False,
    )
    shutil.rmtree(tree)
    if proc.returncode != 0 or not iso.exists():
        raise InfraError(
            f"grub-mkrescue failed: {proc.stderr.strip()[-500:]}",
            fix="apt-get install grub-pc-bin grub-common xorriso mtools",
        )
    return iso
