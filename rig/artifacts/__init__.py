"""Artifact stage: kernels (toolchain chroot, headers, vmlinuz) and module builds, cached.

Artifacts(cache).kernel(spec) -> KernelArtifacts   a Debian package (kernel.py), a build
                                                  directory (built.py), a tree (kbuild.py)
Artifacts(cache).module(kernel, src) -> ModuleBuild
Artifacts(cache).kvm_modules(kernel) -> Path  (irqbypass.ko, kvm.ko, kvm-intel.ko)
Artifacts(cache).witness() -> Path           (the static kvm-witness program)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rig.artifacts.built import built_kernel
from rig.artifacts.cache import (
    EMBED_KIND,
    Cache,
    Progress,
    Prune,
    default_cache_root,
    digest,
    file_digest,
    slot_in_use,
    stderr_progress,
)
from rig.artifacts.kbuild import tree_kernel
from rig.artifacts.kernel import kernel_artifacts
from rig.artifacts.kmods import installed_version, kernel_modules
from rig.artifacts.kvm import KVM_MODULES, kvm_modules, witness_program
from rig.artifacts.module import (
    build_module,
    module_name,
    module_sources,
    source_tarball,
    tree_digest,
)
from rig.artifacts.steps import (
    HOST_FILES,
    HOST_TOOLS,
    in_root,
    ldd_paths,
    require_file,
    require_tool,
    run_step,
    with_libraries,
    write_cpio,
)
from rig.model import KernelArtifacts, KernelSpec, ModuleBuild


@dataclass(frozen=True)
class Artifacts:
    cache: Cache
    progress: Progress = stderr_progress

    def kernel(self, spec: KernelSpec) -> KernelArtifacts:
        """Any kind of kernel: a Debian package, a build directory, a tree at a commit."""
        if spec.kind == "build":
            return built_kernel(self.cache, spec, self.progress)
        if spec.kind == "tree":
            base: str | None = None
            if spec.config_from is not None:
                debian = self.kernel(spec.config_from)
                base = (debian.chroot / debian.headers.relative_to("/") / ".config").read_text()
            elif spec.config and spec.config != "minimal":
                base = Path(spec.config).read_text()
            return tree_kernel(self.cache, spec, base, self.progress)
        return kernel_artifacts(self.cache, spec, self.progress)

    def module(self, kernel: KernelArtifacts, src: Path) -> ModuleBuild:
        return build_module(self.cache, kernel, src, self.progress)

    def kvm_modules(self, kernel: KernelArtifacts) -> Path:
        return kvm_modules(self.cache, kernel, self.progress)

    def witness(self) -> Path:
        return witness_program(self.cache, self.progress)


__all__ = [
    "EMBED_KIND",
    "HOST_FILES",
    "HOST_TOOLS",
    "KVM_MODULES",
    "Artifacts",
    "Cache",
    "Progress",
    "Prune",
    "default_cache_root",
    "digest",
    "file_digest",
    "in_root",
    "installed_version",
    "kernel_modules",
    "ldd_paths",
    "module_name",
    "module_sources",
    "require_file",
    "require_tool",
    "run_step",
    "slot_in_use",
    "source_tarball",
    "stderr_progress",
    "tree_digest",
    "with_libraries",
    "write_cpio",
]
