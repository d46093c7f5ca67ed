"""The guest agent's protocol (docs/contract.md section 2), and how a transcript is read.

    parse_channels(agent, console) -> Transcript   what the guest said, never raises

The agent (guests/agent/rig-agent) writes RIG-* lines on a channel of its own; the kernel's
console is another. `merge_channels` puts the kernel's lines into the agent's order by the
agent's kmsg markers; `parse_lines` reads a transcript into runs (their steps, their live
kernel lines, their dmesg dumps). What the lines mean for the driver is the verdict stage's
business (rig.verdict), not this module's.

Provenance (docs/contract.md section 2, "Provenance"): a protocol record comes only from the
agent's channel, outside its dmesg dumps. Kernel text (the console, a dump) is kept as
`KernelText` lines, which no parser here or in rig.verdict takes for a record, whatever they
contain.
Lines are split on `\\n` only; control characters left in a line are shown as `\\xNN`, and a
line is cut at MAX_LINE characters, where the guest's text is read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from rig.textsafe import shown

KMSG_PREFIX = r"(?:<\d>)?(?:\[\s*\d+\.\d+\]\s*)?"
KMSG_MARKER_RE = re.compile(r"^\s*" + KMSG_PREFIX + r"RIG-(?:BEGIN|CPU)\b")
KMSG_STEP_RE = re.compile(r"^\s*" + KMSG_PREFIX + r"(?:rig: run=\d+ step=|RIG-RUN\b)")
MARKER_RE = re.compile(
    r"\s*RIG-(?P<kind>BEGIN|CPU|RUN|STEP|DMESG-BEGIN|DMESG-END|END)(?![\w-])(?:\s+(?P<rest>.*))?"
)
DUMP_PREFIX = "RIG-K "  # the agent's prefix on every line of its dmesg dumps
MAX_LINE = 8192  # characters kept of one line (printk's own records stay under 1 KiB)
STEP_RE = re.compile(r"^(?P<name>\S{1,64})(?:\s+rc=(?P<rc>-?\d{1,9})\b)?")
PRELOAD_RE = re.compile(r"\s*RIG-PRELOAD\s+module=(?P<module>\S+)\s+rc=(?P<rc>\d+)?\S*")
BEGIN_RE = re.compile(r"run=(?P<run>\S*)(?:\s+cell=(?P<cell>\S*))?")
RUN_RE = re.compile(
    r"^(?P<n>\d{1,6})?(?:.*?\bmodule=(?P<module>\S+))?(?:.*?\biter=(?P<iter>\d{1,6}))?"
)
VMX_RE = re.compile(r"\bvmx=(?P<vmx>[01])\b")
CPUS_RE = re.compile(r"\bcpus=(?P<cpus>\d{1,4})\b")
MODEL_RE = re.compile(r"\bmodel=(?P<model>.*)$")
WITNESS_RE = re.compile(r"\s*RIG-WITNESS\s+(?P<what>start|load|vm|end)\b\s*(?P<rest>.*)")
WITNESS_LOAD_RE = re.compile(
    r"module=(?P<module>\S+)\s+rc=(?P<rc>\d{1,3})\b(?:\s+error=(?P<err>\S*))?"
)
WITNESS_VM_RE = re.compile(r"rc=(?P<rc>\d{1,3})\b\s*(?P<result>.*)$")
CONSOLE_MARK_RE = re.compile(r"rig: run=(?P<n>\d{1,6}) step=(?P<step>[a-z]{1,16})\b")


@dataclass(frozen=True)
class Step:
    name: str  # insmod | rmmod | sysfs | ...
    rc: int | None
    raw: str
    index: int  # console line number


def dump_boundary(dump: Sequence[str]) -> int:
    """Where the test begins in a dmesg dump.

    After the last copy of RIG-BEGIN/RIG-CPU if the guest wrote them to /dev/kmsg; else at the
    first step marker (`rig: run=N step=insmod`, guests that clear dmesg at RIG-BEGIN); else at
    the module's first line; else nowhere (nothing in the dump counts against the driver).
    """
    copies = [i for i, line in enumerate(dump) if KMSG_MARKER_RE.match(line)]
    if copies:
        return copies[-1] + 1
    for i, line in enumerate(dump):
        if KMSG_STEP_RE.match(line) or "vmlaunch:" in line:
            return i
    return len(dump)


@dataclass(frozen=True)
class RawRun:
    """One insmod..rmmod..dmesg cycle of the agent (a RIG-RUN block, or the whole test)."""

    number: int
    module: str
    iteration: int
    steps: tuple[Step, ...]
    live: tuple[str, ...]  # the run's lines outside its dump: protocol and live kernel lines
    dump: tuple[str, ...] | None  # its RIG-DMESG-BEGIN..END block
    dump_complete: bool

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)


@dataclass(frozen=True)
class WitnessLoad:
    module: str  # irqbypass | kvm | kvm-intel
    rc: int
    error: str  # insmod's complaint, words joined by _ ("Device_or_resource_busy")


@dataclass(frozen=True)
class Witness:
    """The teardown witness after the last run (RIG-WITNESS lines): KVM loaded, a VM run."""

    vmx: bool | None = None  # RIG-WITNESS start vmx=: it runs only on a CPU with VMX
    loads: tuple[WitnessLoad, ...] = ()
    vm_rc: int | None = None  # kvm-witness's exit status (None: it did not run)
    vm_result: str = ""  # its one line: `kvm-witness: ok exits=io,hlt` or `... FAIL ...`
    ended: bool = False  # RIG-WITNESS end
    lines: tuple[str, ...] = ()  # its protocol lines and the kernel's lines meanwhile
    index: int = 0  # transcript line of RIG-WITNESS start


@dataclass(frozen=True)
class Transcript:
    """Everything the guest said, structured by the protocol."""

    begin: bool = False
    end: bool = False
    run_id: str = ""
    cell_id: str = ""
    vmx: bool | None = None  # RIG-CPU vmx=
    cpus: int | None = None  # RIG-CPU cpus=
    cpu_model: str = ""  # RIG-CPU model= ("_" read back as spaces)
    runs: tuple[RawRun, ...] = ()
    prelude: tuple[str, ...] = ()  # before RIG-BEGIN: the boot, never the driver's
    lines: tuple[str, ...] = ()
    preloads: tuple[tuple[str, int | None], ...] = ()  # RIG-PRELOAD module=M rc=N: fixtures
    beside: tuple[str, ...] = ()  # RIG-BESIDE lines: KVM loaded before the runs (--beside kvm)
    rebooted: bool = False  # a second RIG-BEGIN: the guest rebooted during the test
    witness: Witness | None = None  # RIG-WITNESS: the teardown witness, when the host planned it


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

    def build(self) -> RawRun:
        return RawRun(
            number=self.number,
            module=self.module,
            iteration=self.iteration,
            steps=tuple(self.steps),
            live=tuple(self.live),
            dump=None if self.dump is None else tuple(self.dump),
            dump_complete=self.dump_complete,
        )


class KernelText(str):
    """A line of kernel text: the console's, or a dmesg dump's. Read for the driver's lines
    and the kernel's messages; never a protocol record, whatever it holds."""

    __slots__ = ()


