"""libvirt lanes: `tcg` (QEMU without VMX) and `kvm` (nested VMX on a KVM host).

The boot runs in a child process (`python -m rig.lanes.libvirt_child`) inside a private mount
namespace. That keeps libvirt's process-wide state (event loop, error handler) out of the
pytest worker, and lets the child hide an unusable /dev/kvm from libvirt: on hosts whose
/dev/kvm cannot run stock kernels, libvirt would otherwise re-probe QEMU on every start (44 s).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from rig.artifacts import digest
from rig.errors import InfraError
from rig.hostcheck import kvm_usable
from rig.lanes.base import (
    AGENT_FILE,
    CONSOLE_FILE,
    TRIPLE_FAULT_RE,
    owned_process,
    read_text,
    tail,
)
from rig.lanes.libvirt_remote import REMOTE_FILE, is_remote, remote_kvm_unusable
from rig.lanes.libvirt_snapshot import (
    CDROM_TARGET,
    MEDIUM_BYTES,
    SAVE_FILE,
    XML_FILE,
    blank_medium,
    restore_xml,
)
from rig.lanes.snapshots import Store, file_id, fit_medium, usable
from rig.model import BootEnd, BootResult, BootSpec, GuestImage

EMBED = "embed"  # our name for the default: qemu:///embed?root=<a locked slot of the pool>
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


@dataclass(frozen=True)
class DomainPlan:
    """All a child needs to boot one domain: serialisable, so it crosses the process line."""

    uri: str
    name: str
    domain_xml: str
    console: str
    timeout_s: float
    hide_kvm: bool
    embed_pool: str  # where the embedded driver's roots live (used when uri == "embed")
    started: str = ""  # file the child creates once the domain runs ("" = none)
    # a snapshot's save (rig.lanes.libvirt_snapshot): once `agent` holds the base guest's
    # ready line, save the domain to `save_to` ("" = run it to its end)
    save_to: str = ""
    agent: str = ""
    restore_from: str = ""  # restore this save with domain_xml, instead of starting one
    # a host that shares no filesystem with us (rig.lanes.libvirt_remote): these files are
    # uploaded into its storage pool and the serial ports are streamed back
    remote: bool = False
    kernel: str = ""
    initrd: str = ""


@dataclass(frozen=True)
class Disk:
    """A virtio-blk disk of a full-VM guest."""

    path: Path
    fmt: str  # "qcow2" | "raw"
    target: str  # "vda", "vdb", ...
    readonly: bool = False


@dataclass(frozen=True)
class VmDevices:
    """What a full-VM guest adds to the direct-kernel-boot domain (rig.vmguest)."""

    disks: tuple[Disk, ...] = ()
    qemu_args: tuple[str, ...] = ()  # <qemu:commandline> arguments (user networking)
    rng: bool = True  # virtio-rng from the host's /dev/urandom (sshd wants entropy early)


def domain_xml(
    spec: BootSpec,
    *,
    name: str,
    domain_type: str,
    console: Path,
    require_vmx: bool,
    agent: Path | None = None,
    vm: VmDevices | None = None,
    medium: Path | None = None,
    pty: bool = False,
) -> str:
    """The transient domain, built with ElementTree (names and paths are escaped by it).
    `medium`: an IDE CD-ROM with it inserted (a snapshot's base guest, libvirt_snapshot).
    `pty`: the serial ports are ptys on the host (a remote host streams them back)."""
    dom = ET.Element("domain", type=domain_type)
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = str(int(spec.memory_mib))
    ET.SubElement(dom, "vcpu").text = str(int(spec.vcpus))
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "kernel").text = str(spec.image.kernel)
    ET.SubElement(os_el, "initrd").text = str(spec.image.initrd)
    ET.SubElement(os_el, "cmdline").text = spec.image.cmdline
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    if domain_type == "qemu":
        tcg = ET.SubElement(features, "tcg")
        ET.SubElement(tcg, "tb-cache", unit="MiB").text = "256"
    if spec.cpu_model == "host-passthrough":
        cpu = ET.SubElement(dom, "cpu", mode="host-passthrough", check="none")
    else:
        cpu = ET.SubElement(
            # With vmx required: check='full' (libvirt verifies the vCPU QEMU made, or a dropped
            # vmx passes silently) and match='minimum' (QEMU/KVM add features of their own to
            # named models, x2apic and hypervisor: match='exact' refuses every such domain,
            # seen under KVM in the nested lane and under TCG: "extra features: hypervisor").
            dom,
            "cpu",
            mode="custom",
            match="minimum" if require_vmx else "exact",
            check="full" if require_vmx else "none",
        )
        ET.SubElement(cpu, "model", fallback="forbid").text = spec.cpu_model
    if require_vmx:
        ET.SubElement(cpu, "feature", policy="require", name="vmx")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(dom, event).text = "destroy"
    devices = ET.SubElement(dom, "devices")
    if vm is not None:
        ET.SubElement(devices, "controller", type="usb", model="none")
    for disk in vm.disks if vm is not None else ():
        el = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(el, "driver", name="qemu", type=disk.fmt, cache="unsafe")
        ET.SubElement(el, "source", file=str(disk.path))
        ET.SubElement(el, "target", dev=disk.target, bus="virtio")
        if disk.readonly:
            ET.SubElement(el, "readonly")
    if medium is not None:
        el = ET.SubElement(devices, "disk", type="file", device="cdrom")
        ET.SubElement(el, "driver", name="qemu", type="raw")
        ET.SubElement(el, "source", file=str(medium))
        ET.SubElement(el, "target", dev=CDROM_TARGET, bus="ide")
        ET.SubElement(el, "readonly")
    # ttyS0: the kernel's console; ttyS1: the guest agent's protocol channel
    for port, path in enumerate([console] if agent is None else [console, agent]):
        serial = ET.SubElement(devices, "serial", type="pty" if pty else "file")
        if not pty:
            ET.SubElement(serial, "source", path=str(path))
        ET.SubElement(serial, "target", port=str(port))
    if vm is not None and vm.rng:
        rng = ET.SubElement(devices, "rng", model="virtio")
        ET.SubElement(rng, "backend", model="random").text = "/dev/urandom"
    ET.SubElement(devices, "memballoon", model="none")
    if vm is not None and vm.qemu_args:
        # libvirt matches the namespace by its URI; ElementTree declares it on <domain>.
        cmdline = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
        for arg in vm.qemu_args:
            ET.SubElement(cmdline, f"{{{QEMU_NS}}}arg", value=arg)
    return ET.tostring(dom, encoding="unicode")


class Domain(Protocol):
    """A running domain as a guest flavour drives it (LiveDomain is one)."""

    console: Path

    def ended(self) -> bool: ...

    def started(self) -> bool: ...

    def wait(self, timeout_s: float) -> bool: ...

    def stop(self) -> None: ...

    def result(self) -> BootResult: ...


@runtime_checkable
class DomainLane(Protocol):
    """A lane that keeps a domain running with extra devices (disks, a user network) while a
    guest flavour drives it (LibvirtBackend is one): what full-VM guests need of a lane."""

    def running(
        self, spec: BootSpec, *, vm: VmDevices | None = None, extra_s: float = 0.0
    ) -> contextlib.AbstractContextManager[Domain]: ...


@dataclass
class LiveDomain:
    """A domain running under its libvirt child (see LibvirtBackend.running)."""

    proc: subprocess.Popen[bytes]
    console: Path
    result_file: Path
    started_file: Path
    child_log: Path

    def ended(self) -> bool:
        """The child has finished: the domain is gone (powered off, crashed or destroyed)."""
        return self.proc.poll() is not None

    def started(self) -> bool:
        return self.started_file.exists()

    def wait(self, timeout_s: float) -> bool:
        """Wait for the child to finish; True when it did."""
        try:
            self.proc.wait(timeout=max(0.0, timeout_s))
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self) -> None:
        """Ask the child to destroy the domain now (SIGTERM: it destroys, reports, exits)."""
        if not self.ended():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def result(self) -> BootResult:
        """How the domain ended, once the child has finished."""
        child_log = self.child_log.read_text(errors="replace") if self.child_log.exists() else ""
        if not self.result_file.exists():
            raise InfraError(
                f"libvirt child ended without a result (exit {self.proc.returncode}):\n"
                + tail(child_log, 20)
            )
        res = json.loads(self.result_file.read_text())
        emulator = res.get("emulator_log", "")
        return BootResult(
            console=read_text(self.console),
            agent=read_text(self.console.with_name(AGENT_FILE)),
            end=BootEnd(res["end"]),
            duration_s=float(res["duration_s"]),
            emulator_log=tail(res.get("emulator_log", "") + "\n" + child_log, 60),
            detail=res["detail"],
            panic_line=res.get("panic_line", ""),
            panic_to_stop_s=res.get("panic_to_stop_s"),
            triple_fault=bool(TRIPLE_FAULT_RE.search(emulator + "\n" + res["detail"])),
        )


SNAPSHOT_RECIPE = "1"  # bump when what a save holds changes
SNAPSHOTS = "libvirt-snapshots"  # the cache kind of the saves
QEMU = Path("/usr/bin/qemu-system-x86_64")  # what the embedded driver runs (its capabilities)
SEABIOS = Path("/usr/share/seabios/bios-256k.bin")  # QEMU's pc firmware: in the save's RAM


@dataclass(frozen=True)
class LibvirtBackend:
    name: str
    domain_type: str = "qemu"  # "qemu" = TCG, "kvm" = hardware
    uri: str = EMBED
    require_vmx: bool = False
    firmware_step: bool = False  # direct kernel boot: no firmware step of ours
    # --snapshot: a saved guest stands for a boot (libvirt_snapshot); only under the embedded
    # driver, where each restore of a save (one name, one UUID) has a libvirt of its own
    restores: bool = False
    injects: frozenset[str] = frozenset()
    # the embedded libvirt roots: required (every caller passes <cache>/libvirt-embed); no
    # shared default under /var/tmp that another user could prepare
    embed_pool: Path = field(kw_only=True)

    def unavailable(self) -> str | None:
        try:
            import libvirt  # noqa: F401
        except ImportError:
            return "libvirt-python is not installed (pip install libvirt-python)"
        if self.domain_type == "kvm":  # a remote host's KVM is its own, not our /dev/kvm
            why = remote_kvm_unusable(self.uri) if is_remote(self.uri) else kvm_usable()
            if why is not None:
                return why
        return None

    def boot(self, spec: BootSpec) -> BootResult:
        return self._boot(spec, self._usable_snapshot(spec))

    def _boot(self, spec: BootSpec, snapshot: Path | None) -> BootResult:
        """Boot the guest, or restore it from `snapshot` (a save of its base guest)."""
        if snapshot is not None and not fit_medium(spec, snapshot):
            snapshot = None  # a carrier bigger than the CD the guest knows: boot fresh
        with self.running(spec, restore=snapshot) as dom:
            if not dom.wait(spec.timeout_s + 120):
                log = dom.child_log.read_text(errors="replace")
                raise InfraError(f"libvirt child did not finish:\n{tail(log)}")
            result = dom.result()
        return replace(result, restored=snapshot.parent.name) if snapshot is not None else result

    def _usable_snapshot(self, spec: BootSpec) -> Path | None:
        """The save this boot may restore (rig.lanes.snapshots), or None: boot fresh."""
        if not self.restores or not spec.restorable():
            return None
        warm = spec.image.warm
        assert warm is not None
        emulator = [file_id(QEMU), file_id(SEABIOS)]
        key = digest("libvirt-snapshot", SNAPSHOT_RECIPE, warm.key, self.domain_type,
                     spec.cpu_model, spec.memory_mib, spec.vcpus, emulator)  # fmt: skip
        make = lambda folder, tmp: self._save(spec, folder, tmp)  # noqa: E731
        store = Store(self.embed_pool.parent, SNAPSHOTS, f"{spec.cpu_model}-{key}", make)
        return usable(spec, store, self._boot)

    def _save(self, spec: BootSpec, save: Path, tmp: Path) -> dict[str, object]:
        """Boot the base guest with an empty CD and save it into `save` while it waits."""
        warm = spec.image.warm
        assert warm is not None
        work, medium = tmp / "boot", tmp / "medium.img"
        work.mkdir()
        blank_medium(medium)
        base = GuestImage(kernel=spec.image.kernel, initrd=warm.base, cmdline=spec.image.cmdline)
        with self.running(replace(spec, image=base, workdir=work), save_to=save / SAVE_FILE,
                          medium=medium) as dom:  # fmt: skip
            dom.wait(spec.timeout_s + 120)
        medium.unlink()
        res = json.loads(dom.result_file.read_text()) if dom.result_file.exists() else {}
        if not res.get("saved"):
            # kept as NAME.failed.log (rig.artifacts.Cache.building)
            log = read_text(dom.child_log) + "\n--- console ---\n" + tail(read_text(dom.console))
            (tmp / "build.log").write_text(log)
            raise InfraError(
                f"the snapshot's base guest was not saved: {res.get('detail', 'no result')}",
                where=str(tmp / "build.log"),
            )
        return {"ready_s": round(float(res["ready_s"]), 1), "medium_bytes": MEDIUM_BYTES}

    @contextlib.contextmanager
    def running(
        self,
        spec: BootSpec,
        *,
        vm: VmDevices | None = None,
        extra_s: float = 0.0,
        stop_grace_s: float = 30.0,
        restore: Path | None = None,
        save_to: Path | None = None,
        medium: Path | None = None,
    ) -> Iterator[LiveDomain]:
        """Start the domain under its child; on exit make sure it is gone.

        `restore`: restore this save (libvirt_snapshot) with the cell's console, agent channel
        and carrier instead of booting. `save_to`: boot with `medium` as the CD and save the
        domain there once the guest says it is ready.

        The child watches the console for at most spec.timeout_s + extra_s, then destroys the
        domain itself. Leaving the block while it still runs asks it to destroy the domain
        (SIGTERM) and waits stop_grace_s for that; a child that does not finish is killed.
        """
        wd = spec.workdir
        console, agent = wd / CONSOLE_FILE, wd / AGENT_FILE
        started = wd / "domain-started"
        result_file = wd / "domain-result.json"
        remote = is_remote(self.uri)
        if remote and (vm is not None or restore is not None or save_to is not None):
            raise InfraError(f"{self.uri}: a remote libvirt host boots initramfs guests only")
        for stale in (console, agent, started, result_file, wd / REMOTE_FILE):
            stale.unlink(missing_ok=True)
        # Unique across concurrent runs: the run id (cells/<cell> lives in runs/<run-id>).
        name = f"rig-{wd.parent.parent.name}-{wd.name}"
        if restore is not None and spec.image.warm is not None:
            name, xml = restore_xml((restore / XML_FILE).read_text(), console=console, agent=agent,
                              medium=spec.image.warm.carrier)  # fmt: skip
        else:
            restore = None
            xml = domain_xml(spec, name=name, domain_type=self.domain_type, console=console,
                             require_vmx=self.require_vmx, agent=agent if vm is None else None,
                             vm=vm, medium=medium, pty=remote)  # fmt: skip
        plan = DomainPlan(
            uri=self.uri,
            name=name,
            domain_xml=xml,
            console=str(console),
            timeout_s=spec.timeout_s + extra_s,
            hide_kvm=not remote and self.domain_type == "qemu" and kvm_usable() is not None,
            embed_pool=str(self.embed_pool),
            started=str(started),
            save_to=str(save_to or ""),
            agent=str(agent),
            restore_from=str(restore / SAVE_FILE) if restore is not None else "",
            remote=remote,
            kernel=str(spec.image.kernel),
            initrd=str(spec.image.initrd),
        )
        plan_file = wd / "domain-plan.json"
        plan_file.write_text(json.dumps(asdict(plan)))
        argv = [
            "unshare", "--mount", "--propagation", "private", "--",
            sys.executable, "-m", "rig.lanes.libvirt_child", str(plan_file), str(result_file),
        ]  # fmt: skip
        log = wd / "libvirt-child.log"
        try:
            with owned_process(
                argv, cwd=wd, stdout=log, pidfile=wd / "child.pid", deathsig="TERM"
            ) as p:
                dom = LiveDomain(p, console, result_file, started, log)
                try:
                    yield dom
                finally:
                    if not dom.ended():
                        dom.stop()
                        dom.wait(stop_grace_s)
        finally:
            started.unlink(missing_ok=True)
