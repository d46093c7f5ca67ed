"""Reports of matrix runs: JUnit read back, cells, comparison, history, HTML and Markdown.

    junit     read_junit / read_run: the JUnit a run wrote -> CaseResults (+ run metadata)
    shape     what our testcases look like (names, messages, where the console goes)
    cells     CaseResults -> one CellReport per cell: statuses, the kinds of skip
    compare   tonight against a baseline: new failures, fixes, new skips, still failing
    history   the nightly's memory across nights; flakiness per cell
    bundle    each cell's logs copied beside the page, linked by relative paths
    html      the page people triage from (Jinja2, autoescaped, self-contained)
    markdown  the GitHub job summary
    command   `rig report`

Nothing here imports libvirt or a lane: a report is made on any machine with the files.
"""

from rig.report.cells import CellReport, Status, cell_summary, cells_of
from rig.report.junit import CaseResult, RunResults, by_cell, read_junit, read_run

__all__ = [
    "CaseResult",
    "CellReport",
    "RunResults",
    "Status",
    "by_cell",
    "cell_summary",
    "cells_of",
    "read_junit",
    "read_run",
]