def is_record(line: str) -> bool:
    """Can this line be a protocol record (it is not kernel text)?"""
    return not isinstance(line, KernelText)


def marker(line: str) -> tuple[str, str] | None:
    """A protocol marker's kind and words (`RIG-STEP rmmod rc=0` -> STEP, `rmmod rc=0`)."""
    if isinstance(line, KernelText):
        return None
    m = MARKER_RE.match(line)
    return None if m is None else (m["kind"], (m["rest"] or "").strip())


def guest_line(line: str) -> str:
    """A guest line as it may be read and shown: cut at MAX_LINE characters, its control
    characters (C0 but the tab, DEL, C1) as `\\xNN` (rig.textsafe.shown)."""
    if len(line) > MAX_LINE:
        line = f"{line[:MAX_LINE]} [rig: {len(line) - MAX_LINE} more characters cut]"
    return shown(line)


def complete_lines(text: str) -> list[str]:
    """The lines of a channel that were written whole: an unterminated last line (the guest
    died mid-line, `reason=0x12` cut to `reason=0x1`) is never evidence. Split on `\\n` only
    (a `\\r` a module printed cannot start a line), each line a `guest_line`."""
    lines = text.split("\n")
    lines.pop()  # "" after a final newline, else the unterminated rest
    return [guest_line(ln[:-1] if ln.endswith("\r") else ln) for ln in lines]


