"""Verdicts: from a cell's build and guest console to one StageVerdict per stage in STAGES.

    parse_console(text) -> GuestReport   what the guest said (docs/contract.md), never raises
    judge(cell, build, boot) -> CellVerdict

Pure functions, no I/O. Outcomes mean (rig.model.Outcome): FAILED = the driver misbehaved,
SKIPPED = cannot be tested here (a stated reason), ERROR = infrastructure.

Stage <- driver lines (docs/contract.md grammar):
  build        ModuleBuild
  vmxon        load, check, alloc, vmxon
  vmlaunch     vmclear, vmptrld, vmcs, vmlaunch, and `exit FAIL` with an entry-failure reason
  vmcall_exit  exit
  teardown     vmxoff, freed, unload, plus the guest's insmod/rmmod steps

Rules that are not obvious:
- The console is split into runs (`RIG-RUN n module=M iter=I` blocks of guests/initramfs/init;
  a console without them is one run). Each run is judged; the cell gets, per stage, the worst
  outcome over its runs (FAILED > ERROR > SKIPPED > PASSED), its reason prefixed "run N: ".
- Driver lines are read from a run's dmesg dump when it has at least as many of them as the
  live console (the dump is complete; the live console is all there is after a crash).
- Oopses count only after the driver's load began (after the guest's RIG-BEGIN/RIG-CPU marker):
  kernel 6.12 on Bochs prints a boot-time WARNING before any module loads.
- An oops, a hang (timeout) or a guest panic/triple fault makes the stage in progress and every
  later stage FAILED; an emulator that died otherwise, or a console cut short, makes them ERROR.
- Whether the CPU has VMX is the guest's word (RIG-CPU vmx=), else the lane's; on a CPU without
  VMX the driver must decline with why=no_vmx (the VMX stages are then SKIPPED).
- busybox insmod retries a failing init once: the first load attempt is judged, the second is
  tolerated (unless it shows the first left VMX on).
- A stage after a failed one is SKIPPED ("not reached"); after a decline, SKIPPED with the
  decline's reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from rig.model import (
    NOTHING_ARRANGED,
    SEVERITY,
    STAGES,
    Arranged,
    BootEnd,
    BootResult,
    Cell,
    CellVerdict,
    ModuleBuild,
    Outcome,
    StageVerdict,
)

TAIL_LINES = 40
OOPS_MAX_LINES = 60
VMCALL_REASON = 0x12

# --------------------------------------------------------------------------- decoding tables
VM_INSTRUCTION_ERRORS: dict[int, str] = {
    1: "VMCALL executed in VMX root operation",
    2: "VMCLEAR with invalid physical address",
    3: "VMCLEAR with VMXON pointer",
    4: "VMLAUNCH with non-clear VMCS",
    5: "VMRESUME with non-launched VMCS",
    6: "VMRESUME after VMXOFF",
    7: "VM entry with invalid control field(s)",
    8: "VM entry with invalid host-state field(s)",
    9: "VMPTRLD with invalid physical address",
    10: "VMPTRLD with VMXON pointer",
    11: "VMPTRLD with incorrect VMCS revision identifier",
    12: "VMREAD/VMWRITE from/to unsupported VMCS component",
    13: "VMWRITE to read-only VMCS component",
    15: "VMXON executed in VMX root operation",
    16: "VM entry with invalid executive-VMCS pointer",
    17: "VM entry with non-launched executive VMCS",
    18: "VM entry with executive-VMCS pointer not VMXON pointer",
    19: "VMCALL with non-clear VMCS",
    20: "VMCALL with invalid VM-exit control fields",
    22: "VMCALL with incorrect MSEG revision identifier",
    23: "VMXOFF under dual-monitor treatment of SMIs and SMM",
    24: "VMCALL with invalid SMM-monitor features",
    25: "VM entry with invalid VM-execution control fields in executive VMCS",
    26: "VM entry with events blocked by MOV SS",
    28: "invalid operand to INVEPT/INVVPID",
}

EXIT_REASONS: dict[int, str] = {
    0: "exception or NMI",
    1: "external interrupt",
    2: "triple fault",
    3: "INIT signal",
    7: "interrupt window",
    8: "NMI window",
    9: "task switch",
    10: "CPUID",
    12: "HLT",
    18: "VMCALL",
    28: "control-register access",
    30: "I/O instruction",
    31: "RDMSR",
    32: "WRMSR",
    33: "invalid guest state",
    34: "MSR loading",
    41: "machine-check event",
    48: "EPT violation",
    49: "EPT misconfiguration",
}

ENTRY_FAILURE_BIT = 1 << 31

DECLINES: dict[str, str] = {
    "no_vmx": "the CPU has no VMX",
    "vmx_disabled_by_bios": "VMX is disabled by the firmware (IA32_FEATURE_CONTROL locked)",
    "vmx_busy": "VMX is already in use by another hypervisor (CR4.VMXE set)",
    "vmx_disabled_by_kernel": "the guest kernel turned VMX off (X86_FEATURE_VMX cleared)",
}
_KERNEL_FLAG_OFF = ("vmx_disabled_by_bios", "vmx_disabled_by_kernel")
"""Declines that explain a guest kernel without the vmx flag on a CPU whose CPUID has VMX."""

STAGE_OF: dict[str, str] = {
    "load": "vmxon",
    "check": "vmxon",
    "alloc": "vmxon",
    "vmxon": "vmxon",
    "vmclear": "vmlaunch",
    "vmptrld": "vmlaunch",
    "vmcs": "vmlaunch",
    "vmlaunch": "vmlaunch",
    "exit": "vmcall_exit",
    "vmxoff": "teardown",
    "freed": "teardown",
    "unload": "teardown",
}
"""Which verdict stage each driver stage belongs to (`status` lines belong to none)."""

# --------------------------------------------------------------------------- line grammar
_DRIVER_RE = re.compile(
    r"vmlaunch: cpu=(?P<cpu>\d{1,5}|-) (?P<stage>[a-z][a-z0-9_]{0,31}) "
    r"(?P<result>ok|FAIL|declined|info)"
    r"(?P<kv>(?: [A-Za-z_][A-Za-z0-9_.]{0,63}=\S+)*)"
    r"(?: -- (?P<text>.*?))?\s*$"
)
_KV_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_.]{0,63})=(\S+)")
_PREFIX = r"(?:<\d>)?(?:\[\s*\d+\.\d+\]\s*)?"
_KMSG_MARKER_RE = re.compile(r"^\s*" + _PREFIX + r"RIG-(?:BEGIN|CPU)\b")
_KMSG_STEP_RE = re.compile(r"^\s*" + _PREFIX + r"(?:rig: run=\d+ step=|RIG-RUN\b)")
_MARKER_RE = re.compile(
    r"^\s*RIG-(?P<kind>BEGIN|CPU|RUN|STEP|DMESG-BEGIN|DMESG-END|END)(?:\s+(?P<rest>.*?))?\s*$"
)
_STEP_RE = re.compile(r"^(?P<name>\S{1,64})(?:\s+rc=(?P<rc>-?\d{1,9})\b)?")
_STOPPED_RE = re.compile(r"stopped [\d.]+ s after the panic reached the console")
_PRELOAD_RE = re.compile(r"^\s*RIG-PRELOAD\s+module=(?P<module>\S+)\s+rc=(?P<rc>\d+)?\S*\s*$")
_BEGIN_RE = re.compile(r"run=(?P<run>\S*)(?:\s+cell=(?P<cell>\S*))?")
_RUN_RE = re.compile(
    r"^(?P<n>\d{1,6})?(?:.*?\bmodule=(?P<module>\S+))?(?:.*?\biter=(?P<iter>\d{1,6}))?"
)
_VMX_RE = re.compile(r"\bvmx=(?P<vmx>[01])\b")
_CPUS_RE = re.compile(r"\bcpus=(?P<cpus>\d{1,4})\b")
_MODEL_RE = re.compile(r"\bmodel=(?P<model>.*)$")

_OOPS_TRIGGERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("panic", re.compile(r"Kernel panic - not syncing")),
    ("bug", re.compile(r"\bBUG: ")),
    ("bug", re.compile(r"kernel BUG at ")),
    ("oops", re.compile(r"\bOops: ")),
    ("gpf", re.compile(r"general protection fault")),
    ("invalid_opcode", re.compile(r"\binvalid opcode: ")),
    ("double_fault", re.compile(r"double fault")),
    ("warning", re.compile(r"WARNING: CPU: \d+ PID: \d+")),
    ("stall", re.compile(r"rcu: INFO: \S+ (?:self-)?detected stalls?")),
    ("hung_task", re.compile(r"INFO: task \S+ blocked for more than")),
)
_OOPS_END_RE = re.compile(r"---\[ end (?:trace|Kernel panic)")
_TRIPLE_FAULT_RE = re.compile(r"triple fault|3rd \(\d+\) exception|shutdown status", re.IGNORECASE)


# --------------------------------------------------------------------------- parsed records
@dataclass(frozen=True)
class DriverRecord:
    """One `vmlaunch: cpu=...` line (docs/contract.md section 1)."""

    cpu: int | None
    stage: str
    result: str
    kv: tuple[tuple[str, str], ...] = ()
    text: str = ""
    raw: str = ""  # the whole guest line, as printed
    index: int = -1  # line number within its stream (console or dmesg dump)

    def get(self, key: str, default: str | None = None) -> str | None:
        for k, v in self.kv:
            if k == key:
                return v
        return default

    def number(self, key: str) -> int | None:
        value = self.get(key)
        if value is None:
            return None
        try:
            return int(value, 0) if len(value) <= 24 else None
        except ValueError:
            return None

    def render(self) -> str:
        """The line as the driver prints it (without any dmesg timestamp)."""
        cpu = "-" if self.cpu is None else str(self.cpu)
        line = f"vmlaunch: cpu={cpu} {self.stage} {self.result}"
        line += "".join(f" {k}={v}" for k, v in self.kv)
        if self.text:
            line += f" -- {self.text}"
        return line


def parse_driver_line(line: str, index: int = -1) -> DriverRecord | None:
    """Parse one line containing a driver record, or None if it holds none."""
    start = line.find("vmlaunch: cpu=")
    if start < 0:
        return None
    m = _DRIVER_RE.match(line, start)
    if m is None:
        return None
    cpu = None if m["cpu"] == "-" else int(m["cpu"])
    kv = tuple((k, v) for k, v in _KV_RE.findall(m["kv"]))
    return DriverRecord(
        cpu=cpu,
        stage=m["stage"],
        result=m["result"],
        kv=kv,
        text=m["text"] or "",
        raw=line.rstrip(),
        index=index,
    )


@dataclass(frozen=True)
class Step:
    name: str  # insmod | rmmod | sysfs | ...
    rc: int | None
    raw: str
    index: int  # console line number


@dataclass(frozen=True)
class Oops:
    kind: str  # panic | bug | oops | gpf | warning | ...
    first: str  # the line that triggered it
    text: str  # the block, up to its `---[ end trace` line
    index: int  # line number within its stream


@dataclass(frozen=True)
class Stream:
    """One sequence of kernel lines: a run's live console, or its dmesg dump."""

    name: str  # "console" | "dmesg"
    lines: tuple[str, ...]
    records: tuple[DriverRecord, ...]
    boundary: int  # first line index that belongs to the test (lines before: boot)
    oopses: tuple[Oops, ...]  # after the boundary: these count
    early_oopses: tuple[Oops, ...]  # before it (boot-time warnings): ignored


