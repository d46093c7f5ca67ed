"""The driver on software VMX (Bochs): deliberate failures are decoded, and 50 load/unload
cycles in one guest leak nothing and always leave VMX off."""

from __future__ import annotations

import re

from rig.model import Outcome

BOCHS = ("--lane", "bochs", "--kernel", "6.12")


def test_broken_host_state_is_vm_instruction_error_8(rig) -> None:
    run = rig(*BOCHS, "--cpu", "haswell", "--param", "break_field=host_addr_space_size")
    assert run.rc == 1, run.output[-3000:]
    cell = run.cells["bochs-6.12-haswell"]
    assert cell["vmxon"].outcome is Outcome.PASSED
    assert cell["vmlaunch"].outcome is Outcome.FAILED
    assert "VM-instruction error 8" in cell["vmlaunch"].message
    assert "VMfailValid" in cell["vmlaunch"].message
    assert cell["teardown"].outcome is Outcome.PASSED, cell["teardown"].message


def test_broken_guest_state_is_entry_failure_33(rig) -> None:
    run = rig(*BOCHS, "--cpu", "penryn", "--param", "break_field=guest_rflags_bit1")
    assert run.rc == 1, run.output[-3000:]
    cell = run.cells["bochs-6.12-penryn"]
    assert cell["vmxon"].outcome is Outcome.PASSED
    failed = cell["vmlaunch"]
    assert failed.outcome is Outcome.FAILED
    assert "0x80000021" in failed.message or "exit reason 33" in failed.message, failed.message
    assert "invalid guest state" in failed.message
    assert cell["teardown"].outcome is Outcome.PASSED, cell["teardown"].message


def test_fifty_load_unload_cycles_leak_nothing(rig) -> None:
    run = rig(*BOCHS, "--cpu", "haswell", "--repeat", "50")
    assert run.rc == 0, run.output[-3000:]
    cell = run.cells["bochs-6.12-haswell"]
    assert all(case.outcome is Outcome.PASSED for case in cell.values())
    console = cell["teardown"].system_out
    assert len(re.findall(r"^RIG-RUN \d+ module=vmlaunch", console, re.M)) == 50
    allocs = [int(n) for n in re.findall(r"vmlaunch: cpu=\d+ alloc ok pages=(\d+)", console)]
    freed = [int(n) for n in re.findall(r"vmlaunch: cpu=- freed ok pages=(\d+)", console)]
    # (each line appears live on the console and again in the run's dmesg dump)
    assert sum(allocs) == sum(freed) and len(freed) >= 50, (allocs[:4], freed[:4])
    assert len(re.findall(r"vmxoff ok cr4\.vmxe=0", console)) >= 50
    mem = [int(n) for n in re.findall(r"^RIG-MEM free_kb=(\d+)", console, re.M)]
    assert len(mem) == 50
    # MemFree after cycle 50 vs after cycle 5 (caches settle first): leaking the 5 regions of
    # each cycle would cost 45 * 5 * 4 KiB = 900 KiB; allow at most half of that as noise.
    assert mem[4] - mem[-1] < 450, mem
