"""The package versions of one Debian kernel line in one suite, for `rig bisect --debian`.

    parse_suite_arg("bookworm-security:6.12")   the CLI's SUITE[:LINE], checked
    versions_for(template, arg)                 the versions of that line (network)
    line_versions(template, suite, line, idx)   every amd64 image of a series, oldest first
    choose_line(arg, versions)                  the line asked for, or the suite's only one
    select_range(versions, good, bad)           the slice good..bad (both ends included)
    upstream_range(good, bad)                   the upstream tags to bisect between next
    find_version(spec)                          the LineVersion of a kernel spec (network)

A suite's index lists linux-image-<abi> (and, from 6.19, linux-binary-<abi>) for every
version it holds, but linux-headers-<abi> only for some: the pool still serves many of the
rest (rig.bisect.debian_pool probes them). What the pool layout needs is read from the
image's own stanza: its Filename (pool directory), its Built-Using or Source (the source
package that built the headers: `linux`, or `linux-6.12` for bookworm's 6.12 line) and its
Depends (linux-binary-<abi> holds the kernel from 6.19; linux-base-<abi> exists from 6.18).

A line is what one source package built in the suite: bookworm-security holds two (`linux`:
6.1, `linux-6.12`: 6.12), so `bookworm-security` alone is a UsageError naming them;
trixie-backports holds one, 6.16 to 7.3; `SUITE:X.Y` keeps the X.Y series alone.

The archive is read with rig.matrix.pinning's AptArchive, on one suite at a time, so every
version found is known to come from that suite. Version order is dpkg's (rig.debian).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from rig.debian import SECURITY_SUFFIX, compare_versions
from rig.errors import UsageError
from rig.matrix.pinning import AptArchive, image_abi, in_series, parse_depends, series_of
from rig.model import KernelSpec

IMAGE = "linux-image-"
BINARY = "linux-binary-"  # from 6.19: holds the kernel; linux-image-<abi> is then a stub
BASE = "linux-base-"  # from 6.18; from 6.19 it holds the config (and System.map)
_SUITE_ARG_RE = re.compile(
    r"(?P<suite>[a-z][a-z0-9]{0,39}(?:-(?:security|backports))?)"
    r"(?::(?P<line>[1-9][0-9]{0,2}\.[0-9]{1,3}))?"
)
_TOOLCHAIN_OF = {"experimental": "sid"}  # not a standalone suite
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_NAME_MAX = 32  # rig.matrix.schema._KERNEL_RE
_UPSTREAM_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(?:~(rc\d+))?")
_SHOWN = 8  # versions named in an error


class Index(Protocol):
    """What line_versions reads of one suite's index (AptArchive has it)."""

    def pkgnames(self, prefix: str) -> list[str]: ...

    def show(self, packages: Sequence[str]) -> list[dict[str, str]]: ...


# --------------------------------------------------------------------------- SUITE[:LINE]
@dataclass(frozen=True)
class SuiteArg:
    suite: str  # "bookworm-security"
    line: str | None  # "6.12"; None: the suite's only line

    @property
    def toolchain(self) -> str:
        return toolchain_suite(self.suite)


def parse_suite_arg(text: str) -> SuiteArg:
    """`trixie-security`, `trixie-backports`, `bookworm-security:6.12`, `sid:7.2`."""
    m = _SUITE_ARG_RE.fullmatch(text)
    if m is None:
        raise UsageError(
            f"--debian {text!r}: not SUITE[:LINE]",
            fix="name a Debian suite, optionally with a kernel line: trixie-security, "
            "trixie-backports, bookworm-security:6.12",
        )
    return SuiteArg(m["suite"], m["line"])


def toolchain_suite(suite: str) -> str:
    """The suite whose chroot builds modules: trixie for trixie-security/-backports."""
    base = suite.removesuffix(SECURITY_SUFFIX).removesuffix("-backports")
    return _TOOLCHAIN_OF.get(base, base)


def archive_root(mirror: str, suite: str) -> str:
    """The archive a suite lives in: security suites in debian-security (as rig.debian)."""
    if suite.endswith(SECURITY_SUFFIX):
        return mirror.rstrip("/").removesuffix("/debian") + "/debian-security"
    return mirror.rstrip("/")


