"""The pieces of a snapshot-restored cell that need no emulator: the carrier medium, the
storage modules' load order, and the RFB client that presses Bochs' Suspend button (against
a real socket peer speaking RFB 3.3)."""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import struct
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rig.artifacts.media import BLOCK, MAGIC, carrier_bytes, depends, load_order
from rig.errors import InfraError
from rig.guest.carrier import cpio_names, gate_facts, pack_carrier
from rig.guest.initramfs import wants_snapshot, write_plan
from rig.lanes.bochs_rfb import HEADER_Y, SUSPEND_FROM_RIGHT, RfbError, press_suspend
from rig.lanes.bochs_snapshot import restore_config, restore_dir
from rig.lanes.snapshots import Gate, gate, ready_line
from rig.model import BootEnd, BootResult, BootSpec, GuestImage, Probe, WarmStart


def _ko(depends: str) -> bytes:
    """A module's bytes as far as load_order reads them: .modinfo strings, NUL-separated."""
    return b"\x7fELF...\0license=GPL\0depends=" + depends.encode() + b"\0intree=Y\0vermagic=6.12\0"


MODULES_6_12 = {  # Debian 6.12's `depends=` of the CD-ROM's drivers
    "scsi_common": _ko(""),
    "cdrom": _ko(""),
    "scsi_mod": _ko("scsi_common"),
    "sr_mod": _ko("scsi_mod,scsi_common,cdrom"),
    "libata": _ko("scsi_mod,scsi_common"),
    "ata_piix": _ko("libata,scsi_mod,scsi_common"),
}


def test_modinfo_depends_are_read_from_the_module() -> None:
    assert depends(MODULES_6_12["sr_mod"]) == ["scsi_mod", "scsi_common", "cdrom"]
    assert depends(_ko("")) == [] and depends(b"no modinfo") == []
    assert depends(_ko("crc-t10dif")) == ["crc_t10dif"]


def test_storage_modules_load_dependencies_first_and_once() -> None:
    order = load_order(MODULES_6_12, ("sr_mod", "ata_piix"))
    assert sorted(order) == sorted(MODULES_6_12) and len(set(order)) == len(order)
    for i, name in enumerate(order):  # every dependency before its user
        assert all(order.index(d) < i for d in depends(MODULES_6_12[name])), order
    five_ten = {k: v for k, v in MODULES_6_12.items() if k != "scsi_common"}  # no scsi_common
    five_ten |= {"scsi_mod": _ko(""), "sr_mod": _ko("scsi_mod,cdrom"), "libata": _ko("scsi_mod"),
                 "ata_piix": _ko("libata,scsi_mod")}  # fmt: skip
    assert load_order(five_ten, ("sr_mod", "ata_piix"))[-1] == "ata_piix"


def test_a_module_the_packages_lack_is_named_with_who_needs_it() -> None:
    with pytest.raises(InfraError, match="no module cdrom \\(needed by sr_mod\\)"):
        load_order({"sr_mod": _ko("cdrom")}, ("sr_mod",))
    with pytest.raises(InfraError, match="no module ata_piix"):
        load_order({}, ("ata_piix",))


@given(st.binary(max_size=3 * BLOCK + 7))
def test_a_carrier_is_whole_blocks_with_a_header_the_guest_can_check(payload: bytes) -> None:
    data = carrier_bytes(payload)
    assert len(data) % BLOCK == 0
    header = data[:BLOCK].split(b"\n")[0].decode()
    magic, length, digest = header.split(" ")
    assert magic == MAGIC
    body = data[BLOCK : BLOCK + int(length)]
    assert body == payload and hashlib.sha256(body).hexdigest() == digest
    assert set(data[BLOCK + len(payload) :]) <= {0}


def test_the_carrier_holds_the_cells_rig_directory(tmp_path: Path) -> None:
    ko = tmp_path / "vmlaunch.ko"
    ko.write_bytes(b"\x7fELF module")
    write_plan(tmp_path / "rig", [(ko, 3, ["x=1"])], run_id="r1", cell_id="bochs-6.12-haswell")
    size = pack_carrier(tmp_path / "rig", tmp_path / "carrier.img")
    data = (tmp_path / "carrier.img").read_bytes()
    assert size == len(data)
    length = int(data[:BLOCK].split(b" ")[1])
    names = cpio_names(gzip.decompress(data[BLOCK : BLOCK + length]))
    assert {"rig/plan", "rig/run-id", "rig/cell-id", "rig/rig-agent",
            "rig/modules/vmlaunch.ko"} <= set(names)  # fmt: skip
    assert not list(tmp_path.glob(".carrier*"))  # its staging tree is gone


