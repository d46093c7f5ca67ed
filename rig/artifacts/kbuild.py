"""Kernels the rig builds from a git tree at one commit ({tree: DIR, ref: REF, config: ...}).

    tree_kernel(cache, spec, base_config, progress) -> KernelArtifacts
    resolve_ref(tree, ref) -> str             a full commit SHA, read-only in your repository
    merge_config(base, fragment) -> str       the fragment's symbols replace the base's
    missing_from(config, fragment) -> list    fragment lines the final .config does not hold

Built for bisection (../shared/notes/bisection.md, "Fast minimal kernel builds"):
- Your repository is only read: the sources are checked out in a clone of the rig's own
  (`git clone --shared`, under the cache), so your HEAD, index, refs and bisect state stay.
- Out of tree: one O= directory per (tree, config, toolchain), reused from step to step, so a
  step rebuilds what changed; ccache with a fixed build identity (KBUILD_BUILD_TIMESTAMP,
  USER, HOST, VERSION) hits across steps and directories.
- The config is restored every step (the base: `tinyconfig` for minimal, your file, or a
  Debian kernel's), the fragment guests/kernel/rig.config merged over it (KVM as modules,
  never built in; the serial console; the tracing the page witness uses; LZ4), then
  `olddefconfig`; a step whose .config cannot hold the fragment is unbuildable.
- The build runs in the sandbox module builds use (rig/artifacts/steps.py `sandboxed`): as
  nobody, no network, the sources read-only. The result (image, KVM modules, the headers a
  module build reads, the log, the times) is cached by what went into it: the commit's tree,
  the patch, the config, the fragment and the toolchain; a failed build is cached too, so a
  resumed bisection never builds a commit twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from filelock import FileLock

from rig.artifacts.built import BZIMAGE, RELEASE, copy_kvm, export_headers
from rig.artifacts.cache import Cache, Progress, digest
from rig.artifacts.steps import BUILD_DIR, hand_to_build_user, require_tool, sandboxed
from rig.artifacts.toolchain import toolchain
from rig.errors import InfraError, KernelUnbuildable, UsageError
from rig.model import KernelArtifacts, KernelSpec
from rig.paths import GUESTS_DIR

FRAGMENT = GUESTS_DIR / "kernel/rig.config"
# A Debian config also needs: no trusted keys of Debian's build machines, no signing
DEBIAN_EXTRA = 'CONFIG_SYSTEM_TRUSTED_KEYS=""\nCONFIG_SYSTEM_REVOCATION_KEYS=""\n'
SRC_MNT, CCACHE_MNT = "/tmp/src", "/tmp/ccache"
OBJ_MNT = BUILD_DIR  # the O= directory is the sandbox's writable build directory
BUILD_TIMEOUT_S = 3 * 3600
IDENTITY = (
    ("KBUILD_BUILD_TIMESTAMP", "@0"), ("KBUILD_BUILD_USER", "rig"),
    ("KBUILD_BUILD_HOST", "rig"), ("KBUILD_BUILD_VERSION", "1"),
    ("CCACHE_DIR", CCACHE_MNT), ("CCACHE_NOHASHDIR", "true"), ("CCACHE_BASEDIR", "/tmp"),
    ("CCACHE_MAXSIZE", "5G"),
)  # fmt: skip
_SYM_RE = re.compile(r"^(?:# )?(CONFIG_[A-Za-z0-9_]+)(?:=| is not set)")


def git(tree: Path, *args: str) -> str:
    """A read-only git command in `tree` (stdout); UsageError when it fails."""
    proc = subprocess.run(
        ["git", "-C", str(tree), *args], capture_output=True, text=True, check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
             "GIT_TERMINAL_PROMPT": "0", "HOME": "/nonexistent"},
    )  # fmt: skip
    if proc.returncode != 0:
        raise UsageError(
            f"git {' '.join(args)}: {proc.stderr.strip()[-300:]}",
            where=str(tree),
            fix="pass a kernel git tree and a commit, tag or branch in it",
        )
    return proc.stdout.strip()


def resolve_ref(tree: Path, ref: str) -> str:
    """`ref` as a full commit SHA, by `git rev-parse` in your tree (which it only reads)."""
    if not tree.is_dir():
        raise UsageError(f"{tree} is not a kernel git tree", fix="pass --kernel-tree DIR")
    return git(tree, "rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}")


def merge_config(base: str, fragment: str) -> str:
    """`base` with every symbol the fragment names taken from the fragment."""
    frag = [ln for ln in fragment.splitlines() if _SYM_RE.match(ln)]
    named = {m[1] for ln in frag if (m := _SYM_RE.match(ln))}
    kept = [ln for ln in base.splitlines() if not ((m := _SYM_RE.match(ln)) and m[1] in named)]
    return "\n".join([*kept, *frag]) + "\n"


def missing_from(config: str, fragment: str) -> list[str]:
    """The fragment's lines that `config` (after olddefconfig) does not hold."""
    have: dict[str, str] = {}
    for ln in config.splitlines():
        if m := _SYM_RE.match(ln):
            have[m[1]] = ln
    out = []
    for ln in fragment.splitlines():
        if not (m := _SYM_RE.match(ln)):
            continue
        got = have.get(m[1], f"# {m[1]} is not set")
        if got != ln:
            out.append(f"{ln} (got: {got})")
    return out


