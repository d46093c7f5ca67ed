"""Module profiles: how a VMX module's dmesg lines become the judge's records.

    profile_named(name, strict_build=False) -> Profile     (UsageError: the known names)
    reread(report, profile) -> GuestReport   the guest's streams, their records by the profile
    build_verdict(build, profile) -> StageVerdict
    settle(stages, report, profile, beneath) -> stages   what the module did not print, said

The judge's rules (rig.verdict.stages) read DriverRecords (rig.verdict.grammar). Our driver
prints them itself (profile `vmlaunch-rig`: docs/contract.md section 1, unchanged). A foreign
module's profile is data: a table of rules, each a regular expression that must match the
whole message of a kernel line (after its `<level>`, `[time]` and a literal `<1> `) and the
records that line stands for, in our grammar without its `vmlaunch: cpu=N` head:

    (r"Guest VMexit reason: 0x(?P<r>[0-9a-f]{1,8})", ("?vmlaunch ok", "exit ok reason=0x{r}"))

- `{name}` in a record takes the rule's named group; values stay single words.
- A leading `?` marks an *implied* record: the module prints nothing when that step succeeds,
  so its going on stands for it. It is added only when the load attempt has no record of that
  stage yet (a printed failure wins), and its text says it was implied.
- The first rule that matches a line wins; a line no rule matches is no record.
- `unprinted`: steps the module never prints at all (e.g. `unload`: its exit function is
  empty). The judge does not ask for them, and every verdict says which were not printed.

Witness hook: implied records (text `implied: ...`) and `unprinted` are exactly what the module
did not say. `unsaid(report, profile)` lists them per stage; a witness beneath the guest
(rig.model.Beneath) is what can decide them, and until a lane has one the reasons say
"no witness on this lane". A stage the module failed is not decided by the witness, but where
its record can only be this module's one VMX operation (`one_operation`), the reason says
what it saw of that stage's instructions ("KVM in L1 saw VMPTRLD, no VMLAUNCH").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

from rig.errors import UsageError
from rig.model import Beneath, ModuleBuild, Outcome, StageVerdict, VmxEvent
from rig.verdict.beneath import drivers_part
from rig.verdict.grammar import DRIVER_RE, KV_RE, STAGE_OF, DriverRecord, split_attempts
from rig.verdict.reading import GuestReport, Run, Stream
from rig.verdict.sdm import decode_exit_reason
from rig.verdict.stages import judge_build, sv

NATIVE = "vmlaunch-rig"
NO_WITNESS = "no witness on this lane"
PRINTED_NOTHING = f"the module printed nothing for this stage; {NO_WITNESS}"
# a kernel line: optional <level>, optional [time], then an optional literal "<N> " (what
# printk("<1> ...") prints on kernels that no longer read it as a level): not the message
PREFIX_RE = re.compile(r"\s*(?:<\d>)?\s*(?:\[\s*\d+\.\d+\]\s?)?\s*(?:<\d>\s?)?")
ABSENCE_RE = re.compile(r"(?:no '[^']*'[^;]*|the driver printed no [^;]*)")
"""A stage reason part that says only that a line is missing (rig.verdict.stages wording)."""


@dataclass(frozen=True)
class Rule:
    """One line of a module: the message it matches, the records it stands for."""

    pattern: str
    records: tuple[str, ...]

    @cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern)


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    rules: tuple[Rule, ...] = ()  # empty: the module prints our grammar itself
    unprinted: Mapping[str, str] = field(default_factory=dict)  # step -> why it never prints
    warnings_fatal: bool = True  # build warnings fail `build` (ours; --strict-build: any)

    @property
    def native(self) -> bool:
        return not self.rules


def record_of(template: str, line: str, index: int, groups: Mapping[str, str]) -> DriverRecord:
    """A record template (`exit ok reason=0x{r} -- text`) filled for one matched line."""
    filled = template.lstrip("?").format_map(groups)
    m = DRIVER_RE.fullmatch(f"vmlaunch: cpu=- {filled}")
    if m is None:  # pragma: no cover - every table's templates are checked by the tests
        raise ValueError(f"profile record {template!r} is not in the driver's grammar")
    return DriverRecord(
        cpu=None, stage=m["stage"], result=m["result"],
        kv=tuple(KV_RE.findall(m["kv"])), text=(m["text"] or "").rstrip(),
        raw=line.rstrip(), index=index,
    )  # fmt: skip


def message(line: str) -> str:
    """A kernel line's message: without its `<level>`, `[time]` and a literal `<1> `."""
    m = PREFIX_RE.match(line)
    return line[m.end() if m else 0 :].rstrip()