class _RfbPeer:
    """A display speaking RFB 3.3 the way Bochs' rfb GUI does: records pointer events."""

    def __init__(self, width: int, height: int, security: int = 1) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.events: list[tuple[int, int, int]] = []
        self.size, self.security = (width, height), security
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.sendall(b"RFB 003.003\n")
            assert conn.recv(12) == b"RFB 003.003\n"
            conn.sendall(struct.pack(">I", self.security))
            if self.security != 1:
                return
            assert conn.recv(1) == b"\x01"
            conn.sendall(struct.pack(">HH", *self.size) + b"\0" * 16 + struct.pack(">I", 5)
                         + b"bochs")  # fmt: skip
            conn.sendall(b"\0" * 4096)  # an update nobody asked for
            data = b""
            while len(data) < 12:
                chunk = conn.recv(12 - len(data))
                if not chunk:
                    break
                data += chunk
            for i in range(0, len(data), 6):
                _t, buttons, x, y = struct.unpack(">BBHH", data[i : i + 6])
                self.events.append((buttons, x, y))


def test_suspend_is_pressed_and_released_in_the_headerbar_left_of_power() -> None:
    peer = _RfbPeer(720, 530)
    assert press_suspend(peer.port) == (720, 530)
    peer.thread.join(5)
    x = 720 - SUSPEND_FROM_RIGHT
    assert 720 - 64 <= x < 720 - 32  # the Suspend button's 32 pixels
    assert peer.events == [(1, x, HEADER_Y), (0, x, HEADER_Y)]


def test_a_display_that_asks_for_a_password_is_refused() -> None:
    peer = _RfbPeer(720, 530, security=2)
    with pytest.raises(RfbError, match="security type 2"):
        press_suspend(peer.port)


