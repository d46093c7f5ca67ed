"""The HTML page people triage from: one self-contained file (inline style, no script).

Failures first, each with its reason in plain text and links to its logs; the run's
metadata; the comparison with the baseline; the grid (lane: kernels x CPUs, five stage chips
per cell, a letter beside every colour); the skips by kind; every cell. Rendered by Jinja2
with autoescape: no untrusted text is ever concatenated into markup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import jinja2

from rig.model import STAGES
from rig.report.cells import BAD, LABELS, SKIPS, CellReport, Status
from rig.report.compare import Change, Delta, counts
from rig.report.history import Flakiness
from rig.report.template import CSS, TEMPLATE

TIMES = ("kernel", "build", "image", "boot")
"""The per-cell timings the runner records (JUnit properties time_<name>_s)."""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_PAGE = _ENV.from_string(TEMPLATE)


@dataclass
class LaneGrid:
    name: str
    kernels: list[str] = field(default_factory=list)
    cpus: list[str] = field(default_factory=list)
    cells: dict[tuple[str, str], CellReport] = field(default_factory=dict)


def _grids(cells: list[CellReport]) -> list[LaneGrid]:
    grids: dict[str, LaneGrid] = {}
    for c in cells:
        g = grids.setdefault(c.lane, LaneGrid(c.lane))
        if c.kernel not in g.kernels:
            g.kernels.append(c.kernel)
        if c.cpu not in g.cpus:
            g.cpus.append(c.cpu)
        g.cells[(c.kernel, c.cpu)] = c
    return list(grids.values())


def render_html(
    cells: list[CellReport],
    *,
    title: str = "vmlaunch-rig matrix",
    meta: Mapping[str, str] | None = None,
    deltas: list[Delta] | None = None,
    baseline: str = "",
    flaky: Mapping[str, Flakiness] | None = None,
    version: str = "",
) -> str:
    order = {s: i for i, s in enumerate((Status.ERROR, Status.FAILED, Status.MISSING))}
    bad = sorted((c for c in cells if c.status in BAD), key=lambda c: (order[c.status], c.id))
    totals = [(s, n) for s in Status if (n := sum(1 for c in cells if c.status is s))]
    skips = [(s, [c for c in cells if c.status is s]) for s in Status if s in SKIPS]
    return _PAGE.render(
        title=title,
        css=CSS,
        cells=cells,
        totals=totals,
        labels=LABELS,
        meta=list((meta or {}).items()),
        deltas=deltas,
        baseline=baseline,
        changed=[d for d in deltas or [] if d.change is not Change.UNCHANGED],
        change_counts=[(c, n) for c, n in counts(deltas or []).items() if n],
        bad=bad,
        lanes=_grids(cells),
        stages=STAGES,
        skips=[(s, g) for s, g in skips if g],
        times=TIMES,
        flaky=dict(flaky or {}),
        version=version,
    )
