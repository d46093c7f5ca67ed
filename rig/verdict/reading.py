"""What the guest said, read for the judge: each run's driver records and oopses.

    read(transcript) -> GuestReport
    parse_guest(boot) / parse_console(text) -> GuestReport

Driver lines are read from a run's dmesg dump when it has at least as many of them as the
live console (the dump is complete; the live console is all there is after a crash).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rig.guest.protocol import (
    RawRun,
    Step,
    Transcript,
    Witness,
    complete_lines,
    dump_boundary,
    parse_channels,
    parse_lines,
)
from rig.model import BootResult
from rig.verdict.grammar import DriverRecord, parse_driver_line, split_attempts
from rig.verdict.oops import Oops, find_oopses

TAIL_LINES = 40


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
    beside: tuple[str, ...] = ()  # RIG-BESIDE lines (--beside kvm)
    rebooted: bool = False  # a second RIG-BEGIN: the guest rebooted during the test
    witness: Witness | None = None  # the teardown witness after the last run

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


def make_stream(name: str, lines: Sequence[str], boundary: int) -> Stream:
    records = [
        rec for i, line in enumerate(lines) if (rec := parse_driver_line(line, i)) is not None
    ]
    return Stream(
        name=name,
        lines=tuple(lines),
        records=tuple(records),
        boundary=boundary,
        oopses=tuple(find_oopses(lines, boundary)),
        early_oopses=tuple(find_oopses(lines[:boundary], 0)),
    )


def _run(raw: RawRun) -> Run:
    dump = None if raw.dump is None else make_stream("dmesg", raw.dump, dump_boundary(raw.dump))
    return Run(
        number=raw.number,
        module=raw.module,
        iteration=raw.iteration,
        steps=raw.steps,
        console=make_stream("console", raw.live, 0),
        dump=dump,
        dump_complete=raw.dump_complete,
    )


def read(t: Transcript) -> GuestReport:
    return GuestReport(
        begin=t.begin,
        end=t.end,
        run_id=t.run_id,
        cell_id=t.cell_id,
        vmx=t.vmx,
        cpus=t.cpus,
        cpu_model=t.cpu_model,
        runs=tuple(_run(r) for r in t.runs),
        boot_oopses=tuple(find_oopses(t.prelude, 0)),
        lines=t.lines,
        preloads=t.preloads,
        beside=t.beside,
        rebooted=t.rebooted,
        witness=t.witness,
    )


def parse_guest(boot: BootResult) -> GuestReport:
    """What the guest said: its agent's channel merged with its console."""
    return read(parse_channels(boot.agent, boot.console))


def parse_console(text: str) -> GuestReport:
    """Parse a one-channel transcript (protocol and kernel lines on one console)."""
    return read(parse_lines(complete_lines(text + "\n")))
