"""Markdown for a GitHub job summary: totals, what changed since the baseline, every cell."""

from __future__ import annotations

from rig.report.cells import BAD, CellReport, Status
from rig.report.compare import Change, Delta, counts
from rig.report.html import TIMES


def esc(text: str) -> str:
    """A Markdown table cell: `|`, backslashes, newlines and HTML-significant characters."""
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def render_markdown(
    cells: list[CellReport], deltas: list[Delta] | None = None, missing_shards: str = ""
) -> str:
    lines: list[str] = []
    totals = [f"{n} {s.value}" for s in Status if (n := sum(1 for c in cells if c.status is s))]
    lines += [f"**{len(cells)} cells**: " + ", ".join(totals), ""]
    if missing_shards:
        lines += [f"**Missing shards**: {esc(missing_shards)}", ""]
    if deltas is not None:
        found = [
            f"{n} {c.value}" for c, n in counts(deltas).items() if n and c is not Change.UNCHANGED
        ]
        lines += ["**Since the baseline**: " + (", ".join(found) or "nothing changed"), ""]
        changed = [d for d in deltas if d.change is not Change.UNCHANGED]
        if changed:
            lines += ["| cell | change | status | now |", "|---|---|---|---|"]
            lines += [
                f"| {esc(d.cell)} | {d.change.value} | {esc(d.text)} | "
                f"{esc(d.after.detail if d.after else '')} |"
                for d in changed
            ]
            lines.append("")
    lines += [
        "| cell | verdict | " + " | ".join(f"{t} s" for t in TIMES) + " |",
        "|---|---|" + "---:|" * len(TIMES),
    ]
    ordered = sorted(cells, key=lambda c: (c.status not in BAD, c.id))
    for c in ordered:
        times = [esc(c.properties.get(f"time_{t}_s", "")) for t in TIMES]
        lines.append(f"| {esc(c.id)} | {esc(c.summary)} | " + " | ".join(times) + " |")
    return "\n".join(lines) + "\n"
