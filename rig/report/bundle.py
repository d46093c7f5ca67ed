"""The report's bundle: the page, and beside it each cell's logs, linked by relative paths.

A JUnit file names each cell's logs by the absolute paths of the machine that ran it
(`log_console`, ... properties). Where those paths no longer exist (the shard's artifact was
downloaded elsewhere) the cell's directory is looked up under the JUnit file's own directory
as `<anything>/<run-id>/cells/<cell-id>/`. Found logs are copied into `<out>/logs/<cell-id>/`,
so the page's links resolve wherever the bundle is unpacked.

A JUnit file is input, not trust: a cell's directory is read only where it resolves under the
JUnit file's directory or the runs directory, a symlinked log is never read, and nothing is
written outside `<out>` (the cell id itself is checked when the JUnit is read).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from rig.errors import UsageError
from rig.report.cells import CellReport
from rig.report.shape import LOG_FILES

LOGS_DIR = "logs"
MAX_LOG_BYTES = 8 * 2**20  # a larger log is cut, its tail kept (the end is what tells)
CUT = b"[... cut by rig report: the first bytes are left out ...]\n"
DEFAULT_RUNS_DIR = Path(".rig/runs")  # `rig run --runs-dir`'s default


def _inside(path: Path, roots: Sequence[Path]) -> Path | None:
    """`path` resolved, if that is under one of `roots` (resolved already); else None."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None
    return real if any(real.is_relative_to(root) for root in roots) else None


def _find_cell_dir(
    cell: CellReport, index: dict[str, list[Path]], roots: Sequence[Path]
) -> Path | None:
    """The cell's directory, resolved and under one of `roots`, or None."""
    recorded = cell.properties.get("cell_dir", "")
    if recorded and Path(recorded).is_dir() and (real := _inside(Path(recorded), roots)):
        return real
    run_id = Path(recorded).parts[-3] if recorded and len(Path(recorded).parts) >= 3 else ""
    candidates = [real for p in index.get(cell.id, []) if (real := _inside(p, roots))]
    for path in candidates:
        if run_id and path.parent.parent.name == run_id:
            return path
    return candidates[0] if len(candidates) == 1 else None


def _index(root: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for cells in root.rglob("cells"):
        if cells.is_dir():
            for cell_dir in cells.iterdir():
                if cell_dir.is_dir():
                    found.setdefault(cell_dir.name, []).append(cell_dir)
    return found


def _read_log(src: Path) -> bytes | None:
    """A regular file's bytes (its last MAX_LOG_BYTES, marked as cut); None for a symlink or
    anything else that is not a plain file. O_NOFOLLOW: the file read is the file checked."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(src, flags)
    except OSError:  # ELOOP: a symlink; gone; unreadable
        return None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size <= MAX_LOG_BYTES:
            return fh.read(MAX_LOG_BYTES)
        fh.seek(info.st_size - MAX_LOG_BYTES)
        return CUT + fh.read(MAX_LOG_BYTES)


def _write(out_dir: Path, rel: Path, data: bytes) -> None:
    """`data` to out_dir/rel, refused (exit 2) where that resolves outside out_dir (a symlink
    in a reused output directory); never through a symlink at the file itself."""
    dst = out_dir / rel
    if _inside(dst, [out_dir.resolve()]) is None:
        raise UsageError(
            f"{dst}: resolves outside the report's directory {out_dir}; nothing written there",
            fix="write the report into a fresh directory (see --html)",
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(dst, flags, 0o644)
    except OSError as exc:  # ELOOP: a symlink there
        raise UsageError(
            f"{dst}: cannot write a log there ({exc})",
            fix="write the report into a fresh directory (see --html)",
        ) from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def attach_logs(
    cells: list[CellReport],
    out_dir: Path,
    *,
    copy: bool = True,
    runs_dir: Path = DEFAULT_RUNS_DIR,
) -> int:
    """Fill each cell's `logs` (kind -> link relative to out_dir); returns files copied.

    A cell's logs are read from its directory only where that resolves under its JUnit file's
    directory or under `runs_dir`; symlinked logs are left out."""
    indexes: dict[Path, dict[str, list[Path]]] = {}
    runs_root = runs_dir.resolve()
    copied = 0
    for cell in cells:
        if cell.source is None:
            continue
        root = cell.source.resolve().parent
        if root not in indexes:
            indexes[root] = _index(root)
        cell_dir = _find_cell_dir(cell, indexes[root], [root, runs_root])
        if cell_dir is None:
            continue
        for kind, name in LOG_FILES.items():
            src = cell_dir / name
            if src.is_symlink() or not src.is_file():
                continue
            if copy:
                data = _read_log(src)
                if data is None:
                    continue
                rel = Path(LOGS_DIR) / cell.id / name
                _write(out_dir, rel, data)
                copied += 1
                cell.logs[kind] = rel.as_posix()
            else:
                cell.logs[kind] = src.as_uri()
    return copied
