"""Unit tests of the full-VM lane (rig.vmguest, rig.vmimage, the libvirt VM domain): no VM."""

from __future__ import annotations

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

import pytest

from rig.artifacts import Cache
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
from rig.verdict import judge, parse_console
from rig.vmguest import (
    GuestLost,
    Reply,
    SerialFollower,
    Transcript,
    VmCellPlan,
    _finish,
    _port_collision,
    _started_domain,
    cell_key,
    driver_tarball,
    exercise_in_guest,
    free_port,
    overlay_disk,
    seed_disk,
    ssh_banner,
    vm_devices,
)
from rig.vmimage import image_key, recipe_digest, vm_cmdline, vm_packages

K612 = KernelSpec(name="6.12", suite="trixie", abi="6.12.117+deb13-amd64", version="6.12.117-1")
TCG = LaneSpec(name="tcg", backend="libvirt", vmx=False, domain_type="qemu", guest="vm")
KVM = LaneSpec(name="kvm", backend="libvirt", vmx=True, domain_type="kvm", guest="vm")
PENRYN = CpuSpec(name="penryn", models={"tcg": "Penryn", "kvm": "Penryn"})
TCG_CELL = Cell(lane=TCG, kernel=K612, cpu=PENRYN, timeout_s=400)
BUILD_OK = ModuleBuild(name="vmlaunch", ok=True, log="make: done\n", ko=Path("/x/vmlaunch.ko"))
PENRYN_MODEL = "Intel Core 2 Duo P9xxx (Penryn Class Core 2)"

needs = pytest.mark.skipif


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
    assert [(d.find("target").get("dev"), d.find("driver").get("type")) for d in disks] == [
        ("vda", "qcow2"),
        ("vdb", "raw"),
    ]
    assert disks[0].find("source").get("file") == str(tmp_path / "overlay.qcow2")
    assert disks[1].find("readonly") is not None
    assert dom.find("./devices/interface") is None  # no libvirt network at all
    assert dom.find("./devices/controller[@type='usb']").get("model") == "none"
    args = [a.get("value") for a in dom.findall(f"./{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")]
    assert args[0] == "-netdev"
    assert args[1] == "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22"
    assert args[2] == "-device" and args[3].startswith("virtio-net-pci,netdev=n0")
    assert f'xmlns:ns0="{QEMU_NS}"' in xml or f'xmlns:qemu="{QEMU_NS}"' in xml
    assert dom.find("./devices/serial/source").get("path") == str(tmp_path / "console.txt")
    cmdline = dom.find("./os/cmdline").text
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
    cpu = dom.find("./cpu")
    assert cpu.get("check") == "full"
    assert cpu.find("./feature[@name='vmx']").get("policy") == "require"


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
    assert dom.find("./name").text == "rig-<x>"
    assert dom.find("./devices/disk/source").get("file") == str(odd / "overlay.qcow2")


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
    with seed_disk(tmp_path, key) as img:
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
    assert not list(tmp_path.iterdir())


def test_seed_disk_refuses_what_is_not_a_public_key(tmp_path: Path) -> None:
    from rig.errors import InfraError

    with pytest.raises(InfraError), seed_disk(tmp_path, "ssh-ed25519 AAA\nevil"):
        pass
    assert not list(tmp_path.iterdir())


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

    with tarfile.open(fileobj=io.BytesIO(driver_tarball(tmp_path))) as tar:
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
    assert _port_collision(res)
    assert not _port_collision(replace(res, detail="libvirt: missing features: vmx"))


# --------------------------------------------------------------------------- serial console
def test_serial_follower_takes_whole_lines_once(tmp_path: Path) -> None:
    f = tmp_path / "console.txt"
    f.write_bytes(b"[ 1.0] one\r\n[ 2.0] tw")
    s = SerialFollower(f)
    assert s.take(max_wait_s=0.3) == ["[ 1.0] one"]
    with f.open("ab") as fh:
        fh.write(b"o\r\n")
    assert s.take(max_wait_s=0.3) == ["[ 2.0] two"]
    assert s.take(max_wait_s=0.3) == []
    with f.open("ab") as fh:
        fh.write(b"partial")
    assert s.take(final=True, max_wait_s=0.3) == ["partial"]
    assert SerialFollower(tmp_path / "missing").take(max_wait_s=0.3) == []