@dataclass(frozen=True)
class Run:
    """One insmod..rmmod..dmesg cycle of the guest (a `RIG-RUN` block, or the whole test)."""

    number: int
    module: str
    iteration: int
    steps: tuple[Step, ...]
    console: Stream  # the run's console lines outside its dmesg dump
    dump: Stream | None  # its RIG-DMESG-BEGIN..END block
    dump_complete: bool

    @property
    def source(self) -> Stream:
        """The stream the driver lines are judged from: the dump unless the console has more."""
        if self.dump is not None and len(self.dump.records) >= len(self.console.records):
            return self.dump
        return self.console

    @property
    def records(self) -> tuple[DriverRecord, ...]:
        return self.source.records

    @property
    def oopses(self) -> tuple[Oops, ...]:
        """Oopses after the driver's load began (from the judged stream, else the other)."""
        if self.source.oopses:
            return self.source.oopses
        other = self.console if self.source is not self.console else self.dump
        return other.oopses if other is not None else ()

    @property
    def attempts(self) -> tuple[tuple[DriverRecord, ...], ...]:
        return split_attempts(self.records)

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)


@dataclass(frozen=True)
class GuestReport:
    """Everything the guest said, per docs/contract.md section 2."""

    begin: bool = False
    end: bool = False
    run_id: str = ""
    cell_id: str = ""
    vmx: bool | None = None  # RIG-CPU vmx=
    cpus: int | None = None  # RIG-CPU cpus=
    cpu_model: str = ""  # RIG-CPU model= ("_" read back as spaces)
    runs: tuple[Run, ...] = ()
    boot_oopses: tuple[Oops, ...] = ()  # before RIG-BEGIN: never the driver's
    lines: tuple[str, ...] = ()
    preloads: tuple[tuple[str, int | None], ...] = ()  # RIG-PRELOAD module=M rc=N: fixtures
    rebooted: bool = False  # a second RIG-BEGIN: the guest rebooted during the test

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(s for r in self.runs for s in r.steps)

    @property
    def records(self) -> tuple[DriverRecord, ...]:
        return tuple(rec for r in self.runs for rec in r.records)

    @property
    def oopses(self) -> tuple[Oops, ...]:
        return tuple(o for r in self.runs for o in r.oopses)

    def tail(self, n: int = TAIL_LINES) -> str:
        return "\n".join(self.lines[-n:])


