"""Artifact stage: kernels, toolchain chroots, driver builds, initramfs and boot ISOs.

Everything expensive is built once and cached under the cache root, keyed by a hash of what
went into it (recipe version, package versions, driver sources). Builds happen in a temporary
directory next to the final one and are renamed into place, under a file lock per key, so
several pytest-xdist workers asking for the same artifact at once build it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from filelock import FileLock, Timeout

from rig.debian import apt_sources
from rig.errors import InfraError, ToolMissing, UsageError
from rig.model import GuestImage, KernelArtifacts, KernelSpec, ModuleBuild

RECIPE_VERSION = "1"
"""Bump when a recipe below changes in a way that must invalidate cached artifacts."""

REPO_ROOT = Path(__file__).resolve().parent.parent
GUESTS_DIR = REPO_ROOT / "guests"

KERNEL_ARG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,=/-]{0,127}")


def check_kernel_arg(arg: str, what: str = "kernel argument") -> str:
    """A word for the guest kernel's command line: never anything GRUB or a shell interprets."""
    if not KERNEL_ARG_RE.fullmatch(arg):
        raise UsageError(
            f"{what} {arg!r} is not a plain word",
            fix="use letters, digits and _ . , = / - only, e.g. clearcpuid=vmx",
        )
    return arg


_PARAM_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}=[A-Za-z0-9_.,-]{0,128}$")
_MODNAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,55}$")

HOST_TOOLS: dict[str, tuple[str, str]] = {
    # tool: (Debian package, what for)
    "debootstrap": ("debootstrap", "building a suite's toolchain chroot"),
    "dpkg-deb": ("dpkg", "unpacking kernel packages"),
    "cpio": ("cpio", "packing the initramfs"),
    "unshare": ("util-linux", "isolating builds and emulators"),
    "grub-mkrescue": ("grub-common grub-pc-bin xorriso mtools", "making the Bochs boot ISO"),
    "xorriso": ("xorriso", "making the Bochs boot ISO"),
}
BUSYBOX = Path("/bin/busybox")


