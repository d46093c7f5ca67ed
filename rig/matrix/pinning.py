"""`rig images update`: pin each kernel of matrix.yaml to the newest package of its line.

For every kernel the Debian archive is asked, through a private apt configuration that never
touches the host's apt setup (its own sources.list, lists, cache and an empty dpkg status),
which linux-image-<abi> packages of the kernel's line (its series, "6.1") its suites hold:

  * the metapackages linux-image-amd64 and linux-image-<series>-amd64 name one through their
    `Depends: linux-image-<abi> (= <version>)`;
  * the ABI packages linux-image-<abi> themselves (default flavour only: no -rt, -cloud,
    -dbg, -unsigned).

The newest of those by Debian version order whose linux-headers-<abi> exists at the same
version (the artifact build installs it) is pinned: the kernel's `abi:` and `version:` values
in matrix.yaml are rewritten in place, leaving comments and layout alone (rig.matrix.edit).

apt's output is read and versions are ordered with python-debian (deb822, PkgRelation; via
rig.debian). Parsing and choice are pure functions (unit-tested on captured apt output);
`AptArchive` is the thin layer that runs apt-get/apt-cache.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from debian.deb822 import Deb822, PkgRelation

from rig.debian import apt_sources, compare_versions
from rig.errors import InfraError, ToolMissing, UsageError
from rig.matrix.edit import checked_rewrite
from rig.matrix.load import load_matrix
from rig.model import KernelSpec

FLAVOUR = "amd64"
_SERIES_RE = re.compile(r"^(\d+\.\d+)")
_IMAGE_PREFIX = "linux-image-"
_HEADERS_PREFIX = "linux-headers-"
_APT_TIMEOUT_S = 600
_TAIL_LINES = 20


# --------------------------------------------------------------------------- apt output
def parse_stanzas(text: str) -> list[dict[str, str]]:
    """The paragraphs of `apt-cache show` output: field -> value (continuations joined)."""
    return [
        {
            str(name): "\n".join(line.strip() for line in value.splitlines())
            for name, value in p.items()
        }
        for p in Deb822.iter_paragraphs(text.splitlines(), use_apt_pkg=False)
    ]


@dataclass(frozen=True)
class Relation:
    """One alternative of a Depends entry: `name[:arch] [(op version)]`."""

    name: str
    op: str = ""
    version: str = ""


def parse_depends(value: str) -> list[list[Relation]]:
    """A Depends field: a list of entries, each a list of alternatives."""
    if not value.strip():
        return []
    return [
        [Relation(alt["name"], *(alt.get("version") or ("", ""))) for alt in entry]
        for entry in PkgRelation.parse_relations(value)
    ]


def image_abi(package: str) -> str | None:
    """The ABI of a kernel image package of the default flavour, else None.

    linux-image-6.1.0-56-amd64 -> 6.1.0-56-amd64; linux-image-6.12.117+deb13-amd64 ->
    6.12.117+deb13-amd64. None for metapackages (linux-image-amd64, linux-image-6.12-amd64),
    other flavours (-rt-amd64, -cloud-amd64) and -dbg / -unsigned / -signed-template.
    """
    if not package.startswith(_IMAGE_PREFIX):
        return None
    abi = package.removeprefix(_IMAGE_PREFIX)
    suffix = "-" + FLAVOUR
    if not abi.endswith(suffix) or not abi[:1].isdigit():
        return None
    release = abi.removesuffix(suffix)
    if re.fullmatch(r"\d+\.\d+", release):
        return None  # linux-image-6.12-amd64: a series metapackage
    last = release.rsplit("-", 1)[-1]
    if "-" in release and last.isalpha():
        return None  # another flavour: 6.1.0-56-rt, 6.1.0-56-cloud
    return abi


def series_of(name: str, abi: str) -> str | None:
    """The kernel line: its name when that is a series ("6.1"), else the series of its abi."""
    if re.fullmatch(r"\d+\.\d+", name):
        return name
    m = _SERIES_RE.match(abi)
    return m.group(1) if m else None


def in_series(series: str | None, text: str) -> bool:
    """Does a version or an ABI belong to the series? ("6.1" holds 6.1.192-2, not 6.12.117-1)."""
    if series is None:
        return True
    text = text.split(":", 1)[1] if re.match(r"^\d+:", text) else text
    if not text.startswith(series):
        return False
    rest = text[len(series) :]
    return rest == "" or not rest[0].isdigit()


@dataclass(frozen=True)
class Candidate:
    abi: str
    version: str  # of the linux-image-<abi> package
    via: str  # the package it was found through: "linux-image-amd64" or linux-image-<abi>


def candidates(stanzas: Iterable[dict[str, str]]) -> list[Candidate]:
    """Every (abi, version) of a default-flavour kernel image the stanzas name.

    A metapackage's stanza names one in its Depends (`linux-image-<abi> (= <version>)`); an
    image package's stanza is one itself.
    """
    out: list[Candidate] = []
    for st in stanzas:
        package, version = st.get("Package", ""), st.get("Version", "")
        if not package or not version:
            continue
        own = image_abi(package)
        if own is not None:
            out.append(Candidate(own, version, package))
            continue
        for entry in parse_depends(st.get("Depends", "")):
            for rel in entry:
                abi = image_abi(rel.name)
                if abi is not None and rel.op == "=" and rel.version:
                    out.append(Candidate(abi, rel.version, package))
    return out


def _newer(a: Candidate, b: Candidate) -> int:
    return compare_versions(a.version, b.version) or (a.abi > b.abi) - (a.abi < b.abi)


def newest_first(cands: Iterable[Candidate], series: str | None) -> list[Candidate]:
    """The candidates of the series, newest version first, one per (abi, version).

    Where a metapackage and the image package name the same (abi, version), the metapackage
    is kept as its `via`: it is the archive's own pointer to the kernel of the line.
    """
    seen: dict[tuple[str, str], Candidate] = {}
    for c in cands:
        if not (in_series(series, c.version) and in_series(series, c.abi)):
            continue
        prev = seen.get((c.abi, c.version))
        if prev is None or (image_abi(prev.via) is not None and image_abi(c.via) is None):
            seen[(c.abi, c.version)] = c
    return sorted(seen.values(), key=functools.cmp_to_key(_newer), reverse=True)


def relevant_packages(names: Iterable[str], series: str | None) -> list[str]:
    """Which linux-image-* packages to ask about: the metapackages and the series' images."""
    wanted: list[str] = []
    metas = {f"{_IMAGE_PREFIX}{FLAVOUR}"}
    if series is not None:
        metas.add(f"{_IMAGE_PREFIX}{series}-{FLAVOUR}")
    for n in sorted(set(names)):
        abi = image_abi(n)
        if n in metas or (abi is not None and in_series(series, abi)):
            wanted.append(n)
    return wanted