# --------------------------------------------------------------------------- the guest sequence
TAINT = "vmlaunch: loading out-of-tree module taints kernel."
LOAD = "vmlaunch: cpu=- load info version=1 break=none"
NO_VMX = "vmlaunch: cpu=0 check declined errno=-19 why=no_vmx -- CPU has no VMX"
FREED0 = "vmlaunch: cpu=- freed ok pages=0"


@dataclass
class FakeGuest:
    """Answers the guest commands like a Debian guest with a driver that declines."""

    serial: Path
    insmod_rc: int = 1
    lost_at: str | None = None  # step at which the guest stops answering
    commands: list[tuple[str, str]] = field(default_factory=list)
    kmsg: list[str] = field(default_factory=list)
    clock: float = 100.0

    def _log(self, *lines: str) -> None:
        out = []
        for line in lines:
            self.clock += 0.01
            out.append(f"[{self.clock:12.6f}] {line}")
        self.kmsg += out
        with self.serial.open("a") as fh:
            fh.write("".join(o + "\r\n" for o in out))

    def run(self, command: str, step: str, cap_s: float = 30.0) -> Reply:
        self.commands.append((step, command))
        if step == self.lost_at:
            if step == "insmod":
                self._log("rig: run=0 step=insmod", LOAD, "BUG: unable to handle page fault")
            raise GuestLost(step, "no answer within 120 s", timed_out=True)
        if step == "prepare":
            model = f"model= {PENRYN_MODEL}"
            return Reply(0, f"kernel=6.12.117+deb13-amd64\nvmx=0\ncpus=1\n{model}\n", "")
        if step == "insmod":
            run = command.split("run=")[1].split()[0]
            self._log(f"rig: run={run} step=insmod", TAINT, LOAD, NO_VMX, FREED0)
            err = "insmod: ERROR: could not insert module vmlaunch.ko: No such device\n"
            return Reply(self.insmod_rc, "", err if self.insmod_rc else "")
        if step == "sysfs":
            return Reply(0, "RIG-SYSFS state: declined\nnoise\n", "")
        if step == "lsmod":
            return Reply(1 if self.insmod_rc else 0, "", "")
        if step == "rmmod":
            self._log("vmlaunch: cpu=- unload ok")
            return Reply(0, "", "")
        if step == "meminfo":
            return Reply(0, "MemFree:          305692 kB\n", "")
        if step == "dmesg":
            dump, self.kmsg = self.kmsg, []
            return Reply(0, "".join(d + "\n" for d in dump), "")
        raise AssertionError(f"unexpected step {step}")


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


def _exercise(tmp_path: Path, guest: FakeGuest, repeat: int = 1) -> Transcript:
    serial = tmp_path / "console.txt"
    serial.write_text("[    1.000000] Linux version 6.12\r\n[   50.000000] rig-seed: key\r\n")
    t = Transcript(SerialFollower(serial))
    exercise_in_guest(guest, t, _plan(tmp_path, repeat), "vmlaunch", "/root/rig/driver/x.ko")
    return t


def test_transcript_speaks_the_console_protocol_and_tcg_decline_passes(tmp_path: Path) -> None:
    guest = FakeGuest(tmp_path / "console.txt")
    text = _exercise(tmp_path, guest).text()
    lines = text.splitlines()
    assert lines[0].endswith("Linux version 6.12")  # boot log first: before RIG-BEGIN
    begin = lines.index("RIG-BEGIN run=r1 cell=tcg-6.12-penryn kernel=6.12.117+deb13-amd64")
    assert (
        lines[begin + 1]
        == "RIG-CPU vmx=0 cpus=1 model=Intel_Core_2_Duo_P9xxx_(Penryn_Class_Core_2)"
    )
    assert lines[begin + 2] == "RIG-RUN 0 module=vmlaunch iter=0"
    assert "RIG-STEP insmod rc=1" in lines
    assert "RIG-SYSFS state: declined" in lines and "noise" not in lines
    assert "RIG-STEP rmmod rc=none" in lines
    assert "RIG-MEM free_kb=305692" in lines
    assert lines[-1] == "RIG-END"
    # the live kernel lines of the step come before its RIG-STEP line, as on a real console
    assert lines.index("RIG-STEP insmod rc=1") > next(
        i for i, ln in enumerate(lines) if NO_VMX in ln
    )
    report = parse_console(text)
    assert report.begin and report.end and report.vmx is False and report.cpus == 1
    assert len(report.runs) == 1 and report.runs[0].dump_complete
    boot = BootResult(console=text, end=BootEnd.POWEROFF, duration_s=60.0)
    v = judge(TCG_CELL, BUILD_OK, boot)
    got = {s: sv.outcome for s, sv in v.stages.items()}
    S, P = Outcome.SKIPPED, Outcome.PASSED
    assert got == {"build": P, "vmxon": S, "vmlaunch": S, "vmcall_exit": S, "teardown": P}
    assert "no VMX" in v.stages["vmxon"].reason


