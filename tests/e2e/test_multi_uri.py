"""Cells spread over several libvirt connections (how a team scales out over KVM runners),
tried here with two local connections: the embedded pool and a second embedded root."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from rig.model import Outcome
from tests.e2e.conftest import RigRunner


def test_cells_are_spread_over_two_connections(rig: RigRunner) -> None:
    # a short root: libvirt's monitor socket path must fit in sun_path (108 bytes)
    root = Path(tempfile.mkdtemp(prefix="rig2-", dir="/tmp"))
    try:
        _spread(rig, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _spread(rig: RigRunner, root: Path) -> None:
    second = f"qemu:///embed?root={root}"
    run = rig("--lane", "tcg", "--kernel", "6.12", "--cpu", "penryn", "--cpu", "nehalem",
              "--uri", "embed", "--uri", second, "-n", "2")  # fmt: skip
    assert run.rc == 0, run.output[-3000:]
    used = {}
    for cell_id in ("tcg-6.12-penryn", "tcg-6.12-nehalem"):
        cell = run.cells[cell_id]
        assert cell["build"].outcome is Outcome.PASSED
        assert cell["teardown"].outcome is Outcome.PASSED, cell["teardown"].message
        used[cell_id] = cell["teardown"].properties["uri"]
    assert set(used.values()) == {"embed", second}, used
    # the second "host" really ran a domain: its embedded root has the domain's QEMU log
    assert list((root / "log" / "qemu").glob("rig-*.log"))
