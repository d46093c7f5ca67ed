"""What the rig knows about the Debian archive, shared by the stages that talk to it.

    apt_sources(spec)        the sources.list lines of a kernel's suites
    compare_versions(a, b)   Debian version order, as `dpkg --compare-versions`
    download_debs(urls, dest) packages fetched from the pool by URL (versions the index lost)

Version order is python-debian's (`debian.debian_support.Version`), not a copy of dpkg's
algorithm.
"""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from debian.debian_support import Version

from rig.errors import InfraError, ToolMissing
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


DOWNLOAD_TIMEOUT_S = 120.0  # per read: a 180 MB image takes ~1 s from deb.debian.org
MISSING = frozenset({404, 410})
_DEB_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~_-]{0,254}\.deb")


def download_debs(
    urls: Sequence[str], dest: Path, *, timeout_s: float = DOWNLOAD_TIMEOUT_S
) -> list[Path]:
    """Fetch each URL (pool_debs) into dest under its Debian file name; the paths, in order.

    Any failure, a 404 too (the pool changed since the probe), is an InfraError naming the
    URL; a file half written stays behind for the caller's temporary directory to go.
    """
    out: list[Path] = []
    for url in urls:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise InfraError(f"not an http(s) URL: {url}", fix="use pool_debs' URLs")
        name = urllib.parse.unquote(url.rsplit("/", 1)[-1])
        if not _DEB_RE.fullmatch(name):
            raise InfraError(f"not a Debian package's file name: {name!r}", where=url)
        path = dest / name
        request = urllib.request.Request(url, headers={"User-Agent": "vmlaunch-rig"})  # noqa: S310
        try:
            with (
                urllib.request.urlopen(request, timeout=timeout_s) as response,  # noqa: S310
                path.open("wb") as f,
            ):
                shutil.copyfileobj(response, f, 1 << 20)
        except urllib.error.HTTPError as exc:
            gone = " (no longer in the pool)" if exc.code in MISSING else ""
            raise InfraError(f"download failed: HTTP {exc.code}{gone}", where=url) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise InfraError(
                f"download failed ({getattr(exc, 'reason', exc)})",
                where=url,
                fix="check network access to the Debian mirror",
            ) from exc
        out.append(path)
    return out


def deb_members(deb: Path, names: set[str], enough: int | None = None) -> dict[str, bytes]:
    """The regular files of a package whose paths (without `./`) are in `names`, read from
    `dpkg-deb --fsys-tarfile` as a stream: it stops once `enough` of them (every name when
    None: fewer when `names` holds alternatives) were found. InfraError for a package that is
    not one, or that dpkg-deb could not read to the end; ToolMissing without dpkg-deb."""
    enough = len(names) if enough is None else enough
    if shutil.which("dpkg-deb") is None:
        raise ToolMissing("dpkg-deb", "dpkg", "reading files out of Debian packages")
    found: dict[str, bytes] = {}
    with subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # it complains of SIGPIPE when we stop reading early
    ) as proc:
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    if name in names and member.isfile():
                        src = tar.extractfile(member)
                        assert src is not None
                        found[name] = src.read()
                        if len(found) >= enough:
                            break
        except tarfile.TarError as exc:
            raise InfraError(
                f"{deb.name}: not a readable Debian package ({exc})", where=str(deb)
            ) from exc
    if len(found) < enough and proc.returncode != 0:  # it read to the end, or died trying
        raise InfraError(f"dpkg-deb could not read {deb.name} (exit {proc.returncode})",
                         where=str(deb))  # fmt: skip
    return found
