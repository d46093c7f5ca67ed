"""A package bisection over one Debian line, for real (issue 19): trixie-security's 6.12
versions 6.12.105-1, 6.12.107-1, 6.12.111-1, on the tcg lane, with a copy of the driver that
stops building from 6.12.107 (`#error` under LINUX_VERSION_CODE, as a driver meets a changed kernel
API). `--stage build`: the build is what breaks. Each version's image and headers come from
the pool (the index lists headers for few of them). It must name 6.12.107-1, run it again,
name the upstream range to bisect next and keep 6.12.105-1's config for it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import REPO

BREAKS = (
    '#include <linux/version.h>\n#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 107)\n'
    '#error "planted: this copy of the driver stops building from 6.12.107"\n#endif\n'
)  # fmt: skip


def test_a_debian_line_is_bisected_to_the_version_that_breaks_the_driver(
    tmp_path: Path,
) -> None:
    driver = tmp_path / "driver"
    shutil.copytree(REPO / "driver", driver)
    main = driver / "vmlaunch_main.c"
    main.write_text(BREAKS + main.read_text())
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "rig", "bisect", "--debian", "trixie-security",
         "--good", "6.12.105-1", "--bad", "6.12.111-1", "--lane", "tcg", "--cpu", "penryn",
         "--stage", "build", "--driver", str(driver), "--runs-dir", str(runs),
         "--junit", str(tmp_path / "bisect.xml")],
        cwd=REPO, capture_output=True, text=True, timeout=2400,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    print(out[-6000:])
    assert proc.returncode == 0, out[-4000:]
    assert "first bad version: 6.12.107-1" in out
    assert "check verify: bad" in out
    assert "--good v6.12.105 --bad v6.12.107" in out, out[-2000:]
    config = next(runs.glob("*/good-config")).read_text()
    assert "CONFIG_KVM_INTEL=m" in config and "6.12.105" in out
    assert "planted: this copy of the driver stops building" in out  # the compiler's words
