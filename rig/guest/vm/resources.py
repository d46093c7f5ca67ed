"""What one VM owns while it runs: a scratch directory, a fresh login key and host key, a seed
disk, a qcow2 overlay, a loopback port forwarded to its sshd. Each is a context manager: gone
on exit."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rig.errors import InfraError, ToolMissing
from rig.lanes.libvirt import Disk, Domain, VmDevices
from rig.model import BootResult

# --------------------------------------------------------------------------- owned resources
SCRATCH_DIR = "vm"  # under the cell's workdir: overlay, seed disk, keys; removed after the VM
SEED_HOST_KEY = "ssh_host_ed25519_key"  # on the seed disk: rig-seed installs it for sshd
PRIVATE_KEY_HEAD = "-----BEGIN OPENSSH PRIVATE KEY-----"


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
def fresh_key(private: Path, comment: str) -> Iterator[KeyPair]:
    """A fresh ed25519 key pair at `private` (0600, no passphrase); both halves deleted on exit."""
    public = private.with_name(private.name + ".pub")
    for f in (private, public):
        f.unlink(missing_ok=True)
    try:
        check_tool_run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private)],
            "ssh-keygen", "openssh-client",
        )  # fmt: skip
        private.chmod(0o600)  # ssh-keygen's own mode; said here because the key is a secret
        yield KeyPair(private, public.read_text().strip())
    finally:
        private.unlink(missing_ok=True)
        public.unlink(missing_ok=True)


@contextlib.contextmanager
def cell_key(workdir: Path) -> Iterator[KeyPair]:
    """The key the rig logs in with, for this cell only; the seed disk carries its public half."""
    with fresh_key(workdir / "id_ed25519", "rig-cell") as key:
        yield key


@contextlib.contextmanager
def host_key(workdir: Path) -> Iterator[KeyPair]:
    """The guest sshd's host key, for this cell only: the seed disk carries its private half
    (rig-seed installs it as sshd's only host key), and the rig trusts only its public half
    for the forwarded port (rig.guest.vm.ssh): any other key answering there is refused."""
    with fresh_key(workdir / SEED_HOST_KEY, "rig-cell-host") as key:
        yield key


def _write_secret(path: Path, data: bytes) -> None:
    """A new file readable by its owner only, from the start (never briefly 0644)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@contextlib.contextmanager
def seed_disk(workdir: Path, public_key: str, host_private: Path) -> Iterator[Path]:
    """A tiny raw ext4 disk (label `rigseed`) holding authorized_keys and the cell's private
    host key (`ssh_host_ed25519_key`, 0600); the image file itself is 0600. Deleted on exit.

    The image's rig-seed.service installs both before sshd starts (guests/vm/rig-seed).
    """
    if "\n" in public_key or not public_key.startswith("ssh-ed25519 "):
        raise InfraError(f"not an ed25519 public key: {public_key[:40]!r}")
    secret = host_private.read_bytes()
    if not secret.startswith(PRIVATE_KEY_HEAD.encode()):
        raise InfraError(f"{host_private} is not an OpenSSH private key")
    staging = workdir / "seed"
    image = workdir / "seed.img"
    shutil.rmtree(staging, ignore_errors=True)
    image.unlink(missing_ok=True)
    try:
        staging.mkdir(mode=0o700)
        (staging / "authorized_keys").write_text(public_key + "\n")
        _write_secret(staging / SEED_HOST_KEY, secret)  # mke2fs -d keeps the mode: 0600
        _write_secret(image, b"")  # the disk holds a secret: mke2fs writes into this 0600 file
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


def wait_for_banner(port: int, dom: Domain, deadline: float) -> str | None:
    while time.monotonic() < deadline and not dom.ended():
        banner = ssh_banner(port)
        if banner is not None:
            return banner
        time.sleep(1.0)
    return None
