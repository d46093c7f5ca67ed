"""The nested lane for real: Bochs (L0) boots the KVM host (L1), whose QEMU/KVM runs the cell's
guest (L2) on the kvm lane's CPU model. The driver must pass all five stages under KVM's
nested VMX: its VMCS revision is KVM's, not Bochs' 0x2b. About 4 minutes on 2 cores."""

from __future__ import annotations

import json
import re

from rig.artifacts.cache import default_cache_root
from rig.guest.carrier import gate_facts
from rig.model import STAGES, Outcome
from rig.runs import processes_mentioning
from tests.e2e.conftest import RigRunner

NESTED = ("--lane", "nested", "--kernel", "6.12")


def test_nested_haswell_passes_under_kvm_nested_vmx_restored_from_a_gated_l1(
    rig: RigRunner,
) -> None:
    """With --snapshot: L0 and L1 are saved once with L1 waiting (KVM loaded), the fidelity
    gate runs the probe's L2 under a fresh and a restored L1 (its lines must be equal), and
    the cell restores the save, gets its L2 on the carrier and is judged as a booted one."""
    run = rig(*NESTED, "--cpu", "haswell", "--snapshot")
    assert run.rc == 0, run.output[-3000:]
    cell = run.cells["nested-6.12-haswell"]
    assert [s for s in STAGES if cell[s].outcome is not Outcome.PASSED] == [], {
        s: cell[s].message for s in STAGES
    }
    cell_dir = next(run.runs_dir.glob("*/cells/nested-6.12-haswell"))
    out = (cell_dir / "console.txt").read_text()  # L2's kernel console
    assert cell["teardown"].system_out  # the transcript, once per cell (on its last stage)
    revs = set(re.findall(r"vmx_basic=0x[0-9a-f]+ rev=(0x[0-9a-f]+)", out))
    assert revs, out[-2000:]
    assert "0x2b" not in revs, revs  # Bochs' own revision: the driver ran on Bochs, not KVM
    assert re.search(r"exit ok reason=0x12", out)
    # the teardown witness ran in L2: its kvm_intel under L1's nested KVM, and a VM (L3)
    reasons = run.reasons("nested-6.12-haswell")
    teardown = reasons["teardown"]
    assert "KVM loaded and ran a VM after the rmmod" in teardown, teardown
    # the witness beneath L2: KVM in L1 saw each VMX stage the driver reported, and agreed
    for stage, saw in (("vmxon", "VMXON"), ("vmlaunch", "VMLAUNCH enter the guest"),
                       ("vmcall_exit", "exit 18 (VMCALL)"), ("teardown", "VMXOFF")):  # fmt: skip
        assert f"KVM in L1 saw {saw}" in reasons[stage], reasons[stage]
    assert "exit 18" in (cell_dir / "beneath.txt").read_text()
    # the cell's scratch (L0's ISO, the cell's cpio, its carrier, the restore's state) is gone,
    # and no emulator is left
    scratch = ("l0.iso", "l0-iso", "l2-cpio", "initrd.gz", "l2-carrier.img", "state")
    assert not any((cell_dir / n).exists() for n in scratch)
    assert processes_mentioning(str(cell_dir)) == []
    # restored, not booted: L1 said so on the cell's own L1 console, then its preflight again
    key = cell["vmxon"].properties.get("snapshot", "")
    assert key.startswith("corei7_haswell_4770-"), cell["vmxon"].properties
    l1 = (cell_dir / "l1-console.txt").read_text()
    assert "RIG-L1 restored: the cell's L2 came on a carrier" in l1, l1[-2000:]
    assert "RIG-L1 preflight ok" in l1 and "RIG-L1 begin" not in l1, l1[-2000:]
    # the gate passed: the probe's L2 printed the same lines under a fresh and a restored L1,
    # both injected faults decoded; the cell printed what the probe's first, fresh, run did
    gate = json.loads((default_cache_root() / "nested-snapshots" / key / "gate.json").read_text())
    assert gate["ok"] is True and gate["booted"] == gate["restored"], gate["why"]
    decoded = [line for line in gate["booted"] if " FAIL " in line]
    assert any("VM-instruction error 8" in line for line in decoded), decoded
    assert any("exit reason 33" in line for line in decoded), decoded
    facts = gate_facts(out, (cell_dir / "agent.txt").read_text())
    assert facts[:-1] == gate["booted"][: len(facts) - 1], (facts, gate["booted"])
    assert facts[-1] == gate["booted"][-1]  # RIG-CPU: L2's vmx, cpus, model


def test_nmis_and_machine_checks_from_l1_reach_the_driver_and_it_goes_on(rig: RigRunner) -> None:
    """L1's QEMU monitor sends NMIs and action-optional machine checks into L2 while the driver
    loops 10000 VMCALL round trips with NMI exiting and #MC intercepted: the driver handles
    the exits (re-delivers the NMI to the host, hands the #MC to the kernel), the guest goes
    on, and the exits are counted in the verdict."""
    run = rig(*NESTED, "--cpu", "haswell", "--inject", "nmi", "--inject", "mce",
              "--param", "roundtrips=10000", "--repeat", "2")  # fmt: skip
    assert run.rc == 0, run.output[-3000:]
    cell = run.cells["nested-6.12-haswell"]
    assert [s for s in STAGES if cell[s].outcome is not Outcome.PASSED] == [], {
        s: cell[s].message for s in STAGES
    }
    cell_dir = next(run.runs_dir.glob("*/cells/nested-6.12-haswell"))
    l1 = (cell_dir / "l1-console.txt").read_text()
    sent = re.search(r"RIG-L1 inject sent nmi=(\d+) mce=(\d+)", l1)
    assert sent and int(sent[1]) > 0 and int(sent[2]) > 0, l1[-2000:]
    out = (cell_dir / "console.txt").read_text()
    assert "NMI received for unknown reason" in out  # L2's kernel got them
    assert "mce: [Hardware Error]: Machine check events logged" in out
    counts = [
        (int(a), int(b)) for a, b in re.findall(r"exit ok reason=0x12 .*nmis=(\d+) mces=(\d+)", out)
    ]
    assert len(counts) == 2 and sum(n for n, _ in counts) > 0, counts  # NMI exits handled
    assert "NMI exit" in run.reasons("nested-6.12-haswell")["vmcall_exit"]