def versions_of(stanzas: Iterable[dict[str, str]], package: str) -> set[str]:
    return {s["Version"] for s in stanzas if s.get("Package") == package and "Version" in s}


# --------------------------------------------------------------------------- apt
def _tail(text: str, n: int = _TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def update_failed(output: str) -> bool:
    """apt-get update exits 0 when an index cannot be fetched: look at what it said."""
    return any(
        line.startswith(("Err:", "E:", "W: Failed to fetch", "W: Some index files failed"))
        for line in output.splitlines()
    )


class AptArchive:
    """A private apt view of some suites: own sources, lists, cache and an empty status."""

    def __init__(self, spec: KernelSpec) -> None:
        if shutil.which("apt-get") is None or shutil.which("apt-cache") is None:
            raise ToolMissing("apt-get", "apt", "resolving kernel versions in the archive")
        self.spec = spec
        self._tmp = tempfile.TemporaryDirectory(prefix="rig-apt-")
        root = Path(self._tmp.name)
        root.chmod(0o755)  # apt fetches as the _apt user
        for d in ("lists/partial", "cache/archives/partial", "etc/preferences.d"):
            (root / d).mkdir(parents=True)
        (root / "sources.list").write_text(apt_sources(spec))
        (root / "status").write_text("")
        self.options = [
            "-o", f"Dir::Etc::SourceList={root / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::Etc::Preferences={root / 'etc/preferences'}",
            "-o", f"Dir::Etc::PreferencesParts={root / 'etc/preferences.d'}",
            "-o", f"Dir::State::Lists={root / 'lists'}",
            "-o", f"Dir::State::status={root / 'status'}",
            "-o", f"Dir::Cache={root / 'cache'}",
            "-o", "APT::Get::List-Cleanup=0",
            "-o", f"APT::Architecture={FLAVOUR}",
            "-o", f"APT::Architectures={FLAVOUR}",
            "-o", "Acquire::Languages=none",
            "-o", "Acquire::Retries=3",
        ]  # fmt: skip
        if not spec.check_valid_until:
            self.options += ["-o", "Acquire::Check-Valid-Until=false"]

    def __enter__(self) -> AptArchive:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._tmp.cleanup()

    def _run(self, argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
        try:
            return subprocess.run(
                argv,
                capture_output=True,
                text=True,
                errors="replace",
                env=env,
                timeout=_APT_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise InfraError(
                f"kernel {self.spec.name}: {what} timed out after {_APT_TIMEOUT_S} s",
                fix="check network access to the Debian mirror",
            ) from exc

    def update(self) -> None:
        proc = self._run(["apt-get", *self.options, "update"], "apt-get update")
        out = proc.stdout + proc.stderr
        if proc.returncode != 0 or update_failed(out):
            fix = f"check network access to {self.spec.mirror} and the suites of the kernel"
            if "expired" in out.lower() or "invalid since" in out.lower():
                fix = f"set check_valid_until: false for kernel {self.spec.name} in matrix.yaml"
            raise InfraError(
                f"kernel {self.spec.name}: apt-get update of "
                f"{', '.join([self.spec.suite, *self.spec.extra_suites])} failed "
                f"(exit {proc.returncode}); apt said:\n{_tail(out)}",
                fix=fix,
            )

    def pkgnames(self, prefix: str) -> list[str]:
        proc = self._run(["apt-cache", *self.options, "pkgnames", prefix], "apt-cache pkgnames")
        if proc.returncode != 0:
            raise InfraError(
                f"kernel {self.spec.name}: apt-cache pkgnames {prefix} failed "
                f"(exit {proc.returncode}):\n{_tail(proc.stdout + proc.stderr)}"
            )
        return [n.strip() for n in proc.stdout.splitlines() if n.strip()]

    def show(self, packages: Sequence[str]) -> list[dict[str, str]]:
        if not packages:
            return []
        proc = self._run(["apt-cache", *self.options, "show", *packages], "apt-cache show")
        if proc.returncode != 0:
            raise InfraError(
                f"kernel {self.spec.name}: apt-cache show failed "
                f"(exit {proc.returncode}):\n{_tail(proc.stdout + proc.stderr)}"
            )
        return parse_stanzas(proc.stdout)


@dataclass(frozen=True)
class Pin:
    name: str
    old_abi: str
    old_version: str
    abi: str
    version: str
    via: str
    skipped: tuple[str, ...] = ()  # newer candidates left out (no headers at that version)

    @property
    def changed(self) -> bool:
        return (self.old_abi, self.old_version) != (self.abi, self.version)

    def render(self) -> str:
        old = f"{self.old_abi} {self.old_version or '(newest)'}"
        new = f"{self.abi} {self.version}"
        state = "" if self.changed else "  (unchanged)"
        text = f"{self.name:6} {old:40} -> {new}  [via {self.via}]{state}"
        for s in self.skipped:
            text += f"\n       skipped {s}"
        return text


def choose(
    spec: KernelSpec,
    cands: Sequence[Candidate],
    headers: Callable[[str], set[str]],
) -> Pin:
    """The newest candidate of the kernel's line whose headers exist at the same version."""
    series = series_of(spec.name, spec.abi)
    ordered = newest_first(cands, series)
    if not ordered:
        suites = ", ".join([spec.suite, *spec.extra_suites])
        raise UsageError(
            f"kernel {spec.name}: no linux-image-*-{FLAVOUR} of the {series or 'any'} line "
            f"in {suites}",
            fix=f"check suite/extra_suites of kernel {spec.name} in matrix.yaml",
        )
    skipped: list[str] = []
    for c in ordered:
        if c.version in headers(c.abi):
            return Pin(spec.name, spec.abi, spec.version, c.abi, c.version, c.via, tuple(skipped))
        skipped.append(f"{c.abi} {c.version}: no linux-headers-{c.abi} at that version")
    raise UsageError(
        f"kernel {spec.name}: no kernel of the {series or 'any'} line has its headers "
        f"at the same version:\n" + "\n".join(skipped),
        fix=f"check suite/extra_suites of kernel {spec.name} in matrix.yaml",
    )


def resolve(spec: KernelSpec) -> Pin:
    """Ask the archive for the newest kernel of `spec`'s line (network)."""
    series = series_of(spec.name, spec.abi)
    with AptArchive(spec) as apt:
        apt.update()
        images = relevant_packages(apt.pkgnames(_IMAGE_PREFIX), series)
        cands = candidates(apt.show(images))
        header_names = set(apt.pkgnames(_HEADERS_PREFIX))

        def headers(abi: str) -> set[str]:
            name = f"{_HEADERS_PREFIX}{abi}"
            return versions_of(apt.show([name]), name) if name in header_names else set()

        return choose(spec, cands, headers)


def update_matrix(
    path: Path,
    kernels: Sequence[str] = (),
    *,
    resolver: Callable[[KernelSpec], Pin] = resolve,
    out: Callable[[str], None] = print,
) -> list[Pin]:
    """Pin the selected kernels (all by default) of the matrix file; write it if it changed.

    Every kernel is resolved before anything is written: on an error the file is untouched.
    """
    matrix = load_matrix(path)
    unknown = [k for k in kernels if k not in matrix.kernels]
    if unknown:
        raise UsageError(
            f"unknown kernel(s) {', '.join(unknown)}",
            fix=f"pick from {', '.join(matrix.kernels)}",
        )
    named = [matrix.kernels[k] for k in (kernels or list(matrix.kernels))]
    specs = [k for k in named if k.kind == "debian"]  # kernels you built are not pinned
    for k in named:
        if k.kind != "debian":
            out(f"{k.name:6} {k.describe()}: built, not a package: nothing to pin")
    pins: list[Pin] = []
    for spec in dict.fromkeys(specs):
        pin = resolver(spec)
        out(pin.render())
        pins.append(pin)
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    new = text
    for pin in pins:
        if pin.changed:
            new = checked_rewrite(new, pin.name, pin.abi, pin.version, str(path))
    if new != text:
        tmp = path.with_name(f".{path.name}.rig-update")
        tmp.write_text(new, encoding="utf-8")
        tmp.chmod(path.stat().st_mode & 0o7777)
        tmp.replace(path)
        out(f"wrote {path}")
    else:
        out(f"{path}: already pinned to the newest kernels")
    return pins


def cmd_update(matrix: Path, kernels: Sequence[str]) -> int:
    update_matrix(matrix.resolve(), kernels)
    return 0
