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
from collections.abc import Sequence
from dataclasses import dataclass

from rig.guest.protocol import Witness
from rig.model import Outcome
from rig.verdict.oops import find_oopses

BUSY = "Device_or_resource_busy"
EBUSY = "errno=-16"
# KVM's own word for a CPU it could not enable: vmx_hardware_enable() found CR4.VMXE set
ENABLE_FAILED_RE = re.compile(
    r"^\s*(?:<\d>)?\s*(?:\[\s*\d+\.\d+\]\s*)?kvm: enabling virtualization on CPU(?P<cpu>\d+) failed"
)


KVM_LINE_RE = re.compile(r"^\s*(?:<\d>)?\s*(?:\[\s*\d+\.\d+\]\s*)?kvm(?:_intel)?: ")


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
    evidence = tuple(ln for ln in w.lines if "RIG-WITNESS" in ln)
    # A kernel warning meanwhile is noted; KVM's result says whether VMX was left (Bochs'
    # Ice Lake and Tiger Lake models: 'CPA detected W^X violation' loading any module).
    found = find_oopses(w.lines, 0)
    warned = [o for o in found if o.kind == "warning"]
    oopses = [o for o in found if o.kind != "warning"]
    note = ""
    if warned:
        note = f"; the kernel warned meanwhile: {warned[0].first.split('] ')[-1][:120]}"
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
        said = f"'{refused[0].string.split('] ')[-1]}'" if refused else "Device or resource busy"
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
                f"('{said.split('] ')[-1].strip()[:160]}')",
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


def beside_setup_failure(lines: tuple[str, ...]) -> str | None:
    """--beside kvm: why KVM did not come to hold VMX before the runs (None: it did)."""
    held = [ln for ln in lines if ln.split()[:2] == ["RIG-BESIDE", "kvm"]]
    if held and " ok " in f" {held[0]} " and held[0].endswith("holding"):
        return None
    failed = next((ln for ln in lines if " load " in ln and " rc=0 " not in ln), "")
    said = failed or (held[0] if held else "no 'RIG-BESIDE kvm' line")
    return (
        "infrastructure: the run set KVM beside the driver (--beside kvm), but KVM did not "
        f"come to hold VMX before the runs: {said}"
    )


def beside_outlived(lines: tuple[str, ...]) -> bool | None:
    """Did KVM's VM outlive the driver's runs (RIG-BESIDE end alive=1)? None: not said."""
    end = next((ln for ln in lines if ln.startswith("RIG-BESIDE end ")), None)
    return None if end is None else end.endswith("alive=1")


DURING_MARK_RE = re.compile(r"rig: run=\d{1,6} step=during\b")


def judge_during(lines: Sequence[str], hold: str | None) -> WitnessFinding:
    """--beside kvm-during: what kvm_intel did while the driver was loaded, against the mode.

    Hold mode (`hold=1`): the driver is in VMX operation on every CPU, so KVM must be refused
    (`enabling virtualization ... failed`, EBUSY). Window mode (`hold=0`): VMX is off outside
    the launch's IRQs-off window, so KVM must load and run its VM."""
    start = next((i for i, ln in enumerate(lines) if DURING_MARK_RE.search(ln)), None)
    mine = [ln for ln in lines[start or 0 :] if "RIG-DURING" in ln or ENABLE_FAILED_RE.match(ln)
            or KVM_LINE_RE.match(ln)]  # fmt: skip
    if start is None or not any("RIG-DURING end" in ln for ln in mine):
        return WitnessFinding(
            Outcome.ERROR, "infrastructure: --beside kvm-during: no RIG-DURING report from KVM"
        )
    vm = next((ln for ln in mine if "RIG-DURING vm rc=" in ln), "")
    ran = "RIG-DURING vm rc=0 " in vm and " ok " in f"{vm} "
    refused = [ln for ln in mine if ENABLE_FAILED_RE.match(ln)]
    busy = refused or EBUSY in vm.split() or any(BUSY in ln for ln in mine)
    said = (refused[0].split("] ")[-1] if refused else vm.split(" ", 3)[-1]).strip()
    evidence = tuple(mine)
    if hold == "1":
        if ran:
            return WitnessFinding(
                Outcome.FAILED,
                "KVM ran a VM while the driver said it held VMX on every CPU (hold=1)",
                evidence,
            )
        if busy:
            return WitnessFinding(
                Outcome.PASSED,
                f"while the driver held VMX (hold=1) KVM was refused, as it must be ('{said}')",
                evidence,
            )
    elif hold == "0":
        if ran:
            return WitnessFinding(
                Outcome.PASSED,
                "while the driver was loaded (window mode, hold=0) KVM loaded and ran a VM",
                evidence,
            )
        if busy:
            return WitnessFinding(
                Outcome.FAILED,
                f"while the driver was loaded in window mode (hold=0) KVM could not enable "
                f"VMX ('{said}'): VMX was left on outside the launch window",
                evidence,
            )
    other = next((ln for ln in mine if KVM_LINE_RE.match(ln)), vm or "nothing")
    return WitnessFinding(
        Outcome.SKIPPED,
        f"--beside kvm-during not conclusive (driver hold={hold}): KVM said "
        f"'{other.split('] ')[-1].strip()[:140]}'",
        evidence,
    )