def records_of(lines: Sequence[str], profile: Profile) -> tuple[DriverRecord, ...]:
    """A stream's records by the profile's rules (implied ones only where nothing said them)."""
    out: list[DriverRecord] = []
    for i, line in enumerate(lines):
        msg = message(line)
        rule = next((r for r in profile.rules if r.regex.fullmatch(msg)), None)
        if rule is None:
            continue
        m = rule.regex.fullmatch(msg)
        groups = {k: v for k, v in (m.groupdict() if m else {}).items() if v is not None}
        for template in rule.records:
            rec = record_of(template, line, i, groups)
            if template.startswith("?"):
                attempt = split_attempts(out)[-1] if out else ()
                if any(r.stage == rec.stage and r.result != "info" for r in attempt):
                    continue
                said = (
                    f"implied: it prints nothing when {rec.stage} succeeds; it went on to '{msg}'"
                )
                rec = replace(rec, text=said)
            out.append(rec)
    return tuple(out)


def restream(stream: Stream, profile: Profile) -> Stream:
    return replace(stream, records=records_of(stream.lines, profile))


def reread(report: GuestReport, profile: Profile) -> GuestReport:
    """The report with every stream's records read by the profile (ours: unchanged)."""
    if profile.native:
        return report

    def run(r: Run) -> Run:
        dump = None if r.dump is None else restream(r.dump, profile)
        return replace(r, console=restream(r.console, profile), dump=dump)

    return replace(report, runs=tuple(run(r) for r in report.runs))


def build_verdict(build: ModuleBuild | None, profile: Profile) -> StageVerdict:
    """`build`: a foreign module's warnings are reported, fatal only with --strict-build."""
    verdict = judge_build(build)
    if build is None or not build.ok or not build.warnings or profile.warnings_fatal:
        return verdict
    n = build.warnings
    return sv(
        "build",
        Outcome.PASSED,
        f"module built with {n} warning{'s' if n != 1 else ''} (reported, not fatal for a "
        f"module judged by profile {profile.name}; --strict-build makes them fatal): "
        + verdict.reason.split(": ", 1)[-1],
        verdict.evidence,
    )


def unsaid(report: GuestReport, profile: Profile) -> dict[str, tuple[str, ...]]:
    """Per stage, what the module did not print: implied records and unprinted steps (the
    witness hook: these are what a witness beneath the guest has to decide)."""
    out: dict[str, list[str]] = {}
    for rec in report.records:
        if rec.text.startswith("implied:"):
            words = f"{rec.stage} {rec.result} (implied by its next line)"
            stage = STAGE_OF.get(rec.stage, "")
            if words not in out.setdefault(stage, []):
                out[stage].append(words)
    for step, why in profile.unprinted.items():
        out.setdefault(STAGE_OF.get(step, ""), []).append(f"{step} ({why})")
    return {s: tuple(v) for s, v in out.items() if s}


def absence_only(reason: str) -> bool:
    parts = [p.strip() for p in reason.split(";") if p.strip()]
    return bool(parts) and all(ABSENCE_RE.fullmatch(p) for p in parts)


