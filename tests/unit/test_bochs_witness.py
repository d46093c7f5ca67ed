"""The bochs lane's witness beneath the guest: real bochs.log excerpts (tests/data/beneath/) parse
into their expected events; Bochs' failure lines, a cut log and the log filter, each alone."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from rig.lanes.base import beneath_text
from rig.lanes.bochs import bochsrc
from rig.lanes.bochs_witness import (
    CUT_MARK,
    beneath_from_bochs_log,
    beneath_from_file,
    filtered_log,
    vmfail_error,
    vmx_lines,
)
from rig.model import BootSpec, GuestImage, VmxEvent

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "beneath"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "bochs-vmx.log").exists())
END = "05364054573p[ACPI  ] >>PANIC<< ACPI control: soft power off"


def _events(case: str) -> list[VmxEvent]:
    data = json.loads((GOLDEN / case / "expected.json").read_text())
    return [
        VmxEvent(e["kind"], e["reason"], e["said"], vmcs=_ptr(e["said"])) for e in data["events"]
    ]


def _ptr(said: str) -> int | None:
    """The VMCS a VMLAUNCH/VMRESUME line names (the parser keeps it: the judge tells the
    driver's launches from KVM's by it)."""
    return int(said.split("VMCS ptr: ")[1], 16) if "VMCS ptr: " in said else None


@pytest.mark.parametrize("case", CASES)
def test_golden_bochs_logs_parse_into_their_events(case: str) -> None:
    expected = json.loads((GOLDEN / case / "expected.json").read_text())
    b = beneath_from_bochs_log((GOLDEN / case / "bochs-vmx.log").read_text())
    assert b.source == "Bochs"
    assert list(b.events) == _events(case)
    assert (b.complete, b.note) == (expected["complete"], expected["note"])


@pytest.mark.parametrize("case", CASES)
def test_golden_logs_read_from_file_give_the_same(case: str) -> None:
    whole = beneath_from_bochs_log((GOLDEN / case / "bochs-vmx.log").read_text())
    assert beneath_from_file(GOLDEN / case / "bochs-vmx.log") == whole


def test_the_good_driver_is_seen_entering_and_exiting_by_vmcall() -> None:
    ev = _events("bochs-6.12-haswell-pass")
    assert [(e.kind, e.reason) for e in ev[:2]] == [("vmlaunch", None), ("exit", 18)]
    assert ev[1].said == "VMEXIT reason = 18 (VMCALL) qualification=0x0"
    assert ev[0].said.startswith("VMLAUNCH VMCS ptr: 0x")
    # then the teardown witness (kvm_intel) launches its own VMCS
    assert ev[2].kind == "vmlaunch" and ev[2].said != ev[0].said


def test_a_vmfail_after_vmlaunch_names_the_check_and_its_error() -> None:
    log = "\n".join(
        [
            "03770691833d[CPU0  ] VMLAUNCH VMCS ptr: 0x0000000001ab8000",
            "03770691833e[CPU0  ] VMFAIL: VMCS host state invalid CR0 0x00000011",
            END,
        ]
    )
    b = beneath_from_bochs_log(log)
    assert list(b.events) == [
        VmxEvent("vmlaunch", None, "VMLAUNCH VMCS ptr: 0x0000000001ab8000", vmcs=0x1AB8000),
        VmxEvent("vmfail", 8, "VMFAIL: VMCS host state invalid CR0 0x00000011"),
    ]
    assert b.complete


def test_a_failed_entry_is_one_entry_fail_with_its_check() -> None:
    log = "\n".join(
        [
            "03770691833d[CPU0  ] VMLAUNCH VMCS ptr: 0x0000000001ab8000",
            "03770691833d[CPU0  ] VMENTER to x86-64 guest",
            "03770691833e[CPU0  ] VMENTER FAIL: VMCS guest invalid CR0",
            "03770691833e[CPU0  ] VMEXIT: Guest State Checks Failed",
            "03770691833d[CPU0  ] VMEXIT reason = 33 (VMEntry failure due to invalid guest state)"
            " qualification=0x0",
            END,
        ]
    )
    ev = beneath_from_bochs_log(log).events
    assert [(e.kind, e.reason) for e in ev] == [("vmlaunch", None), ("entry_fail", 33)]
    assert ev[1].said.startswith("VMENTER FAIL: VMCS guest invalid CR0 | ")
    assert ev[1].said.endswith("qualification=0x0")


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("VMFAIL: VMLAUNCH with non-clear VMCS!", 4),
        ("VMFAIL: VMRESUME with non-launched VMCS!", 5),
        ("VMFAIL: VMLAUNCH with invalid VMCS ptr !", None),
        ("VMFAIL: VMCS EXEC CTRL: VMX pin-based controls allowed 0-settings", 7),
        ("VMFAIL: VMCS VMEXIT CTRL: msr store addr malformed", 7),
        ("VMFAIL: VMCS x86-64 host control invalid on VMENTRY", 8),
        ("VMFAIL: VMCS host TR BASE non canonical", 8),
        ("VMFAIL: VMPTRLD with VMXON ptr !", 10),
        ("VMREAD: not supported field 0x0000abcd", 12),
        ("VMXON: not expected (1 != 43) VMCS revision id !", None),
    ],
)
def test_the_vm_instruction_error_follows_bochs_message(message: str, error: int | None) -> None:
    assert vmfail_error(message) == error


def test_a_log_without_its_end_or_cut_proves_no_absence() -> None:
    open_ended = beneath_from_bochs_log("03770691833d[CPU0  ] VMLAUNCH VMCS ptr: 0x1000")
    assert not open_ended.complete and "no end" in open_ended.note
    cut = beneath_from_bochs_log(END, cut=True)
    assert not cut.complete and "cut" in cut.note


def test_vmx_lines_streams_keeping_only_the_witness_lines(tmp_path: Path) -> None:
    log = tmp_path / "bochs.log"
    noise = "00000000001d[CPU0  ] page walk for address 0xffff\n" * 1000
    huge = "00000000002d[CPU0  ] " + "x" * 200_000 + " VMEXIT reason = 9 (\n"
    log.write_text(
        noise
        + huge
        + "03770691833d[CPU0  ] VMLAUNCH VMCS ptr: 0x1000\n"
        + "03770691835d[CPU0  ] VMEXIT reason = 18 (VMCALL) qualification=0x0\n"
        + f"{CUT_MARK}\n"
    )
    lines, ended, cut = vmx_lines(log)
    assert len(lines) == 2 and not ended and cut
    b = beneath_from_file(log)
    assert [(e.kind, e.reason) for e in b.events] == [("vmlaunch", None), ("exit", 18)]
    assert not b.complete


def test_beneath_txt_has_one_event_a_line() -> None:
    b = beneath_from_bochs_log((GOLDEN / "bochs-6.12-haswell-pass" / "bochs-vmx.log").read_text())
    rows = beneath_text(b).splitlines()
    assert rows[0].startswith("# Bochs: ") and len(rows) == len(b.events) + 1
    assert rows[2] == "exit 18 VMEXIT reason = 18 (VMCALL) qualification=0x0"


def test_filtered_log_keeps_vmx_and_error_lines_and_caps(tmp_path: Path) -> None:
    log = tmp_path / "bochs.log"
    keep = [
        "03770691833d[CPU0  ] VMLAUNCH VMCS ptr: 0x1000",
        "00929922384e[CPU0  ] RDMSR: Unknown register 0x1a0",
    ]
    with filtered_log(log, cap=4096) as fifo:

        def bochs() -> None:
            with fifo.open("w") as w:
                for _ in range(2000):
                    w.write("00000000001d[CPU0  ] RDTSC: ticks 0x00000000:12345678\n")
                w.write("\n".join(keep) + "\n")
                for _ in range(500):
                    w.write("03770691835d[CPU0  ] VMEXIT reason = 18 (VMCALL) q=0x0\n")

        writer = threading.Thread(target=bochs)
        writer.start()
        writer.join(timeout=30)
    text = log.read_text()
    assert text.splitlines()[:2] == keep
    assert "RDTSC" not in text and text.rstrip().endswith(CUT_MARK)
    assert len(text) < 4096 + 200
    assert not fifo.exists()


def test_filtered_log_returns_when_bochs_never_opened_its_log(tmp_path: Path) -> None:
    log = tmp_path / "bochs.log"
    with filtered_log(log) as fifo:
        assert fifo.exists() and os.path.basename(fifo) == "bochs.log.fifo"
    assert log.read_text() == ""


def test_bochsrc_turns_the_witness_on_only_when_asked(tmp_path: Path) -> None:
    img = GuestImage(kernel=tmp_path / "k", initrd=tmp_path / "i", cmdline="console=ttyS0")
    spec = BootSpec(
        image=img,
        cpu_model="corei7_haswell_4770",
        memory_mib=512,
        vcpus=1,
        timeout_s=5,
        workdir=tmp_path,
    )
    files = (tmp_path / "b.iso", tmp_path / "c.txt", tmp_path / "a.txt", tmp_path / "b.log")
    assert "debug: action=ignore, cpu0=report" in bochsrc(spec, *files, witness=True)
    plain = bochsrc(spec, *files)
    assert "debug: action=ignore\n" in plain and "cpu0" not in plain
    assert "logprefix: %t%e%d" in plain


def test_a_guest_running_cpuid_is_seen_exiting_by_cpuid() -> None:
    """driver copy whose guest runs CPUID: the driver prints `exit FAIL reason=0xa` (twice, two
    runs); Bochs saw the same: each VMLAUNCH ends in exit 10, then the teardown witness's VM."""
    ev = _events("bochs-6.12-haswell-guest-cpuid")
    assert [(e.kind, e.reason) for e in ev[:4]] == [
        ("vmlaunch", None),
        ("exit", 10),
        ("vmlaunch", None),
        ("exit", 10),
    ]
    assert ev[1].said == "VMEXIT reason = 10 (CPUID) qualification=0x0"
    assert not any(e.kind == "exit" and e.reason == 18 for e in ev)


def test_a_driver_that_never_launches_leaves_only_the_teardown_witness_vm() -> None:
    """driver copy that skips VMLAUNCH but prints `vmlaunch ok` and `exit ok reason=0x12`:
    Bochs saw no exit 18 at all; its one VMLAUNCH is kvm_intel's (the teardown witness, after
    the driver's rmmod), whose first exit is 48 (EPT violation). Telling that VMLAUNCH from
    the driver's is the judge's part (see tests/data/beneath/README.md)."""
    ev = _events("bochs-6.12-haswell-no-vmlaunch")
    assert [(e.kind, e.reason) for e in ev] == [
        ("vmlaunch", None),
        ("exit", 48),
        ("vmresume", None),
        ("exit", 30),
        ("vmresume", None),
        ("exit", 12),
    ]
