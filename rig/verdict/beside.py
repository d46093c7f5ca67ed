"""KVM beside the driver: `--beside kvm` (KVM first, holding VMX) and `--beside kvm-during`
(KVM loaded while the driver is), and the one place that adds KVM's word to `teardown`:

    kvm_findings(...) -> Findings   the teardown witness, KVM's VM outliving the runs, what
                                    KVM did while the driver was loaded

The agent's lines: docs/contract.md section 2 (RIG-BESIDE, RIG-DURING, RIG-WITNESS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rig.guest.protocol import Witness, is_record
from rig.model import Arranged, Outcome
from rig.verdict.oops import kernel_message
from rig.verdict.witness import (
    BUSY,
    EBUSY,
    ENABLE_FAILED_RE,
    KVM_LINE_RE,
    WitnessFinding,
    judge_witness,
)


def beside_setup_failure(lines: Sequence[str]) -> str | None:
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


def beside_outlived(lines: Sequence[str]) -> bool | None:
    """Did KVM's VM outlive the driver's runs (RIG-BESIDE end alive=1)? None: not said."""
    end = next((ln for ln in lines if ln.startswith("RIG-BESIDE end ")), None)
    return None if end is None else end.endswith("alive=1")


def judge_during(lines: Sequence[str], hold: str | None) -> WitnessFinding:
    """--beside kvm-during: what kvm_intel did while the driver was loaded, against the mode.

    Hold mode (`hold=1`): the driver is in VMX operation on every CPU, so KVM must be refused
    (`enabling virtualization ... failed`, EBUSY). Window mode (`hold=0`): VMX is off outside
    the launch's IRQs-off window, so KVM must load and run its VM."""
    # `lines`: all of the run's (KVM is loaded in a kvm-during run only for its visit)
    mine = [ln for ln in lines if (is_record(ln) and ln.lstrip().startswith("RIG-DURING "))
            or ENABLE_FAILED_RE.match(ln) or KVM_LINE_RE.match(ln)]  # fmt: skip
    said_by_agent = [ln.strip() for ln in mine if is_record(ln)]
    if "RIG-DURING end" not in said_by_agent:
        return WitnessFinding(
            Outcome.ERROR, "infrastructure: --beside kvm-during: no RIG-DURING report from KVM"
        )
    vm = next((ln for ln in said_by_agent if ln.startswith("RIG-DURING vm rc=")), "")
    ran = "RIG-DURING vm rc=0 " in vm and " ok " in f"{vm} "
    refused = [ln for ln in mine if ENABLE_FAILED_RE.match(ln)]
    busy = refused or EBUSY in vm.split() or any(BUSY in ln for ln in mine)
    said = kernel_message(refused[0]) if refused else vm.split(" ", 3)[-1].strip()
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
        f"'{kernel_message(other)[:140]}'",
        evidence,
    )


@dataclass
class Findings:
    """What KVM's side adds to one run's teardown verdict."""

    failed: list[str] = field(default_factory=list)  # the driver's failures
    errors: list[str] = field(default_factory=list)  # infrastructure
    notes: list[str] = field(default_factory=list)  # said in a passing reason
    evidence: list[str] = field(default_factory=list)
    waiting: bool = False  # the witness has not reported yet


def _add(out: Findings, found: WitnessFinding) -> None:
    out.evidence.extend(found.evidence)
    {Outcome.FAILED: out.failed, Outcome.ERROR: out.errors}.get(found.outcome, out.notes).append(
        found.reason
    )


def kvm_findings(
    arranged: Arranged,
    *,
    witness: Witness | None,
    beside: Sequence[str],
    console: Sequence[str],
    hold: str | None,
    last: bool,
    ended: bool,
    loaded_and_done: bool,
) -> Findings:
    """`console`: all the run's lines; `loaded_and_done`: the driver's insmod succeeded and its
    run is over (kvm-during);
    `last`/`ended`: the guest's last run, and it printed RIG-END (the witness, kvm)."""
    out = Findings()
    if arranged.beside == "kvm-during" and loaded_and_done:
        _add(out, judge_during(console, hold))
    if last and arranged.beside == "kvm" and ended:
        outlived = beside_outlived(beside)
        out.evidence.extend(ln for ln in beside if ln.startswith("RIG-BESIDE end"))
        if outlived is False:
            out.failed.append(
                "the VM that KVM held before the driver loaded did not outlive its runs"
            )
        elif outlived is None:
            out.errors.append(
                "infrastructure: no 'RIG-BESIDE end' line: whether KVM's VM outlived the runs"
            )
        else:
            out.notes.append("KVM's VM, open before the driver loaded, outlived its runs")
    if last and arranged.witness:
        found = judge_witness(witness, ended=ended)
        if found is None:
            out.waiting = True
        else:
            _add(out, found)
    return out