# --------------------------------------------------------------------------- versions
def kernel_name(version: str, *, unique: bool = False) -> str:
    """A matrix-safe kernel name for a Debian version: 7.3.4-1~bpo13+1 -> 7.3.4-1_bpo13_1.

    Always matches rig.matrix.schema's kernel-name pattern. Too long (or `unique`, for two
    versions that read alike): cut, plus 8 hex digits of the version's SHA-256.
    """
    name = _UNSAFE.sub("_", version)
    if not re.match(r"[A-Za-z0-9]", name):
        name = "v" + name
    if unique or len(name) > _NAME_MAX:
        tag = hashlib.sha256(version.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        name = f"{name[: _NAME_MAX - 9]}-{tag}"
    return name


@dataclass(frozen=True)
class LineVersion:
    """One linux-image-<abi> version of a line in one suite, and where its files live."""

    abi: str  # 6.12.117+deb13-amd64
    version: str  # 6.12.117-1 (of linux-image-<abi>, and of its headers)
    suite: str  # the suite whose index lists it: trixie-security
    name: str  # matrix-safe kernel name (kernel_name)
    image_path: str  # the image's Filename: pool/updates/main/l/linux-signed-amd64/...deb
    source: str = "linux"  # source package of headers, kbuild, linux-base: linux-6.12
    split: bool = False  # linux-binary-<abi> holds the kernel (6.19 on)
    has_base: bool = False  # the image depends on linux-base-<abi> (6.18 on)
    mirror: str = "http://deb.debian.org/debian"
    check_valid_until: bool = True

    @property
    def release(self) -> str:
        """The ABI without its flavour: 6.12.117+deb13, 6.1.0-48."""
        return self.abi.removesuffix("-amd64")

    @property
    def toolchain(self) -> str:
        return toolchain_suite(self.suite)

    @property
    def kbuild(self) -> str:
        """linux-kbuild-6.12.117+deb13 (one per ABI); linux-kbuild-6.1 (old ABI scheme)."""
        if "+" in self.release:
            return f"linux-kbuild-{self.release}"
        return f"linux-kbuild-{series_of('', self.abi) or self.release}"

    @property
    def install_packages(self) -> tuple[str, ...]:
        """What the toolchain chroot installs to build modules, in dependency order.

        Up to 6.17 linux-headers-<abi> depends on linux-image-<abi>; from 6.18 on
        linux-base-<abi> instead (and the image needs linux-modules-<abi>: not installed).
        """
        image = f"{BASE}{self.abi}" if self.has_base else f"{IMAGE}{self.abi}"
        return (
            self.kbuild,
            f"linux-headers-{self.release}-common",
            image,
            f"linux-headers-{self.abi}",
        )

    @property
    def kernel_packages(self) -> tuple[str, ...]:
        """The packages that may hold vmlinuz and config: image, binary, base."""
        out = [f"{IMAGE}{self.abi}"]
        if self.split:
            out.append(f"{BINARY}{self.abi}")
        if self.has_base:
            out.append(f"{BASE}{self.abi}")
        return tuple(out)

    @property
    def config_package(self) -> str:
        """The package that holds the kernel's config (debian_pool.extract_config): from 6.19
        linux-base-<abi>, before linux-image-<abi> (6.18's linux-base holds none)."""
        return f"{BASE}{self.abi}" if self.split else f"{IMAGE}{self.abi}"

    def spec(self) -> KernelSpec:
        """The KernelSpec the rest of the rig builds and boots (as matrix.yaml's "7.3")."""
        extra = () if self.suite == self.toolchain else (self.suite,)
        return KernelSpec(
            name=self.name,
            suite=self.toolchain,
            abi=self.abi,
            version=self.version,
            mirror=self.mirror,
            extra_suites=extra,
            check_valid_until=self.check_valid_until,
        )


def package_abi(package: str) -> str | None:
    """The ABI of a default-flavour linux-image-<abi> or linux-binary-<abi>, else None."""
    if package.startswith(BINARY):
        return image_abi(IMAGE + package.removeprefix(BINARY))
    return image_abi(package)


def _series_key(series: str) -> tuple[int, ...]:
    return tuple(int(x) for x in series.split(".") if x.isdigit())


def _series(v: LineVersion) -> str:
    return series_of("", v.abi) or v.abi


def lines_of(versions: Sequence[LineVersion]) -> dict[str, list[LineVersion]]:
    """The suite's kernel lines: its versions by the source package that built them.

    bookworm-security: `linux` (6.1) and `linux-6.12`; trixie-backports: `linux` alone,
    from 6.16 to 7.3 (one line: each version replaced the one before).
    """
    out: dict[str, list[LineVersion]] = {}
    for v in versions:
        out.setdefault(v.source, []).append(v)
    return out


def _describe(versions: Sequence[LineVersion]) -> str:
    series = sorted({_series(v) for v in versions}, key=_series_key)
    span = series[0] if len(series) == 1 else f"{series[0]} to {series[-1]}"
    return f"{span} ({versions[0].source}: {len(versions)} versions)"


def choose_line(arg: SuiteArg, versions: Sequence[LineVersion]) -> list[LineVersion]:
    """The versions of the line asked for (`SUITE:6.12`: that series), or of the suite's
    only line; UsageError naming the suite's lines."""
    suite = arg.suite
    if not versions:
        raise UsageError(
            f"{suite} holds no linux-image-*-amd64",
            fix="pick a suite with kernels: SUITE, SUITE-security, SUITE-backports",
        )
    lines = sorted(lines_of(versions).values(), key=lambda vs: _series_key(_series(vs[-1])))
    held = ", ".join(_describe(vs) for vs in lines)
    newest = _series(lines[-1][-1])
    if arg.line is None:
        if len(lines) == 1:
            return list(versions)
        raise UsageError(
            f"{suite} holds more than one kernel line: {held}",
            fix=f"name one, e.g. --debian {suite}:{newest}",
        )
    chosen = [v for v in versions if in_series(arg.line, v.abi)]
    if not chosen:
        raise UsageError(
            f"{suite} holds no {arg.line} kernel (it holds {held})",
            fix=f"pick a line it holds, e.g. --debian {suite}:{newest}",
        )
    return chosen


def _source_of(stanza: dict[str, str]) -> str:
    """The source package that built the headers: Built-Using's, or Source less -signed."""
    for entry in parse_depends(stanza.get("Built-Using", "")):
        for rel in entry:
            if rel.name.startswith("linux"):
                return rel.name
    src = stanza.get("Source", "linux").split()[0]
    return re.sub(r"^linux-signed(-.+?)?-amd64$", r"linux\1", src)


def _order(a: LineVersion, b: LineVersion) -> int:
    return compare_versions(a.version, b.version) or (a.abi > b.abi) - (a.abi < b.abi)


def line_versions(
    spec_template: KernelSpec, suite: str, line: str, archive: Index
) -> list[LineVersion]:
    """Every amd64 image of `line` the suite's index lists: oldest first, one per version.

    `line` is a series ("6.12"), or "" for every kernel of the suite (choose_line splits
    them). `archive` holds that one suite (suite_archive); `spec_template` gives the mirror
    and check_valid_until of the specs made (LineVersion.spec).
    """
    names = [*archive.pkgnames(IMAGE), *archive.pkgnames(BINARY)]
    series = line or None
    wanted = sorted({n for n in names if (a := package_abi(n)) and in_series(series, a)})
    images: dict[tuple[str, str], dict[str, str]] = {}
    binaries: dict[tuple[str, str], dict[str, str]] = {}
    for st in archive.show(wanted):
        package, version = st.get("Package", ""), st.get("Version", "")
        abi = package_abi(package)
        if abi is None or not st.get("Filename") or not in_series(series, version):
            continue
        (binaries if package.startswith(BINARY) else images)[(abi, version)] = st
    found: list[LineVersion] = []
    for (abi, version), st in {**binaries, **images}.items():
        deps = {rel.name for entry in parse_depends(st.get("Depends", "")) for rel in entry}
        found.append(
            LineVersion(
                abi=abi,
                version=version,
                suite=suite,
                name=kernel_name(version),
                image_path=st["Filename"].replace(f"/{BINARY}{abi}_", f"/{IMAGE}{abi}_"),
                source=_source_of(st),
                split=(abi, version) in binaries or f"{BINARY}{abi}" in deps,
                has_base=f"{BASE}{abi}" in deps,
                mirror=spec_template.mirror,
                check_valid_until=spec_template.check_valid_until,
            )
        )
    found.sort(key=functools.cmp_to_key(_order))
    names_seen = Counter(v.name for v in found)
    return [
        replace(v, name=kernel_name(v.version, unique=True)) if names_seen[v.name] > 1 else v
        for v in found
    ]


# --------------------------------------------------------------------------- --good/--bad
def _nearest(versions: Sequence[LineVersion], wanted: str) -> list[str]:
    """The versions held, the nearest to `wanted` in dpkg order first."""
    held = [v.version for v in versions]
    try:
        at = sum(1 for h in held if compare_versions(h, wanted) < 0)
    except ValueError:  # not a Debian version at all: list them from the newest
        at = len(held)
    order = sorted(range(len(held)), key=lambda i: (abs(i - at + 0.5), -i))
    return [held[i] for i in order]


def _index_of(versions: Sequence[LineVersion], wanted: str, what: str) -> int:
    for i, v in enumerate(versions):
        if wanted in (v.version, v.name):
            return i
    near = _nearest(versions, wanted)
    more = f" ({len(near)} in all)" if len(near) > _SHOWN else ""
    where = versions[0].suite if versions else "the suite"
    raise UsageError(
        f"--{what} {wanted}: {where} holds no such version; nearest: "
        f"{', '.join(near[:_SHOWN])}{more}",
        fix=f"pick --{what} from the versions {where} holds",
    )


def select_range(versions: Sequence[LineVersion], good: str, bad: str) -> list[LineVersion]:
    """The versions from `good` to `bad`, both included (by Debian version or kernel name)."""
    g, b = _index_of(versions, good, "good"), _index_of(versions, bad, "bad")
    if g >= b:
        raise UsageError(
            f"--good {good} is not older than --bad {bad}: a bisection looks for the first bad "
            "version after a good one",
            fix="swap them (finding the first fixed version, --fix, is not supported for "
            "Debian packages)",
        )
    return list(versions[g : b + 1])


# --------------------------------------------------------------------------- upstream
def upstream_tag(version: str) -> str:
    """The upstream git tag of a Debian kernel version: 6.12.107-1 -> v6.12.107,
    7.3.4-1~bpo13+1 -> v7.3.4, 6.12-1~exp1 -> v6.12, 6.17~rc3-1~exp1 -> v6.17-rc3."""
    upstream = version.split(":", 1)[-1].rsplit("-", 1)[0]
    m = _UPSTREAM_RE.fullmatch(upstream)
    if m is None or "-" not in version:
        raise UsageError(f"{version}: not a Debian kernel version (like 6.12.107-1)")
    major, minor, patch, rc = m.groups()
    tag = f"v{major}.{minor}" + (f".{patch}" if patch and patch != "0" else "")
    return tag + (f"-{rc}" if rc else "")


def upstream_range(good: LineVersion, bad: LineVersion) -> tuple[str, str]:
    """The upstream tags to bisect between in a kernel tree after good -> bad packages.

    Same upstream tag (6.12.115-1 -> 6.12.115-2): the change is Debian's (its patches,
    config or toolchain), so no upstream range exists: UsageError saying so.
    """
    if compare_versions(good.version, bad.version) >= 0:
        raise UsageError(f"good {good.version} is not older than bad {bad.version}")
    g, b = upstream_tag(good.version), upstream_tag(bad.version)
    if g == b:
        raise UsageError(
            f"{good.version} and {bad.version} are both upstream {g}: the change is Debian's "
            "(patches, config or compiler), not upstream's",
            fix="compare the two packages' changelogs and kernel configs",
        )
    return g, b


# --------------------------------------------------------------------------- archive
def suite_archive(spec_template: KernelSpec, suite: str) -> AptArchive:
    """A private apt view of one suite alone (its own index; security suites from
    debian-security). Call .update() before reading it."""
    return AptArchive(
        KernelSpec(
            name=spec_template.name,
            suite=suite,
            abi=spec_template.abi,
            mirror=archive_root(spec_template.mirror, suite),
            check_valid_until=spec_template.check_valid_until,
        )
    )


def versions_for(spec_template: KernelSpec, arg: SuiteArg) -> list[LineVersion]:
    """Every version of the line `arg` names (network: apt-get update of that suite)."""
    with suite_archive(spec_template, arg.suite) as apt:
        apt.update()
        return choose_line(arg, line_versions(spec_template, arg.suite, "", apt))


def find_version(spec: KernelSpec) -> LineVersion:
    """The LineVersion of a kernel spec, named as the spec (network: its extra suites first,
    then its suite; version "": the newest of its ABI).

    For the kernel stage when the index lists no linux-headers-<abi>=<version>: the image
    is always listed, and its stanza says where the rest lives (debian_pool.pool_debs).
    """
    line = series_of("", spec.abi) or spec.abi
    for suite in dict.fromkeys((*spec.extra_suites, spec.suite)):
        with suite_archive(spec, suite) as apt:
            apt.update()
            held = [
                v
                for v in line_versions(spec, suite, line, apt)
                if v.abi == spec.abi and spec.version in ("", v.version)
            ]
        if held:
            return replace(held[-1], name=spec.name)  # version "": the newest
    raise UsageError(
        f"kernel {spec.name}: no linux-image-{spec.abi} {spec.version or '(any)'} in "
        f"{', '.join([*spec.extra_suites, spec.suite])}",
        fix=f"check the suites, abi and version of kernel {spec.name}",
    )