def test_commands_mark_kmsg_quote_params_and_repeat(tmp_path: Path) -> None:
    guest = FakeGuest(tmp_path / "console.txt")
    serial = tmp_path / "console.txt"
    serial.write_text("")
    t = Transcript(SerialFollower(serial))
    plan = replace(_plan(tmp_path, repeat=3), module_params=("brk=vmxon", "n=1"))
    exercise_in_guest(guest, t, plan, "vmlaunch", "/root/rig/driver/vmlaunch.ko")
    insmods = [c for s, c in guest.commands if s == "insmod"]
    assert len(insmods) == 3
    assert "echo 'rig: run=2 step=insmod' > /dev/kmsg" in insmods[2]
    assert insmods[0].endswith("insmod /root/rig/driver/vmlaunch.ko brk=vmxon n=1")
    assert "dmesg -n 8" in insmods[0]
    report = parse_console(t.text())
    assert [r.number for r in report.runs] == [0, 1, 2]
    assert [r.iteration for r in report.runs] == [0, 1, 2]
    assert (
        judge(TCG_CELL, BUILD_OK, BootResult(t.text(), BootEnd.POWEROFF, 1.0))
        .stages["teardown"]
        .outcome
        is Outcome.PASSED
    )


def test_loaded_module_is_unloaded_with_a_kmsg_marker(tmp_path: Path) -> None:
    guest = FakeGuest(tmp_path / "console.txt", insmod_rc=0)
    text = _exercise(tmp_path, guest).text()
    rmmods = [c for s, c in guest.commands if s == "rmmod"]
    assert rmmods == ["echo 'rig: run=0 step=rmmod' > /dev/kmsg; exec rmmod vmlaunch"]
    assert "RIG-STEP rmmod rc=0" in text


def test_guest_lost_mid_step_leaves_a_transcript_without_end(tmp_path: Path) -> None:
    guest = FakeGuest(tmp_path / "console.txt", lost_at="insmod")
    serial = tmp_path / "console.txt"
    serial.write_text("")
    t = Transcript(SerialFollower(serial))
    with pytest.raises(GuestLost) as exc:
        exercise_in_guest(guest, t, _plan(tmp_path), "vmlaunch", "/x.ko")
    assert exc.value.step == "insmod" and exc.value.timed_out
    t.take_serial(final=True)  # what run_vm_cell does: the serial console since, appended
    text = t.text()
    assert "RIG-END" not in text and "RIG-STEP insmod" not in text
    v = judge(TCG_CELL, BUILD_OK, BootResult(text, BootEnd.PANIC, 9.0, detail="guest panicked"))
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

    def wait(self, timeout_s: float) -> bool:
        if self.ends_by_itself is not None or self.stopped:
            self.done = True
        return self.done

    def stop(self) -> None:
        self.stopped = True

    def result(self) -> BootResult:
        end = self.ends_by_itself or BootEnd.EMULATOR
        return BootResult("", end, 1.0, detail=self.detail)


class NoConn:
    def close(self) -> None:
        pass


@dataclass
class PoweroffGuest:
    conn: NoConn = field(default_factory=NoConn)
    commands: list[str] = field(default_factory=list)

    def run(self, command: str, step: str, cap_s: float = 30.0) -> Reply:
        self.commands.append(command)
        return Reply(0, "", "")


def test_finish_powers_off_over_ssh(tmp_path: Path) -> None:
    dom = FakeDom(tmp_path / "c", BootEnd.POWEROFF, "guest powered off")
    guest = PoweroffGuest()
    assert _finish(dom, guest, None) == (BootEnd.POWEROFF, "guest powered off")
    assert guest.commands == ["systemctl --no-block poweroff"]
    assert not dom.stopped


def test_finish_destroys_a_guest_that_does_not_power_off(tmp_path: Path) -> None:
    dom = FakeDom(tmp_path / "c")
    end, detail = _finish(dom, PoweroffGuest(), None)
    assert dom.stopped and end is BootEnd.TIMEOUT and "did not power off" in detail


