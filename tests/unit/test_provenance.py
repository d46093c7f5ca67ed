"""A hostile module cannot forge the agent's records (issue: a hostile module, guest or file).

printk passes `\\r` (and any byte but `\\n`) through; the console and the agent's dmesg dumps
carried such lines raw, and the rig split lines on a lone `\\r`. Records now come only from the
agent's channel outside its dumps: every line of kernel text (the console, a dump) is kept and
read for the driver's lines, never taken for a record, whatever it holds. Real consoles from
real runs (tests/data/consoles) are judged with forged records woven into their kernel text:
the verdict must not change.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rig.guest.protocol import (
    DUMP_PREFIX,
    MAX_LINE,
    KernelText,
    complete_lines,
    guest_line,
    merge_channels,
    parse_channels,
)
from rig.model import BootResult, Outcome
from rig.verdict import judge
from rig.verdict.crash import LOAD_RE, UP_RE
from rig.verdict.grammar import DRIVER_RE, parse_driver_line
from rig.verdict.oops import find_oopses
from tests.unit.test_trusted_verdicts import (
    BUILD_OK,
    DATA,
    golden_cases,
    load_case,
    outcomes,
    profile_of,
)

LIES = "bochs-6.12-haswell-hold-lies-witness-fails"
# every record that would turn a verdict if a module could print it
FORGED = [
    "RIG-WITNESS start vmx=1",
    "RIG-WITNESS load module=irqbypass rc=0 error=",
    "RIG-WITNESS load module=kvm rc=0 error=",
    "RIG-WITNESS load module=kvm-intel rc=0 error=",
    "RIG-WITNESS vm rc=0 kvm-witness: ok exits=io,hlt",
    "RIG-WITNESS end",
    "RIG-STEP rmmod rc=0",
    "RIG-DMESG-END",
    "RIG-END",
    "RIG-BESIDE end alive=1",
    "RIG-DURING vm rc=0 kvm-witness: ok exits=io,hlt",
    "RIG-DURING end",
    "RIG-CRASH up kernel=6.12 vmcore=415236096",
    "RIG-PRELOAD module=vmxhog rc=1",
    "RIG-BEGIN run=forged cell=x",
    "RIG-RUN 7 module=vmlaunch iter=0",
]
JOINED = "\r".join(FORGED)


def _with_forgery(boot: BootResult, line: str, *, prefix: str = DUMP_PREFIX) -> BootResult:
    """`line` printed by the driver right after its `vmlaunch ok`: on the console and, as the
    agent copies kernel text, in the run's dump."""
    anchor = "vmlaunch ok -- vmlaunch entered the guest"

    def after(text: str, extra: str) -> str:
        out = []
        for ln in text.split("\n"):
            out.append(ln)
            if anchor in ln:
                out.append(extra)
        return "\n".join(out)

    console = after(boot.console, f"[   10.348032] {line}")
    agent = after(boot.agent, f"{prefix}[   10.348032] {line}")
    return BootResult(console=console, agent=agent, end=boot.end, duration_s=boot.duration_s,
                      detail=boot.detail)  # fmt: skip


@pytest.mark.parametrize("prefix", [DUMP_PREFIX, ""], ids=["agent-prefixes-dumps", "old-agent"])
@pytest.mark.parametrize(
    "line",
    [f"vmlaunch: honest\r{JOINED}\r", f"vmlaunch: honest\r\n{JOINED}", JOINED],
    ids=["cr-joined", "crlf-joined", "bare"],
)
def test_a_forged_witness_does_not_pass_a_driver_that_left_vmx_on(prefix: str, line: str) -> None:
    """The reproduction of the finding: the driver leaves VMX on; KVM after it gets EIO; one
    printk joins a passing witness (and every other record) with carriage returns."""
    cell, boot, arranged, expected = load_case(DATA / LIES)
    forged = _with_forgery(boot, line, prefix=prefix)
    verdict = judge(cell, BUILD_OK, forged, arranged)
    assert outcomes(verdict) == expected
    teardown = verdict.stages["teardown"]
    assert teardown.outcome is Outcome.FAILED
    assert "KVM could not enable VMX on CPU 0" in teardown.reason, teardown.reason


def test_kernel_text_is_never_a_record_and_shows_its_carriage_returns() -> None:
    merged = merge_channels("RIG-BEGIN run=r cell=c\n", f"[ 1.0] x\r{JOINED}\r\nRIG-END\r\n")
    kernel = [ln for ln in merged if isinstance(ln, KernelText)]
    assert [ln.startswith("[ 1.0] x\\x0dRIG-WITNESS") for ln in kernel] == [True, False]
    assert kernel[1] == "RIG-END"  # the console's own line: text, not the agent's end
    t = parse_channels("RIG-BEGIN run=r cell=c\n", f"RIG-END\n{JOINED}\n")
    assert t.begin and not t.end and t.witness is None and not t.beside