def split_attempts(records: Sequence[DriverRecord]) -> tuple[tuple[DriverRecord, ...], ...]:
    """Split driver records into load attempts (each begins with a `load` line)."""
    attempts: list[list[DriverRecord]] = []
    for rec in records:
        if rec.stage == "load" or not attempts:
            attempts.append([])
        attempts[-1].append(rec)
    return tuple(tuple(a) for a in attempts)


def _find_oopses(lines: Sequence[str], start: int) -> list[Oops]:
    found: list[Oops] = []
    i = start
    while i < len(lines):
        line = lines[i]
        kind = None
        if "vmlaunch: cpu=" not in line and not _MARKER_RE.match(line):
            kind = next((k for k, rx in _OOPS_TRIGGERS if rx.search(line)), None)
        if kind is None:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and j - i < OOPS_MAX_LINES:
            if _MARKER_RE.match(lines[j]):
                break
            j += 1
            if _OOPS_END_RE.search(lines[j - 1]):
                break
        found.append(Oops(kind, line.strip(), "\n".join(lines[i:j]), i))
        i = j
    return found


def _stream(name: str, lines: Sequence[str], boundary: int) -> Stream:
    records = [
        rec for i, line in enumerate(lines) if (rec := parse_driver_line(line, i)) is not None
    ]
    return Stream(
        name=name,
        lines=tuple(lines),
        records=tuple(records),
        boundary=boundary,
        oopses=tuple(_find_oopses(lines, boundary)),
        early_oopses=tuple(_find_oopses(lines[:boundary], 0)),
    )


def _dump_boundary(dump: Sequence[str]) -> int:
    """Where the test begins in a dmesg dump.

    After the last copy of RIG-BEGIN/RIG-CPU if the guest wrote them to /dev/kmsg; else at the
    first step marker (`rig: run=N step=insmod`, guests that clear dmesg at RIG-BEGIN); else at
    the module's first line; else nowhere (nothing in the dump counts against the driver).
    """
    copies = [i for i, line in enumerate(dump) if _KMSG_MARKER_RE.match(line)]
    if copies:
        return copies[-1] + 1
    for i, line in enumerate(dump):
        if _KMSG_STEP_RE.match(line) or "vmlaunch:" in line:
            return i
    return len(dump)


@dataclass
class _RunBuilder:
    """Collects one run while parsing (local to one parse_console call)."""

    number: int
    module: str = ""
    iteration: int = 0
    explicit: bool = False  # started by a RIG-RUN line
    steps: list[Step] = field(default_factory=list)
    live: list[str] = field(default_factory=list)
    dump: list[str] | None = None
    dump_complete: bool = False

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)

    def build(self) -> Run:
        dump = None if self.dump is None else _stream("dmesg", self.dump, _dump_boundary(self.dump))
        return Run(
            number=self.number,
            module=self.module,
            iteration=self.iteration,
            steps=tuple(self.steps),
            console=_stream("console", self.live, 0),
            dump=dump,
            dump_complete=self.dump_complete,
        )


_CONSOLE_MARK_RE = re.compile(r"rig: run=(?P<n>\d{1,6}) step=(?P<step>[a-z]{1,16})\b")