def first_attempt(run: Run) -> tuple[DriverRecord, ...]:
    attempts = run.attempts
    return attempts[0] if attempts else ()


def last_word(run: Run) -> DriverRecord | None:
    """The module's last record before the run's first oops (or at all)."""
    recs: Iterable[DriverRecord] = run.records
    if run.oopses:
        oops = run.oopses[0]
        stream = run.dump if run.dump is not None and oops in run.dump.oopses else run.console
        recs = [r for r in stream.records if r.index < oops.index]
    return next(reversed(list(recs)), None)


def went_further(
    stages: Mapping[str, StageVerdict], first: Sequence[DriverRecord], beneath: Beneath | None
) -> dict[str, StageVerdict]:
    """A module that crashed after its last word before VMLAUNCH, where the CPU beneath saw
    VMLAUNCH enter the guest and exit: vmlaunch passed (the witness's word), the crash is the
    exit's (the host state the VM exit loaded), and teardown is not reached from there."""
    out = dict(stages)
    v = stages.get("vmlaunch")
    if beneath is None or v is None or v.outcome is not Outcome.FAILED:
        return out
    own = [r for r in first if STAGE_OF.get(r.stage) in ("vmlaunch", "vmcall_exit")]
    if v.reason.startswith("not reached") or any(r.result in ("FAIL", "declined") for r in own):
        return out  # the module's own failure, or it never got there
    events = drivers_part(beneath.events, first)  # not the teardown witness's KVM
    launch = next((i for i, e in enumerate(events) if e.kind == "vmlaunch"), None)
    kinds = ("exit", "entry_fail", "vmfail", "vmlaunch")
    after = (
        None if launch is None else next((e for e in events[launch + 1 :] if e.kind in kinds), None)
    )
    if after is None or after.kind != "exit" or any(r.stage == "exit" for r in own):
        return out
    who = beneath.source
    seen = "a VM exit" if after.reason is None else decode_exit_reason(after.reason)
    out["vmlaunch"] = replace(
        v, outcome=Outcome.PASSED, witness=who,
        reason=f"VMLAUNCH entered the guest: {who} saw it, then {seen} (the module printed "
        "nothing of it before the crash)",
        evidence="\n".join(r.raw for r in own),
    )  # fmt: skip
    crash = v.reason.replace(" (stopped", "\n(stopped").split("\n")[0]
    out["vmcall_exit"] = replace(
        v, witness=who,
        reason=f"{crash}: the host crashed after the VM exit {who} saw ({seen}), before the "
        "module printed a word of it",
    )  # fmt: skip
    t = stages.get("teardown")
    if t is not None and t.reason.startswith("not reached"):
        out["teardown"] = replace(
            t, reason=t.reason.replace("during vmlaunch", "during vmcall_exit")
        )
    return out


def one_operation(
    report: GuestReport, first: Sequence[DriverRecord], beneath: Beneath | None
) -> list[VmxEvent] | None:
    """The witness's events of the module's VMX operation, from its VMXON to the VMXOFF after
    it, where the record can hold no other's: one run, the whole record, a witness that sees
    VMXON and VMXOFF, and exactly one VMXON in it, which the module says it executed (so not
    the teardown witness's KVM, nor a hypervisor beside it). None: the record cannot tell."""
    if beneath is None or not beneath.complete or len(report.runs) != 1:
        return None
    if not {"vmxon", "vmxoff"} <= beneath.sees:
        return None
    if not any(r.stage == "vmxon" and r.result in ("ok", "FAIL") for r in first):
        return None
    events = drivers_part(beneath.events, first)
    ons = [i for i, e in enumerate(events) if e.kind == "vmxon"]
    if len(ons) != 1:
        return None
    off = next((i for i in range(ons[0], len(events)) if events[i].kind == "vmxoff"), None)
    return events[ons[0] : None if off is None else off + 1]


