"""The allocation witness (docs/contract.md section 2, RIG-ALLOC): the agent's tracing lines run
against a stand-in tracefs holding real traces, the parser on real agent channels (golden,
tests/data/alloc/), and the rule's outcomes."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rig.guest.alloc import AllocWitness, HeldAlloc, alloc_witness, parse_alloc
from rig.guest.protocol import KernelText, parse_channels
from rig.model import Outcome
from rig.paths import BUSYBOX
from rig.verdict.pages import judge_pages

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests/data/alloc"
AGENT = ROOT / "guests/agent/rig-agent"
TRACES = sorted(p.name.removesuffix(".expected") for p in (DATA / "traces").glob("*.expected"))
GOLDEN = sorted(p.name.removesuffix(".expected.json") for p in DATA.glob("*.expected.json"))


# --------------------------------------------------------------------------- the agent
def _stand_in(
    tmp_path: Path, trace: str | None, reads: tuple[str, str] | None = None
) -> tuple[Path, dict[str, str]]:
    """A guest for the REAL agent script: stand-in insmod/rmmod/dmesg/uname, /proc, and (with
    `trace`, a recorded pair of reads from tests/data/alloc/traces) a tracefs tree whose
    insmod "records" the first read into `snapshot` and whose rmmod the second into `trace`,
    as the kernel's buffer swap and the rest of the run would have."""
    bin_dir, proc, sys = tmp_path / "bin", tmp_path / "proc", tmp_path / "sys"
    for d in (bin_dir, proc, sys / "kernel"):
        d.mkdir(parents=True, exist_ok=True)
    (proc / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Stand In\nflags\t\t: fpu\n")
    (proc / "meminfo").write_text("MemFree:          305692 kB\n")
    (proc / "modules").write_text("")
    tr = sys / "kernel/tracing"
    insmod = f"echo 'vmlaunch_pageleak 16384 0 - Live 0x0' > {proc}/modules\n"
    rmmod = f": > {proc}/modules\n"
    if trace is not None:
        for f in ("trace", "snapshot", "trace_marker", "tracing_on"):
            (tr / f).parent.mkdir(parents=True, exist_ok=True)
            (tr / f).write_text("")
        (tr / "options").mkdir()
        for f in ("sym-offset", "hash-ptr"):
            (tr / "options" / f).write_text("0\n")
        for ev in ("mm_page_alloc", "mm_page_free", "mm_page_free_batched", "kmalloc", "kfree"):
            (tr / "events/kmem" / ev).mkdir(parents=True)
            (tr / "events/kmem" / ev / "enable").write_text("0\n")
            (tr / "events/kmem" / ev / "trigger").write_text("# Available triggers:\n")
        for i, part in enumerate(("snapshot", "trace")):
            if reads is not None:
                (tmp_path / part).write_text(reads[i])
                continue
            with gzip.open(DATA / "traces" / f"{trace}.{part}.gz", "rt") as fh:
                (tmp_path / part).write_text(fh.read())
        insmod += f"cat {tmp_path}/snapshot > {tr}/snapshot\n"
        rmmod += f"cat {tmp_path}/trace > {tr}/trace\n"
    scripts = {
        "insmod": insmod,
        "rmmod": rmmod,
        "dmesg": "exit 0\n",
        "uname": "echo 6.12.117+deb13-amd64\n",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    if BUSYBOX.exists():  # the guest's awk, not the host's
        (bin_dir / "awk").symlink_to(BUSYBOX)
    agent_dir = tmp_path / "rig"
    (agent_dir / "modules").mkdir(parents=True)
    (agent_dir / "modules/vmlaunch_pageleak.ko").write_bytes(b"\x7fELF fake")
    (agent_dir / "run-id").write_text("r1\n")
    (agent_dir / "cell-id").write_text("tcg-6.12-penryn\n")
    (agent_dir / "plan").write_text("vmlaunch_pageleak.ko 1\n")
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "RIG_KMSG": str(tmp_path / "kmsg"),
        "RIG_PROC": str(proc),
        "RIG_SYS": str(sys),
    }
    return agent_dir, env


def _run_agent(agent_dir: Path, env: dict[str, str]) -> list[str]:
    # the host's sh (busybox sh would take its own insmod and uname over the stand-ins)
    proc = subprocess.run(
        ["sh", str(AGENT), str(agent_dir)], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.parametrize("trace", TRACES)
def test_agent_finds_what_the_module_kept_in_a_real_trace(tmp_path: Path, trace: str) -> None:
    """The agent's tracing lines, run on the two reads a real guest gave (QEMU TCG; 5.10,
    6.12, 7.3; the pageleak fixture), say exactly what that guest said."""
    agent_dir, env = _stand_in(tmp_path, trace)
    out = _run_agent(agent_dir, env)
    alloc = [ln for ln in out if ln.startswith("RIG-ALLOC")]
    assert alloc == (DATA / "traces" / f"{trace}.expected").read_text().splitlines()
    tr = tmp_path / "sys/kernel/tracing"
    # it leaves the tracer as it found it: events off, triggers gone, buffers empty
    assert (tr / "tracing_on").read_text().strip() == "0"
    assert (tr / "options/hash-ptr").read_text().strip() == "1"
    for ev in ("mm_page_alloc", "kmalloc"):
        assert (tr / "events/kmem" / ev / "enable").read_text().strip() == "0"
        assert (tr / "events/kmem" / ev / "trigger").read_text().strip() == "!stacktrace"
    assert (tr / "trace").read_text().strip() == ""
    assert not (agent_dir / "alloc.trace").exists()
    # the markers that place insmod and rmmod in the trace went to trace_marker
    assert (tr / "trace_marker").read_text().strip() == "rig-alloc rmmod"
    # the records sit in the run, after its rmmod and before its dump
    steps = [" ".join(ln.split()[:2]) for ln in out if ln.startswith("RIG-")]
    i = steps.index("RIG-STEP rmmod")
    assert steps[i + 1] == "RIG-ALLOC summary" and "RIG-MEM free_kb=305692" in out


def test_agent_without_tracefs_says_so(tmp_path: Path) -> None:
    agent_dir, env = _stand_in(tmp_path, None)
    out = _run_agent(agent_dir, env)
    assert "RIG-ALLOC off reason=no_tracefs" in out
    assert "RIG-STEP rmmod rc=0" in out and out[-1] == "RIG-END"
    w = parse_alloc(out)
    assert not w.seen and "no tracefs" in w.note
    found = judge_pages(w, 3)
    assert found is not None and found.outcome is Outcome.SKIPPED
    assert "no allocation witness" in found.reason and "no tracefs" in found.reason


def test_agent_awk_passes_the_host_awk_too(tmp_path: Path) -> None:
    """A full VM runs the agent with its own awk (Debian: mawk): same records."""
    if shutil.which("awk") is None:
        pytest.skip("no host awk")
    agent_dir, env = _stand_in(tmp_path, TRACES[0])
    (tmp_path / "bin/awk").unlink(missing_ok=True)
    out = [ln for ln in _run_agent(agent_dir, env) if ln.startswith("RIG-ALLOC")]
    assert out == (DATA / "traces" / f"{TRACES[0]}.expected").read_text().splitlines()


HEAD = "# tracer: nop\n#\n# entries-in-buffer/entries-written: {0}/{1}   #P:2\n#\n"


def _ev(cpu: int, t: str, what: str, comm: str = "insmod-75") -> str:
    return f"{comm:>16}     [{cpu:03d}] .....   {t}: {what}\n"


def _stack(cpu: int, t: str, *frames: str, comm: str = "insmod-75") -> str:
    return _ev(cpu, t, "<stack trace>", comm) + "".join(f" => {f}\n" for f in frames)


MINE = "vml_alloc+0x4a/0x1f0 [m]"


def test_agent_pairs_stacks_past_interrupts_and_other_cpus(tmp_path: Path) -> None:
    """A stack belongs to the latest allocation of its CPU still waiting for one: an interrupt
    may allocate (and free) between an event and its stack, another CPU's lines interleave.
    Slab pages are not the module's; a later free of another pfn frees nothing of it."""
    snap = (
        HEAD.format(42, 42)
        + _ev(0, "1.000001", "tracing_mark_write+0xda/0x270: rig-alloc insmod", "sh-70")
        + _ev(0, "1.000002", "mm_page_alloc: page=ffffea0000a00000 pfn=0x100 order=0 "
                             "migratetype=0 gfp_flags=GFP_KERNEL")
        + _ev(1, "1.000003", "mm_page_alloc: page=ffffea0000b00000 pfn=0x200 order=1 "
                             "migratetype=0 gfp_flags=GFP_KERNEL", "kworker/1:1-20")
        + _ev(0, "1.000004", "kmalloc: call_site=rcu_do_batch+0x1/0x2 ptr=ffff888000001000 "
                             "bytes_req=64 bytes_alloc=64 gfp_flags=GFP_ATOMIC node=-1")
        + _ev(0, "1.000005", "kfree: call_site=rcu_do_batch+0x3/0x4 ptr=ffff888000002000")
        + _stack(0, "1.000006", "__kmalloc_cache_noprof+0x2/0x3", "rcu_do_batch+0x1/0x2",
                 "handle_softirqs+0x1/0x2")
        + _stack(1, "1.000007", "__alloc_pages_noprof+0x1/0x2", "vml_work+0x9/0x20 [m]",
                 "process_one_work+0x1/0x2", comm="kworker/1:1-20")
        + _stack(0, "1.000008", "__alloc_pages_noprof+0x1/0x2", "alloc_pages_mpol_noprof+0x1/0x2",
                 MINE, "0xffffffffc0001000", "do_one_initcall+0x5b/0x310")
        + _ev(0, "1.000009", "mm_page_alloc: page=ffffea0000c00000 pfn=0x300 order=0 "
                             "migratetype=0 gfp_flags=GFP_KERNEL")
        + _stack(0, "1.000010", "__alloc_pages_noprof+0x1/0x2", "allocate_slab+0x1/0x2",
                 "___slab_alloc+0x1/0x2", "__kmalloc_cache_noprof+0x1/0x2", MINE)
        + _ev(0, "1.000011", "kmalloc: call_site=0xffffffffc0001010 ptr=ffff888000003000 "
                             "bytes_req=4096 bytes_alloc=4096 gfp_flags=GFP_KERNEL node=-1")
        + _stack(0, "1.000012", "__kmalloc_cache_noprof+0x1/0x2", "0xffffffffc0001010",
                 "do_one_initcall+0x5b/0x310")
        + _ev(0, "1.000013", "kmalloc: call_site=__kvmalloc_node_noprof+0x1/0x2 "
                             "ptr=ffff888000003000 bytes_req=16000 bytes_alloc=16384 "
                             "gfp_flags=GFP_KERNEL node=-1")  # the same object, traced again
        + _stack(0, "1.000014", "__kmalloc_node_noprof+0x1/0x2", "__kvmalloc_node_noprof+0x1/0x2",
                 MINE)
        + _ev(0, "1.000015", "tracing_mark_write+0xda/0x270: rig-alloc loaded", "sh-70")
    )  # fmt: skip
    rest = (
        HEAD.format(5, 9)
        + _ev(0, "2.000001", "tracing_mark_write+0xda/0x270: rig-alloc rmmod", "sh-70")
        + _ev(0, "2.000002", "mm_page_free: page=ffffea0000a00000 pfn=0x100 order=0", "rmmod-80")
        + _ev(0, "2.000003", "mm_page_free: page=ffffea0000d00000 pfn=0x400 order=0", "rmmod-80")
        + _ev(0, "2.000004", "kfree: call_site=vml_exit+0x1/0x2 ptr=ffff888000003000", "rmmod-80")
    )  # fmt: skip
    agent_dir, env = _stand_in(tmp_path, "synthetic", (snap, rest))
    (agent_dir / "plan").write_text("m.ko 1\n")
    (agent_dir / "modules/m.ko").write_bytes(b"fake")
    (tmp_path / "bin/insmod").write_text(
        f"#!/bin/sh\necho 'm 16384 0 - Live 0x0' > {tmp_path}/proc/modules\n"
        f"cat {tmp_path}/snapshot > {tmp_path}/sys/kernel/tracing/snapshot\n"
    )
    out = [ln for ln in _run_agent(agent_dir, env) if ln.startswith("RIG-ALLOC")]
    assert out == [
        "RIG-ALLOC summary allocated=3 freed=2 held=1 pages=3 held_pages=2 lost=4 unattributed=0",
        "RIG-ALLOC held kind=page pfn=0x200 order=1 site=vml_work+0x9/0x20 [m]",
    ]
    w = parse_alloc(out)
    assert w.held == 1 and "4 events lost" in w.note
    found = judge_pages(w, 1, module="m")
    assert found is not None and found.outcome is Outcome.SKIPPED  # lost events: no verdict


# --------------------------------------------------------------------------- golden channels
def _golden(name: str) -> tuple[AllocWitness, dict[str, object]]:
    agent = (DATA / f"{name}.agent.txt").read_text()
    expected = json.loads((DATA / f"{name}.expected.json").read_text())
    runs = parse_channels(agent, "").runs
    assert len(runs) == 1
    return alloc_witness(runs[0]), expected


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_agent_channels_parse_and_judge(name: str) -> None:
    w, want = _golden(name)
    got = {
        "seen": w.seen,
        "allocated": w.allocated,
        "freed": w.freed,
        "held": w.held,
        "pages": w.pages,
        "held_pages": w.held_pages,
        "lost": w.lost,
        "unattributed": w.unattributed,
        "held_sites": [[h.kind, h.what, h.site] for h in w.held_sites],
    }
    assert got == want["witness"]
    found = judge_pages(w, int(str(want["driver_freed_pages"])), module="vmlaunch")
    assert found is not None
    finding = want["finding"]
    assert isinstance(finding, dict)
    assert found.outcome.value == finding["outcome"]
    assert found.reason == finding["reason"]


def test_golden_data_is_there() -> None:
    assert TRACES and GOLDEN


# --------------------------------------------------------------------------- the parser
HELD = [
    "RIG-ALLOC summary allocated=6 freed=1 held=5 pages=5 held_pages=5 lost=0 unattributed=0",
    *(
        f"RIG-ALLOC held kind=page pfn=0x2b{i} order=0 site=vml_alloc+0x6f/0x1e0 [vmlaunch]"
        for i in range(5)
    ),
]


def test_parser_reads_the_records_and_only_records() -> None:
    w = parse_alloc(["RIG-STEP rmmod rc=0", *HELD, "RIG-MEM free_kb=1"])
    assert (w.seen, w.allocated, w.freed, w.held, w.pages, w.held_pages) == (True, 6, 1, 5, 5, 5)
    assert w.held_sites[0] == HeldAlloc("page", "pfn=0x2b0 order=0",
                                        "vml_alloc+0x6f/0x1e0 [vmlaunch]", HELD[1])  # fmt: skip
    assert w.note == ""
    # kernel text (the console, a dump) holding the same words is no record
    forged = parse_alloc([KernelText(ln) for ln in HELD])
    assert not forged.seen and forged.held == 0
    assert not parse_alloc([]).seen


def test_parser_notes_limits_and_bounds() -> None:
    w = parse_alloc([
        "RIG-ALLOC summary allocated=30 freed=0 held=30 pages=30 held_pages=30 lost=7 "
        "unattributed=2",
        *(f"RIG-ALLOC held kind=kmalloc ptr=ffff{i:04x} bytes=64 site=f+0x1/0x2 [m]"
          for i in range(20)),
        "RIG-ALLOC held-more count=10",
    ])  # fmt: skip
    assert w.seen and w.more == 10 and len(w.held_sites) == 20
    assert "7 events lost" in w.note and "2 allocations could not be attributed" in w.note
    off = parse_alloc(["RIG-ALLOC off reason=setup_failed"])
    assert not off.seen and "refused" in off.note
    odd = parse_alloc(["RIG-ALLOC off reason=\x1b[31m"])  # shown as read; never raises
    assert not odd.seen
    cut = parse_alloc(["RIG-ALLOC held kind=page pfn=1 order=0 site=x [m]"])
    assert not cut.seen and "did not finish" in cut.note


# --------------------------------------------------------------------------- the rule
def test_rule_fails_held_allocations_with_both_sides() -> None:
    found = judge_pages(parse_alloc(HELD), 5, module="vmlaunch")
    assert found is not None and found.outcome is Outcome.FAILED
    assert found.reason.startswith(
        "the driver reports 5 pages freed, 5 allocations it made were still held after rmmod"
    )
    assert "site 5 pages from vml_alloc+0x6f/0x1e0 [vmlaunch]" in found.reason
    assert HELD[0] in found.evidence
    no_line = judge_pages(parse_alloc(HELD), None)
    assert no_line is not None and no_line.reason.startswith("the driver reports no pages freed")


def test_rule_passes_when_everything_came_back() -> None:
    w = parse_alloc(["RIG-ALLOC summary allocated=7 freed=7 held=0 pages=5 held_pages=0 "
                     "lost=0 unattributed=0"])  # fmt: skip
    found = judge_pages(w, 5, module="vmlaunch")
    assert found is not None and found.outcome is Outcome.PASSED
    assert "7 allocations (5 pages) made, 7 freed" in found.reason
    assert "the driver reports 5 pages freed" in found.reason
    nothing = judge_pages(parse_alloc(["RIG-ALLOC summary allocated=0 freed=0 held=0"]), 0)
    assert nothing is not None and nothing.outcome is Outcome.PASSED
    assert "saw no allocation" in nothing.reason


def test_rule_does_not_convict_on_an_overflowed_buffer_nor_without_a_witness() -> None:
    lossy = parse_alloc([HELD[0].replace("lost=0", "lost=12"), *HELD[1:]])
    found = judge_pages(lossy, 5)
    assert found is not None and found.outcome is Outcome.SKIPPED
    assert "overflowed (12 events lost" in found.reason
    assert judge_pages(None, 5) is None
    silent = judge_pages(parse_alloc(["RIG-STEP rmmod rc=0"]), 5)
    assert silent is not None and silent.outcome is Outcome.SKIPPED
    assert "no allocation witness: no RIG-ALLOC record" in silent.reason
