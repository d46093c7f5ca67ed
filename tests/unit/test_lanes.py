"""Lane plumbing without booting: domain XML accepted by a real libvirt (test:///default),
bochsrc values checked, the console watcher against a real writer and a real process."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rig.errors import InfraError
from rig.guest.protocol import TRANSCRIPT_CAP
from rig.lanes.base import CHANNEL_CAP, make_result, owned_process, watch_console
from rig.lanes.bochs import bochsrc
from rig.lanes.libvirt import domain_xml
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
from rig.verdict import judge


def _spec(tmp_path: Path, model: str = "Penryn") -> BootSpec:
    image = GuestImage(
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd.gz",
        cmdline='console=ttyS0 evil="</cmdline><devices>"',
    )
    return BootSpec(image=image, cpu_model=model, memory_mib=512, vcpus=1, timeout_s=5,
                    workdir=tmp_path)  # fmt: skip


def test_domain_xml_escapes_hostile_values_and_libvirt_accepts_it(tmp_path: Path) -> None:
    libvirt = pytest.importorskip("libvirt")
    xml = domain_xml(_spec(tmp_path), name="rig-<x>&'", domain_type="qemu",
                     console=tmp_path / "console.txt", require_vmx=False,
                     agent=tmp_path / "agent.txt")  # fmt: skip
    root = ET.fromstring(xml)
    # ttyS0 is the kernel's console, ttyS1 the guest agent's protocol channel
    serials = [(s.find("target").get("port"), s.find("source").get("path"))  # type: ignore[union-attr]
               for s in root.findall("devices/serial")]  # fmt: skip
    assert serials == [("0", str(tmp_path / "console.txt")), ("1", str(tmp_path / "agent.txt"))]
    assert root.findtext("name") == "rig-<x>&'"
    assert root.findtext("os/cmdline") == 'console=ttyS0 evil="</cmdline><devices>"'
    assert len(root.findall("devices")) == 1
    assert root.find("devices/interface") is None  # no network: the guest reaches nothing
    conn = libvirt.open("test:///default")
    try:
        dom = conn.createXML(xml, 0)
        assert dom.name() == "rig-<x>&'"
        dom.destroy()
    finally:
        conn.close()


def test_domain_xml_requires_vmx_with_full_check_on_kvm(tmp_path: Path) -> None:
    xml = domain_xml(_spec(tmp_path, "Haswell-noTSX"), name="rig-k", domain_type="kvm",
                     console=tmp_path / "c", require_vmx=True)  # fmt: skip
    cpu = ET.fromstring(xml).find("cpu")
    assert cpu is not None and cpu.get("check") == "full"
    assert cpu.get("match") == "minimum"  # QEMU/KVM's own extra features are no mismatch
    feature = cpu.find("feature")
    assert feature is not None and feature.attrib == {"policy": "require", "name": "vmx"}


def test_bochsrc_refuses_names_that_could_inject_options(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "corei7_haswell_4770")
    rc = bochsrc(spec, tmp_path / "boot.iso", tmp_path / "console.txt", tmp_path / "agent.txt",
                 tmp_path / "bochs.log")  # fmt: skip
    assert "cpu: model=corei7_haswell_4770, count=1" in rc
    assert 'display_library: rfb, options="timeout=0"' in rc
    # the guest agent's protocol has its own port, where the kernel never writes
    assert f'com1: enabled=1, mode=file, dev="{tmp_path / "console.txt"}"' in rc
    assert f'com2: enabled=1, mode=file, dev="{tmp_path / "agent.txt"}"' in rc
    for bad in ("haswell, count=4", "x\nmegs: 1", "a b"):
        with pytest.raises(InfraError):
            files = (tmp_path / "i", tmp_path / "c", tmp_path / "a", tmp_path / "l")
            bochsrc(_spec(tmp_path, bad), *files)


def _writer(path: Path, lines: list[str], delay: float) -> threading.Thread:
    def run() -> None:
        with path.open("a") as fh:
            for line in lines:
                time.sleep(delay)
                fh.write(line + "\n")
                fh.flush()

    t = threading.Thread(target=run)
    t.start()
    return t


def test_watch_console_sees_poweroff(tmp_path: Path) -> None:
    console = tmp_path / "console.txt"
    t = _writer(console, ["RIG-BEGIN", "RIG-END", "[ 1.0] reboot: Power down"], 0.05)
    w = watch_console(console, alive=t.is_alive, timeout_s=20, poll_s=0.02)
    t.join()
    assert w.end is BootEnd.POWEROFF


def test_watch_console_stops_soon_after_a_panic(tmp_path: Path) -> None:
    console = tmp_path / "console.txt"
    t = _writer(console, ["RIG-BEGIN", "Kernel panic - not syncing: boom"], 0.05)
    start = time.monotonic()
    w = watch_console(console, alive=lambda: True, timeout_s=60, poll_s=0.02)
    t.join()
    assert w.end is BootEnd.PANIC
    assert "boom" in w.detail
    assert time.monotonic() - start < 10


def test_watch_console_times_out_and_notices_a_dead_emulator(tmp_path: Path) -> None:
    console = tmp_path / "console.txt"
    console.write_text("RIG-BEGIN\n")
    assert (
        watch_console(console, alive=lambda: True, timeout_s=0.3, poll_s=0.05).end
        is BootEnd.TIMEOUT
    )
    assert (
        watch_console(console, alive=lambda: False, timeout_s=5, poll_s=0.05).end
        is BootEnd.EMULATOR
    )


def test_owned_process_kills_its_whole_group(tmp_path: Path) -> None:
    code = "import subprocess,time; subprocess.Popen(['sleep','300']); time.sleep(300)"
    pidfile = tmp_path / "p.pid"
    with owned_process([sys.executable, "-c", code], cwd=tmp_path, stdout=tmp_path / "out",
                       pidfile=pidfile) as proc:  # fmt: skip
        time.sleep(0.5)
        pgid = proc.pid
        assert pidfile.exists()
    assert not pidfile.exists()
    time.sleep(0.2)
    members = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout
    states = [Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
              for pid in members.split() if Path(f"/proc/{pid}").exists()]  # fmt: skip
    assert all(state == "Z" for state in states), states  # only unreaped zombies may remain


def test_bochs_firmware_is_seabios_only_when_the_boot_sets_feature_control(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    from rig.lanes.bochs import BIOS, SEABIOS

    spec = _spec(tmp_path, "corei7_haswell_4770")
    files = (tmp_path / "i", tmp_path / "c", tmp_path / "a", tmp_path / "l")
    assert f"romimage: file={BIOS}" in bochsrc(spec, *files)
    locked_off = replace(spec, feature_control=0x1)
    assert f"romimage: file={SEABIOS}" in bochsrc(locked_off, *files)


def test_watch_console_gives_up_on_a_kernel_that_oopsed_while_booting(tmp_path: Path) -> None:
    """Real lines of kernel 5.10 on Bochs corei7_icelake_u: an oops, then silence."""
    console = tmp_path / "console.txt"
    lines = ["[    0.968000] invalid opcode: 0000 [#1] SMP NOPTI",
             "[    0.968000] RIP: 0010:ktime_get+0x91/0xa0"]  # fmt: skip
    t = _writer(console, lines, 0.01)
    w = watch_console(console, alive=lambda: True, timeout_s=60, poll_s=0.02,
                      boot_oops_stall_s=0.5)  # fmt: skip
    t.join()
    assert w.end is BootEnd.TIMEOUT
    assert "oopsed while booting" in w.detail
    assert w.duration_s < 10


def test_watch_console_keeps_waiting_after_an_oops_in_the_test(tmp_path: Path) -> None:
    """After RIG-BEGIN an oops is the driver's: the guest's own end (or the timeout) decides."""
    console = tmp_path / "console.txt"
    t = _writer(console, ["RIG-BEGIN", "[ 9.0] BUG: kernel NULL pointer dereference"], 0.01)
    w = watch_console(console, alive=lambda: True, timeout_s=1.5, poll_s=0.02,
                      boot_oops_stall_s=0.3)  # fmt: skip
    t.join()
    assert w.end is BootEnd.TIMEOUT
    assert "cell timeout" in w.detail


# --------------------------------------------------------------------------- bounded output
def _sparse(path: Path, size: int, tail: bytes = b"") -> None:
    """A channel file of `size` bytes (a hole: the disk holds nothing of it) ending in `tail`."""
    with path.open("wb") as fh:
        fh.truncate(size - len(tail))
        fh.seek(size - len(tail))
        fh.write(tail)


@pytest.mark.parametrize("name", ["console.txt", "agent.txt", "l1-console.txt"])
def test_a_guest_that_writes_a_gigabyte_is_stopped_in_bounded_memory(
    tmp_path: Path, name: str
) -> None:
    """1 GiB on any of the cell's channels: the watcher stops at the cap, having read no more
    than the cap of the console, and make_result keeps no more than the cap either."""
    console = tmp_path / "console.txt"
    console.write_text("[ 0.0] Linux version\n")
    _sparse(tmp_path / name, 2**30, b"\n[ 9.9] reboot: Power down\n")
    tracemalloc.start()
    w = watch_console(console, alive=lambda: True, timeout_s=60, poll_s=0.02, cap=4 * 2**20)
    result = make_result(tmp_path, w)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert w.end is BootEnd.FLOOD, w
    assert w.detail == f"the guest wrote more than 4 MiB on {name}: stopped"
    assert len(result.console) <= CHANNEL_CAP and len(result.agent) <= CHANNEL_CAP
    assert peak < 4 * CHANNEL_CAP  # not the gigabyte


def test_the_watcher_reads_a_console_from_where_it_stopped(tmp_path: Path) -> None:
    """Poll after poll it reads only what was added, and a line split between two reads is
    still seen: the poweroff line, written in two halves, ends the watch."""
    console = tmp_path / "console.txt"
    console.write_text("x" * 100_000 + "\n[ 1.0] reboot: Po")

    def rest() -> None:
        time.sleep(0.3)
        with console.open("a") as fh:
            fh.write("wer down\n")

    t = threading.Thread(target=rest)
    t.start()
    w = watch_console(console, alive=t.is_alive, timeout_s=20, poll_s=0.02)
    t.join()
    assert w.end is BootEnd.POWEROFF


def test_a_flooded_boot_is_an_infrastructure_error_with_a_bounded_transcript() -> None:
    spam = "".join(f"[ 5.{i:06d}] vmlaunch: spam {i}\n" for i in range(60_000))
    agent = "RIG-BEGIN run=r cell=tcg-6.12-penryn\nRIG-CPU vmx=0 model=x\nRIG-RUN 0 module=m\n"
    said = "the guest wrote more than 16 MiB on console.txt: stopped"
    boot = BootResult(console=spam, agent=agent, end=BootEnd.FLOOD, duration_s=3.0,
                      detail=said)  # fmt: skip
    cell = Cell(
        lane=LaneSpec(name="tcg", backend="libvirt", vmx=False, domain_type="qemu"),
        kernel=KernelSpec(name="6.12", suite="trixie", abi="6.12.117+deb13-amd64"),
        cpu=CpuSpec("penryn", {"tcg": "Penryn"}),
        timeout_s=400,
    )
    build = ModuleBuild(name="vmlaunch", ok=True, log="", ko=Path("/x/vmlaunch.ko"))
    verdict = judge(cell, build, boot)
    assert {s: v.outcome for s, v in verdict.stages.items() if s != "build"} == dict.fromkeys(
        ["vmxon", "vmlaunch", "vmcall_exit", "teardown"], Outcome.ERROR
    )
    assert "infrastructure: the guest wrote more than 16 MiB" in verdict.stages["vmxon"].reason
    assert len(verdict.console) <= TRANSCRIPT_CAP + 100 < len(spam)
    assert "lines cut here" in verdict.console and verdict.console.endswith("RIG-RUN 0 module=m\n")