SEEN = {  # per stage, the instructions a witness can confirm the module executed
    "vmxon": (("vmxon", "VMXON"),),
    "vmlaunch": (("vmptrld", "VMPTRLD"), ("vmlaunch", "VMLAUNCH")),
    "vmcall_exit": (("exit", "a VM exit"),),
    "teardown": (("vmxoff", "VMXOFF"),),
}


def seen_of(stage: str, events: Sequence[VmxEvent], who: str) -> str:
    """What the witness saw of a stage's instructions: `KVM in L1 saw VMPTRLD, no VMLAUNCH`."""
    kinds = {e.kind for e in events}
    words = [w if k in kinds else f"no {w.removeprefix('a ')}" for k, w in SEEN[stage]]
    if stage == "vmlaunch" and kinds & {"vmfail", "entry_fail"}:
        words.append("a failed VM entry")
    return f"{who} saw {', '.join(words)}"


def settle(
    stages: Mapping[str, StageVerdict],
    report: GuestReport,
    profile: Profile,
    beneath: Beneath | None = None,
) -> dict[str, StageVerdict]:
    """Each guest stage of a foreign module says what the module did not print:
    - a stage it printed nothing for, failed only for lines missing: SKIPPED, saying so (and,
      without a witness beneath the guest, that there is none);
    - a crash after its last word before VMLAUNCH that the witness saw enter and exit the
      guest: the exit's (`went_further`);
    - a crash or hang in a stage: the module's last line and what it means;
    - any stage: its implied records and unprinted steps (the witness hook, `unsaid`)."""
    if profile.native or not report.runs:
        return dict(stages)
    run = report.runs[-1]
    first = first_attempt(run)
    missing = unsaid(report, profile)
    operation = one_operation(report, first, beneath)
    out = went_further(stages, first, beneath) if not report.end else dict(stages)
    for stage, v in out.items():
        if stage == "build" or v.reason.startswith("not reached"):
            continue
        said = [r for r in first if STAGE_OF.get(r.stage) == stage]
        reason = v.reason
        outcome = v.outcome
        if v.outcome is Outcome.FAILED and not said and absence_only(reason):
            nothing = PRINTED_NOTHING if beneath is None else PRINTED_NOTHING.split(";")[0]
            outcome, reason = Outcome.SKIPPED, f"{nothing} ({reason})"
        elif v.outcome is Outcome.FAILED and not report.end and "crashed after" not in reason:
            word = last_word(run)
            if word is not None:
                reason += f"; the module's last line: '{message(word.raw)[:120]}'"
                if word.result == "info" and word.text:
                    reason += f" ({word.text})"
        who = beneath.source if beneath is not None else ""
        # (a reason went_further wrote says what the witness saw already)
        if (
            operation is not None
            and outcome is Outcome.FAILED
            and stage in SEEN
            and who not in reason
        ):
            reason += f"; {seen_of(stage, operation, who)}"
        if missing.get(stage):
            reason += f"; not printed by the module: {', '.join(missing[stage])}"
        out[stage] = replace(v, outcome=outcome, reason=reason)
    return out


# --------------------------------------------------------------------------- the profiles
def rules(*table: tuple[str, tuple[str, ...]]) -> tuple[Rule, ...]:
    return tuple(Rule(pattern, records) for pattern, records in table)


