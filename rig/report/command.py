"""`rig report`: JUnit files (e.g. one per nightly shard) -> the page, the job summary, the
comparison with a baseline and the history carried to the next night.

Exit codes: 0 the report was made; 2 bad input (a missing or unreadable file); 3 coverage was
lost: a planned runnable cell (--expect) or a shard (--expect-shards) has no result.
"""

from __future__ import annotations

import argparse
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from rig.errors import ExitCode, UsageError
from rig.model import SEVERITY, Outcome
from rig.report.bundle import DEFAULT_RUNS_DIR, attach_logs
from rig.report.cells import BAD, CellReport, Status, cells_of, missing_cell
from rig.report.compare import Delta, Snapshot, compare, counts, snapshots
from rig.report.history import Night, dump, flakiness, load
from rig.report.junit import RunResults, read_run

META_KEYS = (
    "finished",
    "commit",
    "driver_digest",
    "host",
    "version",
    "run_id",
    "shard",
    "selection",
    "duration_s",
    "ci_url",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("junit", nargs="+", type=Path, help="JUnit XML files (e.g. one per shard)")
    p.add_argument(
        "--html",
        type=Path,
        default=Path("rig-report.html"),
        help="the page; each cell's logs are copied beside it, under logs/",
    )
    p.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="also a Markdown summary (e.g. for $GITHUB_STEP_SUMMARY)",
    )
    p.add_argument(
        "--compare",
        type=Path,
        default=None,
        metavar="PREVIOUS",
        help="the baseline: a JUnit file, a directory of them, or a history JSON "
        "(its last night); marks new failures, fixes, new skips, still failing",
    )
    p.add_argument(
        "--history",
        type=Path,
        default=None,
        help="the history so far (JSON); the baseline when --compare is not given",
    )
    p.add_argument(
        "--history-out",
        type=Path,
        default=None,
        help="write the history with this run appended (for the next night)",
    )
    p.add_argument(
        "--expect",
        type=Path,
        default=None,
        metavar="PLAN",
        help="`rig matrix --json` output: every planned cell must have a result",
    )
    p.add_argument(
        "--expect-shards",
        type=int,
        default=None,
        metavar="N",
        help="the number of shards that should have reported",
    )
    p.add_argument("--title", default="vmlaunch-rig matrix")
    p.add_argument(
        "--no-copy-logs",
        action="store_true",
        help="link the logs where they are (file:// URIs) instead of copying them",
    )
    p.add_argument(
        "--runs-dir",
        type=Path,
        default=DEFAULT_RUNS_DIR,
        metavar="DIR",
        help="`rig run --runs-dir`: cell logs are read from under it or under the JUnit "
        "file's directory, nowhere else (default: .rig/runs)",
    )


def _read(path: Path) -> RunResults:
    if not path.is_file():
        raise UsageError(f"{path}: no such JUnit file")
    try:
        return read_run(path)
    except ET.ParseError as exc:
        raise UsageError(f"{path}: not valid XML ({exc})") from exc


def _rank(c: CellReport) -> int:
    outcome = {
        Status.ERROR: Outcome.ERROR,
        Status.FAILED: Outcome.FAILED,
        Status.PASSED: Outcome.PASSED,
    }.get(c.status, Outcome.SKIPPED)
    return SEVERITY[outcome]


def merge(runs: list[RunResults]) -> dict[str, CellReport]:
    """Every cell of every file; a cell in two files keeps its worse result."""
    cells: dict[str, CellReport] = {}
    for run in runs:
        for cid, cell in cells_of(run.cases, source=run.source).items():
            if cid not in cells or _rank(cell) > _rank(cells[cid]):
                cells[cid] = cell
    return cells