def _dump_line(line: str) -> KernelText:
    return KernelText(line.removeprefix(DUMP_PREFIX))


def merge_channels(agent: str, console: str) -> list[str]:
    """One ordered transcript from the agent's protocol channel and the kernel's console.

    The channels share no wire, so no kernel line is ever spliced into a protocol line. The
    kernel's lines are placed by the agent's kmsg markers (`rig: run=N step=S` on the console):
    boot lines before RIG-BEGIN, run N's insmod lines after its RIG-RUN, the lines of KVM's
    visit while it was loaded (`--beside kvm-during`) and its rmmod lines before its
    `RIG-STEP rmmod`, what followed the rmmod before its dump. Lines of a run the
    agent never announced (its output was lost) come last, in console order.
    """
    prelude: list[str] = []
    segments: dict[tuple[int, str], list[str]] = {}
    order: list[tuple[int, str]] = []
    current: list[str] = prelude
    for kline in map(KernelText, complete_lines(console)):
        m = CONSOLE_MARK_RE.search(kline)
        if m:
            key = (int(m["n"]), m["step"])
            if key not in segments:
                segments[key] = []
                order.append(key)
            current = segments[key]
        current.append(kline)

    out = list(prelude)
    run: int | None = None

    def take(*steps: str) -> None:
        if run is not None:
            for step in steps:
                out.extend(segments.pop((run, step), []))

    dump_open = False
    for line in complete_lines(agent):
        mk = marker(line)
        kind, rest = mk if mk else (None, "")
        if dump_open and kind != "DMESG-END":
            out.append(_dump_line(line))  # the agent's dmesg dump: kernel text
            continue
        dump_open = kind == "DMESG-BEGIN"
        wm = WITNESS_RE.match(line)
        if wm and wm["what"] == "end":  # the kernel's lines during the witness come before
            for key in [k for k in order if k[1] == "witness"]:
                out.extend(segments.pop(key, []))
        if kind in ("RUN", "END"):
            take("insmod", "during", "rmmod", "dump")
            run = None
        if kind == "STEP" and rest.startswith("rmmod"):
            take("insmod", "during", "rmmod")
        elif kind == "DMESG-BEGIN":
            take("insmod", "during", "rmmod", "dump")
        out.append(line)
        if kind == "RUN":
            rm = RUN_RE.match(rest)
            run = int(rm["n"]) if rm and rm["n"] else None
            take("insmod")
    take("insmod", "during", "rmmod", "dump")
    for key in order:
        out.extend(segments.pop(key, []))
    return out


def parse_channels(agent: str, console: str) -> Transcript:
    """What the guest said: the agent's channel merged with the console. Every lane and guest
    flavour has an agent channel; the console alone holds no record (an empty `agent`: the
    agent said nothing)."""
    return parse_lines(merge_channels(agent, console))


TRANSCRIPT_CAP = 2**20  # characters of a transcript kept in verdict.json and the JUnit


def transcript_text(agent: str, console: str, cap: int = TRANSCRIPT_CAP) -> str:
    """The one transcript people read: protocol and kernel lines in order; past `cap`
    characters its head (a quarter) and its tail, with the cut said where it is."""
    return bounded_text(merge_channels(agent, console), cap)


