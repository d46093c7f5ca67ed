"""What this host can run: usable KVM, nested VMX, tools. Pure reads of /proc and /sys."""

from __future__ import annotations

import os
from pathlib import Path


def _flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def kvm_usable(
    dev: Path = Path("/dev/kvm"),
    cpuinfo: Path = Path("/proc/cpuinfo"),
    sysmod: Path = Path("/sys/module"),
) -> str | None:
    """None when KVM can run stock kernels with nested VMX here, else the reason it cannot.

    libvirt's capabilities are not trusted: a paravirtual /dev/kvm exists on some hosts and
    cannot boot stock kernels. We require an Intel host CPU with `vmx`, kvm_intel loaded, and
    nested VMX enabled.
    """
    if not dev.exists():
        return "/dev/kvm does not exist (no KVM on this host)"
    if not os.access(dev, os.R_OK | os.W_OK):
        return f"{dev} is not readable and writable by this user"
    flags = _flags(cpuinfo)
    if "vmx" not in flags:
        return "host CPU has no `vmx` flag (no Intel VT-x visible: AMD, or VT-x not passed through)"
    if not (sysmod / "kvm_intel").exists():
        return "kvm_intel is not loaded (modprobe kvm_intel)"
    nested = sysmod / "kvm_intel/parameters/nested"
    value = nested.read_text().strip() if nested.exists() else "N"
    if value not in ("Y", "1"):
        return "kvm_intel nested VMX is off (modprobe -r kvm_intel; modprobe kvm_intel nested=1)"
    return None