def complete_lines(text: str) -> list[str]:
    """The lines of a channel that were written whole: an unterminated last line (the guest
    died mid-line, `reason=0x12` cut to `reason=0x1`) is never evidence."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines.pop()  # "" after a final newline, else the unterminated rest
    return lines


def merge_channels(agent: str, console: str) -> list[str]:
    """One ordered transcript from the agent's protocol channel and the kernel's console.

    The channels share no wire, so no kernel line is ever spliced into a protocol line. The
    kernel's lines are placed by the agent's kmsg markers (`rig: run=N step=S` on the console):
    boot lines before RIG-BEGIN, run N's insmod lines after its RIG-RUN, its rmmod lines
    before its `RIG-STEP rmmod`, what followed the rmmod before its dump. Lines of a run the
    agent never announced (its output was lost) come last, in console order.
    """
    prelude: list[str] = []
    segments: dict[tuple[int, str], list[str]] = {}
    order: list[tuple[int, str]] = []
    current: list[str] = prelude
    for line in complete_lines(console):
        m = _CONSOLE_MARK_RE.search(line)
        if m:
            key = (int(m["n"]), m["step"])
            if key not in segments:
                segments[key] = []
                order.append(key)
            current = segments[key]
        current.append(line)

    out = list(prelude)
    run: int | None = None

    def take(*steps: str) -> None:
        if run is not None:
            for step in steps:
                out.extend(segments.pop((run, step), []))

    for line in complete_lines(agent):
        m = _MARKER_RE.match(line)
        kind = m["kind"] if m else None
        if kind in ("RUN", "END"):
            take("insmod", "rmmod", "dump")
            run = None
        if kind == "STEP" and (m["rest"] or "").startswith("rmmod"):  # type: ignore[index]
            take("insmod", "rmmod")
        elif kind == "DMESG-BEGIN":
            take("insmod", "rmmod", "dump")
        out.append(line)
        if kind == "RUN":
            rm = _RUN_RE.match((m["rest"] or "") if m else "")
            run = int(rm["n"]) if rm and rm["n"] else None
            take("insmod")
    take("insmod", "rmmod", "dump")
    for key in order:
        out.extend(segments.pop(key, []))
    return out


def parse_guest(boot: BootResult) -> GuestReport:
    """What the guest said: its agent's channel merged with its console (one channel when
    the lane has no separate agent channel)."""
    if boot.agent:
        return parse_lines(merge_channels(boot.agent, boot.console))
    return parse_lines(complete_lines(boot.console))


def parse_console(text: str) -> GuestReport:
    """Parse a one-channel transcript (protocol and kernel lines on one console)."""
    return parse_lines(complete_lines(text + "\n"))


def parse_lines(lines: Sequence[str]) -> GuestReport:
    """Parse a guest's transcript. Never raises; unknown lines are kept, not judged."""
    lines = list(lines)
    begin = end = rebooted = False
    run_id = cell_id = model = ""
    vmx: bool | None = None
    cpus: int | None = None
    prelude: list[str] = []
    preloads: list[tuple[str, int | None]] = []
    runs: list[_RunBuilder] = []
    dump_open = False
    for index, line in enumerate(lines):
        m = _MARKER_RE.match(line)
        kind = m["kind"] if m else None
        rest = (m["rest"] or "") if m else ""
        if dump_open:
            if kind == "DMESG-END":
                dump_open = False
                runs[-1].dump_complete = True
            else:
                assert runs[-1].dump is not None
                runs[-1].dump.append(line)
            continue
        if begin and kind == "BEGIN":
            rebooted = True  # the guest started over: what follows is another boot's
            break
        if not begin:
            if kind == "BEGIN":
                begin = True
                bm = _BEGIN_RE.search(rest)
                if bm:
                    run_id, cell_id = bm["run"], bm["cell"] or ""
            else:
                prelude.append(line)
            continue
        pm = _PRELOAD_RE.match(line)
        if pm:
            preloads.append((pm["module"], int(pm["rc"]) if pm["rc"] is not None else None))
            continue
        if kind == "CPU" and vmx is None:
            vm, cm, mm = _VMX_RE.search(rest), _CPUS_RE.search(rest), _MODEL_RE.search(rest)
            vmx = vm["vmx"] == "1" if vm else None
            cpus = int(cm["cpus"]) if cm else None
            model = " ".join(mm["model"].replace("_", " ").split()) if mm else ""
            continue
        current = runs[-1] if runs else None
        started = current is not None and (current.explicit or current.steps or current.dump)
        if kind == "RUN":
            rm = _RUN_RE.match(rest)
            number = int(rm["n"]) if rm and rm["n"] else len(runs)
            if current is None or started:
                current = _RunBuilder(number=number)
                runs.append(current)
            current.number, current.explicit = number, True
            current.module = (rm["module"] if rm else None) or ""
            current.iteration = int(rm["iter"]) if rm and rm["iter"] else 0
        elif current is None or (
            kind == "STEP" and rest.startswith("insmod") and current.step("insmod") is not None
        ):
            current = _RunBuilder(number=len(runs))
            runs.append(current)
        if kind == "STEP":
            sm = _STEP_RE.match(rest)
            if sm:
                rc = int(sm["rc"]) if sm["rc"] is not None else None
                current.steps.append(Step(sm["name"], rc, line.strip(), index))
        elif kind == "DMESG-BEGIN" and current.dump is None:
            current.dump = []
            dump_open = True
            continue
        elif kind == "END":
            end = True
        current.live.append(line)
    if begin and not runs:
        runs.append(_RunBuilder(number=0))
    return GuestReport(
        begin=begin,
        end=end,
        run_id=run_id,
        cell_id=cell_id,
        vmx=vmx,
        cpus=cpus,
        cpu_model=model,
        runs=tuple(r.build() for r in runs),
        boot_oopses=tuple(_find_oopses(prelude, 0)),
        lines=tuple(lines),
        preloads=tuple(preloads),
        rebooted=rebooted,
    )


# --------------------------------------------------------------------------- decoding
def _hex(value: int | None) -> str:
    return "?" if value is None else f"0x{value:x}"


def decode_exit_reason(reason: int) -> str:
    basic = reason & 0xFFFF
    name = EXIT_REASONS.get(basic, "unknown")
    prefix = "VM-entry failure, " if reason & ENTRY_FAILURE_BIT else ""
    return f"{prefix}exit reason {basic} ({name})"


def decode_failure(rec: DriverRecord) -> str:
    """A short sentence for a FAIL or declined line."""
    if rec.result == "declined":
        why = rec.get("why", "?") or "?"
        return f"declined: {DECLINES.get(why, why)}" + _errno(rec)
    kind = rec.get("kind")
    error = rec.number("error")
    reason = rec.number("reason")
    if kind == "VMfailValid" or error is not None:
        name = VM_INSTRUCTION_ERRORS.get(error or -1, "unknown error")
        return f"{rec.stage} VMfailValid: VM-instruction error {error} ({name})" + _errno(rec)
    if kind == "VMfailInvalid":
        return f"{rec.stage} VMfailInvalid (no valid current VMCS / bad pointer)" + _errno(rec)
    if reason is not None:
        return f"{rec.stage} FAIL: {decode_exit_reason(reason)}" + _errno(rec)
    text = f": {rec.text}" if rec.text else ""
    return f"{rec.stage} FAIL{text}" + _errno(rec)


def _errno(rec: DriverRecord) -> str:
    errno = rec.get("errno")
    return f" (errno {errno})" if errno else ""


def _is_entry_failure(rec: DriverRecord) -> bool:
    if rec.stage != "exit" or rec.result != "FAIL":
        return False
    reason = rec.number("reason")
    basic = rec.number("basic")
    return (reason is not None and bool(reason & ENTRY_FAILURE_BIT)) or basic in (33, 34, 41)


