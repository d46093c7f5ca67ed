"""nested lane: Bochs (L0) boots a small KVM host (L1) that runs the cell's guest (L2) under
KVM's own nested VMX, so the kvm lane's hypervisor is exercised on hosts without VT-x.

    L0  Bochs, its CPU model chosen per L2 model (lane keys l0_cpu / l0_cpus)
    L1  the lane's l1_kernel with kvm_intel, busybox and the host's QEMU (rig.lanes.nested_l1)
    L2  the cell's kernel and initramfs guest, exactly as every lane gets them, on QEMU's
        `-cpu MODEL,+vmx`: the kvm lane's CPU model with VMX required. KVM in L1 cannot give
        every feature of every model on Bochs (Haswell-noTSX loses erms, vmx-mtf and
        vmx-posted-intr), so QEMU's `enforce` is not used: each feature QEMU drops is listed in
        the lane's facts, and a dropped `vmx` makes the cell an infrastructure error

Wiring of the serial ports (live: the lane's watcher sees L2's console as it is written):
    Bochs com1 -> l1-console.txt   L1's console and its `RIG-L1 ...` facts
    Bochs com2 -> console.txt      L1 ttyS1 <- QEMU serial chardev <- L2 ttyS0 (kernel console)
    Bochs com3 -> agent.txt        L1 ttyS2 <- QEMU serial chardev <- L2 ttyS1 (agent channel)
    Bochs com4 -> l1-trace.txt     L1 ttyS3 <- KVM's trace_pipe in L1: L2's VMX instructions
                                   and its guest's exits, the witness beneath L2
                                   (rig.lanes.nested_witness -> BootResult.beneath)

L1 powers off after L2's QEMU exits and its serial ports have drained; the boot ends with L1.
How L2 ended is read from L2's console (poweroff, panic) and L1's facts (QEMU's exit). Trouble
in L0 or L1 (L1 not booting, KVM not loading, nested off, QEMU refusing) is BootEnd.EMULATOR
with what failed and L1's console tail: an infrastructure error, never the driver's failure.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from rig.artifacts import Artifacts, Cache, stderr_progress, write_cpio
from rig.errors import InfraError, ToolMissing
from rig.lanes.base import (
    AGENT_FILE,
    BENEATH_FILE,
    CONSOLE_FILE,
    PANIC_RE,
    POWEROFF_RE,
    ConsoleWatch,
    beneath_text,
    owned_process,
    read_text,
    tail,
    watch_console,
)
from rig.lanes.bochs import BochsBackend, bochsrc, host_bochs
from rig.lanes.libvirt import domain_xml
from rig.lanes.nested_l1 import (
    LIBVIRT_QEMU,
    QEMU,
    ROMS,
    VIRSH,
    L1Image,
    build_l1,
    l0_iso,
    l0_ports,
)
from rig.lanes.nested_snapshot import SNAPSHOTS, l2_carrier, restore_state, save_l1, snapshot_name
from rig.lanes.nested_witness import beneath_from_l1_trace
from rig.lanes.snapshots import Boot, Store, fit_carrier, usable
from rig.model import BootEnd, BootResult, BootSpec, GuestImage, KernelSpec
from rig.options import check_kernel_arg

L1_CONSOLE = "l1-console.txt"
L1_TRACE = "l1-trace.txt"  # KVM's trace in L1 (guests/nested/init), kept in the cell dir
L2_MEMORY_MIB = 256  # L2's RAM inside L1 (the rig's initramfs guest needs far less)
SCRATCH = ("l0.iso", "l0-iso", "l2-cpio", "l2.cpio", "l2-carrier.img", "state")  # rig.sweep
_FACT_RE = re.compile(r"^RIG-L1 (.*?)\r?$", re.M)
_DROPPED_RE = re.compile(r"doesn't support requested feature: (\S+?) \[bit \d+\]")
_QEMU_MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def l0_model(l0_cpus: tuple[tuple[str, str], ...], l2_model: str) -> str | None:
    """The Bochs model that backs `l2_model` (the "" entry: every model not named)."""
    table = dict(l0_cpus)
    return table.get(l2_model) or table.get("") or None


def qemu_args(
    l2_model: str, cmdline: str, memory_mib: int = L2_MEMORY_MIB, *, inject: bool = False
) -> list[str]:
    """L1's QEMU command for L2: KVM, the kvm lane's CPU model with VMX required, the cell's
    kernel/initrd/cmdline, L2's two serial ports on L1's ttyS1 and ttyS2, exit on reboot.

    With `inject`, L2's agent channel goes to a FIFO that L1's init copies to ttyS2 (it
    watches it for each run's start and end), and QEMU's monitor reads commands from a FIFO
    (guests/nested/init sends `nmi` and `mce` there)."""
    if not _QEMU_MODEL_RE.fullmatch(l2_model) or l2_model.startswith("host"):
        raise InfraError(f"not a QEMU CPU model name for the nested lane: {l2_model!r}")
    for word in cmdline.split():
        check_kernel_arg(word, "L2 kernel command line word")
    return [
        str(QEMU), "-accel", "kvm", "-machine", "pc", "-cpu", f"{l2_model},+vmx",
        "-m", str(int(memory_mib)), "-smp", "1", "-L", "/usr/share/qemu",
        "-kernel", "/l2/vmlinuz", "-initrd", "/l2/initrd.gz", "-append", cmdline,
        "-display", "none", "-nodefaults", "-no-reboot", "-msg", "timestamp=off",
        "-chardev", "serial,id=l2con,path=/dev/ttyS1", "-serial", "chardev:l2con",
        *(["-chardev", f"pipe,id=l2agent,path={L1_AGENT_FIFO}", "-serial", "chardev:l2agent",
            "-chardev", f"pipe,id=l2mon,path={L1_MONITOR_FIFO}", "-mon", "chardev=l2mon"]
          if inject else
          ["-chardev", "serial,id=l2agent,path=/dev/ttyS2", "-serial", "chardev:l2agent"]),
    ]  # fmt: skip


L2_DOMAIN = "rig-l2"
L1_AGENT_FIFO = "/tmp/l2agent"  # QEMU's pipe chardevs: PATH.in and PATH.out, made by L1's init
L1_MONITOR_FIFO = "/tmp/l2mon"
INJECT_FILE = "inject"  # /l2/inject in the cell's cpio: the events to inject, one a line


def l2_domain_xml(l2_model: str, cmdline: str, memory_mib: int = L2_MEMORY_MIB) -> str:
    """The kvm lane's own domain (rig.lanes.libvirt.domain_xml, type kvm, vmx required) for
    libvirt in L1: L2's files inside L1, its serial ports on L1's ttyS1 and ttyS2."""
    qemu_args(l2_model, cmdline, memory_mib)  # the same checks of model and cmdline
    image = GuestImage(kernel=Path("/l2/vmlinuz"), initrd=Path("/l2/initrd.gz"), cmdline=cmdline)
    l2 = BootSpec(image=image, cpu_model=l2_model, memory_mib=memory_mib, vcpus=1,
                  timeout_s=0, workdir=Path("/tmp"))  # fmt: skip
    return domain_xml(l2, name=L2_DOMAIN, domain_type="kvm", console=Path("/dev/ttyS1"),
                      agent=Path("/dev/ttyS2"), require_vmx=True)  # fmt: skip


def facts(l1_console: str) -> list[str]:
    return [m[1] for m in _FACT_RE.finditer(l1_console)]


def dropped_features(said: list[str]) -> list[str]:
    """CPU features of L2's model that QEMU in L1 dropped (`CPUID.01H:ECX.vmx` -> `vmx`)."""
    names = (m[1].rsplit(".", 1)[-1] for f in said if (m := _DROPPED_RE.search(f)))
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Ending:
    end: BootEnd
    detail: str


def judge_levels(watch: ConsoleWatch, l1_console: str, l2_console: str, bochs_log: str) -> Ending:
    """How the boot ended, told apart by level: L0/L1 trouble is EMULATOR (infrastructure) with
    what failed; L2's own end (poweroff, panic, hang, QEMU dying) is reported as on every lane."""
    said = facts(l1_console)
    l1_tail = tail(l1_console, 15)
    end = watch.end
    if end is BootEnd.EMULATOR and "soft power off" in bochs_log:
        end = BootEnd.POWEROFF  # L1 powered off but its console missed the last line
    l2_panic = PANIC_RE.search(l2_console)
    l2_off = POWEROFF_RE.search(l2_console)
    if end is BootEnd.PANIC:
        return Ending(BootEnd.EMULATOR, f"nested: L1 (the KVM host) panicked: {watch.detail}")
    failed = next((f for f in said if f.startswith("preflight failed")), None)
    if failed:
        return Ending(BootEnd.EMULATOR, f"nested: L1 cannot run KVM guests: {failed}")
    refused = next((f for f in said if f.startswith("launch failed")), None)
    if refused:
        return Ending(BootEnd.EMULATOR, f"nested: libvirt in L1 did not start L2: {refused}")
    bad = next((f for f in said if f.startswith("insmod") and not f.endswith("rc=0")), None)
    if bad:
        return Ending(BootEnd.EMULATOR, f"nested: L1 could not load KVM: {bad}")
    dropped = dropped_features(said)
    if "vmx" in dropped:
        return Ending(BootEnd.EMULATOR, "nested: QEMU in L1 dropped vmx from L2's CPU model "
                                        "(KVM in L1 offers no nested VMX for it)")  # fmt: skip
    started = any(f.startswith("l2 start") for f in said)
    exited = next((f for f in said if f.startswith("l2 exit")), None)
    if end is BootEnd.TIMEOUT:
        if started and l2_console.strip():
            return Ending(BootEnd.TIMEOUT, watch.detail + " (L2 was running under KVM in L1)")
        where = "L1 started L2 but L2 printed nothing" if started else "L1 never started L2"
        return Ending(BootEnd.EMULATOR, f"nested: {where} ({watch.detail}); L1:\n{l1_tail}")
    if end is BootEnd.EMULATOR:
        return Ending(BootEnd.EMULATOR, f"nested: Bochs (L0) stopped before L1 powered off: "
                                        f"{tail(bochs_log, 3) or 'no reason logged'}")  # fmt: skip
    # L1 powered off: L2 ran to its end, or QEMU never got it going
    if not started or exited is None:
        return Ending(
            BootEnd.EMULATOR, f"nested: L1 powered off without running L2; L1:\n{l1_tail}"
        )
    if l2_panic:
        line = l2_console[l2_console.rfind("\n", 0, l2_panic.start()) + 1 :].splitlines()[0]
        return Ending(BootEnd.PANIC, f"guest panicked: {line.strip()} (L2, under KVM in L1)")
    if l2_off:
        lost = f"; QEMU dropped {', '.join(dropped)}" if dropped else ""
        return Ending(BootEnd.POWEROFF, f"guest powered off (L2, under KVM in L1{lost})")
    qemu_said = [f[len("qemu: ") :] for f in said if f.startswith("qemu: ")]
    if not l2_console.strip():
        # QEMU refused to start L2 at all: an unknown model, KVM, the ROMs
        return Ending(BootEnd.EMULATOR, f"nested: QEMU in L1 did not start L2 ({exited}): "
                                        + " | ".join(qemu_said[-4:]))  # fmt: skip
    # A reset L2's kernel did not ask for (KVM's shutdown exit) and QEMU failing look alike
    # from L1: an infrastructure error, worded so the judge does not read a triple fault in it.
    return Ending(BootEnd.EMULATOR, f"L2's QEMU exited before the guest powered off ({exited}; "
                                    "-no-reboot: a reset its kernel did not ask for, or QEMU "
                                    "failing): " + " | ".join(qemu_said[-4:]))  # fmt: skip


@dataclass(frozen=True)
class NestedBackend:
    name: str
    l1_kernel: KernelSpec | None
    l0_cpus: tuple[tuple[str, str], ...]
    cache_root: Path
    launcher: str = "qemu"  # "qemu": QEMU's command line; "libvirt": the kvm lane's domain
    firmware_step: bool = False  # L2 boots its kernel directly (QEMU in L1); L0's ISO is ours
    restores: bool = True  # --snapshot: a saved L1 stands for L0 and L1 booting (nested_snapshot)

    @property
    def injects(self) -> frozenset[str]:
        """L1's QEMU monitor injects NMIs and machine checks into L2 (not through libvirt)."""
        return frozenset({"nmi", "mce"}) if self.launcher == "qemu" else frozenset()

    def unavailable(self) -> str | None:
        why = BochsBackend(name=self.name).unavailable()
        if why is not None:
            return why
        if self.l1_kernel is None or not self.l0_cpus:
            return "the nested lane needs l1_kernel and l0_cpu in matrix.yaml"
        if not QEMU.exists():
            return f"{QEMU} missing (apt-get install qemu-system-x86): it runs in L1"
        for rom in ROMS.values():
            if not rom.exists():
                return f"{rom} missing (apt-get install qemu-system-x86 seabios)"
        if self.launcher == "libvirt" and not (VIRSH.exists() and LIBVIRT_QEMU.exists()):
            return (
                "virsh or libvirt's QEMU driver missing (apt-get install libvirt-clients "
                "libvirt-daemon-driver-qemu): libvirt runs in L1"
            )
        for tool in ("ldd", "cpio", "grub-mkrescue", "xorriso"):
            if shutil.which(tool) is None:
                return f"{tool} missing: the nested lane builds L1's initramfs and boot ISO"
        return None

    def boot(self, spec: BootSpec) -> BootResult:
        why = self.unavailable()
        if why is not None:
            raise ToolMissing("bochs-bin", "bochs bochsbios vgabios qemu-system-x86", why)
        assert self.l1_kernel is not None
        model = l0_model(self.l0_cpus, spec.cpu_model)
        if model is None:
            raise InfraError(f"nested lane: no L0 Bochs model for {spec.cpu_model!r}")
        if spec.inject and not set(spec.inject) <= self.injects:
            raise InfraError(f"nested lane {self.name}: cannot inject {', '.join(spec.inject)}")
        l1 = build_l1(Artifacts(Cache(self.cache_root)), self.l1_kernel, stderr_progress,
                      libvirt=self.launcher == "libvirt")  # fmt: skip
        boot: Boot = lambda s, save: self._boot(s, l1, model, save)  # noqa: E731
        snapshot = None
        if spec.restorable() and self.l1_kernel.kind == "debian":  # L1 can wait (nested_l1)
            l0, bochs = replace(spec, cpu_model=model, feature_control=None), host_bochs()
            make = lambda folder, tmp: save_l1(l1, l0, bochs, folder, tmp)  # noqa: E731
            name = snapshot_name(l1, model, spec.memory_mib, bochs)
            snapshot = usable(spec, Store(self.cache_root, SNAPSHOTS, name, make), boot)
        return boot(spec, snapshot)

    def _boot(self, spec: BootSpec, l1: L1Image, model: str, save: Path | None) -> BootResult:
        """Boot L0, L1 and the cell's L2; or restore L0 and L1 from `save` (nested_snapshot)
        and bring the cell's L2 on a carrier."""
        if self.launcher == "libvirt":
            plan = ("domain.xml", l2_domain_xml(spec.cpu_model, spec.image.cmdline))
        else:
            args = qemu_args(spec.cpu_model, spec.image.cmdline, inject=bool(spec.inject))
            plan = ("qemu-args", "".join(a + "\n" for a in args))
        wd = spec.workdir
        l0 = replace(spec, cpu_model=model, feature_control=None)
        try:
            cell = self._cell_cpio(spec.image, plan, wd, spec.inject)
            if save is not None:
                carrier = l2_carrier(cell, wd / "l2-carrier.img")
                if fit_carrier(carrier, save):
                    result = self._run_l0(l0, restore=(save, carrier))
                    return replace(result, restored=save.parent.name)
            return self._run_l0(l0, iso=l0_iso(l1, cell, wd))  # fresh, or a carrier too big
        finally:
            for name in SCRATCH:
                p = wd / name
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

    @staticmethod
    def _cell_cpio(
        l2: GuestImage, plan: tuple[str, str], wd: Path, inject: tuple[str, ...]
    ) -> Path:
        """The cell's part of L1: /l2 with L2's kernel, initrd and launch plan, as a cpio."""
        cell = wd / "l2-cpio"
        (cell / "l2").mkdir(parents=True)
        shutil.copyfile(l2.kernel, cell / "l2/vmlinuz")
        shutil.copyfile(l2.initrd, cell / "l2/initrd.gz")
        (cell / "l2" / plan[0]).write_text(plan[1])  # qemu-args, or libvirt's domain.xml
        if inject:
            (cell / "l2" / INJECT_FILE).write_text("".join(e + "\n" for e in inject))
        write_cpio(cell, wd / "l2.cpio", compress=False)
        shutil.rmtree(cell)
        return wd / "l2.cpio"

    def _run_l0(
        self, spec: BootSpec, *, iso: Path | None = None, restore: tuple[Path, Path] | None = None
    ) -> BootResult:
        """Bochs booting `iso`, or restoring `restore` (a save and the cell's carrier)."""
        wd = spec.workdir
        l1con, console, agent = wd / L1_CONSOLE, wd / CONSOLE_FILE, wd / AGENT_FILE
        trace = wd / L1_TRACE
        log, rc = wd / "bochs.log", wd / "bochsrc"
        for stale in (l1con, console, agent, trace):
            stale.unlink(missing_ok=True)
        if restore is not None:
            restore_state(restore[0], wd / "state", l1_console=l1con, console=console,
                          agent=agent, trace=trace, log=log, carrier=restore[1])  # fmt: skip
            argv = host_bochs().argv(wd, ["-r", str(wd / "state")])
        else:
            assert iso is not None
            text = bochsrc(spec, iso, l1con, console, log)  # com1 = L1 console, com2 = L2 console
            rc.write_text(text + l0_ports(agent, trace))
            argv = host_bochs().argv(wd, ["-f", str(rc)])
        with owned_process(argv, cwd=wd, stdout=wd / "bochs.out", pidfile=wd / "emulator.pid") as p:
            watch = watch_console(l1con, alive=lambda: p.poll() is None, timeout_s=spec.timeout_s)
        bochs_log = read_text(log)
        kept = "\n".join(
            line for line in bochs_log.splitlines()
            if re.search(r"VMFAIL|VMENTER|PANIC|triple fault|>>PANIC<<", line)
        )  # fmt: skip
        l1_text = read_text(l1con)
        ending = judge_levels(watch, l1_text, read_text(console), bochs_log)
        beneath = beneath_from_l1_trace(read_text(trace))
        with contextlib.suppress(OSError):
            (wd / "nested-facts.txt").write_text("\n".join(facts(l1_text)) + "\n")
            (wd / BENEATH_FILE).write_text(beneath_text(beneath))
        return BootResult(
            console=read_text(console),
            agent=read_text(agent),
            end=ending.end,
            duration_s=watch.duration_s,
            emulator_log=f"--- L1 console (tail) ---\n{tail(l1_text, 40)}\n"
            f"--- bochs.log (kept lines) ---\n{tail(kept, 20)}",
            detail=ending.detail,
            beneath=beneath,
        )
