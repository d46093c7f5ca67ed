"""The guests' shell scripts pass shellcheck as POSIX sh (busybox ash runs them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.unit.test_workflows import _tool

GUESTS = Path(__file__).resolve().parents[2] / "guests"
SCRIPTS = ["agent/rig-agent", "initramfs/init", "nested/init", "crash/init", "lib/drain.sh",
           "lib/carrier.sh"]  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS)
def test_guest_script_passes_shellcheck(script: str) -> None:
    shellcheck = _tool("shellcheck")
    proc = subprocess.run([shellcheck, "-s", "sh", "-S", "style", str(GUESTS / script)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
