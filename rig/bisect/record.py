"""The bisection's records, kept as they are made, so that `rig bisect --resume RUN` goes on.

    BisectArgs                 what was asked (bisect.json): the source, the ends, the cell
    Records(run_dir)           steps.jsonl, one line per run of a probe, appended and synced
      .runs(label, role)       the runs of a probe done so far (a resumed step does the rest)
      .add(RunRecord)          append one run (flushed and fsync'd before the next starts)

A run is written only after it finished, so a kill -9 loses at most the run in flight; a
resumed bisection never rebuilds or re-runs a finished run (builds are cached by what went
into them too), and marks in git only the commits it has records for.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rig.bisect.decide import RunMark
from rig.errors import UsageError

ARGS_FILE = "bisect.json"
STEPS_FILE = "steps.jsonl"


@dataclass(frozen=True)
class BisectArgs:
    """Everything that decides what a bisection tests (resume refuses to change any of it)."""

    source: str  # "matrix" | "debian" | "git"
    good: str
    bad: str
    lane: str
    cpu: str
    driver: str
    driver_digest: str
    stage: str | None = None
    repeat: int = 1
    matrix: str = ""
    debian: str = ""  # SUITE[:LINE]
    tree: str = ""
    config: str = "minimal"
    patch: str = ""
    suite: str = "trixie"  # the toolchain suite that builds tree kernels
    fix: bool = False
    first_parent: bool = False
    params: tuple[str, ...] = ()
    max_infra: int = 3

    def save(self, run_dir: Path) -> None:
        (run_dir / ARGS_FILE).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> BisectArgs:
        path = run_dir / ARGS_FILE
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__}, not a mapping")
            data["params"] = tuple(data.get("params", ()))
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise UsageError(
                f"{path}: not a bisection's record ({exc})",
                fix="pass the run directory `rig bisect` printed when it started",
            ) from exc


@dataclass(frozen=True)
class RunRecord:
    """One run of one probe: what was tested, what it said, how long it took."""

    label: str  # the commit SHA, the package version or the matrix kernel
    role: str  # "good-end" | "bad-end" | "step" | "verify" | "revert" | "parent"
    run: int
    mark: RunMark
    reason: str
    build_s: float = 0.0
    boot_s: float = 0.0
    cell_dir: str = ""
    facts: dict[str, Any] = field(default_factory=dict)  # image digest, release, ...

    def line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def parse(cls, text: str) -> RunRecord:
        data = json.loads(text)
        data["mark"] = RunMark(data["mark"])
        return cls(**data)


class Records:
    """steps.jsonl of one bisection run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / STEPS_FILE
        self.all: list[RunRecord] = []
        self._cut: int | None = None  # where a line cut by a kill begins (dropped on add)
        if self.path.exists():
            lines = self.path.read_bytes().splitlines(keepends=True)
            kept = 0  # bytes of the whole records before this line
            for n, raw in enumerate(lines, 1):
                try:
                    self.all.append(RunRecord.parse(raw.decode()))
                except (ValueError, TypeError, KeyError):
                    # a line cut by a kill mid-write is the run in flight: it is done again
                    if n != len(lines):
                        raise UsageError(f"{self.path}:{n}: not a run record") from None
                    self._cut = kept
                kept += len(raw)

    def runs(self, label: str, role: str) -> list[RunRecord]:
        return [r for r in self.all if r.label == label and r.role == role]

    def add(self, record: RunRecord) -> None:
        if self._cut is not None:  # the cut line goes, so that this one starts a line
            with self.path.open("r+b") as fh:
                fh.truncate(self._cut)
            self._cut = None
        with self.path.open("a") as fh:
            fh.write(record.line() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.all.append(record)