def require_tool(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        package, purpose = HOST_TOOLS.get(tool, (tool, "the rig"))
        raise ToolMissing(tool, package, purpose)
    return path


def default_cache_root() -> Path:
    env = os.environ.get("RIG_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmlaunch-rig"


def digest(*parts: object) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([RECIPE_VERSION, *parts], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def tree_digest(root: Path) -> str:
    """Hash of a source tree's files (paths and contents), ignoring build products and the
    documentation (`*.md`): a README edit does not change what the build makes."""
    h = hashlib.sha256()
    skip_suffixes = {".o", ".ko", ".mod", ".cmd", ".symvers", ".order", ".a", ".md"}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if path.suffix in skip_suffixes or rel.name.startswith(".") or ".mod." in rel.name:
            continue
        h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


Progress = Callable[[str], None]


def stderr_progress(msg: str) -> None:
    print(f"[rig artifacts] {msg}", file=sys.stderr, flush=True)


EMBED_KIND = "libvirt-embed"  # the embedded libvirt roots live in the cache too


def slot_in_use(root: Path) -> bool:
    """An embedded libvirt root whose slot lock a live libvirt child holds."""
    lock = root / "rig.lock"
    if not lock.exists():
        return False
    with lock.open("r") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


@dataclass
class Prune:
    removed: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # in use by a live run or build: kept
    kept: list[str] = field(default_factory=list)  # still named by the matrix (--unused)


@dataclass(frozen=True)
class Cache:
    """A content-addressed directory store with per-key locks."""

    root: Path

    def slot(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    @contextlib.contextmanager
    def building(self, kind: str, key: str) -> Iterator[tuple[Path, Path | None]]:
        """Yield (final_path, tmp_dir). tmp_dir is None when final_path already exists.

        The caller fills tmp_dir; on normal exit it is renamed to final_path atomically.
        """
        final = self.slot(kind, key)
        if final.exists():
            yield final, None
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):
            if final.exists():
                yield final, None
                return
            # We hold the key's lock: any temp dir of this key is a killed build's leftover.
            for stale in final.parent.glob(f".{key}.*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
            try:
                yield final, tmp
                tmp.rename(final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise

    @contextlib.contextmanager
    def held(self, kind: str, key: str) -> Iterator[bool]:
        """Try to take an entry's build lock without waiting: True when nobody holds it."""
        lock = FileLock(str(self.slot(kind, key)) + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def prune(self, keep: Callable[[str, str], bool] = lambda _k, _n: False) -> Prune:
        """Delete entries (and killed builds' temp dirs) that nobody is using, except `keep`.

        An entry whose build lock is held is being built: left alone. An embedded libvirt
        root (kind `libvirt-embed`) is left alone while its slot lock is held (a live run).
        """
        result = Prune()
        if not self.root.exists():
            return result
        for kind_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for entry in sorted(p for p in kind_dir.iterdir() if p.is_dir()):
                name = entry.name
                if name.startswith("."):  # `.KEY.XXXX`: a build's temp dir
                    key = name[1:].rsplit(".", 1)[0]
                    with self.held(kind_dir.name, key) as free:
                        if free:
                            shutil.rmtree(entry, ignore_errors=True)
                            result.removed.append(f"{kind_dir.name}/{name}")
                    continue
                if keep(kind_dir.name, name):
                    result.kept.append(f"{kind_dir.name}/{name}")
                    continue
                if kind_dir.name == EMBED_KIND and slot_in_use(entry):
                    result.busy.append(f"{kind_dir.name}/{name}")
                    continue
                with self.held(kind_dir.name, name) as free:
                    if not free:
                        result.busy.append(f"{kind_dir.name}/{name}")
                        continue
                    shutil.rmtree(entry)
                    result.removed.append(f"{kind_dir.name}/{name}")
        return result

    def entries(self) -> list[tuple[str, str, int]]:
        out: list[tuple[str, str, int]] = []
        if not self.root.exists():
            return out
        for kind_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for entry in sorted(kind_dir.iterdir()):
                if entry.is_dir() and not entry.name.startswith("."):
                    size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
                    out.append((kind_dir.name, entry.name, size))
        return out


def _run(argv: Sequence[str], *, log: Path, what: str, timeout: float = 1800) -> None:
    """Run a build step, appending its output to `log`; raise InfraError with the tail."""
    with log.open("ab") as fh:
        fh.write(f"$ {' '.join(argv)}\n".encode())
        fh.flush()
        try:
            proc = subprocess.run(
                list(argv), stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise InfraError(f"{what}: timed out after {timeout:.0f} s", where=str(log)) from exc
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise InfraError(
            f"{what} failed (exit {proc.returncode}); last lines:\n{tail}",
            where=str(log),
            fix="check network access to the Debian mirror and the package names in matrix.yaml",
        )


def _in_root(
    root: Path, argv: Sequence[str], env: dict[str, str] | None = None, cwd: str = "/"
) -> list[str]:
    """argv run chrooted in `root` with its own /proc (objtool of 7.x reads /proc)."""
    envv = [f"{k}={v}" for k, v in (env or {}).items()]
    return [
        "unshare", "--fork", "--pid", "--kill-child", "--mount-proc", f"--root={root}",
        f"--wd={cwd}", "--",
        "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8",
        *envv, *argv,
    ]  # fmt: skip


@dataclass(frozen=True)
class Artifacts:
    cache: Cache
    progress: Progress = stderr_progress

    # ----------------------------------------------------------------- kernel + toolchain
    def kernel(self, spec: KernelSpec) -> KernelArtifacts:
        """A chroot of the kernel's suite with its headers and toolchain, and its vmlinuz."""
        key = digest("kernel", spec.suite, spec.abi, spec.version, spec.mirror, spec.extra_suites)
        with self.cache.building("kernels", f"{spec.name}-{key}") as (final, tmp):
            if tmp is not None:
                self._build_kernel(spec, tmp)
        return KernelArtifacts(
            spec=spec,
            vmlinuz=final / "vmlinuz",
            headers=Path("/usr/src") / f"linux-headers-{spec.abi}",
            chroot=final / "root",
        )

    def _build_kernel(self, spec: KernelSpec, out: Path) -> None:
        for tool in ("debootstrap", "dpkg-deb", "unshare"):
            require_tool(tool)
        log = out / "build.log"
        root = out / "root"
        t0 = time.monotonic()
        self.progress(f"kernel {spec.name}: debootstrap {spec.suite} (about 30 s) ...")
        # In a mount and PID namespace of its own: the mounts it makes inside the chroot (and
        # every process it starts) vanish with it if the build is killed.
        _run(
            ["unshare", "--mount", "--propagation", "private", "--fork", "--pid", "--kill-child",
             "debootstrap", "--variant=minbase", "--include=make,kmod,ca-certificates",
             spec.suite, str(root), spec.mirror],
            log=log, what=f"debootstrap {spec.suite}",
        )  # fmt: skip
        (root / "etc/apt/sources.list").write_text(apt_sources(spec))
        aptopts = ["-o", "Acquire::Retries=3"]
        if not spec.check_valid_until:
            aptopts += ["-o", "Acquire::Check-Valid-Until=false"]
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        self.progress(f"kernel {spec.name}: apt-get install linux-headers-{spec.abi} ...")
        _run(_in_root(root, ["apt-get", *aptopts, "update"], env), log=log, what="apt-get update")
        pin = f"={spec.version}" if spec.version else ""
        _run(
            _in_root(root, ["apt-get", *aptopts, "install", "-y", "--no-install-recommends",
                            f"linux-headers-{spec.abi}{pin}", "binutils"], env),
            log=log, what=f"install linux-headers-{spec.abi}{pin}",
        )  # fmt: skip
        debs = root / "var/tmp/rig-debs"
        debs.mkdir(parents=True)
        # Up to 6.x linux-image-<abi> holds /boot/vmlinuz-<abi>; from 7.x it is a small package
        # that depends on linux-binary-<abi>, which holds /usr/lib/modules/<abi>/vmlinuz.
        for pkg in (f"linux-image-{spec.abi}", f"linux-binary-{spec.abi}"):
            self.progress(f"kernel {spec.name}: download {pkg} ...")
            _run(
                _in_root(root, ["apt-get", *aptopts, "download", f"{pkg}{pin}"],
                         env, cwd="/var/tmp/rig-debs"),
                log=log, what=f"download {pkg}{pin}",
            )  # fmt: skip
            deb = next(iter(sorted(debs.glob(f"{pkg}_*.deb"))), None)
            if deb is None:
                raise InfraError(f"no {pkg} package downloaded", where=str(log))
            found = self._extract_vmlinuz(deb, spec.abi, out / "vmlinuz")
            deb.unlink()
            if found:
                break
        else:
            raise InfraError(
                f"neither linux-image-{spec.abi} nor linux-binary-{spec.abi} holds a vmlinuz",
                where=str(log),
            )
        _run(_in_root(root, ["apt-get", "clean"]), log=log, what="apt-get clean")
        self.progress(f"kernel {spec.name}: ready in {time.monotonic() - t0:.0f} s")

    @staticmethod
    def _extract_vmlinuz(deb: Path, abi: str, dest: Path) -> bool:
        """Copy the kernel image out of a package: False when the package holds none."""
        names = {f"boot/vmlinuz-{abi}", f"usr/lib/modules/{abi}/vmlinuz"}
        with subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(deb)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # it complains of SIGPIPE when we stop reading early
        ) as p:
            assert p.stdout is not None
            with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
                for member in tar:
                    if member.isfile() and member.name.lstrip("./") in names:
                        src = tar.extractfile(member)
                        assert src is not None
                        dest.write_bytes(src.read())
                        break
        return dest.exists()

    # ----------------------------------------------------------------- driver module
    def module(self, kernel: KernelArtifacts, src: Path) -> ModuleBuild:
        """Build module tree `src` against `kernel`. A compile error is a result, not a raise."""
        if not (src / "Makefile").exists() and not (src / "Kbuild").exists():
            raise UsageError(
                f"{src} is not a kernel module tree (no Makefile or Kbuild)",
                fix="pass --driver DIR pointing at the driver sources",
            )
        name = _module_name(src)
        key = digest("module", kernel.spec.abi, kernel.chroot.parent.name, tree_digest(src))
        with self.cache.building("modules", f"{name}-{kernel.spec.name}-{key}") as (final, tmp):
            if tmp is not None:
                self._build_module(kernel, src, name, tmp)
        meta = json.loads((final / "result.json").read_text())
        ko = final / f"{name}.ko"
        return ModuleBuild(
            name=name,
            ok=bool(meta["ok"]),
            log=(final / "build.log").read_text(errors="replace"),
            ko=ko if ko.exists() else None,
            warnings=int(meta["warnings"]),
        )

    def _build_module(self, kernel: KernelArtifacts, src: Path, name: str, out: Path) -> None:
        self.progress(f"module {name}: building against {kernel.spec.abi} ...")
        # Called under the module key's lock: earlier build dirs of this key were killed builds.
        prefix = f"build-{out.name.lstrip('.').split('.')[0]}-"
        for stale in (kernel.chroot / "tmp").glob(prefix + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        build_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=kernel.chroot / "tmp"))
        try:
            shutil.copytree(src, build_dir, dirs_exist_ok=True, ignore=_ignore_build_products)
            inside = "/" + str(build_dir.relative_to(kernel.chroot))
            argv = _in_root(kernel.chroot, ["make", "-C", str(kernel.headers), f"M={inside}"])
            proc = subprocess.run(
                argv, capture_output=True, text=True, errors="replace", timeout=600, check=False
            )
            log = proc.stdout + proc.stderr
            warnings = sum(1 for line in log.splitlines() if "warning:" in line.lower())
            ok = proc.returncode == 0 and (build_dir / f"{name}.ko").exists()
            if ok:
                shutil.copy2(build_dir / f"{name}.ko", out / f"{name}.ko")
            (out / "build.log").write_text(log)
            (out / "result.json").write_text(
                json.dumps({"ok": ok, "warnings": warnings, "rc": proc.returncode})
            )
        finally:
            shutil.rmtree(build_dir, ignore_errors=True)

    # ----------------------------------------------------------------- guest images
    def initramfs_image(
        self,
        kernel: KernelArtifacts,
        modules: Sequence[tuple[Path, int, Sequence[str]]],
        *,
        run_id: str,
        cell_id: str,
        workdir: Path,
        want_iso: bool,
        preload: Sequence[Path] = (),
        kernel_args: Sequence[str] = (),
        feature_control: int | None = None,
    ) -> GuestImage:
        """The busybox appliance: loads each (ko, repeat, params) in turn, dumps dmesg.

        `preload` modules are loaded first and stay loaded (e.g. one that takes VMX, to prove
        the driver's refusal); `kernel_args` are appended to the guest's command line;
        `feature_control` is written to IA32_FEATURE_CONTROL by the boot loader (ISO only).
        """
        if feature_control is not None and not want_iso:
            raise UsageError("feature_control is written by GRUB: only ISO-booted guests")
        require_tool("cpio")
        if not BUSYBOX.exists():
            raise ToolMissing("busybox", "busybox-static", "the initramfs guest")
        root = workdir / "initramfs"
        (root / "bin").mkdir(parents=True)
        for d in ("proc", "sys", "dev", "rig/modules"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, root / "bin/busybox")
        shutil.copy2(GUESTS_DIR / "initramfs/init", root / "init")
        (root / "init").chmod(0o755)
        shutil.copy2(GUESTS_DIR / "agent/rig-agent", root / "rig/rig-agent")
        (root / "rig/run-id").write_text(run_id + "\n")
        (root / "rig/cell-id").write_text(cell_id + "\n")
        for arg in kernel_args:
            check_kernel_arg(arg)
        plan = []
        for ko in preload:
            shutil.copy2(ko, root / "rig/modules" / ko.name)
            plan.append(f"{ko.name} keep")
        for ko, repeat, params in modules:
            for p in params:
                if not _PARAM_RE.match(p):
                    raise UsageError(
                        f"module parameter {p!r} is not of the form name=value "
                        "(letters, digits, _ . , - only)"
                    )
            shutil.copy2(ko, root / "rig/modules" / ko.name)
            plan.append(" ".join([ko.name, str(int(repeat)), *params]))
        (root / "rig/plan").write_text("\n".join(plan) + "\n")
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        cpio = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
            input="\n".join([".", *files]).encode(),
            cwd=root,
            capture_output=True,
            check=True,
        )
        initrd = workdir / "initrd.gz"
        initrd.write_bytes(gzip.compress(cpio.stdout, compresslevel=1))
        shutil.rmtree(root)
        cmdline = (
            "console=ttyS0,115200 quiet loglevel=4 panic=-1 oops=panic "
            "modprobe.blacklist=kvm_intel,kvm kvm.enable_virt_at_load=0"
        )
        if kernel_args:
            cmdline += " " + " ".join(kernel_args)
        image = GuestImage(
            kernel=kernel.vmlinuz, initrd=initrd, cmdline=cmdline, feature_control=feature_control
        )
        if want_iso:
            image = replace(image, iso=self.boot_iso(image, workdir))
        return image

    @staticmethod
    def boot_iso(image: GuestImage, workdir: Path) -> Path:
        """El Torito ISO with GRUB booting the kernel + initrd on the serial console."""
        require_tool("grub-mkrescue")
        require_tool("xorriso")
        tree = workdir / "iso"
        (tree / "boot/grub").mkdir(parents=True)
        shutil.copy2(image.kernel, tree / "boot/vmlinuz")
        shutil.copy2(image.initrd, tree / "boot/initrd.gz")
        (tree / "boot/grub/grub.cfg").write_text(grub_config(image))
        iso = workdir / "boot.iso"
        proc = subprocess.run(
            ["grub-mkrescue", "-o", str(iso), str(tree)],
            capture_output=True,
            text=True,
            check=False,
        )
        shutil.rmtree(tree)
        if proc.returncode != 0 or not iso.exists():
            raise InfraError(
                f"grub-mkrescue failed: {proc.stderr.strip()[-500:]}",
                fix="apt-get install grub-pc-bin grub-common xorriso mtools",
            )
        return iso


def grub_config(image: GuestImage) -> str:
    """grub.cfg of the boot ISO: optionally the firmware's IA32_FEATURE_CONTROL, then Linux."""
    if not re.fullmatch(r"[A-Za-z0-9_.,=/ -]*", image.cmdline):
        raise UsageError(
            f"kernel command line has characters GRUB would interpret: {image.cmdline!r}"
        )
    firmware = ""
    if image.feature_control is not None:
        if not 0 <= image.feature_control <= 0xFFFFFFFF:
            raise UsageError(f"IA32_FEATURE_CONTROL value {image.feature_control:#x} too big")
        # What a firmware does before any OS: set (and maybe lock) the MSR.
        firmware = f"  insmod wrmsr\n  wrmsr 0x3a {image.feature_control:#x}\n"
    return (
        "set timeout=0\nset default=0\n"
        "menuentry rig {\n"
        f"{firmware}"
        f"  linux /boot/vmlinuz {image.cmdline}\n"
        "  initrd /boot/initrd.gz\n}\n"
    )


def _ignore_build_products(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n.endswith((".o", ".ko", ".cmd", ".mod", ".mod.c", ".order"))
            or n in {"Module.symvers", ".tmp_versions"}]  # fmt: skip


def _module_name(src: Path) -> str:
    """The module a tree builds: `obj-m := NAME.o` in its Kbuild (or Makefile)."""
    for fname in ("Kbuild", "Makefile"):
        f = src / fname
        if f.exists():
            m = re.search(r"^\s*obj-m\s*[:+]?=\s*([a-z][a-z0-9_]*)\.o", f.read_text(), re.M)
            if m:
                name = m.group(1)
                if _MODNAME_RE.match(name):
                    return name
    raise UsageError(
        f"{src}: cannot find `obj-m := NAME.o` in Kbuild or Makefile",
        fix="declare the module in a Kbuild file",
    )