def _spec(tmp_path: Path, **kw: object) -> BootSpec:
    warm = WarmStart(base=tmp_path / "b", carrier=tmp_path / "c", key="k")
    image = GuestImage(kernel=tmp_path / "k", initrd=tmp_path / "i", cmdline="", warm=warm)
    base = BootSpec(image=image, cpu_model="corei7_haswell_4770", memory_mib=512, vcpus=1,
                    timeout_s=60, workdir=tmp_path)  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def test_only_a_plain_boot_of_a_split_guest_is_restored(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    assert spec.restorable()
    assert not replace(spec, image=replace(spec.image, warm=None)).restorable()
    assert not _spec(tmp_path, feature_control=0x5).restorable()  # SeaBIOS, GRUB's wrmsr
    assert not _spec(tmp_path, cpu_witness=True).restorable()  # Bochs' log level, set at boot
    assert not _spec(tmp_path, expect_crash=True).restorable()
    assert not _spec(tmp_path, inject=("nmi",)).restorable()


SAVED = """\
plugin_ctrl: voodoo=false, biosdev=true, usb_uhci=true, busmouse=false, serial=true, unmapped=true
ata0-master: type=cdrom, path="/old/boot.iso", status=inserted, model="Generic 1234", x=1
log: /old/bochs.log
com1: enabled=true, mode=file, dev="/old/console.txt"
com2: enabled=true, mode=file, dev="/old/agent.txt"
"""


def test_a_restore_names_the_cells_files_and_puts_plugins_in_a_boots_order(
    tmp_path: Path,
) -> None:
    cell = tmp_path / "cell"
    config = restore_config(SAVED, console=cell / "console.txt", agent=cell / "agent.txt",
                            log=cell / "bochs.log", medium=cell / "carrier.img")  # fmt: skip
    assert f'dev="{cell}/console.txt"' in config and f'dev="{cell}/agent.txt"' in config
    assert f'path="{cell}/carrier.img", status=inserted, model="Generic 1234"' in config
    assert f'log: "{cell}/bochs.log"' in config
    assert "/old/" not in config
    assert config.splitlines()[0].endswith("serial=true, unmapped=true, usb_uhci=true")
    with pytest.raises(InfraError, match=r"com2\.dev"):
        restore_config(SAVED.replace("com2", "com3"), console=cell, agent=cell, log=cell,
                       medium=cell)  # fmt: skip
    with pytest.raises(InfraError, match="not usable"):
        restore_config(SAVED, console=Path('/a"b'), agent=cell, log=cell, medium=cell)


def test_a_cells_restore_dir_links_the_save_and_owns_its_config(tmp_path: Path) -> None:
    save = tmp_path / "save"
    save.mkdir()
    (save / "config").write_text(SAVED)
    (save / "memory.ram").write_bytes(b"\0" * 4096)
    restore_dir(save, tmp_path / "state", "mine")
    assert (tmp_path / "state/memory.ram").resolve() == save / "memory.ram"
    assert not (tmp_path / "state/config").is_symlink()
    assert (tmp_path / "state/config").read_text() == "mine"
    assert (save / "config").read_text() == SAVED  # the save is only read


def test_the_ready_line_counts_only_when_whole() -> None:
    assert ready_line("RIG-SNAPSHOT ready") is None  # Bochs writes byte by byte
    assert ready_line("RIG-SNAPSHOT ready sr0=ye") is None
    assert ready_line("boot noise\r\nRIG-SNAPSHOT ready sr0=yes\r\n") == "yes"  # a tty's lines
    assert ready_line("RIG-SNAPSHOT ready sr0=no\n") == "no"


class _Boots:
    """gate()'s `boot`: BootResults as the lane would give them, and what it was asked."""

    def __init__(self, booted: BootResult, restored: BootResult) -> None:
        self.results = {False: booted, True: restored}
        self.asked: list[tuple[Path, Path | None]] = []

    def __call__(self, spec: BootSpec, save: Path | None) -> BootResult:
        self.asked.append((spec.workdir, save))
        assert (spec.image.warm is None) == (save is None)  # booted fresh: no carrier
        return self.results[save is not None]


def _result(console: str, *, end: BootEnd = BootEnd.POWEROFF, restored: str = "") -> BootResult:
    return BootResult(console=console, end=end, duration_s=1.0, agent="RIG-CPU vmx=1\n",
                      restored=restored)  # fmt: skip


CHECK = "[   17.3] vmlaunch: cpu=0 check ok vmx_basic=0xd8 feature_control=0x5\n"


def _gated(tmp_path: Path, boots: _Boots) -> tuple[Gate, Path]:
    entry = tmp_path / "bochs-snapshots" / "m-key"
    (entry / "save").mkdir(parents=True)
    carrier = WarmStart(tmp_path / "b", tmp_path / "pc", "k")
    probe_image = GuestImage(tmp_path / "k", tmp_path / "pi", cmdline="", warm=carrier)
    probe = Probe(image=lambda: probe_image, facts=gate_facts)
    warm = WarmStart(tmp_path / "b", tmp_path / "c", "k", probe=probe)
    spec = replace(_spec(tmp_path), image=replace(_spec(tmp_path).image, warm=warm))
    return gate(spec, entry / "save", boots), entry


def test_the_gate_passes_a_save_whose_probe_prints_the_same_and_keeps_it(tmp_path: Path) -> None:
    boots = _Boots(_result("[    9.8] " + CHECK[10:]), _result(CHECK, restored="m-key"))
    verdict, entry = _gated(tmp_path, boots)
    assert verdict.ok, verdict.why
    kept = json.loads((entry / "gate.json").read_text())
    assert kept["ok"] and kept["booted"] == kept["restored"]
    assert [save for _, save in boots.asked] == [None, entry / "save"]
    again = _Boots(_result(""), _result(""))  # kept: not run again
    assert gate(replace(_spec(tmp_path)), entry / "save", again).ok and again.asked == []


def test_the_gate_fails_a_save_that_differs_and_says_where(tmp_path: Path) -> None:
    differs = CHECK.replace("feature_control=0x5", "feature_control=0x1")
    verdict, entry = _gated(tmp_path, _Boots(_result(CHECK), _result(differs, restored="m")))
    assert not verdict.ok
    assert "feature_control=0x5" in verdict.why and "feature_control=0x1" in verdict.why
    assert json.loads((entry / "gate.json").read_text())["ok"] is False


def test_a_probe_that_did_not_end_or_was_not_restored_decides_nothing(tmp_path: Path) -> None:
    hung = _Boots(_result(CHECK), _result(CHECK, end=BootEnd.TIMEOUT, restored="m"))
    verdict, entry = _gated(tmp_path, hung)
    assert not verdict.ok and "gated again next time" in verdict.why
    assert not (entry / "gate.json").exists()
    fresh = _Boots(_result(CHECK), _result(CHECK))  # the lane fell back to a fresh boot
    verdict, entry = _gated(tmp_path / "2", fresh)
    assert not verdict.ok and "not gated" in verdict.why
    assert not (entry / "gate.json").exists()


def test_only_a_lane_that_restores_gets_a_split_guest(tmp_path: Path) -> None:
    from rig.guest.base import GuestJob
    from rig.lanes import BochsBackend, LibvirtBackend
    from rig.matrix import load_matrix
    from rig.paths import DEFAULT_MATRIX

    cell = load_matrix(DEFAULT_MATRIX).cell("bochs", "6.12", "haswell")
    job = GuestJob(cell=cell, cpu_model="corei7_haswell_4770", workdir=tmp_path, run_id="r",
                   driver=tmp_path, artifacts=None, timeout_s=60, snapshot=True)  # type: ignore[arg-type]  # fmt: skip
    bochs, tcg = BochsBackend(), LibvirtBackend(name="tcg", embed_pool=tmp_path, restores=True)
    other = LibvirtBackend(name="tcg", embed_pool=tmp_path)  # a libvirt of its own: no restores
    assert wants_snapshot(job, bochs) and wants_snapshot(job, tcg)
    assert not wants_snapshot(job, other)
    assert not wants_snapshot(replace(job, snapshot=False), bochs)
    assert not wants_snapshot(replace(job, cpu_witness=True), bochs)
    assert not wants_snapshot(replace(job, feature_control=5), bochs)
    assert not wants_snapshot(replace(job, crash=True), bochs)


def test_only_the_embedded_tcg_lane_restores_libvirt_saves(tmp_path: Path) -> None:
    from rig.lanes import backend_for
    from rig.matrix import load_matrix
    from rig.paths import DEFAULT_MATRIX

    lanes = load_matrix(DEFAULT_MATRIX).lanes
    assert backend_for(lanes["tcg"], embed_pool=tmp_path).restores
    assert not backend_for(lanes["tcg"], embed_pool=tmp_path, uri="qemu:///system").restores
    assert not backend_for(lanes["kvm"], embed_pool=tmp_path).restores  # untested: no VT-x here


SAVED_DOMAIN = """<domain type='qemu'>
  <name>rig-libvirt-snapshots-boot</name>
  <uuid>89a9df3c-a3d1-4aae-ab41-7b41476857dc</uuid>
  <devices>
    <disk type='file' device='cdrom'><source file='/cache/tmp/medium.img'/>
      <target dev='hdc' bus='ide'/><readonly/></disk>
    <serial type='file'><source path='/cache/tmp/boot/console.txt'/><target port='0'/></serial>
    <serial type='file'><source path='/cache/tmp/boot/agent.txt'/><target port='1'/></serial>
    <console type='file'><source path='/cache/tmp/boot/console.txt'/><target port='0'/></console>
  </devices>
</domain>"""


def test_a_libvirt_restore_keeps_the_saves_identity_and_takes_the_cells_paths() -> None:
    import xml.etree.ElementTree as ET

    from rig.lanes.libvirt_snapshot import restore_xml

    cell = Path("/runs/r1/cells/tcg-6.12-penryn")
    name, xml = restore_xml(SAVED_DOMAIN, console=cell / "console.txt", agent=cell / "agent.txt",
                            medium=cell / "carrier.img")  # fmt: skip
    dom = ET.fromstring(xml)
    assert name == "rig-libvirt-snapshots-boot" == dom.findtext("name")
    assert dom.findtext("uuid") == "89a9df3c-a3d1-4aae-ab41-7b41476857dc"  # libvirt checks it
    serials = [s.get("path") for s in dom.iterfind("devices/serial/source")]
    assert serials == [str(cell / "console.txt"), str(cell / "agent.txt")]
    assert dom.find("devices/disk/source").get("file") == str(cell / "carrier.img")  # type: ignore[union-attr]
    assert dom.find("devices/console") is None and "/cache/tmp" not in xml


@pytest.mark.parametrize(
    "saved",
    [
        "<domain><devices/></domain>",
        SAVED_DOMAIN.replace("device='cdrom'", "device='disk'"),
        "<domain><name>x</name></domain>",
        "not xml",
    ],
)
def test_a_save_that_is_not_the_rigs_is_refused(saved: str) -> None:
    from rig.lanes.libvirt_snapshot import restore_xml

    with pytest.raises(InfraError):
        restore_xml(saved, console=Path("c"), agent=Path("a"), medium=Path("m"))