def _evidence(recs: Iterable[DriverRecord | Step | str]) -> str:
    out: list[str] = []
    for r in recs:
        line = r if isinstance(r, str) else r.raw
        if line not in out:
            out.append(line)
    return "\n".join(out)


# --------------------------------------------------------------------------- judging
@dataclass(frozen=True)
class _Context:
    cell: Cell
    run: Run
    vmx_expected: bool  # does the guest CPU have VMX (guest's word, else the lane's)?
    no_vmx_reason: str  # skip reason when it has none
    complete: bool  # the guest finished the test: missing lines are the driver's fault
    arranged: Arranged = NOTHING_ARRANGED  # the refusals this run set up: the right answer
    last: bool = True  # the guest's last run: after it only RIG-END should follow
    ended: bool = True  # the guest printed RIG-END


_Judged = StageVerdict | None  # None: no conclusion yet (the stage did not finish)


def _v(stage: str, outcome: Outcome, reason: str, evidence: str = "") -> StageVerdict:
    return StageVerdict(stage=stage, outcome=outcome, reason=reason, evidence=evidence)


def _judge_vmxon(ctx: _Context, first: Sequence[DriverRecord]) -> _Judged:
    mine = [r for r in first if STAGE_OF.get(r.stage) == "vmxon"]
    claims = [r for r in first if r.result == "ok" and r.stage in ("vmxon", "vmlaunch", "exit")]
    declines = [r for r in mine if r.result == "declined"]
    fails = [r for r in mine if r.result == "FAIL"]
    if not ctx.vmx_expected:
        if claims:
            return _v(
                "vmxon",
                Outcome.FAILED,
                f"the driver claims '{claims[0].stage} ok' on a CPU without VMX",
                _evidence(claims),
            )
        # The guest's flag is the kernel's X86_FEATURE_VMX. On a lane that promises VMX the
        # kernel clears it only when the run locked VMX off in the firmware (or asked the
        # kernel to): the driver must then name that cause. Without such an arrangement a
        # VMX lane whose guest shows no VMX is a wrong CPU model or an emulator regression.
        if ctx.cell.lane.vmx:
            expected = tuple(w for w in _KERNEL_FLAG_OFF if w in ctx.arranged.declines)
            if not expected:
                return _v(
                    "vmxon",
                    Outcome.ERROR,
                    f"infrastructure: lane {ctx.cell.lane.name} promises VMX but the guest CPU "
                    f"shows no vmx flag ({ctx.no_vmx_reason}; CPU model "
                    f"{ctx.cell.cpu_model or ctx.cell.cpu.name}): a wrong CPU model or an "
                    "emulator regression, not a verdict on the driver",
                    _evidence(mine),
                )
        else:
            expected = ("no_vmx",)
        right = [r for r in declines if r.get("why") in expected]
        if right:
            why = right[0].get("why") or "no_vmx"
            reason = ctx.no_vmx_reason if why == "no_vmx" else _arranged_reason(ctx, why)
            return _v("vmxon", Outcome.SKIPPED, reason, _evidence(right))
        if declines or fails:
            bad = (declines or fails)[0]
            return _v(
                "vmxon",
                Outcome.FAILED,
                f"{decode_failure(bad)}; expected a decline with why="
                f"{' or '.join(expected)} (the guest kernel reports no VMX)",
                _evidence([bad]),
            )
        if ctx.complete and not first:
            return _v("vmxon", Outcome.FAILED, _silent(ctx.run), _insmod_evidence(ctx.run))
        if ctx.complete:
            return _v(
                "vmxon",
                Outcome.FAILED,
                "the driver did not decline on a CPU without VMX (no 'check declined why=no_vmx')",
                _evidence(mine),
            )
        return None
    if declines:
        d = declines[0]
        why = d.get("why") or "?"
        if why in ctx.arranged.declines:
            return _v("vmxon", Outcome.SKIPPED, _arranged_reason(ctx, why), d.raw)
        return _v(
            "vmxon",
            Outcome.FAILED,
            f"{decode_failure(d)}, but the guest CPU has VMX and the run arranged no such "
            "condition",
            d.raw,
        )
    flag_off = [w for w in _KERNEL_FLAG_OFF if w in ctx.arranged.declines]
    if flag_off:
        return _v(
            "vmxon",
            Outcome.ERROR,
            f"infrastructure: the run arranged {flag_off[0]} ({ctx.arranged.because(flag_off[0])})"
            " but the guest kernel still shows the vmx flag: the arrangement did not take",
            _evidence(mine),
        )
    if ctx.arranged.declines and (claims or fails):
        why = sorted(ctx.arranged.declines)[0]
        return _v(
            "vmxon",
            Outcome.FAILED,
            f"the run arranged {why} ({ctx.arranged.because(why)}) but the driver did not "
            "decline: it went on to use VMX that is not its to take",
            _evidence(claims or fails),
        )
    if fails:
        return _v("vmxon", Outcome.FAILED, decode_failure(fails[0]), _evidence(fails))
    reported = {r.cpu for r in mine if r.cpu is not None}  # CPUs the driver set out to use
    ok = {r.cpu for r in mine if r.stage == "vmxon" and r.result == "ok"}
    if ok and reported <= ok:
        cpus = ", ".join(str(c) for c in sorted(c for c in ok if c is not None))
        return _v("vmxon", Outcome.PASSED, f"VMXON succeeded on CPU {cpus}", _evidence(mine))
    if ctx.complete and not first:
        return _v("vmxon", Outcome.FAILED, _silent(ctx.run), _insmod_evidence(ctx.run))
    if ctx.complete:
        missing = sorted(c for c in reported - ok if c is not None)
        what = (
            f"no 'vmxon ok' for CPU {', '.join(map(str, missing))}" if ok else "no 'vmxon ok' line"
        )
        return _v("vmxon", Outcome.FAILED, f"the driver printed {what}", _evidence(mine))
    return None


def _arranged_reason(ctx: _Context, why: str) -> str:
    how = ctx.arranged.because(why)
    return f"driver declined as arranged: {DECLINES.get(why, why)}" + (f" ({how})" if how else "")


def _silent(run: Run) -> str:
    insmod = run.step("insmod")
    rc = f" (insmod rc={insmod.rc})" if insmod is not None else ""
    return f"the driver printed no 'vmlaunch: cpu=' line at all{rc}"