def merged_meta(runs: list[RunResults]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for key in META_KEYS:
        values = list(dict.fromkeys(r.meta.get(f"rig_{key}", "") for r in runs))
        values = [v for v in values if v]
        if values:
            meta[key] = ", ".join(sorted(values) if key == "shard" else values)
    meta["inputs"] = ", ".join(str(r.source) for r in runs)
    return meta


def baseline(path: Path) -> tuple[dict[str, Snapshot], str]:
    if path.suffix == ".json":
        nights = load(path)
        if not nights:
            return {}, f"{path} (empty)"
        last = nights[-1]
        return (
            last.cells,
            f"{last.run.get('finished', '?')}, commit {last.run.get('commit', '?')[:12]}",
        )
    files = sorted(path.rglob("*.xml")) if path.is_dir() else [path]
    if not files:
        raise UsageError(f"--compare {path}: no JUnit file there")
    runs = [_read(f) for f in files]
    meta = merged_meta(runs)
    return snapshots(merge(runs)), f"{path}: {meta.get('finished', '?')}"


def cmd_report(args: argparse.Namespace) -> int:
    from rig.paths import version
    from rig.report.html import render_html
    from rig.report.markdown import render_markdown

    t0 = time.monotonic()
    runs = [_read(p) for p in args.junit]
    cells = merge(runs)
    meta = merged_meta(runs)
    lost: list[str] = []
    if args.expect is not None:
        plan = json.loads(args.expect.read_text())
        rows = plan["cells"] if isinstance(plan, dict) else plan
        for row in rows:
            if row["id"] not in cells:
                cells[row["id"]] = missing_cell(row)
                if not row.get("skip_reason"):
                    lost.append(row["id"])
    missing_shards = ""
    if args.expect_shards:
        have = {r.meta.get("rig_shard", "") for r in runs}
        want = [f"{i}/{args.expect_shards}" for i in range(1, args.expect_shards + 1)]
        missing_shards = ", ".join(s for s in want if s not in have)
        if missing_shards:
            meta["missing shards"] = missing_shards
    ordered = [cells[c] for c in sorted(cells)]
    deltas: list[Delta] | None = None
    base_label = ""
    nights = load(args.history) if args.history is not None and args.history.exists() else []
    if args.compare is not None:
        before, base_label = baseline(args.compare)
        deltas = compare(before, snapshots(cells))
    elif nights:
        before = nights[-1].cells
        base_label = f"history: {nights[-1].run.get('finished', '?')}"
        deltas = compare(before, snapshots(cells))
    tonight = Night({k: v for k, v in meta.items() if k != "inputs"}, snapshots(cells))
    flaky = flakiness([*nights, tonight]) if nights else {}
    if args.history_out is not None:
        dump([*nights, tonight], args.history_out)
    out_dir = args.html.resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    copied = attach_logs(ordered, out_dir, copy=not args.no_copy_logs, runs_dir=args.runs_dir)
    page = render_html(
        ordered,
        title=args.title,
        meta=meta,
        deltas=deltas,
        baseline=base_label,
        flaky=flaky,
        version=version(),
    )
    args.html.write_text(page)
    print(
        f"wrote {args.html} ({len(ordered)} cells, {len(page) / 1024:.0f} KiB, "
        f"{copied} log files under {out_dir / 'logs'}, {time.monotonic() - t0:.2f} s)"
    )
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(render_markdown(ordered, deltas, missing_shards))
        print(f"wrote {args.markdown}")
    if deltas is not None:
        found = counts(deltas)
        print("since the baseline: " + ", ".join(f"{n} {c.value}" for c, n in found.items() if n))
    bad = [c.id for c in ordered if c.status in BAD - {Status.MISSING}]
    if bad:
        print(f"{len(bad)} cells failed or errored: {', '.join(bad[:20])}")
    if lost or missing_shards:
        what = [f"{len(lost)} planned cells have no result"] * bool(lost)
        what += [f"shards without a result: {missing_shards}"] * bool(missing_shards)
        print(f"rig report: coverage lost: {'; '.join(what)}")
        return int(ExitCode.INFRA)
    return int(ExitCode.OK)
