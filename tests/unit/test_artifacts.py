"""Artifact cache and recipes that need no network: keys, locking, module names, initramfs,
the module build sandbox."""

from __future__ import annotations

import gzip
import os
import secrets
import shutil
import socket
import subprocess
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rig.artifacts import HOST_TOOLS, Cache, digest, module_name, tree_digest
from rig.artifacts.steps import (
    BUILD_DIR,
    BUILD_UID,
    SETPRIV,
    copy_product,
    disk_note,
    hand_to_build_user,
    run_step,
    sandboxed,
)
from rig.errors import InfraError, ToolMissing, UsageError
from rig.guest.initramfs import initramfs_image
from rig.lanes.bochs_media import grub_config
from rig.model import GuestImage, KernelArtifacts, KernelSpec


def test_digest_changes_with_every_input() -> None:
    base = digest("kernel", "trixie", "6.12.1", "1")
    assert base == digest("kernel", "trixie", "6.12.1", "1")
    assert base != digest("kernel", "trixie", "6.12.1", "2")
    assert base != digest("kernel", "sid", "6.12.1", "1")


def test_tree_digest_follows_sources_not_build_products(tmp_path: Path) -> None:
    (tmp_path / "a.c").write_text("int x;")
    d1 = tree_digest(tmp_path)
    (tmp_path / "a.o").write_bytes(b"\0obj")
    (tmp_path / "a.ko").write_bytes(b"\0ko")
    (tmp_path / "README.md").write_text("how it works")
    assert tree_digest(tmp_path) == d1
    (tmp_path / "a.c").write_text("int y;")
    assert tree_digest(tmp_path) != d1


