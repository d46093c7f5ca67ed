"""What the rig knows about the Debian archive, shared by the stages that talk to it.

    apt_sources(spec)        the sources.list lines of a kernel's suites
    compare_versions(a, b)   Debian version order, as `dpkg --compare-versions`

Version order is python-debian's (`debian.debian_support.Version`), not a copy of dpkg's
algorithm.
"""

from __future__ import annotations

from debian.debian_support import Version

from rig.model import KernelSpec

SECURITY_SUFFIX = "-security"


def apt_sources(spec: KernelSpec) -> str:
    """sources.list text for the kernel's suite and its extra suites (main only).

    Security suites (bookworm-security) live on the debian-security mirror next to the
    kernel's mirror: http://deb.debian.org/debian -> http://deb.debian.org/debian-security.
    """
    lines = [f"deb {spec.mirror} {spec.suite} main"]
    for extra in spec.extra_suites:
        mirror = spec.mirror
        if extra.endswith(SECURITY_SUFFIX):
            mirror = spec.mirror.rstrip("/").removesuffix("/debian") + "/debian-security"
        lines.append(f"deb {mirror} {extra} main")
    return "\n".join(lines) + "\n"


def compare_versions(a: str, b: str) -> int:
    """Debian version order (as `dpkg --compare-versions`): <0, 0 or >0.

    Raises ValueError for a string that is not a Debian version.
    """
    va, vb = Version(a), Version(b)
    return (va > vb) - (va < vb)
