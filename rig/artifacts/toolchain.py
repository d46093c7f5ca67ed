"""The toolchain chroot that builds kernels (and modules against them): one per suite.

    toolchain(cache, suite, mirror, progress) -> Path       the chroot's root, cached
    gcc_version(root) -> str                                 its `gcc --version` first line
    check_compiler(config_text, root, suite, where)          the kernel's compiler is the
                                                             chroot's, or a UsageError

A kernel built by the rig is built in this chroot (sandboxed, like every module build), so
the driver is built with the very compiler that built the kernel. A build directory you made
yourself must come from the same compiler as the chroot of the suite you name: the check reads
CONFIG_CC_VERSION_TEXT from its .config.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from rig.artifacts.cache import Cache, Progress, digest
from rig.artifacts.steps import in_root, require_tool, run_step
from rig.errors import UsageError

TOOLCHAIN_PACKAGES: tuple[str, ...] = (
    "make", "gcc", "libc6-dev", "binutils", "flex", "bison", "bc", "libelf-dev",
    "libssl-dev", "cpio", "kmod", "lz4", "perl", "xz-utils", "zstd", "ccache",
)  # fmt: skip
"""What `make bzImage modules` of a minimal or a Debian config needs (host tools included)."""


def toolchain(cache: Cache, suite: str, mirror: str, progress: Progress) -> Path:
    """A chroot of `suite` with the kernel build's tools, cached by suite, mirror, packages."""
    key = digest("toolchain", suite, mirror, TOOLCHAIN_PACKAGES)
    with cache.building("toolchains", f"{suite}-{key}") as (final, tmp):
        if tmp is not None:
            for tool in ("debootstrap", "unshare"):
                require_tool(tool)
            progress(f"toolchain {suite}: debootstrap with gcc, make, flex, bison ... (~40 s)")
            run_step(
                ["unshare", "--mount", "--propagation", "private", "--fork", "--pid",
                 "--kill-child", "debootstrap", "--variant=minbase",
                 f"--include={','.join(TOOLCHAIN_PACKAGES)}", suite, str(tmp / "root"), mirror],
                log=tmp / "build.log", what=f"debootstrap {suite} (kernel toolchain)",
                inner_log=tmp / "root" / "debootstrap" / "debootstrap.log",
            )  # fmt: skip
    return final / "root"


def gcc_version(root: Path) -> str:
    """The first line of the chroot's `gcc --version` ("gcc (Debian 14.2.0-19) 14.2.0")."""
    proc = subprocess.run(
        in_root(root, ["gcc", "--version"]), capture_output=True, text=True, check=False
    )
    return proc.stdout.splitlines()[0].strip() if proc.returncode == 0 and proc.stdout else ""


_CC_RE = re.compile(r'^CONFIG_CC_VERSION_TEXT="(.*)"$', re.M)


def config_compiler(config_text: str) -> str:
    """The compiler a kernel's .config was made with ("" when it does not say)."""
    m = _CC_RE.search(config_text)
    return m[1] if m else ""


def check_compiler(config_text: str, root: Path, suite: str, where: str) -> None:
    """A module built for this kernel must come from the compiler that built it."""
    want, have = config_compiler(config_text), gcc_version(root)
    if want and have and want != have:
        raise UsageError(
            f"the kernel was built with {want!r}, the {suite} toolchain has {have!r}",
            where=where,
            fix="name the suite whose compiler built it (suite: bookworm for Debian 12's "
            "gcc 12, trixie for gcc 14), or let the rig build it ({tree: DIR, ref: REF})",
        )


SUITE_BY_GCC = {"10": "bullseye", "12": "bookworm", "14": "trixie", "15": "sid"}
"""The Debian suite whose default gcc has this major version."""


def suite_for(config_text: str, default: str = "trixie") -> str:
    """The suite whose gcc built a kernel (by CONFIG_CC_VERSION_TEXT), else `default`."""
    m = re.search(r"\) (\d+)\.", config_compiler(config_text))
    return SUITE_BY_GCC.get(m[1], default) if m else default