def bounded_text(lines: Sequence[str], cap: int = TRANSCRIPT_CAP) -> str:
    """Merged lines as the transcript people read (see transcript_text)."""
    text = "".join(f"{line}\n" for line in lines)
    if len(text) <= cap:
        return text
    head_end = text.rfind("\n", 0, cap // 4) + 1
    tail_start = text.find("\n", len(text) - (cap - cap // 4)) + 1
    cut = text.count("\n", head_end, tail_start)
    said = f"[rig: {cut} lines cut here; the cell's files hold them]\n"
    return text[:head_end] + said + text[tail_start:]


def parse_lines(lines: Sequence[str]) -> Transcript:
    """Parse a guest's transcript. Never raises; unknown lines are kept, not judged."""
    lines = list(lines)
    begin = end = rebooted = False
    run_id = cell_id = model = ""
    vmx: bool | None = None
    cpus: int | None = None
    prelude: list[str] = []
    preloads: list[tuple[str, int | None]] = []
    beside: list[str] = []
    runs: list[_RunBuilder] = []
    dump_open = False
    witness: _WitnessBuilder | None = None
    for index, line in enumerate(lines):
        wm = WITNESS_RE.match(line) if is_record(line) else None
        if begin and wm and wm["what"] == "start" and witness is None:
            witness = _WitnessBuilder(index=index, vmx=bool(re.search(r"\bvmx=1\b", wm["rest"])))
        if witness is not None and not witness.ended:
            witness.add(line, wm)
            continue
        kind, rest = marker(line) or (None, "")
        if dump_open:
            if kind == "DMESG-END":
                dump_open = False
                runs[-1].dump_complete = True
            else:
                assert runs[-1].dump is not None
                runs[-1].dump.append(_dump_line(line))
            continue
        if begin and kind == "BEGIN":
            rebooted = True  # the guest started over: what follows is another boot's
            break
        if not begin:
            if kind == "BEGIN":
                begin = True
                bm = BEGIN_RE.search(rest)
                if bm:
                    run_id, cell_id = bm["run"], bm["cell"] or ""
            else:
                prelude.append(line)
            continue
        if is_record(line) and line.lstrip().startswith("RIG-BESIDE "):
            beside.append(line.strip())
            continue
        pm = PRELOAD_RE.match(line) if is_record(line) else None
        if pm:
            preloads.append((pm["module"], int(pm["rc"]) if pm["rc"] is not None else None))
            continue
        if kind == "CPU" and vmx is None:
            vm, cm, mm = VMX_RE.search(rest), CPUS_RE.search(rest), MODEL_RE.search(rest)
            vmx = vm["vmx"] == "1" if vm else None
            cpus = int(cm["cpus"]) if cm else None
            model = " ".join(mm["model"].replace("_", " ").split()) if mm else ""
            continue
        current = runs[-1] if runs else None
        started = current is not None and (current.explicit or current.steps or current.dump)
        if kind == "RUN":
            rm = RUN_RE.match(rest)
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
            sm = STEP_RE.match(rest)
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
    return Transcript(
        begin=begin,
        end=end,
        run_id=run_id,
        cell_id=cell_id,
        vmx=vmx,
        cpus=cpus,
        cpu_model=model,
        runs=tuple(r.build() for r in runs),
        prelude=tuple(prelude),
        lines=tuple(lines),
        preloads=tuple(preloads),
        beside=tuple(beside),
        rebooted=rebooted,
        witness=witness.build() if witness is not None else None,
    )


@dataclass
class _WitnessBuilder:
    """Collects the witness's lines while parsing (local to one parse_lines call)."""

    index: int
    vmx: bool
    loads: list[WitnessLoad] = field(default_factory=list)
    vm_rc: int | None = None
    vm_result: str = ""
    ended: bool = False
    lines: list[str] = field(default_factory=list)

    def add(self, line: str, wm: re.Match[str] | None) -> None:
        self.lines.append(line)
        if wm is None:
            return
        rest = wm["rest"].strip()
        if wm["what"] == "load" and (lm := WITNESS_LOAD_RE.match(rest)):
            self.loads.append(WitnessLoad(lm["module"], int(lm["rc"]), lm["err"] or ""))
        elif wm["what"] == "vm" and (vm := WITNESS_VM_RE.match(rest)):
            self.vm_rc, self.vm_result = int(vm["rc"]), vm["result"]
        elif wm["what"] == "end":
            self.ended = True

    def build(self) -> Witness:
        return Witness(
            vmx=self.vmx,
            loads=tuple(self.loads),
            vm_rc=self.vm_rc,
            vm_result=self.vm_result,
            ended=self.ended,
            lines=tuple(self.lines),
            index=self.index,
        )
