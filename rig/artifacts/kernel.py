"""A kernel of the matrix: its suite's toolchain chroot (with the kernel's headers) and its
vmlinuz, from the Debian archive, cached by the kernel's package pin."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rig.artifacts.cache import Cache, Progress, digest
from rig.artifacts.steps import in_root, require_tool, run_step
from rig.debian import apt_sources, deb_members, download_debs
from rig.errors import InfraError
from rig.model import KernelArtifacts, KernelSpec


def kernel_artifacts(cache: Cache, spec: KernelSpec, progress: Progress) -> KernelArtifacts:
    """A chroot of the kernel's suite with its headers and toolchain, and its vmlinuz."""
    key = digest("kernel", spec.suite, spec.abi, spec.version, spec.mirror, spec.extra_suites)
    with cache.building("kernels", f"{spec.name}-{key}") as (final, tmp):
        if tmp is not None:
            _build_kernel(spec, tmp, progress)
    return KernelArtifacts(
        spec=spec,
        vmlinuz=final / "vmlinuz",
        headers=Path("/usr/src") / f"linux-headers-{spec.abi}",
        chroot=final / "root",
    )


def _build_kernel(spec: KernelSpec, out: Path, progress: Progress) -> None:
    for tool in ("debootstrap", "dpkg-deb", "unshare"):
        require_tool(tool)
    log = out / "build.log"
    root = out / "root"
    t0 = time.monotonic()
    progress(f"kernel {spec.name}: debootstrap {spec.suite} (about 30 s) ...")
    # In a mount and PID namespace of its own: the mounts it makes inside the chroot (and
    # every process it starts) vanish with it if the build is killed.
    run_step(
        ["unshare", "--mount", "--propagation", "private", "--fork", "--pid", "--kill-child",
         "debootstrap", "--variant=minbase", "--include=make,kmod,ca-certificates",
         spec.suite, str(root), spec.mirror],
        log=log, what=f"debootstrap {spec.suite}",
        inner_log=root / "debootstrap" / "debootstrap.log",
    )  # fmt: skip
    (root / "etc/apt/sources.list").write_text(apt_sources(spec))
    aptopts = ["-o", "Acquire::Retries=3"]
    if not spec.check_valid_until:
        aptopts += ["-o", "Acquire::Check-Valid-Until=false"]
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    progress(f"kernel {spec.name}: apt-get install linux-headers-{spec.abi} ...")
    run_step(in_root(root, ["apt-get", *aptopts, "update"], env), log=log, what="apt-get update")
    if spec.pool:
        _from_pool(spec, root, out, aptopts, env, log)
        run_step(in_root(root, ["apt-get", "clean"]), log=log, what="apt-get clean")
        progress(f"kernel {spec.name}: ready in {time.monotonic() - t0:.0f} s (from the pool)")
        return
    pin = f"={spec.version}" if spec.version else ""
    run_step(
        in_root(root, ["apt-get", *aptopts, "install", "-y", "--no-install-recommends",
                        f"linux-headers-{spec.abi}{pin}", "binutils"], env),
        log=log, what=f"install linux-headers-{spec.abi}{pin}",
    )  # fmt: skip
    debs = root / "var/tmp/rig-debs"
    debs.mkdir(parents=True)
    # Up to 6.x linux-image-<abi> holds /boot/vmlinuz-<abi>; from 7.x it is a small package
    # that depends on linux-binary-<abi>, which holds /usr/lib/modules/<abi>/vmlinuz.
    for pkg in (f"linux-image-{spec.abi}", f"linux-binary-{spec.abi}"):
        progress(f"kernel {spec.name}: download {pkg} ...")
        run_step(
            in_root(root, ["apt-get", *aptopts, "download", f"{pkg}{pin}"],
                     env, cwd="/var/tmp/rig-debs"),
            log=log, what=f"download {pkg}{pin}",
        )  # fmt: skip
        deb = next(iter(sorted(debs.glob(f"{pkg}_*.deb"))), None)
        if deb is None:
            raise InfraError(f"no {pkg} package downloaded", where=str(log))
        found = _extract_vmlinuz(deb, spec.abi, out / "vmlinuz")
        deb.unlink()
        if found:
            break
    else:
        raise InfraError(
            f"neither linux-image-{spec.abi} nor linux-binary-{spec.abi} holds a vmlinuz",
            where=str(log),
        )
    run_step(in_root(root, ["apt-get", "clean"]), log=log, what="apt-get clean")
    progress(f"kernel {spec.name}: ready in {time.monotonic() - t0:.0f} s")


def _extract_vmlinuz(deb: Path, abi: str, dest: Path) -> bool:
    """Copy the kernel image out of a package: False when the package holds none."""
    found = deb_members(deb, {f"boot/vmlinuz-{abi}", f"usr/lib/modules/{abi}/vmlinuz"}, 1)
    for data in found.values():
        dest.write_bytes(data)
    return dest.exists()


def _from_pool(
    spec: KernelSpec, root: Path, out: Path, aptopts: list[str], env: dict[str, str], log: Path
) -> None:
    """A version the index no longer lists: its debs downloaded by URL and installed as files
    (apt brings their dependencies from the index); the vmlinuz from the image or binary."""
    debs = root / "var/tmp/rig-debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    try:
        files = download_debs(spec.pool, debs)
        install = [f for f in files if not f.name.startswith("linux-binary-")]
        run_step(
            in_root(root, ["apt-get", *aptopts, "install", "-y", "--no-install-recommends",
                           *[f"/var/tmp/rig-debs/{f.name}" for f in install], "binutils"], env),
            log=log, what=f"install linux-headers-{spec.abi} {spec.version} from the pool files",
        )  # fmt: skip
        kernels = [f for f in files if f.name.startswith(("linux-image-", "linux-binary-"))]
        if not any(_extract_vmlinuz(f, spec.abi, out / "vmlinuz") for f in kernels):
            raise InfraError(f"no vmlinuz in {', '.join(f.name for f in kernels)}", where=str(log))
    finally:
        shutil.rmtree(debs, ignore_errors=True)