def test_cache_builds_once_under_concurrency(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    builds: list[int] = []

    def worker(i: int) -> None:
        with cache.building("kind", "key") as (_final, tmp):
            if tmp is not None:
                builds.append(i)
                (tmp / "payload").write_text(str(i))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert (tmp_path / "kind/key/payload").read_text() == str(builds[0])


def test_a_failed_build_leaves_nothing_half_made(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    with pytest.raises(RuntimeError), cache.building("kind", "key") as (_final, tmp):
        assert tmp is not None
        (tmp / "half").write_text("x")
        raise RuntimeError("boom")
    assert not (tmp_path / "kind/key").exists()
    assert [p.name for p in (tmp_path / "kind").iterdir() if not p.name.endswith(".lock")] == []


def test_a_build_does_not_start_on_a_nearly_full_disk(tmp_path: Path) -> None:
    cache = Cache(tmp_path, min_free=1 << 62)  # more than any disk has free
    with pytest.raises(InfraError) as err, cache.building("toolchains", "trixie-k") as (_f, _t):
        pytest.fail("the build started")
    assert "MiB free on the file system holding the cache" in err.value.what
    assert err.value.where == str(tmp_path)
    assert "rig cache prune" in (err.value.fix or "")
    assert [p.name for p in (tmp_path / "toolchains").iterdir()] == ["trixie-k.lock"]


def test_a_failed_steps_log_outlives_its_temp_dir_with_the_inner_logs_tail(
    tmp_path: Path,
) -> None:
    cache = Cache(tmp_path)
    with pytest.raises(InfraError) as err, cache.building("toolchains", "k") as (_final, tmp):
        assert tmp is not None
        inner = tmp / "root/debootstrap/debootstrap.log"
        inner.parent.mkdir(parents=True)
        inner.write_text("dpkg: error processing archive make.deb: No space left on device\n")
        run_step(["sh", "-c", "echo 'W: Failure while installing base packages'; exit 1"],
                 log=tmp / "build.log", what="debootstrap trixie", inner_log=inner)  # fmt: skip
    kept = tmp_path / "toolchains/k.failed.log"
    assert err.value.where == str(kept)
    assert "Failure while installing base packages" in kept.read_text()
    assert "No space left on device" in str(err.value)  # the inner log's tail, in the message
    assert not list((tmp_path / "toolchains").glob(".k.*"))  # the temp dir is gone
    assert "toolchains/k.failed.log" in cache.prune().removed


def test_a_nearly_full_disk_is_named_and_a_roomy_one_is_not(tmp_path: Path) -> None:
    assert disk_note(tmp_path / "build.log") == ""
    note = disk_note(tmp_path / "build.log", low=1 << 62)
    assert note.startswith(f"the file system holding {tmp_path} has only ")
    assert "a full disk is the likely cause" in note


def test_module_name_from_kbuild(tmp_path: Path) -> None:
    (tmp_path / "Kbuild").write_text("obj-m := vmlaunch.o\nvmlaunch-y := a.o b.o\n")
    assert module_name(tmp_path) == "vmlaunch"
    (tmp_path / "Kbuild").write_text("obj-m := $(shell rm -rf /).o\n")
    with pytest.raises(UsageError):
        module_name(tmp_path)


def _initramfs(
    tmp_path: Path, modules: list[tuple[Path, int, list[str]]], **options: Any
) -> GuestImage:
    """initramfs_image for a stand-in kernel (it never reads the kernel's files)."""
    spec = KernelSpec(name="6.12", suite="trixie", abi="x")
    kernel = KernelArtifacts(spec=spec, vmlinuz=tmp_path / "vmlinuz", headers=tmp_path,
                             chroot=tmp_path)  # fmt: skip
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return initramfs_image(
        kernel, modules, run_id="r1", cell_id="bochs-6.12-haswell", workdir=work, **options,
    )  # fmt: skip


def test_initramfs_holds_init_plan_and_module(tmp_path: Path) -> None:
    if not Path("/bin/busybox").exists():
        pytest.skip("busybox-static not installed")
    ko = tmp_path / "vmlaunch.ko"
    ko.write_bytes(b"\x7fELF fake")
    image = _initramfs(tmp_path, [(ko, 3, ["break_field=none"])])
    archive = gzip.decompress(image.initrd.read_bytes())
    listing = subprocess.run(
        ["cpio", "-it", "--quiet"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    names = set(listing.split())
    assert {"init", "bin/busybox", "rig/plan", "rig/rig-agent", "rig/modules/vmlaunch.ko"} <= names
    assert "modprobe.blacklist=kvm_intel" in image.cmdline


@pytest.mark.parametrize("param", ["a=b;reboot", "x=$(id)", "=1", "p=a b", "P=1"])
def test_module_parameters_are_words_not_shell(tmp_path: Path, param: str) -> None:
    ko = tmp_path / "m.ko"
    ko.write_bytes(b"x")
    with pytest.raises(UsageError):
        _initramfs(tmp_path, [(ko, 1, [param])])


def test_preloaded_fixtures_and_kernel_args_reach_plan_and_cmdline(tmp_path: Path) -> None:
    if not Path("/bin/busybox").exists():
        pytest.skip("busybox-static not installed")
    ko, hog = tmp_path / "vmlaunch.ko", tmp_path / "vmxhog.ko"
    ko.write_bytes(b"\x7fELF fake")
    hog.write_bytes(b"\x7fELF hog")
    image = _initramfs(tmp_path, [(ko, 2, [])], preload=[hog], kernel_args=["clearcpuid=vmx"])
    assert image.cmdline.endswith(" clearcpuid=vmx")
    archive = gzip.decompress(image.initrd.read_bytes())
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], input=archive, cwd=out, check=True)
    assert (out / "rig/plan").read_text().splitlines() == ["vmxhog.ko keep", "vmlaunch.ko 2"]
    assert (out / "rig/modules/vmxhog.ko").read_bytes() == b"\x7fELF hog"


@pytest.mark.parametrize("arg", ["a b", "x;reboot", "$(id)", "init=/bin/sh'", "", "-x", "a\nb"])
def test_kernel_args_are_plain_words(tmp_path: Path, arg: str) -> None:
    ko = tmp_path / "m.ko"
    ko.write_bytes(b"x")
    with pytest.raises(UsageError):
        _initramfs(tmp_path, [(ko, 1, [])], kernel_args=[arg])


def test_grub_writes_feature_control_before_linux_only_when_asked(tmp_path: Path) -> None:
    plain = GuestImage(kernel=tmp_path, initrd=tmp_path, cmdline="console=ttyS0")
    assert "wrmsr" not in grub_config(plain)
    cfg = grub_config(plain, 0x1).splitlines()
    assert cfg.index("  wrmsr 0x3a 0x1") < cfg.index("  linux /boot/vmlinuz console=ttyS0")
    with pytest.raises(UsageError):
        grub_config(plain, 1 << 40)
    with pytest.raises(UsageError):
        grub_config(replace(plain, cmdline="console=ttyS0; reboot"))


def _hold_in_child(lock_path: Path, ready: Path, release: Path) -> subprocess.Popen[bytes]:
    """A separate process holding an flock (as a live build or libvirt child would)."""
    code = (
        "import fcntl,sys,time,pathlib;"
        "fh=open(sys.argv[1],'a');fcntl.flock(fh,fcntl.LOCK_EX);"
        "pathlib.Path(sys.argv[2]).touch();"
        "[time.sleep(0.05) for _ in range(2400) if not pathlib.Path(sys.argv[3]).exists()]"
    )
    import sys

    proc = subprocess.Popen([sys.executable, "-c", code, str(lock_path), str(ready), str(release)])
    for _ in range(1200):  # a loaded machine starts Python slowly
        if ready.exists():
            break
        threading.Event().wait(0.05)
    assert ready.exists(), "the lock holder did not start"
    return proc


def test_prune_never_touches_what_a_live_build_or_run_holds(tmp_path: Path) -> None:
    from filelock import FileLock

    cache = Cache(tmp_path)
    for kind, name in (("kernels", "6.12-aaaa"), ("kernels", "5.4-bbbb"), ("modules", "m-6.12-c")):
        (tmp_path / kind / name).mkdir(parents=True)
    stale = tmp_path / "kernels" / ".6.12-dddd.x1y2"  # a killed build's temp dir
    stale.mkdir()
    live_slot = tmp_path / "libvirt-embed" / "slot-0"
    free_slot = tmp_path / "libvirt-embed" / "slot-1"
    for slot in (live_slot, free_slot):
        slot.mkdir(parents=True)
        (slot / "rig.lock").touch()
    holder = _hold_in_child(live_slot / "rig.lock", tmp_path / "ready", tmp_path / "go")
    try:
        with FileLock(str(tmp_path / "modules" / "m-6.12-c") + ".lock"):  # being built
            # keep what the matrix still names (the --unused rule)
            result = cache.prune(lambda _kind, name: name.startswith("6.12-"))
    finally:
        (tmp_path / "go").touch()
        holder.wait(10)
    assert sorted(result.removed) == [
        "kernels/.6.12-dddd.x1y2", "kernels/5.4-bbbb", "libvirt-embed/slot-1"
    ]  # fmt: skip
    assert sorted(result.busy) == ["libvirt-embed/slot-0", "modules/m-6.12-c"]
    assert result.kept == ["kernels/6.12-aaaa"]
    assert live_slot.exists() and not stale.exists()


def test_prune_never_follows_a_symlink_out_of_the_cache(tmp_path: Path) -> None:
    """L4: `cache/stale-kind -> ../victim` once cost victim/keepme and left a .lock there."""
    root, victim = tmp_path / "cache", tmp_path / "victim"
    (victim / "keepme").mkdir(parents=True)
    (victim / "keepme" / "file").write_text("mine")
    (root / "kernels" / "old-key").mkdir(parents=True)
    (root / "stale-kind").symlink_to("../victim")  # a symlinked kind
    (root / "kernels" / "linked-key").symlink_to(victim / "keepme")  # a symlinked entry
    (root / "kernels" / "locked-key").mkdir()
    (root / "kernels" / "locked-key.lock").symlink_to(victim / "lockfile")  # a symlinked lock
    (root / "kernels" / ".locked-key.tmp1").mkdir()  # a temp dir behind the same lock
    (root / "libvirt-embed" / "slot-0").mkdir(parents=True)
    (root / "libvirt-embed" / "slot-0" / "rig.lock").symlink_to(victim / "slot.lock")
    cache = Cache(root)
    assert cache.entries() == [
        ("kernels", "locked-key", 0), ("kernels", "old-key", 0), ("libvirt-embed", "slot-0", 0)
    ]  # fmt: skip
    result = cache.prune()
    assert result.removed == ["kernels/old-key"]
    assert sorted(result.skipped) == [
        "kernels/linked-key (a symlink, not followed)",
        "kernels/locked-key.lock (a symlink, not followed)",  # so is its entry, its temp dir
        "stale-kind (a symlink, not followed)",
    ]
    assert result.busy == ["libvirt-embed/slot-0"]  # its lock is a symlink: left alone
    assert (victim / "keepme" / "file").read_text() == "mine"
    assert sorted(p.name for p in victim.iterdir()) == ["keepme"]  # no lock file created there
    assert (root / "kernels" / "locked-key").is_dir()
    assert (root / "kernels" / ".locked-key.tmp1").is_dir()


def test_a_build_sweeps_the_temp_dirs_of_killed_builds_of_its_key(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    leftover = tmp_path / "kind" / ".key.abc123"
    leftover.mkdir(parents=True)
    (leftover / "half").write_text("x")
    with cache.building("kind", "key") as (_final, tmp):
        assert tmp is not None
        (tmp / "done").write_text("y")
    assert not leftover.exists()
    assert (tmp_path / "kind/key/done").exists()


def test_a_cache_root_named_through_a_symlink_is_still_the_cache(tmp_path: Path) -> None:
    """Only links inside the cache are refused: RIG_CACHE_DIR may itself be a symlink."""
    (tmp_path / "disk" / "kernels" / "k1").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "disk")
    cache = Cache(tmp_path / "link")
    assert cache.entries() == [("kernels", "k1", 0)]
    assert cache.prune().removed == ["kernels/k1"]


def test_the_sandbox_argv_is_offline_unprivileged_and_read_only(tmp_path: Path) -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap not installed")
    root = Path("/cache/kernels/6.12-k/root")
    make = ["make", "-C", "/usr/src/linux-headers-x", f"M={BUILD_DIR}"]
    argv = sandboxed(root, make, tmp_path)
    outer, inner = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    triples = list(zip(outer, outer[1:], outer[2:], strict=False))
    assert outer[0] == "bwrap"
    for flag in ("--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                 "--die-with-parent", "--new-session", "--clearenv"):  # fmt: skip
        assert flag in outer, flag
    assert "--share-net" not in outer
    # the chroot read-only as /, /proc read-only, and one writable bind: the build dir
    assert ("--ro-bind", str(root), "/") in triples
    assert ("--proc", "/proc", "--remount-ro") in triples
    assert ("--bind", str(tmp_path), BUILD_DIR) in triples
    writable = [a for a in outer if a in {"--bind", "--bind-try", "--dev-bind", "--dev-bind-try"}]
    assert writable == ["--bind"]
    # No user namespace: it would map the build user to root on the host. bwrap, as root,
    # sets up; the chroot's setpriv drops to nobody, every capability and new privileges.
    assert "--unshare-user" not in outer and "--unshare-all" not in outer
    assert inner[: inner.index("--")] == [
        SETPRIV, f"--reuid={BUILD_UID}", f"--regid={BUILD_UID}", "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
    ]  # fmt: skip
    assert inner[inner.index("--") + 1 :] == make


def test_the_sandbox_needs_bubblewrap_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert HOST_TOOLS["bwrap"][0] == "bubblewrap"
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "bwrap" else which(tool))
    with pytest.raises(ToolMissing) as raised:
        sandboxed(tmp_path, ["true"], tmp_path)
    assert "apt-get install bubblewrap" in raised.value.render()


def test_a_product_is_copied_only_from_a_regular_file(tmp_path: Path) -> None:
    build = tmp_path / "build"
    build.mkdir()
    secret = tmp_path / "host-secret"
    secret.write_text("host only")
    (build / "link.ko").symlink_to(secret)
    os.mkfifo(build / "fifo.ko")
    (build / "m.ko").write_bytes(b"\x7fELF module")
    (build / "m.ko").chmod(0o4755)
    assert not copy_product(build / "link.ko", tmp_path / "a.ko")
    assert not copy_product(build / "fifo.ko", tmp_path / "b.ko")
    assert not copy_product(build / "missing.ko", tmp_path / "c.ko")
    assert not (tmp_path / "a.ko").exists() and not (tmp_path / "b.ko").exists()
    assert copy_product(build / "m.ko", tmp_path / "m.ko")
    assert (tmp_path / "m.ko").read_bytes() == b"\x7fELF module"
    assert (tmp_path / "m.ko").stat().st_mode & 0o7777 == 0o644


SANDBOX_PROBE = r"""
echo "ids: $(id -u) $(id -g) [$(id -G)]"
grep -E '^(CapEff|CapPrm|CapInh|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status | tr -d '\t'
if (: >"$1") 2>/dev/null; then echo "root write: done"; else echo "root write: refused"; fi
v=$(cat /proc/sys/vm/overcommit_ratio)  # written back unchanged, if at all
if (echo "$v" >/proc/sys/vm/overcommit_ratio) 2>/dev/null; then echo "sysctl: written"
else echo "sysctl: refused"; fi
if chroot / true 2>/dev/null; then echo "chroot: done"; else echo "chroot: refused"; fi
if bash -c "echo probe >/dev/tcp/127.0.0.1/$2" 2>/dev/null; then echo "net: connected"
else echo "net: refused"; fi
if (echo made >made) 2>/dev/null; then echo "build dir: written"; fi
echo "cwd: $(pwd)"
"""


def test_the_sandbox_for_real_over_the_hosts_root(tmp_path: Path) -> None:
    """The host's / as the sandbox's read-only root: who the build is, what it may do."""
    if os.geteuid() != 0 or shutil.which("bwrap") is None or not Path(SETPRIV).exists():
        pytest.skip("needs root, bwrap (bubblewrap) and setpriv (util-linux)")
    build = tmp_path / "build"
    build.mkdir()
    hand_to_build_user(build)
    probe = Path(f"/var/tmp/rig-sandbox-probe-{secrets.token_hex(6)}")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        argv = sandboxed(Path("/"), ["sh", "-c", SANDBOX_PROBE, "sh", str(probe), str(port)],
                         build)  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        with pytest.raises(BlockingIOError):
            listener.accept()[0].close()
    finally:
        listener.close()
        wrote = probe.exists()
        probe.unlink(missing_ok=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert f"ids: {BUILD_UID} {BUILD_UID} [{BUILD_UID}]" in lines
    for caps in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
        assert f"{caps}:0000000000000000" in lines, out.stdout
    assert "NoNewPrivs:1" in lines
    assert "root write: refused" in lines and not wrote
    assert "sysctl: refused" in lines
    assert "chroot: refused" in lines
    assert "net: refused" in lines
    assert "build dir: written" in lines and f"cwd: {BUILD_DIR}" in lines
    made = build / "made"
    assert made.read_text() == "made\n" and made.stat().st_uid == BUILD_UID
