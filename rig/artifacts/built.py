"""Kernels you built: a build directory ({build: DIR}, `rig run --kernel PATH`), and what a
kernel build leaves that the rest of the rig needs (its image, its KVM modules, the files an
external module is built against).

    built_kernel(cache, spec, progress) -> KernelArtifacts    a build directory you made
    export_headers(src, obj, dest)                           the files a module build reads
    copy_kvm(obj, dest) -> bool                              irqbypass.ko, kvm.ko, kvm-intel.ko

Module builds see the kernel's build directory and sources read-only in their sandbox
(KBUILD_MNT, KSRC_MNT: rig/artifacts/module.py), never a writable path of yours.
"""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

from rig.artifacts.cache import Cache, Progress, digest, file_digest
from rig.artifacts.toolchain import check_compiler, suite_for, toolchain
from rig.errors import UsageError
from rig.model import KernelArtifacts, KernelSpec

BZIMAGE = "arch/x86/boot/bzImage"
RELEASE = "include/config/kernel.release"
KSRC_MNT = "/tmp/ksrc"
KBUILD_MNT = "/tmp/kbuild"
# insmod order, as the build directory holds them
KVM_IN_BUILD: tuple[tuple[str, str], ...] = (
    ("irqbypass.ko", "virt/lib/irqbypass.ko"),
    ("kvm.ko", "arch/x86/kvm/kvm.ko"),
    ("kvm-intel.ko", "arch/x86/kvm/kvm-intel.ko"),
)


def source_of(build: Path) -> Path:
    """The source tree of a build directory: its `source` link (an O= build) or itself."""
    link = build / "source"
    return link.resolve() if link.is_symlink() else build


def check_build_dir(build: Path) -> str:
    """A kernel build directory's release; UsageError naming what is missing."""
    for rel in (BZIMAGE, ".config", "Module.symvers", RELEASE):
        if not (build / rel).is_file():
            raise UsageError(
                f"{build} is not a built kernel: it has no {rel}",
                fix="build it first (make bzImage modules, with O=DIR if you use one) and "
                "pass that directory; Module.symvers comes only from a full `make modules`",
            )
    return (build / RELEASE).read_text().strip()


def copy_kvm(obj: Path, dest: Path) -> bool:
    """The build's KVM modules into `dest` (plain .ko); False when it has not all of them
    (KVM built in, or not at all: the teardown witness then has nothing to load)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, rel in KVM_IN_BUILD:
        src = next((p for p in (obj / rel, obj / f"{rel}.xz") if p.is_file()), None)
        if src is None:
            return False
        data = src.read_bytes()
        (dest / name).write_bytes(lzma.decompress(data) if src.suffix == ".xz" else data)
    return True


def built_kernel(cache: Cache, spec: KernelSpec, progress: Progress) -> KernelArtifacts:
    """A build directory you made: its image and KVM modules copied into the cache (keyed by
    their contents), the directory itself bound read-only into module builds."""
    build = Path(spec.build)
    release = check_build_dir(build)
    config = (build / ".config").read_text(errors="replace")
    suite = spec.suite or suite_for(config)  # none named: the suite of its compiler
    root = toolchain(cache, suite, spec.mirror, progress)
    check_compiler(config, root, suite, str(build / ".config"))
    key = digest(
        "built-kernel", release, file_digest(build / BZIMAGE), digest(config),
        file_digest(build / "Module.symvers"), root.parent.name,
    )  # fmt: skip
    with cache.building("builtkernels", f"{spec.name}-{key}") as (final, tmp):
        if tmp is not None:
            progress(f"kernel {spec.name}: {release} from {build}")
            shutil.copyfile(build / BZIMAGE, tmp / "vmlinuz")
            if not copy_kvm(build, tmp / "kvm"):
                shutil.rmtree(tmp / "kvm")
    kvm = final / "kvm"
    return KernelArtifacts(
        spec=spec, vmlinuz=final / "vmlinuz", headers=Path(KBUILD_MNT), chroot=root,
        kbuild=build, ksrc=source_of(build), release=release,
        kvm_dir=kvm if kvm.is_dir() else None, key=key,
    )  # fmt: skip


# What an external module build reads of the kernel's sources (`make -C SRC O=OBJ M=...`):
# every Makefile, Kbuild and Kconfig file, the scripts and the headers.
_SRC_DIRS = ("include", "scripts", "arch/x86/include", "tools/include")
_SRC_NAMES = ("Makefile", "Kbuild", "Kconfig")
# ... and of its build directory: the config, the symbols, generated headers and the host
# programs (fixdep, modpost, objtool), not the objects.
_OBJ_SKIP_SUFFIX = {".o", ".a", ".cmd", ".ko", ".mod", ".order"}
_OBJ_DIRS = ("include", "scripts", "arch/x86/include", "tools/objtool", "tools/bpf/resolve_btfids")
_OBJ_FILES = (".config", "Makefile", "Module.symvers")


def export_headers(src: Path, obj: Path, dest: Path) -> None:
    """Copy into dest/src and dest/obj what a module build needs of a kernel built from
    `src` in `obj` (the layout of Debian's linux-headers packages, in two trees)."""
    out_src, out_obj = dest / "src", dest / "obj"
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if rel.parts[0] == ".git" or not path.is_file() or path.is_symlink():
            continue
        if path.name.startswith(_SRC_NAMES) or any(str(rel).startswith(d + "/") for d in _SRC_DIRS):
            _copy(path, out_src / rel)
    for rel_name in _OBJ_FILES:
        _copy(obj / rel_name, out_obj / rel_name)
    for d in _OBJ_DIRS:
        for path in (obj / d).rglob("*") if (obj / d).is_dir() else ():
            if path.is_file() and not path.is_symlink() and path.suffix not in _OBJ_SKIP_SUFFIX:
                _copy(path, out_obj / path.relative_to(obj))


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)
