"""A kernel module's sources and its build against one kernel (the driver, or a fixture).

`module_sources` is the one definition of what a module tree is made of: the cache key
(`tree_digest`), the host build's copy (`copy_sources`) and the full-VM guest's tarball
(`source_tarball`) all take exactly those files.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from rig.artifacts.built import KBUILD_MNT, KSRC_MNT
from rig.artifacts.cache import Cache, Progress, digest
from rig.artifacts.steps import (
    BUILD_DIR,
    SETPRIV,
    copy_product,
    hand_to_build_user,
    sandboxed,
)
from rig.errors import InfraError, UsageError
from rig.model import KernelArtifacts, ModuleBuild

MODNAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,55}$")
_PRODUCTS = {".o", ".ko", ".mod", ".cmd", ".symvers", ".order", ".a"}
_NOT_BUILD_INPUT = {".md"}  # documentation: a README edit does not change what is built


def module_sources(root: Path) -> list[Path]:
    """The files of a module tree that go into its build, relative to `root`, sorted: no
    build products, no dot-files or dot-directories."""
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if (
            path.suffix in _PRODUCTS
            or ".mod." in rel.name
            or rel.name == "Module.symvers"
            or any(part.startswith(".") for part in rel.parts)
        ):
            continue
        files.append(rel)
    return files


def tree_digest(root: Path) -> str:
    """Hash of a module tree's sources (paths and contents) minus its documentation."""
    h = hashlib.sha256()
    for rel in module_sources(root):
        if rel.suffix in _NOT_BUILD_INPUT:
            continue
        h.update(str(rel).encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def copy_sources(root: Path, dest: Path) -> None:
    for rel in module_sources(root):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)


def source_tarball(root: Path) -> bytes:
    """The module's sources as an uncompressed tar (owner root), for a guest that builds it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in module_sources(root):
            info = tar.gettarinfo(str(root / rel), arcname=str(rel))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with (root / rel).open("rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def module_name(src: Path) -> str:
    """The module a tree builds: `obj-m := NAME.o` in its Kbuild (or Makefile)."""
    for fname in ("Kbuild", "Makefile"):
        f = src / fname
        if f.exists():
            m = re.search(r"^\s*obj-m\s*[:+]?=\s*([a-z][a-z0-9_]*)\.o", f.read_text(), re.M)
            if m:
                name = m.group(1)
                if MODNAME_RE.match(name):
                    return name
    raise UsageError(
        f"{src}: cannot find `obj-m := NAME.o` in Kbuild or Makefile",
        fix="declare the module in a Kbuild file",
    )


def build_module(
    cache: Cache, kernel: KernelArtifacts, src: Path, progress: Progress
) -> ModuleBuild:
    """Build module tree `src` against `kernel`. A compile error is a result, not a raise."""
    if not (src / "Makefile").exists() and not (src / "Kbuild").exists():
        raise UsageError(
            f"{src} is not a kernel module tree (no Makefile or Kbuild)",
            fix="pass --driver DIR pointing at the driver sources",
        )
    name = module_name(src)
    # The chroot enters the key by its directory name alone (which names the kernel's pinned
    # packages), not by its contents. That is sound because nothing but the rig's own steps
    # writes a chroot: module builds see it read-only (`sandboxed`), so no build can change
    # the compiler or headers a later build of another tree uses.
    mine = (kernel.key,) if kernel.key else ()  # a kernel you built: what went into it
    key = digest("module", kernel.spec.abi, *mine, kernel.chroot.parent.name, tree_digest(src))
    with cache.building("modules", f"{name}-{kernel.spec.name}-{key}") as (final, tmp):
        if tmp is not None:
            _build_module(kernel, src, name, tmp, progress)
    meta = json.loads((final / "result.json").read_text())
    ko = final / f"{name}.ko"
    return ModuleBuild(
        name=name,
        ok=bool(meta["ok"]),
        log=(final / "build.log").read_text(errors="replace"),
        ko=ko if ko.exists() else None,
        warnings=int(meta["warnings"]),
    )


BUILD_TIMEOUT_S = 600


def _make(kernel: KernelArtifacts) -> list[str]:
    """The make command line: against the chroot's headers, or the kernel you built (its
    sources and build directory, seen read-only at KSRC_MNT and KBUILD_MNT)."""
    if kernel.kbuild is None:
        return ["make", "-C", str(kernel.headers), f"M={BUILD_DIR}"]
    if kernel.ksrc is None or kernel.ksrc == kernel.kbuild:
        return ["make", "-C", KBUILD_MNT, f"M={BUILD_DIR}", "modules"]
    return ["make", "-C", KSRC_MNT, f"O={KBUILD_MNT}", f"M={BUILD_DIR}", "modules"]


def _kernel_binds(kernel: KernelArtifacts) -> list[tuple[Path, str]]:
    if kernel.kbuild is None:
        return []
    binds = [(kernel.kbuild, KBUILD_MNT)]
    if kernel.ksrc is not None and kernel.ksrc != kernel.kbuild:
        binds.append((kernel.ksrc, KSRC_MNT))
    return binds


def _build_module(
    kernel: KernelArtifacts, src: Path, name: str, out: Path, progress: Progress
) -> None:
    """Build in the sandbox, in `out`/build (out is the entry's temporary directory in the
    cache, outside the chroot: a killed build's leftovers go with it); keep the .ko, the log
    and result.json."""
    progress(f"module {name}: building against {kernel.release or kernel.spec.abi} ...")
    if not (kernel.chroot / SETPRIV.lstrip("/")).exists():
        raise InfraError(
            f"the toolchain chroot {kernel.chroot} has no {SETPRIV} (util-linux)",
            fix="delete the kernel's cache entry (rig images prune) so that it is built again",
        )
    build_dir = out / "build"
    build_dir.mkdir()
    try:
        copy_sources(src, build_dir)
        hand_to_build_user(build_dir)
        argv = sandboxed(kernel.chroot, _make(kernel), build_dir, ro_binds=_kernel_binds(kernel))
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, errors="replace",
                timeout=BUILD_TIMEOUT_S, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:  # killed with its sandbox; nothing cached
            raise InfraError(f"module {name}: the build ran past {BUILD_TIMEOUT_S} s") from exc
        log = proc.stdout + proc.stderr
        warnings = sum(1 for line in log.splitlines() if "warning:" in line.lower())
        ok = proc.returncode == 0 and copy_product(build_dir / f"{name}.ko", out / f"{name}.ko")
        (out / "build.log").write_text(log)
        (out / "result.json").write_text(
            json.dumps({"ok": ok, "warnings": warnings, "rc": proc.returncode})
        )
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