# --------------------------------------------------------------------------- noise
RECORD = st.sampled_from(FORGED)
CONTROL = st.sampled_from(["\r", "\x00", "\x1b[2J", "\x1b]0;x\x07", "\x85", "\x7f", "\x0c"])
HOSTILE = st.lists(st.one_of(RECORD, CONTROL, st.text(max_size=20)), min_size=1, max_size=6)


def _weave(lines: list[str], forged: list[tuple[int, list[str]]], prefix: str) -> list[str]:
    out = list(lines)
    for pos, parts in sorted(forged, key=lambda f: f[0], reverse=True):
        at = pos % (len(out) + 1)
        out.insert(at, f"{prefix}[   12.345678] {''.join(parts)}")
    return out


def _in_dumps(agent: list[str], forged: list[tuple[int, list[str]]]) -> list[str]:
    """Kernel text in the agent's dumps, as the agent writes it (prefixed)."""
    out = list(agent)
    spans = [i for i, line in enumerate(out) if line == "RIG-DMESG-BEGIN"]
    for pos, parts in sorted(forged, key=lambda f: f[0], reverse=True):
        if spans:
            out.insert(spans[pos % len(spans)] + 1 + pos % 3, DUMP_PREFIX + "\r".join(parts))
    return out


@pytest.mark.parametrize("case", golden_cases(), ids=lambda p: p.name)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forged=st.lists(st.tuples(st.integers(0, 10_000), HOSTILE), max_size=12))
def test_forged_records_in_kernel_text_never_change_a_verdict(
    case: Path, forged: list[tuple[int, list[str]]]
) -> None:
    # a module that prints an oops of its own fails itself: that is no forgery
    texts = ["".join(parts) for _, parts in forged] + ["\r".join(parts) for _, parts in forged]
    assume(not any(find_oopses([f"[   12.345678] {t}"], 0) for t in texts))
    cell, boot, arranged, expected = load_case(case)
    console = _weave(boot.console.split("\n")[:-1], forged, "")
    agent = _in_dumps(boot.agent.split("\n")[:-1], forged)
    hostile = BootResult(
        console="\n".join(console) + "\n", agent="\n".join(agent) + "\n", end=boot.end,
        duration_s=boot.duration_s, detail=boot.detail, triple_fault=boot.triple_fault,
    )  # fmt: skip
    verdict = judge(cell, BUILD_OK, hostile, arranged, profile_of(case))
    assert outcomes(verdict) == expected
    said = [verdict.console, *(v.reason + v.evidence for v in verdict.stages.values())]
    assert not any(ord(c) < 32 and c not in "\t\n" for text in said for c in text)


def test_a_boot_detail_with_escapes_reaches_no_reason_raw() -> None:
    """A lane's detail (the watcher's panic line is raw console text) goes into a reason."""
    cell, boot, arranged, _ = load_case(DATA / "tcg-6.12-penryn-hang-driver")
    detail = "no poweroff: \x1b[2J\x1b]0;pwned\x07 (timeout)"
    hostile = BootResult(console=boot.console, agent=boot.agent, end=boot.end,
                         duration_s=boot.duration_s, detail=detail)  # fmt: skip
    verdict = judge(cell, BUILD_OK, hostile, arranged)
    reasons = " ".join(v.reason for v in verdict.stages.values())
    assert "\\x1b[2J" in reasons and "\x1b" not in reasons and "\x07" not in reasons


# --------------------------------------------------------------------------- bounded lines
@given(st.text().map(lambda t: t.replace("\n", "")))  # a line: complete_lines split on \n
def test_a_guest_line_has_no_control_character_and_a_bounded_length(text: str) -> None:
    line = guest_line(text)
    assert not any((ord(c) < 32 and c != "\t") or 0x7F <= ord(c) <= 0x9F for c in line)
    assert len(line) <= 4 * MAX_LINE + 64


def test_a_megabyte_line_is_cut_where_it_is_read() -> None:
    huge = "[ 1.0] vmlaunch: cpu=0 exit ok reason=0x12 -- " + " " * 1_000_000 + "y"
    lines = complete_lines(huge + "\r\n" + "RIG-END\n")
    assert len(lines) == 2 and len(lines[0]) < MAX_LINE + 64 and lines[1] == "RIG-END"
    assert "more characters cut" in lines[0]


def test_no_parser_pattern_backtracks_on_trailing_blanks() -> None:
    """`.*?\\s*$` is quadratic in a run of blanks: none of the guest-text patterns has it."""
    for pattern in (DRIVER_RE, LOAD_RE, UP_RE):
        assert ".*?\\s*$" not in pattern.pattern, pattern.pattern
    long_text = "vmlaunch: cpu=0 exit ok reason=0x12 -- " + "word " * 1000 + " " * 5000
    record = parse_driver_line(long_text)
    assert record is not None and record.text.endswith("word")
