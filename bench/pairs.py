"""Alternating pairs: time two arms A and B the honest way, or fail.

    Arm(name, argv, cwd, env, check)   a command; "{workdir}" in argv is the run's own directory
    CallArm(name, call, check)         the same for a Python callable (in-process timing)
    run_pairs(a, b, pairs=5, warmup=1) -> Result   its runs, statistics and ratio

Beside it in bench/ (they import this module; it imports none of them):
    checks.py    what a run must show beyond exit_status (an Arm's default check, here):
                 rig_verdicts, expected_stages, verdict_problems, rig_run_argv
    results.py   machine_info() -> Machine, write_results(name, result, machine), finish
    cli.py       add_pair_options, and the command (bench/compare.py runs it)

The method (docs/benchmarks.md):
  - warmup: `warmup` runs of each arm first (A then B), checked like every run, not timed into
    the statistics: they fill the caches (kernels, chroots, driver builds). What follows is warm.
  - pairs: ABBA order, pair i runs A then B when i is even, B then A when it is odd, so a slow
    drift of the host (another job starting, thermal) lands on both arms alike.
  - every run is checked (exit status, and the verdicts the run wrote where the arm says so);
    the first run that fails stops the benchmark: its Result is failed, it has no ratio, and
    the benchmark exits non-zero. A run that fails at once is never a fast run.
  - statistics per arm over the timed runs: median, min, max; the ratio is median(B) /
    median(A) ("B takes RATIO times A's time"); per-pair ratios are kept beside it.
  - time.monotonic() around the run only (the check is not timed).

bench/compare.py compares two commands with it (see its --help); a `rig run ...` arm is
checked by the verdicts of the cells it names.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

REPO = Path(__file__).resolve().parents[1]
MIN_PAIRS = 5  # the floor for a result worth a row in docs/benchmarks.md
WORKDIR = "{workdir}"  # in an Arm's argv: replaced by the run's own fresh directory

Proc = subprocess.CompletedProcess[str]
Check = Callable[[Proc, Path], str | None]
"""(finished process, its workdir) -> None when the run is good, else why it is not."""
Log = Callable[[str], None]
T = TypeVar("T")


def say(line: str) -> None:
    """The default log: a line at once (the output is often piped through tee)."""
    print(line, flush=True)


# --------------------------------------------------------------------------- the default check
def tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def exit_status(proc: Proc, workdir: Path) -> str | None:
    """The plainest check: exit status 0."""
    if proc.returncode == 0:
        return None
    said = tail(proc.stderr) or tail(proc.stdout)
    return f"exit status {proc.returncode}" + (f": {said}" if said else "")


# --------------------------------------------------------------------------- arms
@dataclass(frozen=True)
class Outcome:
    """One execution of an arm: seconds timed, exit status (None: in-process), failure."""

    seconds: float
    returncode: int | None
    failure: str | None


class Runner(Protocol):
    @property
    def name(self) -> str: ...

    def execute(self, workdir: Path) -> Outcome: ...

    def describe(self) -> dict[str, object]: ...


@dataclass(frozen=True)
class Arm:
    """A command. `env` is added to this process's environment; every "{workdir}" in argv
    becomes the run's fresh directory; stdout and stderr go to files there and to `check`."""

    name: str
    argv: Sequence[str]
    cwd: Path = REPO
    env: Mapping[str, str] | None = None
    check: Check = exit_status
    timeout_s: float = 3600.0

    def command(self, workdir: Path) -> list[str]:
        return [a.replace(WORKDIR, str(workdir)) for a in self.argv]

    def execute(self, workdir: Path) -> Outcome:
        argv = self.command(workdir)
        env = {**os.environ, **self.env} if self.env else None
        out_path, err_path = workdir / "stdout.txt", workdir / "stderr.txt"
        with out_path.open("w") as out, err_path.open("w") as err:
            t0 = time.monotonic()
            try:
                p = subprocess.Popen(
                    argv,
                    cwd=self.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            except OSError as exc:
                return Outcome(time.monotonic() - t0, None, f"cannot start {argv[0]}: {exc}")
            try:
                rc = p.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                seconds = time.monotonic() - t0
                _kill_group(p)  # its whole process group: nothing of it runs on
                return Outcome(seconds, None, f"timed out after {self.timeout_s:g} s")
            except BaseException:  # Ctrl-C: the same, then on up
                _kill_group(p)
                raise
            seconds = time.monotonic() - t0
        proc = Proc(
            argv, rc, out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
        )
        try:
            why = self.check(proc, workdir)
        except Exception as exc:
            why = f"the check raised {type(exc).__name__}: {exc}"
        return Outcome(seconds, rc, why)

    def describe(self) -> dict[str, object]:
        return {
            "argv": [*self.argv],
            "cwd": str(self.cwd),
            "env": dict(self.env or {}),
            "timeout_s": self.timeout_s,
        }


def _kill_group(p: subprocess.Popen[Any]) -> None:
    """Its own session's group (start_new_session): TERM, then KILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            break
        try:
            p.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


@dataclass(frozen=True)
class CallArm(Generic[T]):
    """A Python callable, timed in this process: `prepare(workdir)` (not timed), then
    `call(workdir)` (timed), then `check(value, workdir)` (not timed). An exception in any of
    them fails the run with its message."""

    name: str
    call: Callable[[Path], T]
    check: Callable[[T, Path], str | None]
    prepare: Callable[[Path], None] | None = None
    note: str = ""

    def execute(self, workdir: Path) -> Outcome:
        try:
            if self.prepare is not None:
                self.prepare(workdir)
            t0 = time.monotonic()
            value = self.call(workdir)
            seconds = time.monotonic() - t0
        except Exception as exc:
            last = traceback.format_exc().strip().splitlines()[-1]
            return Outcome(0.0, None, f"raised {type(exc).__name__}: {exc} ({last})")
        try:
            why = self.check(value, workdir)
        except Exception as exc:
            why = f"the check raised {type(exc).__name__}: {exc}"
        return Outcome(seconds, None, why)

    def describe(self) -> dict[str, object]:
        name = getattr(self.call, "__qualname__", repr(self.call))
        return {"call": name, "note": self.note}


# --------------------------------------------------------------------------- runs, statistics
@dataclass(frozen=True)
class Run:
    arm: str
    phase: str  # "warmup" | "timed"
    pair: int  # index of the warmup round or of the pair
    seconds: float
    returncode: int | None
    failure: str | None
    workdir: str | None  # kept only when the run failed (or keep=True)


@dataclass(frozen=True)
class Stats:
    n: int
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, times: Sequence[float]) -> Stats | None:
        if not times:
            return None
        return cls(len(times), statistics.median(times), min(times), max(times))


@dataclass(frozen=True)
class Result:
    a: str
    b: str
    pairs: int
    warmup: int
    runs: tuple[Run, ...]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    started: str  # UTC, ISO 8601
    arms: dict[str, dict[str, object]] = field(default_factory=dict)
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def times(self, arm: str) -> tuple[float, ...]:
        return tuple(r.seconds for r in self.runs if r.arm == arm and r.phase == "timed")

    def stats(self, arm: str) -> Stats | None:
        return Stats.of(self.times(arm))

    @property
    def ratio(self) -> float | None:
        """median(B) / median(A); None for a failed benchmark."""
        sa, sb = self.stats(self.a), self.stats(self.b)
        if not self.ok or sa is None or sb is None or sa.median <= 0:
            return None
        return sb.median / sa.median

    @property
    def pair_ratios(self) -> tuple[float, ...]:
        """B / A within each pair (paired comparison; its median is beside the ratio)."""
        ta, tb = self.times(self.a), self.times(self.b)
        return tuple(b / a for a, b in zip(ta, tb, strict=False) if a > 0)


def _loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_pairs(
    a: Runner,
    b: Runner,
    pairs: int = MIN_PAIRS,
    warmup: int = 1,
    *,
    log: Log = say,
    workroot: Path | None = None,
    keep: bool = False,
) -> Result:
    """Warmups (A, B) x warmup, then `pairs` pairs in ABBA order; stops at the first failed
    run (the Result is then failed, with the run, its reason and its kept workdir)."""
    if pairs < 1 or warmup < 0:
        raise ValueError(f"pairs must be >= 1 and warmup >= 0 (got {pairs}, {warmup})")
    if a.name == b.name:
        raise ValueError(f"the two arms need different names (both {a.name!r})")
    plan: list[tuple[str, int, Runner]] = []
    for w in range(warmup):
        plan += [("warmup", w, a), ("warmup", w, b)]
    for i in range(pairs):
        plan += [("timed", i, x) for x in ((a, b) if i % 2 == 0 else (b, a))]
    started, load_before = _now(), _loadavg()
    runs: list[Run] = []
    failure: str | None = None
    if warmup:
        log(
            f"warmup: {warmup} run(s) of each arm first, checked, not timed into the results "
            "(they build and cache what the arms need; the timed pairs run warm)"
        )
    for n, (phase, index, arm) in enumerate(plan, 1):
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-{_safe(arm.name)}-", dir=workroot))
        outcome = arm.execute(workdir)
        kept = keep or outcome.failure is not None
        if not kept:
            shutil.rmtree(workdir, ignore_errors=True)
        runs.append(
            Run(
                arm.name,
                phase,
                index,
                outcome.seconds,
                outcome.returncode,
                outcome.failure,
                str(workdir) if kept else None,
            )
        )
        label = f"warmup {index + 1}" if phase == "warmup" else f"pair {index + 1}/{pairs}"
        verdict = "ok" if outcome.failure is None else f"FAILED: {outcome.failure}"
        log(f"[{n}/{len(plan)}] {label:10} {arm.name:20} {outcome.seconds:9.2f} s  {verdict}")
        if outcome.failure is not None:
            failure = f"{arm.name} ({label}) failed: {outcome.failure} (its files: {workdir})"
            break
    return Result(
        a=a.name,
        b=b.name,
        pairs=pairs,
        warmup=warmup,
        runs=tuple(runs),
        load_before=load_before,
        load_after=_loadavg(),
        started=started,
        arms={a.name: a.describe(), b.name: b.describe()},
        failure=failure,
    )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:40] or "arm"