# fmt: off
ORIGINAL = Profile(
    name="vmlaunch-original",
    summary="vishmohan/vmlaunch's vmlaunch_simple.c: everything in init, rmmod does nothing",
    rules=rules(
        (r"In vmxon", ("load info -- In vmxon (init begins)",)),
        (r"VMX supported CPU\.", ("check ok cpuid.vmx=1",)),
        (r"VMX not supported by CPU\. Not doing anything", ("check declined why=no_vmx",)),
        (r"MSR 0x3A:Lock bit is on\.VMXON bit is on\.OK", ("check ok feature_control=locked_on",)),
        (r"MSR 0x3A:Lock bit is on\.VMXONbit is off\.Cannot do vmxon",
         ("check declined why=vmx_disabled_by_bios",)),
        (r"MSR 0x3A: Lock bit is not on\. Not doing anything",
         ("check declined why=feature_control_unlocked",)),
        (r"Error allocating vmxon region", ("alloc FAIL errno=-12 region=vmxon",)),
        (r"turned on cr4\.vmxe", ("vmxon info cr4.vmxe=1 -- CR4.VMXE set, VMXON next",)),
        (r"vmxon has failed!", ("vmxon FAIL -- VMXON set CF or ZF",)),
        (r"Error allocating vmcs guest region",
         ("?vmxon ok", "alloc FAIL errno=-12 region=vmcs")),
        (r"vmptrld has failed!", ("?vmxon ok", "vmptrld FAIL -- VMPTRLD set CF or ZF")),
        # do_vmclear runs only on a failed VMWRITE's path: VMCLEAR, then vmxon_exit (VMXOFF,
        # frees), after popping four registers it never pushed, so do_vmwrite returns into
        # garbage (nested 6.12: KVM in L1 refuses VMWRITE 0x200c, then RIP 0x3 in insmod)
        (r"vmclear done!",
         ("?vmxon ok", "?vmptrld ok",
          "vmcs FAIL -- a VMWRITE failed (its one path to VMCLEAR: VMXOFF and the frees follow, "
          "then it returns on a stack it popped four registers off)")),
        (r"Doing vmlaunch now\.\.",
         ("?vmxon ok", "?vmptrld ok", "?vmcs ok",
          "vmlaunch info -- VMLAUNCH next: a VMfail prints 'After vmexit' at once, so a crash "
          "before that line came back through the VMCS host state (a VM exit, or a failed "
          "entry: only a witness beneath can tell which)")),
        (r"After vmexit",
         ("vmlaunch info -- back in the host after VMLAUNCH (a VM exit, or a VMfail)",)),
        (r"Guest VMexit reason: 0x(?P<r>[89a-f][0-9a-f]{7})", ("exit FAIL reason=0x{r}",)),
        (r"Guest VMexit reason: 0x(?P<r>[0-9a-f]{1,8})",
         ("?vmlaunch ok", "exit ok reason=0x{r}")),
        (r"Machine in vmxon: Attempting vmxoff", ("vmxoff info -- VMXOFF next",)),
        (r"vmxoff has failed!", ("vmxoff FAIL -- VMXOFF set CF or ZF",)),
        (r"vmxoff complete", ("vmxoff info",)),  # printed after a failed VMXOFF too
        (r"turned off cr4\.vmxe", ("vmxoff ok cr4.vmxe=0",)),
        (r"freeing allocated (?:vmcs|io bitmap[AB]|msr bitmap|virtual apic page) region!",
         ("freed info",)),
        (r"freeing allocated vmxon region!", ("freed ok -- the last of its kmalloc regions",)),
        (r"Enable Interrupts", ("status info -- sti",)),
        (r"Done", ("status info -- init returns 0",)),
    ),
    unprinted={"unload": "its exit function is empty: rmmod prints nothing"},
    warnings_fatal=False,
)
# fmt: on

PROFILES: dict[str, Profile] = {
    NATIVE: Profile(NATIVE, "this project's driver/: docs/contract.md section 1"),
    ORIGINAL.name: ORIGINAL,
}
DEFAULT = PROFILES[NATIVE]


def profile_named(name: str | None, *, strict_build: bool = False) -> Profile:
    """The profile called `name` (None: ours); --strict-build makes build warnings fatal."""
    profile = PROFILES.get(name or NATIVE)
    if profile is None:
        raise UsageError(
            f"--profile {name!r}: no such module profile",
            fix=f"one of: {', '.join(PROFILES)}",
        )
    return replace(profile, warnings_fatal=True) if strict_build else profile
