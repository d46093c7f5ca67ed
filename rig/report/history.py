"""The nightly's memory: one small JSON file carried from night to night (an artifact chain).

    {"format": 1, "nights": [{"run": {...metadata...}, "cells": {"<cell>": ["failed", "why"]}}]}

Newest night last, at most KEEP nights. The previous night's entry is the baseline of the
comparison; the window tells how flaky each cell is: how often its verdict flipped between
good and bad from one night to the next (skips and missing nights are left out).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rig.errors import UsageError
from rig.report.cells import BAD, SKIPS, Status
from rig.report.compare import Snapshot

FORMAT = 1
KEEP = 60
LEFT_OUT = SKIPS | {Status.MISSING}  # no verdict on the driver that night


@dataclass(frozen=True)
class Night:
    run: dict[str, str]
    cells: dict[str, Snapshot]


def load(path: Path) -> list[Night]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable history file ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UsageError(f"{path}: history format {data.get('format')!r}, expected {FORMAT}")
    nights = []
    for entry in data.get("nights", []):
        cells = {c: Snapshot(Status(v[0]), str(v[1])) for c, v in entry.get("cells", {}).items()}
        nights.append(Night({k: str(v) for k, v in entry.get("run", {}).items()}, cells))
    return nights


def dump(nights: list[Night], path: Path) -> None:
    data: dict[str, Any] = {
        "format": FORMAT,
        "nights": [
            {
                "run": n.run,
                "cells": {c: [s.status.value, s.detail] for c, s in sorted(n.cells.items())},
            }
            for n in nights[-KEEP:]
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=None, separators=(",", ":")) + "\n")


@dataclass(frozen=True)
class Flakiness:
    cell: str
    nights: int  # nights the cell had a good or bad verdict
    bad: int  # of them bad
    flips: int  # good <-> bad changes from one such night to the next
    strip: str  # the last nights' letters, oldest first (see rig.report.cells.LABELS)

    @property
    def flaky(self) -> bool:
        return self.flips >= 2


def flakiness(nights: list[Night], window: int = 14) -> dict[str, Flakiness]:
    from rig.report.cells import LABELS

    cells = sorted({c for n in nights for c in n.cells})
    result: dict[str, Flakiness] = {}
    for cell in cells:
        seen = [n.cells.get(cell) for n in nights]
        judged = [s.status in BAD for s in seen if s is not None and s.status not in LEFT_OUT]
        flips = sum(1 for a, b in itertools.pairwise(judged) if a != b)
        strip = "".join(LABELS[s.status][0] if s else "." for s in seen[-window:])
        result[cell] = Flakiness(cell, len(judged), sum(judged), flips, strip)
    return result