def _insmod_evidence(run: Run) -> str:
    """Lines about loading the module (insmod errors, unknown symbols, ...)."""
    lines = [
        ln
        for stream in (run.console, run.dump)
        if stream is not None
        for ln in stream.lines[stream.boundary :]
        if "insmod" in ln or "vmlaunch" in ln or "RIG-STEP" in ln
    ]
    return "\n".join(lines[-20:])


def _not_reached(stage: str, before: StageVerdict) -> _Judged:
    if before.outcome is Outcome.SKIPPED:
        return _v(stage, Outcome.SKIPPED, before.reason, before.evidence)
    if before.outcome is Outcome.FAILED:
        return _v(stage, Outcome.SKIPPED, f"not reached: {before.stage} failed")
    if before.outcome is Outcome.ERROR:
        return _v(stage, Outcome.ERROR, f"not reached: {before.stage} could not be checked")
    return None


def _judge_vmlaunch(ctx: _Context, first: Sequence[DriverRecord], vmxon: _Judged) -> _Judged:
    if vmxon is None:
        return None
    if vmxon.outcome is not Outcome.PASSED:
        return _not_reached("vmlaunch", vmxon)
    mine = [r for r in first if STAGE_OF.get(r.stage) == "vmlaunch"]
    fails = [r for r in mine if r.result in ("FAIL", "declined")]
    entry = [r for r in first if _is_entry_failure(r)]
    if fails:
        return _v("vmlaunch", Outcome.FAILED, decode_failure(fails[0]), _evidence(fails))
    if entry:
        reason = entry[0].number("reason")
        basic = entry[0].number("basic")
        if basic is None and reason is not None:
            basic = reason & 0xFFFF
        name = EXIT_REASONS.get(basic if basic is not None else -1, "unknown")
        return _v(
            "vmlaunch",
            Outcome.FAILED,
            f"VM entry failed: exit reason {basic} ({name}), reason {_hex(reason)}",
            _evidence([*[r for r in mine if r.result == "ok"], *entry]),
        )
    launched = [r for r in mine if r.stage == "vmlaunch" and r.result == "ok"]
    if launched:
        return _v("vmlaunch", Outcome.PASSED, "VMLAUNCH entered the guest", _evidence(mine))
    if ctx.complete:
        return _v(
            "vmlaunch", Outcome.FAILED, "the driver printed no 'vmlaunch ok' line", _evidence(mine)
        )
    return None


def _judge_exit(ctx: _Context, first: Sequence[DriverRecord], vmlaunch: _Judged) -> _Judged:
    if vmlaunch is None:
        return None
    if vmlaunch.outcome is not Outcome.PASSED:
        return _not_reached("vmcall_exit", vmlaunch)
    exits = [r for r in first if r.stage == "exit"]
    for r in exits:
        if r.result != "ok":
            return _v("vmcall_exit", Outcome.FAILED, decode_failure(r), r.raw)
        reason = r.number("reason")
        if reason is None:
            return _v("vmcall_exit", Outcome.FAILED, "'exit ok' without a reason= key", r.raw)
        if reason != VMCALL_REASON:
            return _v(
                "vmcall_exit",
                Outcome.FAILED,
                f"exit reason {_hex(reason)}: {decode_exit_reason(reason)}; expected 0x12 (VMCALL)",
                r.raw,
            )
    if exits:
        return _v(
            "vmcall_exit", Outcome.PASSED, "VM exit with reason 0x12 (VMCALL)", _evidence(exits)
        )
    if ctx.complete:
        return _v("vmcall_exit", Outcome.FAILED, "the driver printed no 'exit' line")
    return None


def _judge_teardown(ctx: _Context, attempts: Sequence[Sequence[DriverRecord]]) -> _Judged:
    first = attempts[0] if attempts else ()
    insmod, rmmod = ctx.run.step("insmod"), ctx.run.step("rmmod")
    if insmod is None or insmod.rc is None:
        if ctx.complete:
            return _v("teardown", Outcome.FAILED, "no 'RIG-STEP insmod rc=N' from the guest")
        return None
    vmxon_cpus = {r.cpu for r in first if r.stage == "vmxon" and r.result == "ok"}
    offs = [r for r in first if r.stage == "vmxoff"]
    freed = [r for r in first if r.stage == "freed" and r.result == "ok"]
    unload = [r for r in first if r.stage == "unload" and r.result == "ok"]
    bad = [r for r in first if STAGE_OF.get(r.stage) == "teardown" and r.result == "FAIL"]
    evidence: list[DriverRecord | Step] = [insmod]
    wrong: list[str] = [decode_failure(r) for r in bad]  # definite failures
    absent: list[str] = []  # lines that should be there by now
    for r in offs:
        if r.result == "ok" and r.get("cr4.vmxe") != "0":
            wrong.append(f"CPU {r.cpu}: vmxoff left cr4.vmxe={r.get('cr4.vmxe', '?')}")
    off_cpus = {r.cpu for r in offs if r.result == "ok" and r.get("cr4.vmxe") == "0"}
    for cpu in sorted(c for c in vmxon_cpus - off_cpus if c is not None):
        absent.append(f"no 'vmxoff ok cr4.vmxe=0' for CPU {cpu}")
    if insmod.rc == 0:
        finished = rmmod is not None and rmmod.rc is not None
        if rmmod is None or rmmod.rc is None:
            absent.insert(0, "the guest did not run rmmod")
        else:
            evidence.append(rmmod)
            if rmmod.rc != 0:
                wrong.insert(0, f"rmmod failed (rc={rmmod.rc})")
        if not freed:
            absent.append("no 'freed' line")
        if not unload:
            absent.append("no 'unload ok' line")
        ok_reason = "VMXOFF done, pages freed, module unloaded"
    else:
        finished = True  # insmod returned: the failed load has cleaned up (or never will)
        errno_lines = [
            r for r in first if r.result in ("declined", "FAIL") and (r.number("errno") or 0) < 0
        ]
        if not errno_lines:
            absent.append(f"insmod failed (rc={insmod.rc}) but no driver line gives errno=")
            ok_reason = ""
        else:
            evidence.append(errno_lines[0])
            if not [r for r in freed if r.index > errno_lines[0].index]:
                absent.append("no 'freed' line after the failed load")
            ok_reason = (
                f"load refused with errno {errno_lines[0].get('errno')}, pages freed, module gone"
            )
        if len(attempts) > 1:
            busy = [r for r in attempts[1] if r.get("why") == "vmx_busy"]
            if busy and not any(r.get("why") == "vmx_busy" for r in first):
                wrong.append("the second load attempt found VMX busy: the first left VMX on")
                evidence.append(busy[0])
    evidence.extend([*offs, *freed, *unload, *bad])
    if wrong or (absent and (finished or ctx.complete)):
        return _v("teardown", Outcome.FAILED, "; ".join([*wrong, *absent]), _evidence(evidence))
    if absent:
        return None
    return _v("teardown", Outcome.PASSED, ok_reason, _evidence(evidence))