def test_finish_reports_the_panic_that_ended_the_domain(tmp_path: Path) -> None:
    dom = FakeDom(
        tmp_path / "c", BootEnd.PANIC, "guest panicked: Kernel panic - not syncing: Fatal"
    )
    end, detail = _finish(dom, PoweroffGuest(), GuestLost("insmod", "SSH failed", timed_out=False))
    assert end is BootEnd.PANIC and "during insmod" in detail and "Fatal" in detail


def test_finish_sees_a_panic_on_the_console_of_a_stuck_guest(tmp_path: Path) -> None:
    console = tmp_path / "c"
    console.write_text("[ 9.0] Kernel panic - not syncing: Fatal exception\r\n")
    dom = FakeDom(console)
    end, detail = _finish(dom, PoweroffGuest(), GuestLost("rmmod", "x", timed_out=True))
    assert dom.stopped and end is BootEnd.PANIC and "Fatal exception" in detail


def test_finish_calls_a_silent_stuck_guest_a_timeout(tmp_path: Path) -> None:
    dom = FakeDom(tmp_path / "c")
    end, detail = _finish(dom, PoweroffGuest(), GuestLost("insmod", "no answer", timed_out=True))
    assert dom.stopped and end is BootEnd.TIMEOUT and "during insmod" in detail


# --------------------------------------------------------------------------- port retries
@dataclass
class FakeBackend:
    collisions: int
    ports: list[str] = field(default_factory=list)

    @contextmanager
    def running(self, spec: BootSpec, *, vm: VmDevices, extra_s: float) -> Iterator[object]:
        self.ports.append(vm.qemu_args[1])
        collide = len(self.ports) <= self.collisions
        detail = "libvirt: Could not set up host forwarding rule" if collide else ""
        dom = StartDom(started_now=not collide, detail=detail)
        yield dom


@dataclass
class StartDom:
    started_now: bool
    detail: str

    def started(self) -> bool:
        return self.started_now

    def ended(self) -> bool:
        return not self.started_now

    def result(self) -> BootResult:
        return BootResult("", BootEnd.EMULATOR, 0.1, detail=self.detail)


def test_a_port_lost_to_another_worker_is_retried(tmp_path: Path) -> None:
    import time

    be = FakeBackend(collisions=2)
    with _started_domain(
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
        _started_domain(be, _spec(tmp_path), tmp_path / "o", tmp_path / "s", time.monotonic() + 5),
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
    assert "libvirt lanes only" in v.stages["build"].reason


# --------------------------------------------------------------------------- image tree helpers
def test_in_tree_follows_links_inside_the_tree_only(tmp_path: Path) -> None:
    from rig.vmimage import in_tree

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
    from rig.vmguest import scratch_dir

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


def _driver(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "Kbuild").write_text("obj-m := vmlaunch.o\n")
    (src / "vmlaunch.c").write_text("int x;\n")
    return src


def test_build_in_guest_uses_the_guests_own_headers(tmp_path: Path) -> None:
    from rig.vmguest import build_in_guest

    guest = BuildGuest()
    build = build_in_guest(guest, _driver(tmp_path), "vmlaunch", tmp_path)
    assert build.ok and build.warnings == 1 and build.ko == tmp_path / "vmlaunch.ko"
    assert "make -C /lib/modules/$(uname -r)/build M=/root/rig/driver 2>&1" in guest.commands
    assert guest.puts[0][0] == "/root/rig/driver.tar"
    assert guest.gets == ["/root/rig/driver/vmlaunch.ko"]
    assert build.log.startswith("$ make -C /lib/modules/$(uname -r)/build M=/root/rig/driver\n")


def test_build_in_guest_reports_a_compile_error_as_a_result(tmp_path: Path) -> None:
    from rig.vmguest import build_in_guest

    build = build_in_guest(
        BuildGuest(make_rc=2, ko_exists=False), _driver(tmp_path), "vmlaunch", tmp_path
    )
    assert not build.ok and build.ko is None
    v = judge(TCG_CELL, build, None)
    assert v.stages["build"].outcome is Outcome.FAILED
    assert v.stages["teardown"].outcome is Outcome.SKIPPED
    no_ko = build_in_guest(BuildGuest(ko_exists=False), _driver(tmp_path), "vmlaunch", tmp_path)
    assert not no_ko.ok and "was not produced" in no_ko.log
