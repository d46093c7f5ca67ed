"""Whether a Debian kernel version can still be had from the pool, and its files.

    probe(version, mirror)       HEAD requests for its image and headers: a Reachability
    pool_debs(version, mirror)   the exact pool URLs of its debs (VersionUnreachable if not)
    download_debs(urls, dest)    fetch them (for the kernel stage's toolchain chroot)
    extract_config(deb, abi)     the kernel's config out of a package (seeds a git bisection)

A version the index lists may miss files in the pool; a missing one (404) makes the version
"unreachable": a bisection skips it, it is never bad. Any other answer, or none, is an
infrastructure error (InfraError, never blamed on a version).

URL shapes, checked by hand with `curl -sI` against deb.debian.org on 2026-12-07:

  <mirror>/pool/main/l/linux-signed-amd64/linux-image-6.16.3+deb13-amd64_6.16.3-1~bpo13+1_amd64.deb
  <mirror>/pool/main/l/linux/linux-headers-6.16.3+deb13-{amd64_…_amd64,common_…_all}.deb,
      linux-kbuild-6.16.3+deb13_…_amd64.deb (trixie-backports; not indexed, still served: 200)
  <mirror>/pool/main/l/linux/linux-base-6.19.6+deb13-amd64_6.19.6-2~bpo13+1_amd64.deb (200)
  <mirror>-security/pool/updates/main/l/linux/linux-headers-6.1.0-48-{amd64,common}_6.1.172-1_*.deb,
      linux-kbuild-6.1_6.1.172-1_amd64.deb (bookworm-security, old ABI scheme: 200)
  <mirror>-security/pool/updates/main/l/linux-6.12/linux-kbuild-6.12.100+deb12_6.12.100-1~deb12u1_amd64.deb
  trixie-security's 6.12.94/.95/.96 headers: 404 in debian-security's pool, 200 in the main
      pool (<mirror>/pool/main/l/linux/): so a security suite's files are looked for in both
  trixie-security's 6.12.90-1 and 6.12.90-2 headers: 404 in both pools (unreachable)
  `+` sent raw or as %2B both answer 200; an unknown archive answers 400 (not 404).

Which package holds what (dpkg-deb -c on the real debs of 6.12.117, 6.18.5, 6.19.6, 7.3.4):
6.12 linux-image-<abi> holds boot/vmlinuz-<abi> and boot/config-<abi> (so, by its size, does
6.18's: its linux-base-<abi> holds neither); 6.19 linux-binary-<abi> holds boot/vmlinuz-<abi>,
linux-base-<abi> boot/config-<abi>; 7.3 linux-binary-<abi> holds usr/lib/modules/<abi>/vmlinuz,
linux-base-<abi> usr/lib/modules/<abi>/config. From 6.19 linux-image-<abi> is a 2 kB stub.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rig.bisect.debian_line import LineVersion, archive_root
from rig.debian import MISSING, SECURITY_SUFFIX, deb_members
from rig.errors import InfraError

HEAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PoolFile:
    """One deb of a version: its file name and the pool URLs that may serve it, in order."""

    package: str
    filename: str  # linux-headers-6.12.117+deb13-amd64_6.12.117-1_amd64.deb
    urls: tuple[str, ...]


def _filename(package: str, version: str, arch: str) -> str:
    return f"{package}_{version.split(':', 1)[-1]}_{arch}.deb"  # the pool drops the epoch


def _pool_letter(source: str) -> str:
    return source[:4] if source.startswith("lib") else source[:1]


def _urls(root: str, pool_path: str, security: bool, mirror: str) -> tuple[str, ...]:
    """pool_path as `pool/<component>/...`: the suite's own pool, then the main archive's.

    The file name is percent-encoded (`+` -> %2B: some mirrors read a raw `+` as a space).
    """
    rel = urllib.parse.quote(pool_path.removeprefix("pool/").removeprefix("updates/"))
    main = f"{mirror.rstrip('/')}/pool/{rel}"
    if not security:
        return (main,)
    return (f"{root}/pool/updates/{rel}", main)


def pool_files(version: LineVersion, mirror: str) -> list[PoolFile]:
    """The debs a version needs, install order first (LineVersion.install_packages), then
    the kernel packages not installed (a 6.18+ image, the linux-binary)."""
    security = version.suite.endswith(SECURITY_SUFFIX)
    root = archive_root(mirror, version.suite)
    image_dir = version.image_path.rsplit("/", 1)[0]
    component = image_dir.removeprefix("pool/").removeprefix("updates/").split("/", 1)[0]
    source_dir = f"pool/{component}/{_pool_letter(version.source)}/{version.source}"
    out: list[PoolFile] = []
    for package in dict.fromkeys((*version.install_packages, *version.kernel_packages)):
        signed = package.startswith(("linux-image-", "linux-binary-"))
        arch = "all" if package.endswith("-common") else "amd64"
        name = _filename(package, version.version, arch)
        urls = _urls(root, f"{image_dir if signed else source_dir}/{name}", security, mirror)
        out.append(PoolFile(package, name, urls))
    return out


# --------------------------------------------------------------------------- HTTP
class _KeepHead(urllib.request.HTTPRedirectHandler):
    """Follow a mirror's redirect with HEAD again (urllib would turn it into a GET)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is None or req.get_method() != "HEAD":
            return new
        # the scheme was checked by the base class (http, https, ftp only)
        return urllib.request.Request(  # noqa: S310
            new.full_url, headers=dict(new.header_items()), method="HEAD"
        )


