"""Full-VM guest images: one bootable Debian disk per matrix kernel, built once and cached.

Recipe (no loop mounts, no root filesystem mounted anywhere):
  1. `mmdebstrap --variant=minbase` of the kernel's suite into a directory, with
     linux-image-<abi> and linux-headers-<abi> (pinned version), gcc, make, kmod, systemd,
     udev and openssh-server; run in a private mount namespace so nothing it mounts can leak.
  1b. `guests/vm/pre/` is copied in first (mmdebstrap setup hook): a small initrd (virtio-blk
     and ext4 only) and a modprobe blacklist of emulated devices the test never uses.
  2. The files of `guests/vm/` installed into the tree (fstab, static network, sshd drop-in, the
     rig-seed unit that installs the per-cell login and host keys from a seed disk); the host
     keys openssh-server's postinst made are deleted (every cell brings its own); units enabled
     or masked with the suite's own systemctl, chrooted.
  3. /boot/vmlinuz-<abi> and /boot/initrd.img-<abi> copied out (direct kernel boot).
  4. `mke2fs -t ext4 -d TREE` into a sparse raw file, `qemu-img convert` to qcow2, read-only.

Cache entry `vmimages/<kernel>-<key>/`: disk.qcow2, vmlinuz, initrd.img, manifest.json,
build.log. The key hashes suite, abi, version, mirror(s) and the recipe (this module's
RECIPE version and the guest files). Every VM runs on its own qcow2 overlay of disk.qcow2.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rig.artifacts import (
    Cache,
    Progress,
    digest,
    in_root,
    run_step,
    stderr_progress,
    tree_digest,
)
from rig.debian import apt_sources
from rig.errors import InfraError, ToolMissing
from rig.model import KernelSpec
from rig.paths import GUESTS_DIR

VM_RECIPE_VERSION = "3"
"""Bump when the recipe below changes in a way that must invalidate cached images."""

VM_GUEST_DIR = GUESTS_DIR / "vm"
PRE_DIR = VM_GUEST_DIR / "pre"  # copied in before any package installs (initramfs, modprobe)

# guests/vm file -> (path in the image, mode)
GUEST_FILES: dict[str, tuple[str, int]] = {
    "fstab": ("etc/fstab", 0o644),
    "20-rig.network": ("etc/systemd/network/20-rig.network", 0o644),
    "sshd-rig.conf": ("etc/ssh/sshd_config.d/rig.conf", 0o644),
    "rig-seed": ("usr/local/sbin/rig-seed", 0o755),
    "rig-seed.service": ("etc/systemd/system/rig-seed.service", 0o644),
}
ENABLE_UNITS = ("systemd-networkd.service", "rig-seed.service", "ssh.service")
MASK_UNITS = (
    # the console is the rig's, not a login prompt; nobody logs in but over SSH with the key
    "serial-getty@ttyS0.service",
    "getty.target",
    "getty-static.service",
    # every VM boots a fresh overlay of the same image: skip first-boot and update work
    "systemd-firstboot.service",
    "ldconfig.service",
    "systemd-journal-catalog-update.service",
    "systemd-update-done.service",
    # nothing here needs these; under TCG each unit costs boot time
    "systemd-networkd-wait-online.service",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
    "modprobe@fuse.service",
    "modprobe@configfs.service",
    "systemd-pstore.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "man-db.timer",
)
MASK_GENERATORS = ("systemd-ssh-generator",)  # probes AF_VSOCK, loads vsock modules
DISK_SIZE = "6G"  # sparse: the qcow2 holds only what the tree uses (about 1 GB)

HOST_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mke2fs": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "unshare": "util-linux",
}


def vm_packages(spec: KernelSpec) -> list[str]:
    """What the guest needs: its kernel, headers + toolchain, kmod, systemd, sshd."""
    pin = f"={spec.version}" if spec.version else ""
    return [
        f"linux-image-{spec.abi}{pin}",
        f"linux-headers-{spec.abi}{pin}",
        "gcc",
        "make",
        "libc6-dev",
        "kmod",
        "systemd-sysv",
        "udev",
        "openssh-server",
        "util-linux",
        "e2fsprogs",
    ]


def recipe_digest() -> str:
    """Hash of the guest files that go into the image (docs beside them do not count)."""
    files = {name: (VM_GUEST_DIR / name).read_text() for name in sorted(GUEST_FILES)}
    return digest(
        "vm-recipe",
        VM_RECIPE_VERSION,
        GUEST_FILES,
        ENABLE_UNITS,
        MASK_UNITS,
        MASK_GENERATORS,
        files,
        tree_digest(PRE_DIR),
    )


def image_key(spec: KernelSpec) -> str:
    return digest(
        "vmimage",
        spec.suite,
        spec.abi,
        spec.version,
        spec.mirror,
        spec.extra_suites,
        spec.check_valid_until,
        vm_packages(spec),
        recipe_digest(),
    )


def vm_cmdline() -> str:
    """Kernel command line of a VM guest: serial console, root on the first virtio disk.

    kvm_intel must not take VMX from the driver under test; a panic or oops ends the guest at
    once (panic=-1 reboots, and the domain is destroyed on reboot).
    """
    return (
        "console=ttyS0,115200 root=/dev/vda rw rootfstype=ext4 net.ifnames=0 "
        "quiet loglevel=4 panic=-1 oops=panic fsck.mode=skip "
        "modprobe.blacklist=kvm_intel,kvm kvm.enable_virt_at_load=0"
    )


def in_tree(tree: Path, rel: str, hops: int = 8) -> Path | None:
    """`rel` inside `tree` as a regular file, following symlinks within the tree (an absolute
    link target means tree/target, never the host's file); None if there is no such file."""
    path = tree / rel
    for _ in range(hops):
        if path.is_symlink():
            target = path.readlink()
            base = tree if target.is_absolute() else path.parent
            path = Path(os.path.normpath(base / str(target).lstrip("/")))
            if not path.is_relative_to(tree):
                return None
            continue
        if path.is_file() and path.resolve().is_relative_to(tree.resolve()):
            return path
        return None
    return None


@dataclass(frozen=True)
class VmImage:
    """A cached, read-only guest disk and the kernel + initrd it boots with."""

    spec: KernelSpec
    disk: Path  # qcow2, never written: each VM gets an overlay
    kernel: Path
    initrd: Path
    cmdline: str
    built_s: float = 0.0  # time spent building it now (0 when it came from the cache)


@dataclass(frozen=True)
class VmImages:
    cache: Cache
    progress: Progress = stderr_progress

    def image(self, spec: KernelSpec) -> VmImage:
        t0 = time.monotonic()
        built = False
        with self.cache.building("vmimages", f"{spec.name}-{image_key(spec)}") as (final, tmp):
            if tmp is not None:
                self._build(spec, tmp)
                built = True
        return VmImage(
            spec=spec,
            disk=final / "disk.qcow2",
            kernel=final / "vmlinuz",
            initrd=final / "initrd.img",
            cmdline=vm_cmdline(),
            built_s=time.monotonic() - t0 if built else 0.0,
        )

    def _build(self, spec: KernelSpec, out: Path) -> None:
        for tool, package in HOST_TOOLS.items():
            if shutil.which(tool) is None:
                raise ToolMissing(tool, package, "building full-VM guest images")
        log = out / "build.log"
        tree = out / "tree"
        t0 = time.monotonic()
        self.progress(f"vm image {spec.name}: mmdebstrap {spec.suite} (about 2 minutes) ...")
        argv = [
            "unshare", "--mount", "--propagation", "private", "--",
            "mmdebstrap", "--mode=root", "--variant=minbase",
            "--include=" + ",".join(vm_packages(spec)),
            "--aptopt=Acquire::Retries \"3\"",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            f"--setup-hook=sync-in {PRE_DIR} /",
        ]  # fmt: skip
        if not spec.check_valid_until:
            argv.append('--aptopt=Acquire::Check-Valid-Until "false"')
        argv += [spec.suite, str(tree), *apt_sources(spec).splitlines()]
        run_step(argv, log=log, what=f"mmdebstrap {spec.suite}", timeout=1800)
        t1 = time.monotonic()
        self._customize(tree, log)
        self._copy_boot(spec, tree, out, log)
        self._manifest(spec, tree, out, t1 - t0)
        self.progress(f"vm image {spec.name}: mke2fs -d + qcow2 ...")
        raw = out / "disk.raw"
        run_step(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "rigroot",
             "-d", str(tree), str(raw), DISK_SIZE],
            log=log, what="mke2fs -d",
        )  # fmt: skip
        shutil.rmtree(tree)
        qcow2 = out / "disk.qcow2"
        run_step(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)],
            log=log, what="qemu-img convert",
        )  # fmt: skip
        raw.unlink()
        for f in (qcow2, out / "vmlinuz", out / "initrd.img"):
            f.chmod(0o444)
        out.chmod(0o755)  # readable by a system libvirtd's QEMU user too
        self.progress(f"vm image {spec.name}: ready in {time.monotonic() - t0:.0f} s")

    @staticmethod
    def _customize(tree: Path, log: Path) -> None:
        for name, (dest, mode) in GUEST_FILES.items():
            target = tree / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(VM_GUEST_DIR / name, target)
            target.chmod(mode)
        # openssh-server's postinst made host keys, the same for every VM of this image: none
        # ships. sshd serves the cell's own key from the seed disk (HostKey in rig.conf).
        for shared in (tree / "etc/ssh").glob("ssh_host_*"):
            shared.unlink()
        (tree / "etc/hostname").write_text("rig-guest\n")
        (tree / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 rig-guest\n")
        run_step(
            in_root(tree, ["systemctl", "enable", *ENABLE_UNITS]), log=log, what="enable units"
        )
        run_step(in_root(tree, ["systemctl", "mask", *MASK_UNITS]), log=log, what="mask units")
        generators = tree / "etc/systemd/system-generators"
        generators.mkdir(parents=True, exist_ok=True)
        for name in MASK_GENERATORS:
            (generators / name).unlink(missing_ok=True)
            (generators / name).symlink_to("/dev/null")

    @staticmethod
    def _copy_boot(spec: KernelSpec, tree: Path, out: Path, log: Path) -> None:
        """The kernel and initrd the image boots with (up to 6.x in /boot; from 7.x the kernel
        image is /usr/lib/modules/<abi>/vmlinuz of linux-binary-<abi>)."""
        wanted = {
            "vmlinuz": (f"boot/vmlinuz-{spec.abi}", f"usr/lib/modules/{spec.abi}/vmlinuz"),
            "initrd.img": (f"boot/initrd.img-{spec.abi}",),
        }
        for dest, candidates in wanted.items():
            src = next((p for c in candidates if (p := in_tree(tree, c)) is not None), None)
            if src is None:
                raise InfraError(f"the image has none of {', '.join(candidates)}", where=str(log))
            shutil.copyfile(src, out / dest)

    @staticmethod
    def _manifest(spec: KernelSpec, tree: Path, out: Path, mmdebstrap_s: float) -> None:
        installed: dict[str, str] = {}
        status = (tree / "var/lib/dpkg/status").read_text(errors="replace")
        for stanza in status.split("\n\n"):
            fields = dict(
                line.split(": ", 1)
                for line in stanza.splitlines()
                if ": " in line and line[0] != " "
            )
            if "install ok installed" in fields.get("Status", ""):
                installed[fields.get("Package", "?")] = fields.get("Version", "?")
        manifest = {
            "suite": spec.suite,
            "abi": spec.abi,
            "kernel_version": installed.get(f"linux-image-{spec.abi}", "?"),
            "gcc": installed.get("gcc", "?"),
            "openssh_server": installed.get("openssh-server", "?"),
            "packages": len(installed),
            "mmdebstrap_s": round(mmdebstrap_s, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host_uid": os.getuid(),
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
