"""The teardown witness's rule: after the driver's last rmmod, can KVM still use VMX?

kvm_intel enables VMX on every CPU when it loads (6.12 and later) or when the first VM is
created (before 6.12), and refuses with EBUSY on a CPU whose CR4.VMXE is still set. So a CPU
the driver left in VMX operation (or with CR4.VMXE set) makes kvm-intel.ko's insmod fail with
"Device or resource busy" (6.12+) or kvm-witness's KVM_CREATE_VM fail with errno -16 (older).
kvm-witness then runs three instructions in a VM: VM entry and exit still work. The agent's
lines: docs/contract.md section 2 (RIG-WITNESS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rig.guest.protocol import Witness, is_record
from rig.model import Outcome
from rig.verdict.oops import KERNEL_PREFIX_RE, find_oopses, kernel_message

BUSY = "Device_or_resource_busy"
EBUSY = "errno=-16"
# KVM's own word for a CPU it could not enable: vmx_hardware_enable() found CR4.VMXE set
ENABLE_FAILED_RE = re.compile(
    KERNEL_PREFIX_RE.pattern + r"kvm: enabling virtualization on CPU(?P<cpu>\d+) failed"
)


KVM_LINE_RE = re.compile(KERNEL_PREFIX_RE.pattern + r"kvm(?:_intel)?: ")


@dataclass(frozen=True)
class WitnessFinding:
    outcome: Outcome  # PASSED: KVM ran a VM; FAILED: the driver left VMX on; ERROR: infra;
    # SKIPPED: KVM refuses this CPU model for reasons of its own (stated in the reason)
    reason: str
    evidence: tuple[str, ...] = ()


def judge_witness(w: Witness | None, *, ended: bool) -> WitnessFinding | None:
    """What the witness says, once it has said it (None while it may still be running)."""
    if w is None:
        if not ended:
            return None
        return WitnessFinding(
            Outcome.ERROR,
            "infrastructure: the teardown witness was planned but the guest never reported it "
            "(no RIG-WITNESS line before RIG-END)",
        )
    if not w.ended:
        return None  # the guest is in it, or died in it: the hang/crash rules say which
    evidence = tuple(ln for ln in w.lines if is_record(ln) and "RIG-WITNESS" in ln)
    # A kernel warning meanwhile is noted; KVM's result says whether VMX was left (Bochs'
    # Ice Lake and Tiger Lake models: 'CPA detected W^X violation' loading any module).
    found = find_oopses(w.lines, 0)
    warned = [o for o in found if o.kind == "warning"]
    oopses = [o for o in found if o.kind != "warning"]
    note = ""
    if warned:
        note = f"; the kernel warned meanwhile: {kernel_message(warned[0].first)[:120]}"
        evidence = (*evidence, warned[0].first)
    if oopses:
        return WitnessFinding(
            Outcome.FAILED,
            f"kernel {oopses[0].kind} in the teardown witness (KVM after the driver's rmmod): "
            f"{oopses[0].first[:160]}",
            (*evidence, oopses[0].text),
        )
    if not w.vmx:
        return WitnessFinding(Outcome.PASSED, "teardown witness not run: the guest has no VMX")
    failed = next((ld for ld in w.loads if ld.rc != 0), None)
    refused = [m for ln in w.lines if (m := ENABLE_FAILED_RE.match(ln))]
    if refused or (failed is not None and failed.module == "kvm-intel" and failed.error == BUSY):
        cpus = sorted({int(m["cpu"]) for m in refused})
        said = f"'{kernel_message(refused[0].string)}'" if refused else "Device or resource busy"
        where = f" on CPU {', '.join(map(str, cpus))}" if cpus else ""
        return WitnessFinding(
            Outcome.FAILED,
            f"after the driver's rmmod KVM could not enable VMX{where} ({said}): the driver "
            "left VMX on (CR4.VMXE set)",
            (*evidence, *(m.string for m in refused[:1])),
        )
    if failed is not None and failed.module == "kvm-intel":
        # KVM's refusal of the CPU itself (a model whose FEATURE_CONTROL or VMX capabilities
        # it will not use, e.g. Bochs bx_generic): it says so, and it is not the EBUSY above
        said = next((ln for ln in w.lines if KVM_LINE_RE.match(ln)), "")
        if said:
            return WitnessFinding(
                Outcome.SKIPPED,
                "teardown witness not applicable: kvm_intel refuses this CPU model "
                f"('{kernel_message(said)[:160]}')",
                (*evidence, said),
            )
        return WitnessFinding(
            Outcome.FAILED,
            f"after the driver's rmmod kvm_intel did not load "
            f"({failed.error.replace('_', ' ') or f'rc={failed.rc}'}) and said nothing",
            evidence,
        )
    if failed is not None:
        return WitnessFinding(
            Outcome.ERROR,
            f"infrastructure: the teardown witness's {failed.module}.ko did not load "
            f"({failed.error.replace('_', ' ') or f'rc={failed.rc}'})",
            evidence,
        )
    if w.vm_rc is None:
        return WitnessFinding(
            Outcome.ERROR, "infrastructure: the teardown witness never ran kvm-witness", evidence
        )
    if w.vm_rc != 0 and EBUSY in w.vm_result.split():
        return WitnessFinding(
            Outcome.FAILED,
            f"after the driver's rmmod KVM could not enable VMX for a VM (EBUSY): the driver "
            f"left VMX on (CR4.VMXE set): {w.vm_result}",
            evidence,
        )
    if w.vm_rc != 0 or " ok " not in f" {w.vm_result} ":
        return WitnessFinding(
            Outcome.FAILED,
            f"after the driver's rmmod KVM could not run a VM: {w.vm_result or f'rc={w.vm_rc}'}",
            evidence,
        )
    kept = bool(w.loads) and all(ld.error == "already_loaded" for ld in w.loads)
    what = "KVM, still loaded, ran another VM" if kept else "KVM loaded and ran a VM"
    return WitnessFinding(
        Outcome.PASSED, f"{what} after the rmmod (teardown witness){note}", evidence
    )  # fmt: skip
