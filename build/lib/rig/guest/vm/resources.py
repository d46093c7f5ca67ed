"""What one VM owns while it runs: a scratch directory, a fresh key, a seed disk, a qcow2
overlay, a loopback port forwarded to its sshd. Each is a context manager: gone on exit."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rig.errors import InfraError, ToolMissing
from rig.lanes.libvirt import Disk, LiveDomain, VmDevices
from rig.model import BootResult

# --------------------------------------------------------------------------- owned resources
SCRATCH_DIR = "vm"  # under the cell's workdir: overlay, seed disk, key; removed after the VM


@contextlib.contextmanager
def scratch_dir(path: Path) -> Iterator[Path]:
    """The VM's scratch directory (one name for a sweeper to find after a kill -9)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: str


@contextlib.contextmanager
def cell_key(workdir: Path) -> Iterator[KeyPair]:
    """A fresh ed25519 key for this cell only (no passphrase); both halves deleted on exit."""
    private = workdir / "id_ed25519"
    public = workdir / "id_ed25519.pub"
    for f in (private, public):
        f.unlink(missing_ok=True)
    try:
        check_tool_run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rig-cell",
             "-f", str(private)],
            "ssh-keygen", "openssh-client",
        )  # fmt: skip
        yield KeyPair(private, public.read_text().strip())
    finally:
        private.unlink(missing_ok=True)
        public.unlink(missing_ok=True)


@contextlib.contextmanager
def seed_disk(workdir: Path, public_key: str) -> Iterator[Path]:
    """A tiny raw ext4 disk (label `rigseed`) holding authorized_keys; deleted on exit.

    The image's rig-seed.service installs it for root before sshd starts (guests/vm/rig-seed).
    """
    if "\n" in public_key or not public_key.startswith("ssh-ed25519 "):
        raise InfraError(f"not an ed25519 public key: {public_key[:40]!r}")
    staging = workdir / "seed"
    image = workdir / "seed.img"
    shutil.rmtree(staging, ignore_errors=True)
    image.unlink(missing_ok=True)
    try:
        staging.mkdir()
        (staging / "authorized_keys").write_text(public_key + "\n")
        check_tool_run(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", "rigseed",
             "-d", str(staging), str(image), "2M"],
            "mke2fs", "e2fsprogs",
        )  # fmt: skip
        shutil.rmtree(staging)
        yield image
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        image.unlink(missing_ok=True)


@contextlib.contextmanager
def overlay_disk(base: Path, workdir: Path) -> Iterator[Path]:
    """A qcow2 overlay of the cached image for one VM; deleted on exit."""
    overlay = workdir / "overlay.qcow2"
    overlay.unlink(missing_ok=True)
    try:
        check_tool_run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
             str(overlay)],
            "qemu-img", "qemu-utils",
        )  # fmt: skip
        yield overlay
    finally:
        overlay.unlink(missing_ok=True)


def check_tool_run(argv: Sequence[str], tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise ToolMissing(tool, package, "full-VM guests")
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise InfraError(f"{tool} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")


# --------------------------------------------------------------------------- networking
def free_port() -> int:
    """A loopback port that was free a moment ago (QEMU binds it; a collision is retried)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def vm_devices(overlay: Path, seed: Path, port: int) -> VmDevices:
    """Root overlay (vda), seed disk (vdb), and user networking with sshd forwarded."""
    return VmDevices(
        disks=(
            Disk(overlay, "qcow2", "vda"),
            Disk(seed, "raw", "vdb", readonly=True),
        ),
        qemu_args=(
            "-netdev",
            f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device",
            # a fixed high slot: QEMU would otherwise take slot 2 before libvirt's disks
            "virtio-net-pci,netdev=n0,bus=pci.0,addr=0x1e",
        ),
    )


def port_collision(result: BootResult) -> bool:
    text = f"{result.detail}\n{result.emulator_log}"
    return "host forwarding" in text or "Address already in use" in text


def ssh_banner(port: int, timeout_s: float = 3.0) -> str | None:
    """The first line sshd sends, or None (QEMU accepts TCP long before the guest's sshd)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            data = s.recv(256)
    except OSError:
        return None
    line = data.split(b"\n", 1)[0].decode(errors="replace").strip()
    return line if line.startswith("SSH-") else None


def wait_for_banner(port: int, dom: LiveDomain, deadline: float) -> str | None:
    while time.monotonic() < deadline and not dom.ended():
        banner = ssh_banner(port)
        if banner is not None:
            return banner
        time.sleep(1.0)
    return None
