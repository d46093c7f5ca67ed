"""Where the rig's own files are: the driver, the guest recipes and the default matrix.

In a checkout they are beside the package (`driver/`, `guests/`, `matrix.yaml`); an installed
rig (`pip install .`) carries a copy as package data under `rig/_project/`. `RIG_HOME` names
another tree explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _is_project(root: Path) -> bool:
    return (root / "driver").is_dir() and (root / "guests").is_dir()


def find_project_root() -> Path:
    """RIG_HOME, else the checkout around the package, else the installed package data."""
    env = os.environ.get("RIG_HOME")
    if env:
        return Path(env).resolve()
    for root in (_PACKAGE.parent, _PACKAGE / "_project"):
        if _is_project(root):
            return root
    return _PACKAGE.parent


PROJECT_ROOT = find_project_root()
GUESTS_DIR = PROJECT_ROOT / "guests"
DEFAULT_DRIVER = PROJECT_ROOT / "driver"
DEFAULT_MATRIX = PROJECT_ROOT / "matrix.yaml"
BUSYBOX = Path("/bin/busybox")  # busybox-static: the initramfs guests' userland
KEXEC = Path("/usr/sbin/kexec")  # kexec-tools: the crash path's kexec -p, run in the guest


def version() -> str:
    """The rig's version: the installed distribution's, else the package's own."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    import rig

    try:
        return dist_version("vmlaunch-rig")
    except PackageNotFoundError:
        return rig.__version__