def _sha_file(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_kernel(
    cache: Cache, spec: KernelSpec, base_config: str | None, progress: Progress
) -> KernelArtifacts:
    """The kernel of `spec.tree` at `spec.ref`, built (or found in the cache). base_config:
    the base .config text (None: x86_64 tinyconfig). KernelUnbuildable when it cannot be."""
    require_tool("git")
    tree = Path(spec.tree)
    sha = resolve_ref(tree, spec.ref)
    tree_id = git(tree, "rev-parse", f"{sha}^{{tree}}")
    patch = Path(spec.patch).read_bytes() if spec.patch else b""
    fragment = FRAGMENT.read_text()
    root = toolchain(cache, spec.suite, spec.mirror, progress)
    key = digest("tree-kernel", tree_id, _sha_file(patch), _sha_file((base_config or "").encode()),
                 fragment, root.parent.name)  # fmt: skip
    # keyed by content alone: a bisection's clone and your tree share the build of a commit
    with cache.building("treekernels", key) as (final, tmp):
        if tmp is not None:
            _build(cache, tree, sha, patch, base_config, fragment, root, tmp, progress)
    meta = json.loads((final / "result.json").read_text())
    if not meta["ok"]:
        raise KernelUnbuildable(
            f"kernel {spec.name} at {sha[:12]}: {meta['reason']}", where=str(final / "build.log")
        )
    kvm = final / "kvm"
    return KernelArtifacts(
        spec=spec, vmlinuz=final / "vmlinuz", headers=final / "hdr/obj", chroot=root,
        kbuild=final / "hdr/obj", ksrc=final / "hdr/src", release=meta["release"],
        kvm_dir=kvm if kvm.is_dir() else None, key=key,
    )  # fmt: skip


def build_facts(kernel: KernelArtifacts) -> dict[str, object]:
    """What the build of a tree kernel recorded: commit, image digest, times (or {})."""
    if kernel.spec.kind != "tree" or kernel.kbuild is None:
        return {}
    meta = kernel.kbuild.parent.parent / "result.json"
    return dict(json.loads(meta.read_text())) if meta.is_file() else {}


def work_dirs(cache: Cache, tree: Path, base: str | None, root: Path) -> tuple[Path, Path]:
    """The rig's checkout of `tree` and the O= directory its kernels with this base config
    and toolchain are built in (reused from build to build)."""
    where = digest("tree-obj", str(tree.resolve()), _sha_file((base or "").encode()), root.name,
                   root.parent.name)  # fmt: skip
    return cache.slot("ktrees", where), cache.slot("kobj", where)


def _build(
    cache: Cache, tree: Path, sha: str, patch: bytes, base: str | None, fragment: str,
    root: Path, out: Path, progress: Progress,
) -> None:  # fmt: skip
    log = out / "build.log"
    t0 = time.monotonic()
    # one checkout and O= directory per (tree, base config, toolchain), locked while used
    checkout, obj = work_dirs(cache, tree, base, root)
    ccache = cache.slot("ccache", root.parent.name)  # one per toolchain: paths do not matter
    for d in (checkout, obj, ccache):
        d.parent.mkdir(parents=True, exist_ok=True)
    # the locks `rig images prune` asks for: nothing in use is pruned (one build at a time
    # per toolchain: the machines this runs on have few cores)
    with FileLock(str(checkout) + ".lock"), FileLock(str(obj) + ".lock"), \
            FileLock(str(ccache) + ".lock"):  # fmt: skip
        meta: dict[str, object] = {"commit": sha, "ok": False}
        reason = _checkout(tree, checkout, sha, patch, log)
        for d in (obj, ccache):
            if not d.is_dir():
                d.mkdir(parents=True)
                hand_to_build_user(d)
        if reason is None:
            progress(f"kernel build {sha[:12]}: config ...")
            reason = _configure(root, checkout, obj, ccache, base, fragment, log)
        t_build = time.monotonic()
        if reason is None:
            progress(f"kernel build {sha[:12]}: make bzImage modules (cold: minutes) ...")
            jobs = f"-j{os.cpu_count() or 1}"
            rc = _make(root, checkout, obj, ccache, log,
                       [jobs, "CC=ccache gcc", "bzImage", "modules"])  # fmt: skip
            reason = None if rc == 0 else f"the kernel did not build (make exit {rc})"
        meta["build_s"] = round(time.monotonic() - t_build, 1)
        if reason is None:
            image = (obj / BZIMAGE).read_bytes()
            shutil.copyfile(obj / BZIMAGE, out / "vmlinuz")
            if not copy_kvm(obj, out / "kvm"):
                shutil.rmtree(out / "kvm")
            export_headers(checkout, obj, out / "hdr")
            meta |= {"ok": True, "release": (obj / RELEASE).read_text().strip(),
                     "image_digest": _sha_file(image)}  # fmt: skip
        else:
            meta["reason"] = reason
        meta["total_s"] = round(time.monotonic() - t0, 1)
        (out / "result.json").write_text(json.dumps(meta, indent=1))
        progress(f"kernel build {sha[:12]}: {'ok' if reason is None else reason} "
                 f"in {meta['total_s']} s")  # fmt: skip


def remove_stale_git_locks(gitdir: Path) -> list[str]:
    """Remove the lock files a killed git left in `gitdir` (index.lock, HEAD.lock, a ref's
    lock): only for a caller whose own lock proves that no live git of the rig's uses that
    repository. The paths removed, relative to `gitdir`."""
    stale = [gitdir / "index.lock", gitdir / "HEAD.lock", *gitdir.glob("refs/**/*.lock")]
    removed = []
    for lock in stale:
        if lock.is_file() and not lock.is_symlink():
            lock.unlink()
            removed.append(str(lock.relative_to(gitdir)))
    return removed


def _checkout(tree: Path, checkout: Path, sha: str, patch: bytes, log: Path) -> str | None:
    """Detach the rig's clone at `sha`, clean, with the patch applied; the reason when the
    patch does not apply (a fact of the commit). A git that fails is InfraError: nothing is
    cached of it. The caller holds the checkout's lock: a git lock file in it is stale."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": "/nonexistent",
           "GIT_TERMINAL_PROMPT": "0"}  # fmt: skip
    base = ["git", "-c", "core.hooksPath=/dev/null", "-c", "advice.detachedHead=false"]
    steps: list[list[str]] = []
    if not (checkout / ".git").is_dir():
        shutil.rmtree(checkout, ignore_errors=True)
        steps.append([*base, "clone", "--quiet", "--shared", "--no-checkout", str(tree),
                      str(checkout)])  # fmt: skip
    inside = [*base, "-C", str(checkout)]
    steps += [[*inside, "checkout", "--quiet", "--force", "--detach", sha],
              [*inside, "clean", "-ffdxq"]]  # fmt: skip
    with log.open("a") as fh:
        if (checkout / ".git").is_dir():
            for lock in remove_stale_git_locks(checkout / ".git"):
                fh.write(f"removed {lock} that a killed git left in {checkout}\n")
        for argv in steps:
            fh.write(f"$ {' '.join(argv)}\n")
            fh.flush()
            if subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=env,
                              check=False).returncode != 0:  # fmt: skip
                raise InfraError(f"git could not check out {sha[:12]} in {checkout}",
                                 where=str(log))  # fmt: skip
        if patch:
            proc = subprocess.run([*inside, "apply", "--index", "-"], input=patch, stdout=fh,
                                  stderr=subprocess.STDOUT, env=env, check=False)  # fmt: skip
            if proc.returncode != 0:
                return "the patch does not apply to this commit"
    return None


def _configure(
    root: Path, src: Path, obj: Path, ccache: Path, base: str | None, fragment: str, log: Path
) -> str | None:
    """Restore the config (the base, the fragment over it, olddefconfig): a reason when the
    result does not hold the fragment."""
    config = obj / ".config"
    base_given = base is not None
    if base is None:
        if _make(root, src, obj, ccache, log, ["tinyconfig"]) != 0:
            return "make tinyconfig failed"
        base = config.read_text()
    extra = DEBIAN_EXTRA if base_given else ""
    config.write_text(merge_config(base, fragment + extra))
    os.chown(config, 65534, 65534)
    if _make(root, src, obj, ccache, log, ["olddefconfig"]) != 0:
        return "make olddefconfig failed"
    missing = missing_from(config.read_text(), fragment)
    if missing:
        return "its config cannot hold what the guests need: " + "; ".join(missing[:6])
    return None


def _make(root: Path, src: Path, obj: Path, ccache: Path, log: Path, args: list[str]) -> int:
    argv = sandboxed(
        root, ["make", "-s", "-C", SRC_MNT, f"O={OBJ_MNT}", "ARCH=x86_64", *args], obj,
        ro_binds=[(src, SRC_MNT)], rw_binds=[(ccache, CCACHE_MNT)], env=IDENTITY,
    )  # fmt: skip
    with log.open("a") as fh:
        fh.write(f"$ make {' '.join(args)}\n")
        fh.flush()
        try:
            return subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT,
                                  timeout=BUILD_TIMEOUT_S, check=False).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            fh.write(f"rig: make {args[-1]} ran past {BUILD_TIMEOUT_S} s\n")
            return 124