def http_status(url: str, timeout_s: float = HEAD_TIMEOUT_S) -> int:
    """The HTTP status a HEAD request for `url` (already percent-encoded) gets; InfraError
    when none comes back (refused, timed out, DNS, TLS)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InfraError(f"not an http(s) URL: {url}", fix="set the kernel's mirror to http(s)")
    request = urllib.request.Request(  # noqa: S310 (the scheme is checked above)
        url, method="HEAD", headers={"User-Agent": "vmlaunch-rig"}
    )
    opener = urllib.request.build_opener(_KeepHead())
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InfraError(
            f"HEAD request got no answer ({reason})",
            where=url,
            fix=f"check network access to {parts.scheme}://{parts.netloc}",
        ) from exc


# --------------------------------------------------------------------------- probe
@dataclass(frozen=True)
class Reachability:
    """What the pool serves of one version: every file found, or which are missing."""

    version: LineVersion
    found: tuple[tuple[PoolFile, str], ...]  # each file with the URL that answered 200
    missing: tuple[PoolFile, ...]  # files every candidate URL answered 404/410 for

    @property
    def reachable(self) -> bool:
        return not self.missing

    @property
    def urls(self) -> list[str]:
        return [url for _, url in self.found]

    def reason(self) -> str:
        """For people: why the version is skipped ("" when reachable)."""
        return "; ".join(
            f"{f.filename}: not in the pool (404 at {', '.join(f.urls)})" for f in self.missing
        )


def probe(
    version: LineVersion,
    mirror: str,
    *,
    status: Callable[[str], int] = http_status,
) -> Reachability:
    """HEAD every deb of the version (image, headers, headers-common, kbuild, base, binary).

    404/410 at every candidate URL: the file is missing (unreachable, never bad); any other
    status but 200, or no answer: InfraError naming the URL.
    """
    found: list[tuple[PoolFile, str]] = []
    missing: list[PoolFile] = []
    for f in pool_files(version, mirror):
        for url in f.urls:
            code = status(url)
            if code == 200:
                found.append((f, url))
                break
            if code not in MISSING:
                raise InfraError(
                    f"the mirror answered HTTP {code} for {f.filename}",
                    where=url,
                    fix=f"check the mirror {mirror} (kernel {version.name}); rerun later",
                )
        else:
            missing.append(f)
    return Reachability(version, tuple(found), tuple(missing))


class VersionUnreachable(InfraError):
    """The pool no longer serves a file of the version: a bisection step to skip."""

    def __init__(self, reach: Reachability) -> None:
        self.reachability = reach
        v = reach.version
        super().__init__(
            f"{v.abi} {v.version} ({v.suite}) cannot be fetched: {reach.reason()}",
            fix="skip this version (rig bisect skips unreachable versions)",
        )


def pool_debs(
    version: LineVersion,
    mirror: str,
    *,
    status: Callable[[str], int] = http_status,
) -> list[str]:
    """The exact pool URLs of the version's debs: those to install in the toolchain chroot
    first (LineVersion.install_packages, in dependency order), then the kernel packages only
    read for vmlinuz/config. VersionUnreachable (an InfraError) if any is missing."""
    reach = probe(version, mirror, status=status)
    if not reach.reachable:
        raise VersionUnreachable(reach)
    return reach.urls


# --------------------------------------------------------------------------- config
def config_member(abi: str) -> str:
    """The config's path in linux-image-<abi> (up to 6.18) and linux-base-<abi> (6.19)."""
    return f"boot/config-{abi}"


def config_members(abi: str) -> tuple[str, ...]:
    """Every path a kernel package may hold the config at (7.x: linux-base's modules dir)."""
    return (config_member(abi), f"usr/lib/modules/{abi}/config")


def extract_config(deb: Path, abi: str) -> str:
    """The kernel config held by a package (InfraError if it holds none)."""
    names = set(config_members(abi))
    for data in deb_members(deb, names, 1).values():
        return data.decode("utf-8", "replace")
    raise InfraError(
        f"{deb.name} holds no kernel config ({' or '.join(sorted(names))})",
        where=str(deb),
        fix="try the version's other kernel packages (LineVersion.kernel_packages)",
    )
