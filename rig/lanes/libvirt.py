"""libvirt lanes: `tcg` (QEMU without VMX) and `kvm` (nested VMX on a KVM host).

The boot runs in a child process (`python -m rig.lanes.libvirt_child`) inside a private mount
namespace. That keeps libvirt's process-wide state (event loop, error handler) out of the
pytest worker, and lets the child hide an unusable /dev/kvm from libvirt: on hosts whose
/dev/kvm cannot run stock kernels, libvirt would otherwise re-probe QEMU on every start (44 s).
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

from rig.errors import InfraError
from rig.hostcheck import kvm_usable
from rig.lanes.base import owned_process, tail
from rig.model import BootEnd, BootResult, BootSpec

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


def domain_xml(
    spec: BootSpec, *, name: str, domain_type: str, console: Path, require_vmx: bool
) -> str:
    """The transient domain, built with ElementTree (names and paths are escaped by it)."""
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
            dom, "cpu", mode="custom", match="exact", check="full" if require_vmx else "none"
        )
        ET.SubElement(cpu, "model", fallback="forbid").text = spec.cpu_model
    if require_vmx:
        ET.SubElement(cpu, "feature", policy="require", name="vmx")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(dom, event).text = "destroy"
    devices = ET.SubElement(dom, "devices")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(console))
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


@dataclass(frozen=True)
class LibvirtBackend:
    name: str
    domain_type: str = "qemu"  # "qemu" = TCG, "kvm" = hardware
    uri: str = EMBED
    require_vmx: bool = False
    needs_iso: bool = False
    embed_pool: Path = Path("/var/tmp/vmlaunch-rig-embed")

    def unavailable(self) -> str | None:
        try:
            import libvirt  # noqa: F401
        except ImportError:
            return "libvirt-python is not installed (pip install libvirt-python)"
        if self.domain_type == "kvm":
            why = kvm_usable()
            if why is not None:
                return why
        return None

    def boot(self, spec: BootSpec) -> BootResult:
        wd = spec.workdir
        console = wd / "console.txt"
        # Unique across concurrent runs: the run id (cells/<cell> lives in runs/<run-id>).
        name = f"rig-{wd.parent.parent.name}-{wd.name}"
        plan = DomainPlan(
            uri=self.uri,
            name=name,
            domain_xml=domain_xml(
                spec,
                name=name,
                domain_type=self.domain_type,
                console=console,
                require_vmx=self.require_vmx,
            ),
            console=str(console),
            timeout_s=spec.timeout_s,
            hide_kvm=self.domain_type == "qemu" and kvm_usable() is not None,
            embed_pool=str(self.embed_pool),
        )
        plan_file = wd / "domain-plan.json"
        plan_file.write_text(json.dumps(asdict(plan)))
        result_file = wd / "domain-result.json"
        argv = [
            "unshare", "--mount", "--propagation", "private", "--",
            sys.executable, "-m", "rig.lanes.libvirt_child", str(plan_file), str(result_file),
        ]  # fmt: skip
        log = wd / "libvirt-child.log"
        with owned_process(
            argv, cwd=wd, stdout=log, pidfile=wd / "child.pid", deathsig="TERM"
        ) as p:
            try:
                p.wait(timeout=spec.timeout_s + 120)
            except subprocess.TimeoutExpired as exc:
                raise InfraError(f"libvirt child did not finish:\n{tail(log.read_text())}") from exc
        child_log = log.read_text(errors="replace")
        if not result_file.exists():
            raise InfraError(
                f"libvirt child ended without a result (exit {p.returncode}):\n"
                + tail(child_log, 20)
            )
        res = json.loads(result_file.read_text())
        text = console.read_text(errors="replace") if console.exists() else ""
        return BootResult(
            console=text,
            end=BootEnd(res["end"]),
            duration_s=float(res["duration_s"]),
            emulator_log=tail(res.get("emulator_log", "") + "\n" + child_log, 60),
            detail=res["detail"],
        )