def _judge_records(ctx: _Context, records: Sequence[DriverRecord]) -> dict[str, _Judged]:
    attempts = split_attempts(records)
    first = attempts[0] if attempts else ()
    vmxon = _judge_vmxon(ctx, first)
    if not ctx.vmx_expected and vmxon is not None and vmxon.outcome is Outcome.SKIPPED:
        vmlaunch: _Judged = _v("vmlaunch", Outcome.SKIPPED, vmxon.reason, vmxon.evidence)
        vmexit: _Judged = _v("vmcall_exit", Outcome.SKIPPED, vmxon.reason, vmxon.evidence)
    else:
        vmlaunch = _judge_vmlaunch(ctx, first, vmxon)
        vmexit = _judge_exit(ctx, first, vmlaunch)
    return {
        "vmxon": vmxon,
        "vmlaunch": vmlaunch,
        "vmcall_exit": vmexit,
        "teardown": _judge_teardown(ctx, attempts),
    }


_GUEST_STAGES = STAGES[1:]


def _all(
    outcome: Outcome, reason: str, evidence: str = "", stages: Iterable[str] = STAGES
) -> dict[str, StageVerdict]:
    return {s: _v(s, outcome, reason, evidence) for s in stages}


@dataclass(frozen=True)
class _Trouble:
    """The guest crashed, hung or died at stage index `at`: it and later stages get this."""

    at: int
    outcome: Outcome
    reason: str
    evidence: str
    word: str  # "crashed" | "hung" | "died"


def _stage_index(judged: dict[str, _Judged]) -> int | None:
    return next((i for i, s in enumerate(_GUEST_STAGES) if judged[s] is None), None)


def _trouble(ctx: _Context, boot: BootResult, judged: dict[str, _Judged]) -> _Trouble | None:
    run, cell = ctx.run, ctx.cell
    last = len(_GUEST_STAGES) - 1
    if run.oopses:
        oops = run.oopses[0]
        stream = run.dump if run.dump is not None and oops in run.dump.oopses else run.console
        before = [r for r in stream.records if r.index < oops.index]
        at = _stage_index(_judge_records(replace(ctx, complete=False), before))
        waited = _STOPPED_RE.search(boot.detail) if boot.end is BootEnd.PANIC else None
        stopped = f" ({waited[0]})" if waited else ""
        return _Trouble(
            last if at is None else at,
            Outcome.FAILED,
            f"kernel {oops.kind}: {oops.first[:160]}{stopped}",
            oops.text,
            "crashed",
        )
    if ctx.complete and (ctx.ended or not ctx.last):
        return None
    tail = "\n".join([*run.console.lines, *(run.dump.lines if run.dump else ())][-TAIL_LINES:])
    detail = f" ({boot.detail})" if boot.detail else ""
    at = _stage_index(judged)
    if at is None:
        # Every check concluded, then the guest never reached RIG-END: a teardown that
        # wedges the CPU (or a guest that dies once the driver is gone) is the driver's.
        return _after_teardown(boot, detail, tail, len(_GUEST_STAGES) - 1)
    if boot.end is BootEnd.TIMEOUT:
        detail = detail or f" (timeout {cell.timeout_s} s)"
        reason = f"driver hang: the guest stopped before RIG-END{detail}"
        return _Trouble(at, Outcome.FAILED, reason, tail, "hung")
    if boot.end is BootEnd.PANIC:
        return _Trouble(at, Outcome.FAILED, f"guest kernel panicked{detail}", tail, "crashed")
    if boot.end is BootEnd.EMULATOR:
        if _TRIPLE_FAULT_RE.search(boot.detail) or _TRIPLE_FAULT_RE.search(boot.emulator_log):
            return _Trouble(at, Outcome.FAILED, f"guest triple-faulted{detail}", tail, "died")
        reason = f"the emulator stopped during the test{detail}"
        return _Trouble(at, Outcome.ERROR, reason, tail, "died")
    reason = f"the console ended before RIG-END (guest output lost?){detail}"
    return _Trouble(at, Outcome.ERROR, reason, tail, "died")


def _after_teardown(boot: BootResult, detail: str, tail: str, at: int) -> _Trouble:
    if boot.end is BootEnd.TIMEOUT:
        reason = f"guest hung after rmmod: no RIG-END after the driver's teardown{detail}"
        return _Trouble(at, Outcome.FAILED, reason, tail, "hung")
    if boot.end is BootEnd.PANIC:
        return _Trouble(at, Outcome.FAILED, f"guest panicked after rmmod{detail}", tail, "crashed")
    if boot.end is BootEnd.EMULATOR:
        if _TRIPLE_FAULT_RE.search(boot.detail) or _TRIPLE_FAULT_RE.search(boot.emulator_log):
            return _Trouble(at, Outcome.FAILED, f"guest triple-faulted after rmmod{detail}",
                            tail, "died")  # fmt: skip
        reason = f"the emulator stopped after rmmod, before RIG-END{detail}"
        return _Trouble(at, Outcome.ERROR, reason, tail, "died")
    reason = f"the console ended before RIG-END (guest output lost?){detail}"
    return _Trouble(at, Outcome.ERROR, reason, tail, "died")


