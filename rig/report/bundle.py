"""The report's bundle: the page, and beside it each cell's logs, linked by relative paths.

A JUnit file names each cell's logs by the absolute paths of the machine that ran it
(`log_console`, ... properties). Where those paths no longer exist (the shard's artifact was
downloaded elsewhere) the cell's directory is looked up under the JUnit file's own directory
as `<anything>/<run-id>/cells/<cell-id>/`. Found logs are copied into `<out>/logs/<cell-id>/`,
so the page's links resolve wherever the bundle is unpacked.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rig.report.cells import CellReport
from rig.report.shape import LOG_FILES

LOGS_DIR = "logs"
MAX_LOG_BYTES = 8 * 2**20  # a larger log is cut, its tail kept (the end is what tells)


def _find_cell_dir(cell: CellReport, index: dict[str, list[Path]]) -> Path | None:
    recorded = cell.properties.get("cell_dir", "")
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    run_id = Path(recorded).parts[-3] if recorded and len(Path(recorded).parts) >= 3 else ""
    candidates = index.get(cell.id, [])
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


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    size = src.stat().st_size
    if size <= MAX_LOG_BYTES:
        shutil.copyfile(src, dst)
        return
    with src.open("rb") as fh:
        fh.seek(size - MAX_LOG_BYTES)
        dst.write_bytes(b"[... cut by rig report: the first bytes are left out ...]\n" + fh.read())


def attach_logs(cells: list[CellReport], out_dir: Path, *, copy: bool = True) -> int:
    """Fill each cell's `logs` (kind -> link relative to out_dir); returns files copied."""
    indexes: dict[Path, dict[str, list[Path]]] = {}
    copied = 0
    for cell in cells:
        if cell.source is None:
            continue
        root = cell.source.resolve().parent
        if root not in indexes:
            indexes[root] = _index(root)
        cell_dir = _find_cell_dir(cell, indexes[root])
        if cell_dir is None:
            continue
        for kind, name in LOG_FILES.items():
            src = cell_dir / name
            if not src.is_file():
                continue
            if copy:
                rel = Path(LOGS_DIR) / cell.id / name
                _copy(src, out_dir / rel)
                copied += 1
                cell.logs[kind] = rel.as_posix()
            else:
                cell.logs[kind] = Path(src).resolve().as_uri()
    return copied
