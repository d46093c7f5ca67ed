"""A run's cells on disk: one verdict per cell, judged once, stored as `cells/<id>/verdict.json`.

    verdict_for(cell_dir, cell_id, judge) -> CellVerdict

Every process of a run (each pytest-xdist worker, under any `--dist` mode, and xdist's rerun
of a crashed worker's cell) asks here. The first takes the cell's lock, judges, and stores the
verdict; the others wait on the lock and read it. A judge that raises becomes a stored ERROR
verdict with its traceback: the stage items never judge, they only read.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from rig.model import STAGES, CellVerdict, Outcome, StageVerdict

VERDICT_FILE = "verdict.json"
VERDICT_FORMAT = 1


def verdict_to_json(verdict: CellVerdict) -> dict[str, Any]:
    return {
        "format": VERDICT_FORMAT,
        "cell": verdict.cell_id,
        "stages": {
            s: {"outcome": v.outcome.value, "reason": v.reason, "evidence": v.evidence}
            for s, v in verdict.stages.items()
        },
        "timings": verdict.timings,
        "console": verdict.console,
        "build_log": verdict.build_log,
        "emulator_log": verdict.emulator_log,
    }


def verdict_from_json(data: dict[str, Any]) -> CellVerdict:
    if data.get("format") != VERDICT_FORMAT:
        raise ValueError(f"verdict format {data.get('format')!r}, expected {VERDICT_FORMAT}")
    stages = {
        s: StageVerdict(s, Outcome(v["outcome"]), str(v["reason"]), str(v.get("evidence", "")))
        for s, v in data["stages"].items()
    }
    return CellVerdict(
        cell_id=str(data["cell"]),
        stages=stages,
        console=str(data.get("console", "")),
        build_log=str(data.get("build_log", "")),
        emulator_log=str(data.get("emulator_log", "")),
        timings={k: float(v) for k, v in data.get("timings", {}).items()},
    )


def crashed(cell_id: str, exc: BaseException) -> CellVerdict:
    """The verdict of a judge that raised: an infrastructure ERROR on every stage."""
    trace = "".join(traceback.format_exception(exc))
    reason = f"infrastructure: the rig failed unexpectedly: {type(exc).__name__}: {exc}"
    return CellVerdict(
        cell_id=cell_id,
        stages={s: StageVerdict(s, Outcome.ERROR, reason, trace) for s in STAGES},
    )


def read_verdict(cell_dir: Path) -> CellVerdict | None:
    path = cell_dir / VERDICT_FILE
    if not path.exists():
        return None
    return verdict_from_json(json.loads(path.read_text()))


def write_verdict(cell_dir: Path, verdict: CellVerdict) -> None:
    cell_dir.mkdir(parents=True, exist_ok=True)
    tmp = cell_dir / f".{VERDICT_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(verdict_to_json(verdict), indent=1))
    tmp.rename(cell_dir / VERDICT_FILE)


def verdict_for(cell_dir: Path, cell_id: str, judge: Callable[[], CellVerdict]) -> CellVerdict:
    """The cell's verdict: read if some process of the run stored it, else judged here once."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cell_dir / "verdict.lock")):
        stored = read_verdict(cell_dir)
        if stored is not None:
            return stored
        try:
            verdict = judge()
        except Exception as exc:  # every exception is a stored ERROR verdict, never a retry
            verdict = crashed(cell_id, exc)
        write_verdict(cell_dir, verdict)
        return verdict