def _judge_run(
    cell: Cell,
    boot: BootResult,
    report: GuestReport,
    run: Run,
    arranged: Arranged = NOTHING_ARRANGED,
) -> dict[str, StageVerdict]:
    model = report.cpu_model or cell.cpu_model or cell.cpu.name
    vmx_expected = report.vmx if report.vmx is not None else cell.lane.vmx
    if cell.lane.vmx and report.vmx is False:
        no_vmx_reason = f"guest CPU lacks VMX: {model}"
    else:
        no_vmx_reason = f"guest CPU has no VMX ({model})"
    complete = run.dump_complete or report.end
    last = run is report.runs[-1]
    ctx = _Context(
        cell, run, vmx_expected, no_vmx_reason, complete, arranged, last=last, ended=report.end
    )
    judged = _judge_records(ctx, run.records)
    trouble = _trouble(ctx, boot, judged)
    out: dict[str, StageVerdict] = {}
    for i, stage in enumerate(_GUEST_STAGES):
        verdict = judged[stage]
        if trouble is not None and i == trouble.at:
            verdict = _v(stage, trouble.outcome, trouble.reason, trouble.evidence)
        elif trouble is not None and i > trouble.at:
            reason = f"not reached: the guest {trouble.word} during {_GUEST_STAGES[trouble.at]}"
            verdict = _v(stage, trouble.outcome, reason, trouble.evidence)
        elif verdict is None:  # pragma: no cover - complete runs always conclude
            reason = "no conclusion could be drawn from the guest output"
            verdict = _v(stage, Outcome.ERROR, reason, report.tail())
        out[stage] = verdict
    return out


def _judge_guest(
    cell: Cell, boot: BootResult, report: GuestReport, arranged: Arranged
) -> dict[str, StageVerdict]:
    if report.rebooted:
        reason = (
            "infrastructure: the guest started over during the test (a second RIG-BEGIN): "
            "what it printed belongs to two boots"
        )
        return _all(Outcome.ERROR, reason, report.tail(), _GUEST_STAGES)
    broken = [(m, rc) for m, rc in report.preloads if rc != 0]
    if broken:
        # A fixture of the test did not load: the run proves nothing about the driver.
        module, rc = broken[0]
        reason = f"infrastructure: the preloaded fixture module {module} did not load (rc={rc})"
        return _all(Outcome.ERROR, reason, report.tail(), _GUEST_STAGES)
    if report.end and not report.steps and not report.records:
        reason = "the guest finished without running insmod"
        return _all(Outcome.ERROR, reason, report.tail(), _GUEST_STAGES)
    per_run = [_judge_run(cell, boot, report, run, arranged) for run in report.runs]
    if len(per_run) == 1:
        return per_run[0]
    out: dict[str, StageVerdict] = {}
    for stage in _GUEST_STAGES:
        worst = max(range(len(per_run)), key=lambda i: (SEVERITY[per_run[i][stage].outcome], -i))
        v = per_run[worst][stage]
        if v.outcome is Outcome.PASSED and all(r[stage].outcome is v.outcome for r in per_run):
            reason = f"{v.reason} (all {len(per_run)} runs)"
        else:
            reason = f"run {report.runs[worst].number}: {v.reason}"
        out[stage] = _v(stage, v.outcome, reason, v.evidence)
    return out


def _judge_build(build: ModuleBuild | None) -> StageVerdict:
    if build is None:
        return _v("build", Outcome.ERROR, "no build result: the artifact stage failed")
    if build.ok and build.warnings:
        # The driver must build warning-free (objtool included) on every kernel of the matrix.
        warned = [ln for ln in build.log.splitlines() if "warning:" in ln.lower()][:20]
        n = build.warnings
        reason = f"module built with {n} warning{'s' if n != 1 else ''}: {warned[0].strip()[:200]}"
        return _v("build", Outcome.FAILED, reason, "\n".join(warned))
    if build.ok:
        return _v("build", Outcome.PASSED, "module built (0 warnings)")
    log_lines = build.log.splitlines()
    errors = [ln for ln in log_lines if "error" in ln.lower()][:20]
    tail = log_lines[-30:]
    evidence = "\n".join(dict.fromkeys([*errors, *tail]))
    first = errors[0].strip() if errors else (tail[-1].strip() if tail else "no output")
    return _v("build", Outcome.FAILED, f"module did not compile: {first[:200]}", evidence)


def judge(
    cell: Cell,
    build: ModuleBuild | None,
    boot: BootResult | None,
    arranged: Arranged = NOTHING_ARRANGED,
) -> CellVerdict:
    """One StageVerdict per stage in STAGES for this cell, knowing what the run arranged."""
    # what people read: the agent's protocol and the kernel's lines, in one transcript
    transcript = "" if boot is None else boot.console
    if boot is not None and boot.agent:
        transcript = "\n".join(merge_channels(boot.agent, boot.console)) + "\n"

    def verdict(stages: dict[str, StageVerdict]) -> CellVerdict:
        return CellVerdict(
            cell_id=cell.id,
            stages={s: stages[s] for s in STAGES},
            console=transcript,
            build_log=build.log if build is not None else "",
            emulator_log=boot.emulator_log if boot is not None else "",
            timings={"boot": boot.duration_s} if boot is not None else {},
        )

    if cell.skip_reason:
        return verdict(_all(Outcome.SKIPPED, cell.skip_reason))
    stages = {"build": _judge_build(build)}
    if build is None:
        stages.update(_all(Outcome.ERROR, "not reached: no module was built", stages=_GUEST_STAGES))
    elif not build.ok:
        stages.update(
            _all(Outcome.SKIPPED, "not reached: the module did not build", stages=_GUEST_STAGES)
        )
    elif boot is None:
        stages.update(_all(Outcome.ERROR, "the guest was not booted", stages=_GUEST_STAGES))
    else:
        report = parse_guest(boot)
        if not report.begin:
            detail = boot.detail or f"boot ended: {boot.end.value}"
            stages.update(
                _all(
                    Outcome.ERROR,
                    f"the guest never reached the test (no RIG-BEGIN): {detail}",
                    report.tail(),
                    _GUEST_STAGES,
                )
            )
        else:
            stages.update(_judge_guest(cell, boot, report, arranged))
    return verdict(stages)


__all__ = [
    "DriverRecord",
    "GuestReport",
    "Oops",
    "Run",
    "Step",
    "Stream",
    "decode_exit_reason",
    "decode_failure",
    "judge",
    "parse_console",
    "parse_driver_line",
    "split_attempts",
]
