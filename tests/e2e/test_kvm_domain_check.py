"""The kvm lane's CPU check through real libvirt (qemu:///embed, QEMU under TCG, which never
gives VMX): a domain that requires vmx must be refused for the missing vmx, and for nothing
else. QEMU (like KVM) adds features of its own to named models (`hypervisor`; KVM also
`x2apic`): the check must not refuse a domain for those, or the kvm lane could never start a
guest on a real runner (seen in the nested lane: libvirt inside L1 refused the kvm lane's
domain with "extra features: vme,x2apic,hypervisor")."""

from __future__ import annotations

from pathlib import Path

from rig.artifacts import Artifacts, Cache, default_cache_root
from rig.guest.initramfs import initramfs_image
from rig.lanes.libvirt import LibvirtBackend
from rig.matrix import load_matrix
from rig.model import BootEnd, BootSpec

REPO = Path(__file__).resolve().parents[2]


def test_a_cpu_without_vmx_is_refused_for_vmx_alone(tmp_path: Path) -> None:
    cell = load_matrix(REPO / "matrix.yaml").cell("tcg", "6.12", "penryn")
    cache = default_cache_root()
    arts = Artifacts(Cache(cache))
    kernel = arts.kernel(cell.kernel)
    build = arts.module(kernel, REPO / "driver")
    assert build.ko is not None
    wd = tmp_path / "runs" / "r" / "cells" / "c"
    wd.mkdir(parents=True)
    image = initramfs_image(kernel, [(build.ko, 1, ())], run_id="r", cell_id="c", workdir=wd)
    spec = BootSpec(image=image, cpu_model="Penryn", memory_mib=512, vcpus=1, timeout_s=60,
                    workdir=wd)  # fmt: skip
    # the kvm lane's domain (vmx required), on a hypervisor that cannot give vmx
    strict = LibvirtBackend(name="tcg", domain_type="qemu", require_vmx=True,
                            embed_pool=cache / "libvirt-embed")  # fmt: skip
    refused = strict.boot(spec)
    assert refused.end is BootEnd.EMULATOR, refused.detail
    assert "missing features: vmx" in refused.detail, refused.detail
    assert "extra features" not in refused.detail, refused.detail
    # the same guest without the requirement boots and runs its agent to the end
    plain = LibvirtBackend(name="tcg", domain_type="qemu", embed_pool=cache / "libvirt-embed")
    ran = plain.boot(spec)
    assert ran.end is BootEnd.POWEROFF, ran.detail
    assert "RIG-END" in ran.agent
