"""The nested lane without booting: CPU model mapping, L1's QEMU command, L1 image key, how
the boot's end is told apart by level (L0/L1 trouble is infrastructure, L2's end is the
guest's), and the matrix keys of the lane."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from rig.artifacts import Artifacts, Cache, installed_version, ldd_paths
from rig.errors import InfraError, UsageError
from rig.guest.base import GuestJob
from rig.guest.initramfs import InitramfsFlavour
from rig.lanes import NestedBackend, backend_for
from rig.lanes.base import ConsoleWatch
from rig.lanes.bochs import BochsBackend, bochsrc
from rig.lanes.nested import facts, judge_levels, l0_model, qemu_args
from rig.lanes.nested_l1 import grub_cfg, l1_key
from rig.matrix import load_matrix, parse_matrix
from rig.matrix.source import MatrixFileError
from rig.model import BootEnd, BootSpec, GuestImage, KernelSpec

REPO = Path(__file__).resolve().parents[2]
L0 = (("", "corei7_haswell_4770"), ("Broadwell-noTSX", "broadwell_ult"))
CMDLINE = "console=ttyS0,115200 quiet panic=-1 modprobe.blacklist=kvm_intel,kvm"


def test_l0_model_default_and_overrides() -> None:
    assert l0_model(L0, "Haswell-noTSX") == "corei7_haswell_4770"
    assert l0_model(L0, "Penryn") == "corei7_haswell_4770"
    assert l0_model(L0, "Broadwell-noTSX") == "broadwell_ult"
    assert l0_model((), "Penryn") is None


def test_qemu_args_require_vmx_and_wire_both_serial_ports() -> None:
    argv = qemu_args("Haswell-noTSX", CMDLINE)
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert argv[argv.index("-cpu") + 1] == "Haswell-noTSX,+vmx"
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-append") + 1] == CMDLINE  # the runner's cmdline, untouched
    chardevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-chardev"]
    assert chardevs == ["serial,id=l2con,path=/dev/ttyS1", "serial,id=l2agent,path=/dev/ttyS2"]
    serials = [argv[i + 1] for i, a in enumerate(argv) if a == "-serial"]
    assert serials == ["chardev:l2con", "chardev:l2agent"]  # L2 ttyS0, then ttyS1
    assert "-no-reboot" in argv and "-nodefaults" in argv
    assert all("\n" not in a for a in argv)  # one argument a line in /l2/qemu-args


def test_qemu_args_with_injection_pass_the_agent_through_l1_and_open_the_monitor() -> None:
    argv = qemu_args("Penryn", CMDLINE, inject=True)
    chardevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-chardev"]
    assert chardevs == ["serial,id=l2con,path=/dev/ttyS1", "pipe,id=l2agent,path=/tmp/l2agent",
                        "pipe,id=l2mon,path=/tmp/l2mon"]  # fmt: skip
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-serial"] == [
        "chardev:l2con", "chardev:l2agent"]  # fmt: skip
    assert argv[argv.index("-mon") + 1] == "chardev=l2mon"
    init = (REPO / "guests/nested/init").read_text()
    assert "/tmp/l2agent.out" in init and "/tmp/l2mon.in" in init  # the FIFOs init makes


def test_only_the_qemu_launcher_injects() -> None:
    qemu = NestedBackend(name="nested", l1_kernel=None, l0_cpus=L0, cache_root=Path("/x"))
    assert qemu.injects == {"nmi", "mce"}
    virt = NestedBackend(name="nv", l1_kernel=None, l0_cpus=L0, cache_root=Path("/x"),
                         launcher="libvirt")  # fmt: skip
    assert virt.injects == frozenset()


def test_a_lane_that_cannot_inject_is_a_stated_skip(tmp_path: Path) -> None:
    matrix = load_matrix(REPO / "matrix.yaml")
    cell = next(c for c in matrix.select(lanes=["bochs"], everything=True))
    job = GuestJob(cell=cell, cpu_model="corei7_haswell_4770", workdir=tmp_path, run_id="r",
                   driver=tmp_path, artifacts=Artifacts(Cache(tmp_path)), timeout_s=1,
                   inject=("nmi",))  # fmt: skip
    why = InitramfsFlavour().unsupported(job, BochsBackend(name="bochs"))
    assert why is not None and "cannot inject nmi" in why and "nested lane" in why
    assert InitramfsFlavour().unsupported(replace(job, inject=()), BochsBackend("bochs")) is None


@pytest.mark.parametrize("model", ["host", "host-passthrough", "Penryn,-vmx", "a b", "x;y"])
def test_qemu_args_refuse_models_that_are_not_plain_names(model: str) -> None:
    with pytest.raises(InfraError):
        qemu_args(model, CMDLINE)


def test_qemu_args_refuse_cmdline_words_a_shell_or_qemu_would_read() -> None:
    with pytest.raises(UsageError):
        qemu_args("Penryn", "console=ttyS0 $(reboot)")


def test_grub_loads_l1_image_then_the_cells_cpio() -> None:
    cfg = grub_cfg(cell=True)
    assert "initrd /boot/l1.gz /boot/l2.cpio" in cfg
    assert "console=ttyS0" in cfg


def test_a_snapshots_l1_boots_without_a_cell_and_waits_for_its_carrier() -> None:
    cfg = grub_cfg(cell=False)
    assert "  initrd /boot/l1.gz\n" in cfg
    assert "l2.cpio" not in cfg


def test_bochsrc_for_l0_has_l1_console_and_l2_console(tmp_path: Path) -> None:
    image = GuestImage(kernel=tmp_path / "k", initrd=tmp_path / "i", cmdline="")
    spec = BootSpec(image=image, cpu_model="corei7_haswell_4770", memory_mib=1024, vcpus=1,
                    timeout_s=5, workdir=tmp_path)  # fmt: skip
    rc = bochsrc(spec, tmp_path / "x.iso", tmp_path / "l1-console.txt", tmp_path / "console.txt",
                 tmp_path / "log")  # fmt: skip
    assert f'com1: enabled=1, mode=file, dev="{tmp_path}/l1-console.txt"' in rc
    assert f'com2: enabled=1, mode=file, dev="{tmp_path}/console.txt"' in rc


def test_ldd_paths() -> None:
    out = (
        "\tlinux-vdso.so.1 (0x00007ffd)\n"
        "\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f11)\n"
        "\t/lib64/ld-linux-x86-64.so.2 (0x00007f22)\n"
    )
    assert ldd_paths(out) == [
        Path("/lib/x86_64-linux-gnu/libz.so.1"),
        Path("/lib64/ld-linux-x86-64.so.2"),
    ]


def test_l1_key_follows_every_input(tmp_path: Path) -> None:
    spec = KernelSpec(name="6.12", suite="trixie", abi="6.12.117+deb13-amd64", version="6.12.117-1")
    lib = tmp_path / "libx.so"
    lib.write_bytes(b"one")
    key = l1_key(spec, [lib], "init")
    assert key.startswith("6.12-")
    assert l1_key(spec, [lib], "init") == key
    assert l1_key(spec, [lib], "init changed") != key
    other = KernelSpec(name="6.12", suite="trixie", abi=spec.abi, version="6.12.117-2")
    assert l1_key(other, [lib], "init") != key
    lib.write_bytes(b"two")  # QEMU or a library upgraded on the host
    assert l1_key(spec, [lib], "init") != key


def test_installed_version_reads_dpkg_status(tmp_path: Path) -> None:
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: linux-image-6.12.117+deb13-amd64\nStatus: install ok installed\n"
        "Version: 6.12.117-1\n\nPackage: make\nStatus: install ok installed\nVersion: 4.4\n"
    )
    assert installed_version(tmp_path, "linux-image-6.12.117+deb13-amd64") == "6.12.117-1"
    assert installed_version(tmp_path, "linux-image-7.3") is None
    assert installed_version(tmp_path / "nowhere", "make") is None


# ------------------------------------------------------------------ how the boot ended
OK_L1 = (
    "RIG-L1 begin kernel=6.12.117+deb13-amd64\nRIG-L1 insmod irqbypass rc=0\n"
    "RIG-L1 insmod kvm rc=0\nRIG-L1 insmod kvm-intel rc=0\n"
    "RIG-L1 facts vmx=1 kvm_intel=1 nested=Y dev_kvm=1 model=x\nRIG-L1 preflight ok\n"
    "RIG-L1 l2 start\n"
)
DONE = ConsoleWatch(BootEnd.POWEROFF, "guest powered off", 200.0)


def test_l2_poweroff_is_the_normal_end() -> None:
    l1 = OK_L1 + "RIG-L1 l2 exit rc=0\nRIG-L1 end\n"
    e = judge_levels(DONE, l1, "RIG-BEGIN ...\n[ 3.1] reboot: Power down\n", "")
    assert e.end is BootEnd.POWEROFF
    assert facts(l1)[-1] == "end"


def test_l2_panic_is_the_guests() -> None:
    l1 = OK_L1 + "RIG-L1 l2 exit rc=0\nRIG-L1 end\n"
    e = judge_levels(DONE, l1, "x\r\n[ 3.1] Kernel panic - not syncing: Fatal exception\r\n", "")
    assert e.end is BootEnd.PANIC and "Fatal exception" in e.detail


def test_l2_hang_is_a_timeout_of_the_guest() -> None:
    watch = ConsoleWatch(BootEnd.TIMEOUT, "no poweroff within the 900 s cell timeout", 900)
    e = judge_levels(watch, OK_L1, "RIG-BEGIN run=1\nvmlaunch: cpu=0 check ok\n", "")
    assert e.end is BootEnd.TIMEOUT


@pytest.mark.parametrize(
    ("l1", "words"),
    [
        (
            OK_L1.replace("nested=Y", "nested=N").replace(
                "preflight ok", "preflight failed: kvm_intel nested VMX is off (nested=N)"
            ),
            "nested VMX is off",
        ),
        (OK_L1.replace("insmod kvm-intel rc=0", "insmod kvm-intel rc=1"), "could not load KVM"),
        (
            OK_L1 + "RIG-L1 qemu: qemu-system-x86_64: warning: host doesn't support requested "
            "feature: CPUID.07H:EBX.erms [bit 9]\nRIG-L1 qemu: qemu-system-x86_64: Host doesn't "
            "support requested features\nRIG-L1 l2 exit rc=1\nRIG-L1 end\n",
            "did not start L2",
        ),
        ("RIG-L1 begin kernel=6.12\n", "without running L2"),
    ],
)
def test_l1_trouble_is_infrastructure(l1: str, words: str) -> None:
    e = judge_levels(DONE, l1, "", "")
    assert e.end is BootEnd.EMULATOR, e
    assert words in e.detail and "nested" in e.detail


def test_l1_panic_and_l1_stall_are_infrastructure() -> None:
    panic = ConsoleWatch(BootEnd.PANIC, "guest panicked: Kernel panic - not syncing: VFS", 9)
    assert judge_levels(panic, "", "", "").end is BootEnd.EMULATOR
    stall = ConsoleWatch(BootEnd.TIMEOUT, "no poweroff within the 900 s cell timeout", 900)
    e = judge_levels(stall, "RIG-L1 begin kernel=6.12\n", "", "")
    assert e.end is BootEnd.EMULATOR and "never started L2" in e.detail


W = "RIG-L1 qemu: qemu-system-x86_64: warning: host doesn't support requested feature: "


def test_vmx_dropped_by_qemu_never_passes() -> None:
    """QEMU runs L2 without vmx: even a guest that powered off is an infrastructure error."""
    l1 = OK_L1 + W + "CPUID.01H:ECX.vmx [bit 5]\nRIG-L1 l2 exit rc=0\nRIG-L1 end\n"
    e = judge_levels(DONE, l1, "RIG-BEGIN\nreboot: Power down\n", "")
    assert e.end is BootEnd.EMULATOR and "dropped vmx" in e.detail
    stall = ConsoleWatch(BootEnd.TIMEOUT, "no poweroff", 900)  # seen live, before QEMU exits
    assert judge_levels(stall, OK_L1 + W + "CPUID.01H:ECX.vmx [bit 5]\n", "x", "").end is (
        BootEnd.EMULATOR
    )


def test_other_dropped_features_are_named_not_fatal() -> None:
    l1 = OK_L1 + W + "CPUID.07H:EBX.erms [bit 9]\n" + W + "MSR(48EH).vmx-mtf [bit 27]\n"
    l1 += "RIG-L1 l2 exit rc=0\nRIG-L1 end\n"
    e = judge_levels(DONE, l1, "RIG-BEGIN\nreboot: Power down\n", "")
    assert e.end is BootEnd.POWEROFF
    assert "QEMU dropped erms, vmx-mtf" in e.detail


def test_bochs_gone_is_infrastructure() -> None:
    gone = ConsoleWatch(BootEnd.EMULATOR, "emulator exited before the guest powered off", 5)
    e = judge_levels(gone, "", "", ">>PANIC<< something")
    assert e.end is BootEnd.EMULATOR and "Bochs (L0)" in e.detail


# ------------------------------------------------------------------ the lane in the matrix
def test_matrix_has_the_nested_lane_with_l1_kernel_and_cpu_mapping(tmp_path: Path) -> None:
    m = load_matrix(REPO / "matrix.yaml")
    lane = m.lanes["nested"]
    assert lane.backend == "nested" and lane.vmx
    assert lane.l1_kernel is not None and lane.l1_kernel.name == "6.12"
    cell = m.cell("nested", "6.12", "haswell")
    assert cell.cpu_model == "Haswell-noTSX" == m.cell("kvm", "6.12", "haswell").cpu_model
    assert l0_model(lane.l0_cpus, "Haswell-noTSX") == "corei7_haswell_4770"
    backend = backend_for(lane, embed_pool=tmp_path / "libvirt-embed")
    assert isinstance(backend, NestedBackend)
    assert backend.cache_root == tmp_path and not backend.firmware_step


BASE = """
version: 1
kernels: {"6.12": {suite: trixie, abi: "6.12.117+deb13-amd64"}}
cpus: {haswell: {nested: Haswell-noTSX}}
lanes: {LANES}
default_slice: {lanes: [n], kernels: ["6.12"], cpus: [haswell]}
"""


@pytest.mark.parametrize(
    ("lanes", "words"),
    [
        ("{n: {backend: nested, vmx: true, l0_cpu: corei7_haswell_4770}}", "l1_kernel"),
        ('{n: {backend: nested, vmx: true, l1_kernel: "5.4", l0_cpu: x}}', "unknown kernel"),
        ('{n: {backend: bochs, vmx: true, l1_kernel: "6.12"}}', "nested backend only"),
    ],
)
def test_matrix_nested_keys_are_checked(lanes: str, words: str) -> None:
    with pytest.raises(MatrixFileError) as err:
        parse_matrix(BASE.replace("{LANES}", lanes))
    assert words in str(err.value)


def test_libvirt_launcher_gets_the_kvm_lanes_own_domain() -> None:
    import xml.etree.ElementTree as ET

    from rig.lanes.nested import l2_domain_xml

    root = ET.fromstring(l2_domain_xml("Penryn", CMDLINE))
    assert root.get("type") == "kvm"
    cpu = root.find("cpu")
    assert cpu is not None and cpu.get("check") == "full" and cpu.findtext("model") == "Penryn"
    assert [f.get("name") for f in cpu.findall("feature[@policy='require']")] == ["vmx"]
    assert root.findtext("os/kernel") == "/l2/vmlinuz"
    assert root.findtext("os/cmdline") == CMDLINE
    sources = [s.get("path") for s in root.findall("devices/serial/source")]
    assert sources == ["/dev/ttyS1", "/dev/ttyS2"]  # L2 ttyS0, ttyS1 -> L1's ports -> Bochs


def test_matrix_nestedvirt_lane_uses_libvirt(tmp_path: Path) -> None:
    lane = load_matrix(REPO / "matrix.yaml").lanes["nestedvirt"]
    backend = backend_for(lane, embed_pool=tmp_path / "libvirt-embed")
    assert isinstance(backend, NestedBackend) and backend.launcher == "libvirt"


def test_libvirt_refusal_is_infrastructure() -> None:
    l1 = OK_L1 + (
        "RIG-L1 virsh: error: guest CPU doesn't match specification: missing features: erms\n"
        "RIG-L1 launch failed: virsh create rc=1: error: guest CPU doesn't match\n"
        "RIG-L1 l2 exit rc=1\nRIG-L1 end\n"
    )
    e = judge_levels(DONE, l1, "", "")
    assert e.end is BootEnd.EMULATOR and "libvirt in L1 did not start L2" in e.detail


def test_libvirt_launcher_run_to_poweroff() -> None:
    l1 = OK_L1.replace("RIG-L1 l2 start\n", "RIG-L1 l2 start launcher=libvirt\n") + (
        "RIG-L1 virsh: event 'lifecycle' for domain 'rig-l2': Shutdown Finished after guest "
        "request\nRIG-L1 l2 exit rc=libvirt\nRIG-L1 end\n"
    )
    e = judge_levels(DONE, l1, "RIG-BEGIN\nreboot: Power down\n", "")
    assert e.end is BootEnd.POWEROFF, e


def test_the_sweeper_knows_the_nested_scratch() -> None:
    from rig.lanes import nested
    from rig.runs import SCRATCH

    assert set(nested.SCRATCH) <= set(SCRATCH)


def test_qemu_exit_mid_test_is_not_read_as_the_drivers_triple_fault() -> None:
    from rig.lanes.base import TRIPLE_FAULT_RE

    l1 = OK_L1 + "RIG-L1 l2 exit rc=0\nRIG-L1 end\n"
    e = judge_levels(DONE, l1, "RIG-BEGIN run=1\nvmlaunch: cpu=0 check ok\n", "")
    assert e.end is BootEnd.EMULATOR
    assert not TRIPLE_FAULT_RE.search(e.detail), e.detail
