"""What a benchmark leaves: the machine it ran on, its JSON and its Markdown row.

    machine_info() -> Machine                      what the numbers were measured on
    write_results(name, result, machine) -> Path   bench/results/NAME.json + a Markdown row
    finish(name, result) -> int                    both, and the benchmark's exit status

The JSON's fields and the results table are described in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.pairs import MIN_PAIRS, REPO, Log, Result, Stats, say

RESULTS = REPO / "bench" / "results"


# --------------------------------------------------------------------------- machine
@dataclass(frozen=True)
class Machine:
    nproc: int | None  # os.cpu_count()
    usable_cpus: int  # this process's CPU affinity
    cpu_model: str  # /proc/cpuinfo "model name"
    kernel: str  # uname -r
    python: str
    git_commit: str
    git_dirty: bool | None  # tracked files differ from the commit (None: unknown)
    packages: dict[str, str]  # emulators' Debian package versions (dpkg-query), when known

    def short(self) -> str:
        return f"{self.nproc} CPUs, {self.cpu_model}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> subprocess.CompletedProcess[str] | None:
    """A read-only git query (GIT_OPTIONAL_LOCKS=0: not even the index is refreshed)."""
    try:
        return subprocess.run(
            ["git", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _packages(names: Sequence[str]) -> dict[str, str]:
    if shutil.which("dpkg-query") is None:
        return {}
    try:
        p = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *names],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split(" ", 1) for line in p.stdout.splitlines() if " " in line)


def machine_info() -> Machine:
    head = _git("rev-parse", "HEAD")
    diff = _git("diff", "--quiet", "HEAD", "--")
    return Machine(
        nproc=os.cpu_count(),
        usable_cpus=len(os.sched_getaffinity(0)),
        cpu_model=_cpu_model(),
        kernel=platform.release(),
        python=platform.python_version(),
        git_commit=head.stdout.strip() if head is not None and head.returncode == 0 else "unknown",
        git_dirty=None if diff is None or diff.returncode not in (0, 1) else diff.returncode == 1,
        packages=_packages(["bochs", "qemu-system-x86", "libvirt-daemon", "libvirt0"]),
    )


# --------------------------------------------------------------------------- writing
TABLE_HEAD = (
    "| benchmark | A | B | A median s (min-max) | B median s (min-max) | B/A (medians) "
    "| pairs | machine | date | status |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def _span(s: Stats | None) -> str:
    return "" if s is None else f"{s.median:.2f} ({s.min:.2f}-{s.max:.2f})"


def markdown_row(name: str, result: Result, machine: Machine, status: str = "") -> str:
    ratio = "" if result.ratio is None else f"{result.ratio:.2f}"
    if not result.ok:
        status = f"FAILED: {result.failure}"
        first, second = "", ""  # a failed benchmark has no numbers
    else:
        first, second = _span(result.stats(result.a)), _span(result.stats(result.b))
        status = status or f"measured: bench/results/{name}.json"
        if result.pairs < MIN_PAIRS:
            status += f" (only {result.pairs} pairs: below the method's {MIN_PAIRS})"
    cells = [
        name,
        result.a,
        result.b,
        first,
        second,
        ratio,
        f"{result.pairs} (+{result.warmup} warmup)",
        machine.short(),
        result.started[:10],
        status,
    ]
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def results_json(
    name: str, result: Result, machine: Machine, extra: Mapping[str, object] | None = None
) -> dict[str, object]:
    def stats(arm: str) -> dict[str, object] | None:
        s = result.stats(arm)
        return None if s is None else {**asdict(s), "times_s": list(result.times(arm))}

    pr = result.pair_ratios
    return {
        "benchmark": name,
        "ok": result.ok,
        "failure": result.failure,
        "started": result.started,
        "command": [sys.executable, *sys.argv],
        "method": {
            "order": "ABBA (pair i: A then B when i is even, B then A when odd)",
            "pairs": result.pairs,
            "warmup_runs_per_arm": result.warmup,
            "clock": "time.monotonic() around each run; checks not timed",
            "ratio": "median(B) / median(A)",
        },
        "a": {"name": result.a, **result.arms.get(result.a, {}), "stats": stats(result.a)},
        "b": {"name": result.b, **result.arms.get(result.b, {}), "stats": stats(result.b)},
        "ratio_b_over_a": None if result.ratio is None else round(result.ratio, 4),
        "pair_ratios_b_over_a": [round(r, 4) for r in pr],
        "pair_ratio_median": round(statistics.median(pr), 4) if pr and result.ok else None,
        "runs": [asdict(r) for r in result.runs],
        "machine": {
            **asdict(machine),
            "loadavg_before": list(result.load_before),
            "loadavg_after": list(result.load_after),
        },
        **(dict(extra) if extra else {}),
    }


def write_results(
    name: str,
    result: Result,
    machine: Machine,
    *,
    extra: Mapping[str, object] | None = None,
    out_dir: Path = RESULTS,
    log: Log = say,
) -> Path:
    """OUT_DIR/NAME.json (a failed benchmark is written too, as failed), then the summary and
    the Markdown row of docs/benchmarks.md's table."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"benchmark name {name!r}: letters, digits, '.', '_', '-' only")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(results_json(name, result, machine, extra), indent=1) + "\n")
    for line in summary(result, machine):
        log(line)
    log(TABLE_HEAD)
    log(markdown_row(name, result, machine))
    log(f"written: {path}")
    return path


def summary(result: Result, machine: Machine) -> list[str]:
    lines = []
    for role, arm in (("A", result.a), ("B", result.b)):
        s = result.stats(arm)
        if s is not None:
            lines.append(
                f"{role} {arm}: median {s.median:.2f} s, min {s.min:.2f}, "
                f"max {s.max:.2f} over {s.n} timed runs"
            )
    if result.ratio is not None:
        lines.append(f"B/A (medians) = {result.ratio:.3f}")
    if not result.ok:
        lines.append(f"BENCHMARK FAILED: {result.failure}")
    busy = result.load_before[0]
    if machine.usable_cpus and busy > 0.25 * machine.usable_cpus:
        lines.append(
            f"note: the host was not idle (load {busy:.2f} on {machine.usable_cpus} "
            "CPUs before the first run): absolute times carry that load"
        )
    return lines


def finish(
    name: str,
    result: Result,
    *,
    extra: Mapping[str, object] | None = None,
    out_dir: Path = RESULTS,
    log: Log = say,
) -> int:
    """Write and print the result; the benchmark's exit status: 0 measured, 1 failed."""
    write_results(name, result, machine_info(), extra=extra, out_dir=out_dir, log=log)
    return 0 if result.ok else 1
