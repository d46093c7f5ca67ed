"""A Debian kernel's own modules directory, read without installing anything.

    with kernel_modules(kernel, log) as mods:
        mods.read({"modules.dep", "kernel/arch/x86/kvm/kvm.ko.xz"}) -> {rel: bytes}

Paths are relative to /usr/lib/modules/<abi>. When the toolchain chroot has that very
linux-image installed, the files come from there. Otherwise its packages are downloaded into
the chroot once (the way the kernel's vmlinuz was; up to 6.x linux-image-<abi> holds the
modules, from 7.x linux-modules-<abi> does) and read with rig.debian.deb_members; they are
deleted when the block ends. The KVM modules (the teardown witness) and the CD-ROM's drivers
(a snapshot's base guest) are read this way.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rig.artifacts.steps import in_root, run_step
from rig.debian import deb_members
from rig.errors import InfraError
from rig.model import KernelArtifacts

TOPS = ("usr/lib/modules", "lib/modules")


def installed_version(root: Path, package: str) -> str | None:
    """The version of `package` installed in the chroot `root`, or None."""
    status = root / "var/lib/dpkg/status"
    if not status.exists():
        return None
    for block in status.read_text(errors="replace").split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != " "
        )
        if fields.get("Package") == package and "installed" in fields.get("Status", ""):
            return fields.get("Version")
    return None


def _file(rel: str) -> str:
    """A module's file whichever its form: `kvm.ko` for kvm.ko and kvm.ko.xz."""
    return rel.removesuffix(".xz")


def _files(rels: Iterable[str]) -> set[str]:
    return {_file(r) for r in rels}


@dataclass
class ModulesReader:
    """Files of one kernel's modules directory: an installed one, or its packages' members,
    downloaded when first needed (linux-image-<abi>, then linux-modules-<abi> for what the
    first did not hold: 7.x moved the modules there; 6.x has no such package)."""

    kernel: KernelArtifacts
    log: Path
    installed: Path | None = None
    debs: Path | None = None  # where packages are downloaded
    fetched: list[Path] = field(default_factory=list)
    tried: list[str] = field(default_factory=list)

    def read(self, rels: set[str]) -> dict[str, bytes]:
        """The files of `rels` that exist (relative to the modules directory)."""
        if self.installed is not None:
            return {r: (self.installed / r).read_bytes() for r in rels
                    if (self.installed / r).is_file()}  # fmt: skip
        abi = self.kernel.spec.abi
        found: dict[str, bytes] = {}
        for pkg in (f"linux-image-{abi}", f"linux-modules-{abi}"):
            if _files(found) == _files(rels):
                break  # every file, in one of its forms (.ko or .ko.xz)
            for deb in self._fetch(pkg, required=pkg.startswith("linux-image")):
                left = {r for r in rels if _file(r) not in _files(found)}
                names = {f"{top}/{abi}/{r}": r for top in TOPS for r in left}
                for member, data in deb_members(deb, set(names), len(_files(left))).items():
                    found[names[member]] = data
        return found

    def _fetch(self, pkg: str, *, required: bool) -> list[Path]:
        assert self.debs is not None
        if pkg not in self.tried:
            self.tried.append(pkg)
            spec = self.kernel.spec
            pin = f"={spec.version}" if spec.version else ""
            opts = ["-o", "Acquire::Retries=3"]
            if not spec.check_valid_until:
                opts += ["-o", "Acquire::Check-Valid-Until=false"]
            inside = "/" + str(self.debs.relative_to(self.kernel.chroot))
            argv = in_root(self.kernel.chroot, ["apt-get", *opts, "download", f"{pkg}{pin}"],
                           cwd=inside)  # fmt: skip
            try:
                run_step(argv, log=self.log, what=f"download {pkg}{pin}")
            except InfraError:
                if required:
                    raise
            self.fetched += sorted(self.debs.glob(f"{pkg}_*.deb"))
        return [deb for deb in self.fetched if deb.name.startswith(f"{pkg}_")]


@contextlib.contextmanager
def kernel_modules(kernel: KernelArtifacts, log: Path) -> Iterator[ModulesReader]:
    """The modules directory of a Debian kernel (see the module's docstring)."""
    spec, root = kernel.spec, kernel.chroot
    have = installed_version(root, f"linux-image-{spec.abi}")
    if have is not None and (not spec.version or have == spec.version):
        for top in TOPS:
            if (root / top / spec.abi).is_dir():
                yield ModulesReader(kernel, log, installed=root / top / spec.abi)
                return
    (root / "var/tmp").mkdir(parents=True, exist_ok=True)
    # a folder of this reader's own: another worker may be reading the same kernel's packages
    debs = Path(tempfile.mkdtemp(prefix="rig-module-debs.", dir=root / "var/tmp"))
    try:
        yield ModulesReader(kernel, log, debs=debs)
    finally:
        shutil.rmtree(debs, ignore_errors=True)
