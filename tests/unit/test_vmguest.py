"""Unit tests of the full-VM guest flavour (rig.guest.vm, the libvirt VM domain): no VM."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import tarfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import pytest

from rig.artifacts import Cache, source_tarball
from rig.guest.vm.cell import VmCellPlan, agent_tarball, finish_vm, run_agent, started_domain
from rig.guest.vm.image import image_key, recipe_digest, vm_cmdline, vm_packages
from rig.guest.vm.resources import (
    cell_key,
    free_port,
    overlay_disk,
    port_collision,
    seed_disk,
    ssh_banner,
    vm_devices,
)
from rig.guest.vm.ssh import GuestLost, Reply
from rig.lanes.libvirt import QEMU_NS, Disk, VmDevices, domain_xml
from rig.model import (
    BootEnd,
    BootResult,
    BootSpec,
    Cell,
    CpuSpec,
    GuestImage,
    KernelSpec,
    LaneSpec,
    ModuleBuild,
    Outcome,
)
from rig.runner import CellRunner, RunConfig
from rig.verdict import judge

K612 = KernelSpec(name="6.12", suite="trixie", abi="6.12.117+deb13-amd64", version="6.12.117-1")
TCG = LaneSpec(name="tcg", backend="libvirt", vmx=False, domain_type="qemu", guest="vm")
KVM = LaneSpec(name="kvm", backend="libvirt", vmx=True, domain_type="kvm", guest="vm")
PENRYN = CpuSpec(name="penryn", models={"tcg": "Penryn", "kvm": "Penryn"})
TCG_CELL = Cell(lane=TCG, kernel=K612, cpu=PENRYN, timeout_s=400)
BUILD_OK = ModuleBuild(name="vmlaunch", ok=True, log="make: done\n", ko=Path("/x/vmlaunch.ko"))
PENRYN_MODEL = "Intel Core 2 Duo P9xxx (Penryn Class Core 2)"

needs = pytest.mark.skipif
# the shape of a private key (the seed disk checks no more); real keys: tests/unit/test_vm_hostkey
FAKE_HOST_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n"


def at(el: ET.Element, path: str) -> ET.Element:
    """The element at `path`, which must exist."""
    found = el.find(path)
    assert found is not None, path
    return found


def _spec(tmp_path: Path) -> BootSpec:
    image = GuestImage(
        kernel=Path("/c/vmlinuz"), initrd=Path("/c/initrd.img"), cmdline=vm_cmdline()
    )
    return BootSpec(image, "Penryn", 512, 1, 400, tmp_path)


# --------------------------------------------------------------------------- domain XML
def test_vm_domain_has_disks_user_net_and_no_libvirt_network(tmp_path: Path) -> None:
    devices = vm_devices(tmp_path / "overlay.qcow2", tmp_path / "seed.img", 40022)
    xml = domain_xml(
        _spec(tmp_path),
        name="rig-x",
        domain_type="qemu",
        console=tmp_path / "console.txt",
        require_vmx=False,
        vm=devices,
    )
    dom = ET.fromstring(xml)
    disks = dom.findall("./devices/disk")
    assert [(at(d, "target").get("dev"), at(d, "driver").get("type")) for d in disks] == [
        ("vda", "qcow2"),
        ("vdb", "raw"),
    ]
    assert at(disks[0], "source").get("file") == str(tmp_path / "overlay.qcow2")
    assert disks[1].find("readonly") is not None
    assert dom.find("./devices/interface") is None  # no libvirt network at all
    assert at(dom, "./devices/controller[@type='usb']").get("model") == "none"
    path = f"./{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg"
    args = [str(a.get("value")) for a in dom.findall(path)]
    assert args[0] == "-netdev"
    assert args[1] == "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22"
    assert args[2] == "-device" and args[3].startswith("virtio-net-pci,netdev=n0")
    assert f'xmlns:ns0="{QEMU_NS}"' in xml or f'xmlns:qemu="{QEMU_NS}"' in xml
    assert at(dom, "./devices/serial/source").get("path") == str(tmp_path / "console.txt")
    cmdline = str(at(dom, "./os/cmdline").text)
    assert "root=/dev/vda" in cmdline
    assert "modprobe.blacklist=kvm_intel,kvm kvm.enable_virt_at_load=0" in cmdline


def test_kvm_vm_domain_requires_vmx_with_full_check(tmp_path: Path) -> None:
    xml = domain_xml(
        _spec(tmp_path),
        name="rig-x",
        domain_type="kvm",
        console=tmp_path / "c",
        require_vmx=True,
        vm=VmDevices(disks=(Disk(tmp_path / "o", "qcow2", "vda"),)),
    )
    dom = ET.fromstring(xml)
    assert dom.get("type") == "kvm"
    cpu = at(dom, "./cpu")
    assert cpu.get("check") == "full"
    assert at(cpu, "./feature[@name='vmx']").get("policy") == "require"


def test_initramfs_domain_is_unchanged_without_vm(tmp_path: Path) -> None:
    xml = domain_xml(
        _spec(tmp_path), name="rig-x", domain_type="qemu", console=tmp_path / "c", require_vmx=False
    )
    dom = ET.fromstring(xml)
    assert dom.find("./devices/disk") is None
    assert dom.find("./devices/controller") is None
    assert QEMU_NS not in xml


def test_names_and_paths_are_escaped(tmp_path: Path) -> None:
    odd = tmp_path / "a&b<c>'\""
    devices = vm_devices(odd / "overlay.qcow2", odd / "seed.img", 1)
    xml = domain_xml(
        _spec(tmp_path),
        name="rig-<x>",
        domain_type="qemu",
        console=odd,
        require_vmx=False,
        vm=devices,
    )
    dom = ET.fromstring(xml)  # well-formed
    assert at(dom, "./name").text == "rig-<x>"
    assert at(dom, "./devices/disk/source").get("file") == str(odd / "overlay.qcow2")


# --------------------------------------------------------------------------- image recipe
def test_image_key_follows_its_inputs() -> None:
    base = image_key(K612)
    assert base == image_key(K612)
    assert image_key(replace(K612, version="6.12.118-1")) != base
    assert image_key(replace(K612, mirror="http://mirror.example/debian")) != base
    assert image_key(replace(K612, abi="6.12.118+deb13-amd64")) != base
    assert image_key(replace(K612, name="other")) == base  # the name is not an input
    assert len(recipe_digest()) == 16


def test_image_packages_pin_the_kernel_and_bring_the_toolchain() -> None:
    pkgs = vm_packages(K612)
    assert "linux-image-6.12.117+deb13-amd64=6.12.117-1" in pkgs
    assert "linux-headers-6.12.117+deb13-amd64=6.12.117-1" in pkgs
    for p in ("gcc", "make", "kmod", "openssh-server", "systemd-sysv"):
        assert p in pkgs
    assert "linux-image-6.12.117+deb13-amd64" in vm_packages(replace(K612, version=""))


def test_guest_recipe_files_exist_and_never_take_a_password() -> None:
    root = Path(__file__).resolve().parents[2] / "guests/vm"
    sshd = (root / "sshd-rig.conf").read_text()
    assert "PasswordAuthentication no" in sshd
    seed = (root / "rig-seed").read_text()
    assert "authorized_keys" in seed and "rigseed" in seed
    unit = (root / "rig-seed.service").read_text()
    assert "Before=ssh.service" in unit


# --------------------------------------------------------------------------- owned files
@needs(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_cell_key_is_fresh_ed25519_and_removed(tmp_path: Path) -> None:
    with cell_key(tmp_path) as a:
        assert a.public.startswith("ssh-ed25519 ")
        assert a.private.exists()
        assert (a.private.stat().st_mode & 0o077) == 0
    assert not list(tmp_path.iterdir())
    with cell_key(tmp_path) as b:
        assert b.public != a.public


@needs(shutil.which("mke2fs") is None or shutil.which("debugfs") is None, reason="e2fsprogs")
def test_seed_disk_holds_the_key_and_is_removed(tmp_path: Path) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITest rig-test"
    host = tmp_path / "host_key"
    host.write_text(FAKE_HOST_KEY)
    with seed_disk(tmp_path, key, host) as img:
        assert img.stat().st_size == 2 * 1024 * 1024
        out = subprocess.run(
            ["debugfs", "-R", "cat /authorized_keys", str(img)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert out.stdout == key + "\n"
        label = subprocess.run(
            ["dumpe2fs", "-h", str(img)], capture_output=True, text=True, check=True
        )
        assert "rigseed" in label.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["host_key"]


def test_seed_disk_refuses_what_is_not_a_public_key(tmp_path: Path) -> None:
    from rig.errors import InfraError

    host = tmp_path / "host_key"
    host.write_text(FAKE_HOST_KEY)
    with pytest.raises(InfraError), seed_disk(tmp_path, "ssh-ed25519 AAA\nevil", host):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["host_key"]


@needs(shutil.which("qemu-img") is None, reason="qemu-img not installed")
def test_overlay_is_backed_by_the_image_and_removed(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    work = tmp_path / "cell"
    work.mkdir()
    with overlay_disk(base, work) as ov:
        info = subprocess.run(
            ["qemu-img", "info", str(ov)], capture_output=True, text=True, check=True
        ).stdout
        assert f"backing file: {base}" in info
    assert not list(work.iterdir())


def test_overlay_is_removed_when_the_block_raises(tmp_path: Path) -> None:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img not installed")
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    work = tmp_path / "cell"
    work.mkdir()
    with pytest.raises(RuntimeError), overlay_disk(base, work):
        raise RuntimeError("boom")
    assert not list(work.iterdir())


def test_driver_tarball_leaves_out_build_products(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("Kbuild", "a.c", "sub/b.S", "a.o", "a.ko", "a.mod.c", "Module.symvers", ".a.cmd"):
        (tmp_path / name).write_text("x")
    import io

    with tarfile.open(fileobj=io.BytesIO(source_tarball(tmp_path))) as tar:
        names = sorted(tar.getnames())
        assert all(m.uid == 0 for m in tar.getmembers())
    assert names == ["Kbuild", "a.c", "sub/b.S"]


# --------------------------------------------------------------------------- networking
def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@contextmanager
def _server(payload: bytes | None) -> Iterator[int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            if payload:
                conn.sendall(payload)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        t.join(5)
        srv.close()


def test_banner_is_read_only_from_a_real_sshd_greeting() -> None:
    with _server(b"SSH-2.0-OpenSSH_10.0p2 Debian\r\n") as port:
        assert ssh_banner(port) == "SSH-2.0-OpenSSH_10.0p2 Debian"
    with _server(None) as port:  # QEMU accepted, the guest's sshd is not up: closed at once
        assert ssh_banner(port, timeout_s=2) is None
    assert ssh_banner(free_port(), timeout_s=1) is None  # nothing listening


def test_port_collision_is_recognised() -> None:
    res = BootResult(
        console="",
        end=BootEnd.EMULATOR,
        duration_s=0.1,
        detail="libvirt: internal error: Could not set up host forwarding rule 'tcp:...'",
    )
    assert port_collision(res)
    assert not port_collision(replace(res, detail="libvirt: missing features: vmx"))


# --------------------------------------------------------------------------- serial console
# --------------------------------------------------------------------------- the guest agent
LOAD = "vmlaunch: cpu=- load info version=1 break=none"
NO_VMX = "vmlaunch: cpu=0 check declined errno=-19 why=no_vmx -- CPU has no VMX"
FREED0 = "vmlaunch: cpu=- freed ok pages=0"


def _stand_in_kernel(tmp_path: Path, insmod_rc: int) -> dict[str, str]:
    """A stand-in for the guest's kernel tools and /proc, so the REAL agent script runs here.

    insmod/rmmod/dmesg/uname are small scripts; `dmesg -c` prints what insmod and rmmod "logged"
    (the lines of a driver that declines); /dev/kmsg is a file.
    """
    bin_dir, proc = tmp_path / "bin", tmp_path / "proc"
    for d in (bin_dir, proc, tmp_path / "sys/kernel"):
        d.mkdir(parents=True, exist_ok=True)
    klog = tmp_path / "klog"
    klog.write_text("")
    (proc / "cpuinfo").write_text(
        f"processor\t: 0\nmodel name\t: {PENRYN_MODEL}\nflags\t\t: fpu sse2\n"
    )
    (proc / "meminfo").write_text("MemFree:          305692 kB\n")
    (proc / "modules").write_text("")
    scripts = {
        "insmod": f"cat >> {klog} <<'X'\n[   3.1] {LOAD}\n[   3.2] {NO_VMX}\n[   3.3] {FREED0}\nX\n"
        f"echo \"insmod: can't insert '$1': No such device\" >&2\nexit {insmod_rc}\n",
        "rmmod": f"echo '[   4.0] vmlaunch: cpu=- unload ok' >> {klog}\n",
        "dmesg": f'case "$1" in -c) cat {klog}; : > {klog};; esac\n',
        "uname": "echo 6.12.117+deb13-amd64\n",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "RIG_KMSG": str(tmp_path / "kmsg"),
        "RIG_PROC": str(proc),
        "RIG_SYS": str(tmp_path / "sys"),
    }


@dataclass
class AgentGuest:
    """A guest whose SSH session runs the real agent script here, against a stand-in kernel."""

    tmp_path: Path
    env: dict[str, str]
    lost: bool = False
    commands: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)

    def run(self, command: str, step: str, cap_s: float = 30.0) -> Reply:
        self.commands.append((step, command))
        if " -xf " in command:  # unpack what was put
            dest = Path(command.split("-C ")[1].split()[0])
            tar = self.files[command.split("-xf ")[1].strip()]
            local = self.tmp_path / "guest" / dest.relative_to("/")
            local.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=__import__("io").BytesIO(tar)) as t:
                t.extractall(local, filter="data")
        return Reply(0, "", "")

    def put(self, data: bytes, remote: str, step: str) -> None:
        self.files[remote] = data

    def get(self, remote: str, local: Path, step: str) -> None:
        raise AssertionError("the agent's run fetches nothing")

    def close(self) -> None:
        pass

    def stream(self, command: str, step: str, cap_s: float, out: IO[str]) -> int:
        self.commands.append((step, command))
        agent_dir = self.tmp_path / "guest/root/rig/agent"
        proc = subprocess.run(
            ["sh", str(agent_dir / "rig-agent"), str(agent_dir)],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=30, check=False,
        )  # fmt: skip
        text = proc.stdout
        if self.lost:  # the guest stops answering right after insmod
            out.write(text[: text.index("RIG-STEP insmod")])
            raise GuestLost(step, f"no answer within {cap_s:.0f} s", timed_out=True)
        out.write(text)
        return proc.returncode


def _plan(tmp_path: Path, repeat: int = 1) -> VmCellPlan:
    return VmCellPlan(
        run_id="r1",
        cell_id="tcg-6.12-penryn",
        driver=tmp_path,
        cpu_model="Penryn",
        workdir=tmp_path,
        timeout_s=400,
        repeat=repeat,
    )


def _agent(tmp_path: Path, guest: AgentGuest, plan: VmCellPlan) -> str:
    ko = tmp_path / "vmlaunch.ko"
    ko.write_bytes(b"\x7fELF fake")
    out = tmp_path / "agent.txt"
    with out.open("w") as fh:
        try:
            run_agent(guest, plan, ko, fh)
        finally:
            fh.flush()
    return out.read_text()


def test_the_vm_runs_the_same_agent_and_a_tcg_decline_passes(tmp_path: Path) -> None:
    guest = AgentGuest(tmp_path, _stand_in_kernel(tmp_path, insmod_rc=19))
    plan = replace(_plan(tmp_path, repeat=2), module_params=("break_field=none",))
    agent = _agent(tmp_path, guest, plan)
    lines = agent.splitlines()
    assert lines[0] == "RIG-BEGIN run=r1 cell=tcg-6.12-penryn kernel=6.12.117+deb13-amd64"
    assert lines[1] == "RIG-CPU vmx=0 cpus=1 model=_Intel_Core_2_Duo_P9xxx_(Penryn_Class_Core_2)"
    assert [ln for ln in lines if ln.startswith("RIG-RUN")] == [
        "RIG-RUN 0 module=vmlaunch iter=0", "RIG-RUN 1 module=vmlaunch iter=1"
    ]  # fmt: skip
    assert lines.count("RIG-STEP insmod rc=19") == 2 and lines[-1] == "RIG-END"
    plan_text = (tmp_path / "guest/root/rig/agent/plan").read_text()
    assert plan_text == "vmlaunch.ko 2 break_field=none\n"
    _step, command = next(c for c in guest.commands if c[0] == "test")
    assert command.endswith("exec sh /root/rig/agent/rig-agent /root/rig/agent")
    assert (tmp_path / "kmsg").read_text().splitlines()[:2] == [
        "rig: run=0 step=insmod", "rig: run=0 step=dump"
    ]  # fmt: skip
    # the serial console shows the kernel's side: boot log, the markers, the driver's lines
    console = "[    1.0] Linux version 6.12\n[    3.0] rig: run=0 step=insmod\n" + "".join(
        f"[   3.{i}] {ln}\n" for i, ln in enumerate((LOAD, NO_VMX, FREED0), 1)
    )
    boot = BootResult(console=console, agent=agent, end=BootEnd.POWEROFF, duration_s=60.0)
    v = judge(TCG_CELL, BUILD_OK, boot)
    got = {s: sv.outcome for s, sv in v.stages.items()}
    S, P = Outcome.SKIPPED, Outcome.PASSED
    assert got == {"build": P, "vmxon": S, "vmlaunch": S, "vmcall_exit": S, "teardown": P}
    assert "no VMX" in v.stages["vmxon"].reason


def test_a_guest_lost_mid_test_leaves_the_channel_without_rig_end(tmp_path: Path) -> None:
    guest = AgentGuest(tmp_path, _stand_in_kernel(tmp_path, insmod_rc=19), lost=True)
    with pytest.raises(GuestLost) as exc:
        _agent(tmp_path, guest, _plan(tmp_path))
    assert exc.value.step == "test" and exc.value.timed_out
    agent = (tmp_path / "agent.txt").read_text()
    assert "RIG-RUN 0" in agent and "RIG-END" not in agent
    console = (
        f"[    3.0] rig: run=0 step=insmod\n[    3.1] {LOAD}\n[    3.2] BUG: unable to handle\n"
    )
    v = judge(TCG_CELL, BUILD_OK, BootResult(console=console, agent=agent, end=BootEnd.PANIC,
                                             duration_s=9.0, detail="guest panicked"))  # fmt: skip
    assert v.stages["vmxon"].outcome is Outcome.FAILED
    assert "BUG" in v.stages["vmxon"].reason


# --------------------------------------------------------------------------- ending the VM
@dataclass
class FakeDom:
    console: Path
    ends_by_itself: BootEnd | None = None
    detail: str = ""
    stopped: bool = False
    done: bool = False

    def ended(self) -> bool:
        return self.done

    def started(self) -> bool:
        return True

    def wait(self, timeout_s: float) -> bool:
        if self.ends_by_itself is not None or self.stopped:
            self.done = True
        return self.done

    def stop(self) -> None:
        self.stopped = True

    def result(self) -> BootResult:
        end = self.ends_by_itself or BootEnd.EMULATOR
        return BootResult("", end, 1.0, detail=self.detail)


@dataclass
class PoweroffGuest:
    commands: list[str] = field(default_factory=list)
    closed: bool = False

    def run(self, command: str, step: str, cap_s: float = 30.0) -> Reply:
        self.commands.append(command)
        return Reply(0, "", "")

    def close(self) -> None:
        self.closed = True


def test_finish_powers_off_over_ssh(tmp_path: Path) -> None:
    dom = FakeDom(tmp_path / "c", BootEnd.POWEROFF, "guest powered off")
    guest = PoweroffGuest()
    assert finish_vm(dom, guest, None) == (BootEnd.POWEROFF, "guest powered off")
    assert guest.commands == ["systemctl --no-block poweroff"]
    assert not dom.stopped


def test_finish_destroys_a_guest_that_does_not_power_off(tmp_path: Path) -> None:
    dom = FakeDom(tmp_path / "c")
    end, detail = finish_vm(dom, PoweroffGuest(), None)
    assert dom.stopped and end is BootEnd.TIMEOUT and "did not power off" in detail


def test_finish_reports_the_panic_that_ended_the_domain(tmp_path: Path) -> None:
    dom = FakeDom(
        tmp_path / "c", BootEnd.PANIC, "guest panicked: Kernel panic - not syncing: Fatal"
    )
    lost = GuestLost("insmod", "SSH failed", timed_out=False)
    end, detail = finish_vm(dom, PoweroffGuest(), lost)
    assert end is BootEnd.PANIC and "during insmod" in detail and "Fatal" in detail


def test_finish_sees_a_panic_on_the_console_of_a_stuck_guest(tmp_path: Path) -> None:
    console = tmp_path / "c"
    console.write_text("[ 9.0] Kernel panic - not syncing: Fatal exception\r\n")
    dom = FakeDom(console)
    end, detail = finish_vm(dom, PoweroffGuest(), GuestLost("rmmod", "x", timed_out=True))
    assert dom.stopped and end is BootEnd.PANIC and "Fatal exception" in detail


def test_finish_calls_a_silent_stuck_guest_a_timeout(tmp_path: Path) -> None:
    dom = FakeDom(tmp_path / "c")
    end, detail = finish_vm(dom, PoweroffGuest(), GuestLost("insmod", "no answer", timed_out=True))
    assert dom.stopped and end is BootEnd.TIMEOUT and "during insmod" in detail


# --------------------------------------------------------------------------- port retries
@dataclass
class FakeBackend:
    collisions: int
    ports: list[str] = field(default_factory=list)

    @contextmanager
    def running(
        self, spec: BootSpec, *, vm: VmDevices | None = None, extra_s: float = 0.0
    ) -> Iterator[StartDom]:
        assert vm is not None
        self.ports.append(vm.qemu_args[1])
        collide = len(self.ports) <= self.collisions
        detail = "libvirt: Could not set up host forwarding rule" if collide else ""
        dom = StartDom(started_now=not collide, detail=detail)
        yield dom


@dataclass
class StartDom:
    started_now: bool
    detail: str
    console: Path = Path("/nonexistent/console.txt")

    def wait(self, timeout_s: float) -> bool:
        return self.ended()

    def stop(self) -> None:
        pass

    def started(self) -> bool:
        return self.started_now

    def ended(self) -> bool:
        return not self.started_now

    def result(self) -> BootResult:
        return BootResult("", BootEnd.EMULATOR, 0.1, detail=self.detail)


def test_a_port_lost_to_another_worker_is_retried(tmp_path: Path) -> None:
    import time

    be = FakeBackend(collisions=2)
    with started_domain(
        be, _spec(tmp_path), tmp_path / "o", tmp_path / "s", time.monotonic() + 5
    ) as (
        dom,
        port,
    ):
        assert dom.started()
        assert f"127.0.0.1:{port}-:22" in be.ports[-1]
    assert len(be.ports) == 3


def test_too_many_port_collisions_is_an_infrastructure_error(tmp_path: Path) -> None:
    import time

    from rig.errors import InfraError

    be = FakeBackend(collisions=99)
    with (
        pytest.raises(InfraError, match="no free loopback port"),
        started_domain(be, _spec(tmp_path), tmp_path / "o", tmp_path / "s", time.monotonic() + 5),
    ):
        pass


# --------------------------------------------------------------------------- runner branch
def test_runner_vm_flavour_on_a_lane_without_libvirt_is_a_stated_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bochs = LaneSpec(name="bochs", backend="bochs", vmx=True)
    cell = Cell(lane=bochs, kernel=K612, cpu=CpuSpec("penryn", {"bochs": "core2_penryn_t9600"}))
    from rig.lanes.bochs import BochsBackend

    monkeypatch.setattr(BochsBackend, "unavailable", lambda self: None)
    from rig.artifacts import Artifacts

    runner = CellRunner(
        config=RunConfig(run_id="r", run_dir=tmp_path, driver=tmp_path, guest="vm"),
        artifacts=Artifacts(Cache(tmp_path / "cache")),
        embed_pool=tmp_path / "pool",
    )
    v = runner.run(cell)
    assert {sv.outcome for sv in v.stages.values()} == {Outcome.SKIPPED}
    assert "cannot run full-VM guests" in v.stages["build"].reason


# --------------------------------------------------------------------------- image tree helpers
def test_in_tree_follows_links_inside_the_tree_only(tmp_path: Path) -> None:
    from rig.guest.vm.image import in_tree

    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    (tree / "usr/lib/modules/7.3").mkdir(parents=True)
    (tree / "usr/lib/modules/7.3/vmlinuz").write_text("k")
    (tree / "boot/vmlinuz-7.3").symlink_to("/usr/lib/modules/7.3/vmlinuz")  # absolute: in tree
    (tree / "boot/rel").symlink_to("../usr/lib/modules/7.3/vmlinuz")
    (tmp_path / "host-file").write_text("host")
    (tree / "boot/escape").symlink_to("../../host-file")
    (tree / "boot/loop").symlink_to("loop")
    assert in_tree(tree, "boot/vmlinuz-7.3") == tree / "usr/lib/modules/7.3/vmlinuz"
    assert in_tree(tree, "boot/rel") == tree / "usr/lib/modules/7.3/vmlinuz"
    assert in_tree(tree, "boot/escape") is None
    assert in_tree(tree, "boot/loop") is None
    assert in_tree(tree, "boot/missing") is None
    assert in_tree(tree, "boot") is None  # a directory is not a kernel


def test_scratch_dir_is_removed_whatever_happens(tmp_path: Path) -> None:
    from rig.guest.vm.resources import scratch_dir

    with pytest.raises(RuntimeError), scratch_dir(tmp_path / "vm") as d:
        (d / "overlay.qcow2").write_text("x")
        raise RuntimeError
    assert not (tmp_path / "vm").exists()


# --------------------------------------------------------------------------- in-guest build
@dataclass
class BuildGuest:
    make_rc: int = 0
    ko_exists: bool = True
    commands: list[str] = field(default_factory=list)
    puts: list[tuple[str, int]] = field(default_factory=list)
    gets: list[str] = field(default_factory=list)

    def run(self, command: str, step: str, cap_s: float = 30.0) -> Reply:
        self.commands.append(command)
        if command.startswith("make "):
            out = "  CC [M]  /root/rig/driver/x.o\nx.c:1:2: warning: unused\n"
            return Reply(self.make_rc, out, "")
        if command.startswith("test -f"):
            return Reply(0 if self.ko_exists else 1, "", "")
        return Reply(0, "", "")

    def put(self, data: bytes, remote: str, step: str) -> None:
        self.puts.append((remote, len(data)))

    def get(self, remote: str, local: Path, step: str) -> None:
        self.gets.append(remote)
        local.write_text("ko")

    def stream(self, command: str, step: str, cap_s: float, out: IO[str]) -> int:
        raise AssertionError("the build never runs the agent")

    def close(self) -> None:
        pass


def _driver(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "Kbuild").write_text("obj-m := vmlaunch.o\n")
    (src / "vmlaunch.c").write_text("int x;\n")
    return src


def test_build_in_guest_uses_the_guests_own_headers(tmp_path: Path) -> None:
    from rig.guest.vm.cell import build_in_guest

    guest = BuildGuest()
    build = build_in_guest(guest, _driver(tmp_path), "vmlaunch", tmp_path)
    assert build.ok and build.warnings == 1 and build.ko == tmp_path / "vmlaunch.ko"
    assert "make -C /lib/modules/$(uname -r)/build M=/root/rig/driver 2>&1" in guest.commands
    assert guest.puts[0][0] == "/root/rig/driver.tar"
    assert guest.gets == ["/root/rig/driver/vmlaunch.ko"]
    assert build.log.startswith("$ make -C /lib/modules/$(uname -r)/build M=/root/rig/driver\n")


def test_build_in_guest_reports_a_compile_error_as_a_result(tmp_path: Path) -> None:
    from rig.guest.vm.cell import build_in_guest

    build = build_in_guest(
        BuildGuest(make_rc=2, ko_exists=False), _driver(tmp_path), "vmlaunch", tmp_path
    )
    assert not build.ok and build.ko is None
    v = judge(TCG_CELL, build, None)
    assert v.stages["build"].outcome is Outcome.FAILED
    assert v.stages["teardown"].outcome is Outcome.SKIPPED
    no_ko = build_in_guest(BuildGuest(ko_exists=False), _driver(tmp_path), "vmlaunch", tmp_path)
    assert not no_ko.ok and "was not produced" in no_ko.log


def test_the_vm_agent_gets_the_teardown_witness_when_planned(tmp_path: Path) -> None:
    ko = tmp_path / "vmlaunch.ko"
    ko.write_bytes(b"\x7fELF fake")
    files = []
    for name in ("irqbypass.ko", "kvm.ko", "kvm-intel.ko", "kvm-witness"):
        (tmp_path / name).write_bytes(name.encode())
        files.append(tmp_path / name)
    with tarfile.open(fileobj=io.BytesIO(agent_tarball(_plan(tmp_path), ko))) as tar:
        assert not any("witness" in n for n in tar.getnames())
    planned = replace(_plan(tmp_path), witness=tuple(files))
    with tarfile.open(fileobj=io.BytesIO(agent_tarball(planned, ko))) as tar:
        names = tar.getnames()
    assert {"./witness/kvm.ko", "./witness/kvm-intel.ko", "./witness/kvm-witness"} <= set(names)


def test_the_agents_ssh_stream_is_kept_to_the_channel_cap(tmp_path: Path) -> None:
    """A guest that sends without end over SSH: its channel file stops at the cap."""
    from rig.guest.vm.cell import CappedText

    with (tmp_path / "agent.txt").open("w") as fh:
        out = CappedText(fh, 1000)
        for _ in range(100):
            assert out.write("x" * 64) == 64  # the stream goes on; what is past the cap goes
        out.flush()
    assert (tmp_path / "agent.txt").read_text() == "x" * 1000
