"""Bochs lane: VMX emulated in software, so the whole VMX path runs on any host.

Bochs 2.7 has no -kernel option: the guest boots from an El Torito ISO (GRUB). It runs headless
with the RFB display (the only one compiled in), inside a private network namespace so that its
display server listens on nobody's network, and with one CPU (Bochs' BIOS programs
IA32_FEATURE_CONTROL on CPU 0 only).

Bochs' own BIOS locks IA32_FEATURE_CONTROL at 0x5 (VMX on) before any boot loader runs. A boot
that asks for another value (BootSpec.feature_control: GRUB writes it, as a firmware would)
runs on SeaBIOS instead, which leaves the MSR at its reset value 0, unlocked.

The witness beneath the guest (rig.lanes.bochs_witness): Bochs logs cpu0's debug level, whose
VMLAUNCH/VMRESUME/VMEXIT lines (cpu/vmx.cc) are the CPU's own account of the guest's VMX; the
rest of that level (millions of lines) is dropped by a grep on the log's fifo, so bochs.log
holds the error/panic lines as before plus the VMX lines. BootResult.beneath: facts only.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from rig.artifacts import Cache, digest, stderr_progress
from rig.artifacts.emulator import DEBIAN_MIRROR, BochsRelease, bochs_release
from rig.errors import InfraError, ToolMissing
from rig.lanes.base import (
    AGENT_FILE,
    BENEATH_FILE,
    CONSOLE_FILE,
    TRIPLE_FAULT_RE,
    ConsoleWatch,
    beneath_text,
    make_result,
    owned_process,
    read_text,
    tail,
    watch_console,
)
from rig.lanes.bochs_media import boot_iso
from rig.lanes.bochs_snapshot import restore_config, restore_dir, save_machine
from rig.lanes.bochs_witness import beneath_from_file, filtered_log
from rig.lanes.snapshots import Store, file_id, fit_medium, usable
from rig.model import BootEnd, BootResult, BootSpec, GuestImage

BOCHS_BIN = "bochs-bin"
BIOS = Path("/usr/share/bochs/BIOS-bochs-latest")
VGABIOS = Path("/usr/share/bochs/VGABIOS-lgpl-latest")
SEABIOS = Path("/usr/share/seabios/bios.bin")  # leaves IA32_FEATURE_CONTROL unlocked
_MODEL_RE = re.compile(r"[a-z0-9_]{1,40}")  # fullmatch: no trailing newline
WITNESS_DEBUG = ", cpu0=report"  # vmx.cc's VMLAUNCH/VMRESUME/VMEXIT lines are cpu0's debug
_DEBUG_LINE = re.compile(r"\d+d\[")  # the witness's lines (bochs_witness), not for emulator_log
_VERSION = re.compile(r"Bochs x86 Emulator (\S+)")  # its banner, in bochs.out
_LOG_KEEP = re.compile(r"VMFAIL|VMENTER|VMEXIT FAIL|PANIC|triple fault|>>PANIC<<|\[CPU0  \] e")


def bochsrc(
    spec: BootSpec,
    iso: Path,
    console: Path,
    agent: Path,
    log: Path,
    *,
    witness: bool = False,
    save: bool = False,
    bios: Path = BIOS,
    vgabios: Path = VGABIOS,
) -> str:
    """The Bochs configuration for one boot. Every value is checked, nothing user-typed leaks.

    `witness`: Bochs logs the guest's VM entries and exits (rig.lanes.bochs_witness).
    `save`: Bochs asks its questions on stdin, so that the rig can answer a save's
    (rig.lanes.bochs_snapshot).
    """
    if not _MODEL_RE.fullmatch(spec.cpu_model):
        raise InfraError(f"not a Bochs CPU model name: {spec.cpu_model!r}")
    for p in (iso, console, agent, log, bios, vgabios):
        if '"' in str(p) or "\n" in str(p) or (" " in str(p) and p in (bios, vgabios)):
            raise InfraError(f"path not usable in a bochsrc: {p!r}")
    return "\n".join(
        [
            f"megs: {int(spec.memory_mib)}",
            f"cpu: model={spec.cpu_model}, count=1, ips=200000000, reset_on_triple_fault=0",
            "clock: sync=none, time0=local",
            f"romimage: file={bios if spec.feature_control is None else SEABIOS}",
            f"vgaromimage: file={vgabios}",
            f'display_library: rfb, options="timeout=0{", no_gui_console" if save else ""}"',
            f'ata0-master: type=cdrom, path="{iso}", status=inserted',
            "boot: cdrom",
            f'com1: enabled=1, mode=file, dev="{console}"',
            f'com2: enabled=1, mode=file, dev="{agent}"',
            f'log: "{log}"',
            "panic: action=fatal",
            "error: action=report",
            "info: action=ignore",
            f"debug: action=ignore{WITNESS_DEBUG if witness else ''}",
            "logprefix: %t%e%d",
            "sound: driver=dummy",
            "speaker: enabled=0",
            "",
        ]
    )


@dataclass(frozen=True)
class Bochs:
    """The Bochs that runs a lane's boots: the host's (`bochs-bin`: Debian 12's 2.7, which stops
    in its built-in debugger at start, so `-rc` says "continue") or a Debian release's
    (rig.artifacts.emulator: the matrix lane's `emulator: trixie`)."""

    command: tuple[str, ...]  # the argv that starts it (its arguments follow)
    bios: Path
    vgabios: Path
    debugger: bool  # it stops in its debugger at start: `-rc FILE` with "c"
    files: tuple[Path, ...]  # what a save's key names: the binary and its firmware
    release: str = ""  # "" = the host's

    def argv(self, workdir: Path, args: list[str]) -> list[str]:
        """Bochs with `args`, alone in a network namespace (its RFB display listens there)."""
        rc: list[str] = []
        if self.debugger:
            (workdir / "bochs.rc").write_text("c\n")
            rc = ["-rc", str(workdir / "bochs.rc")]
        return ["unshare", "--net", "--", *self.command, "-q", *args, *rc]


def host_bochs() -> Bochs:
    return Bochs((BOCHS_BIN,), BIOS, VGABIOS, True, (bochs_binary(), BIOS, VGABIOS))


def release_bochs(release: BochsRelease) -> Bochs:
    env = [f"{k}={v}" for k, v in release.env.items()]
    return Bochs(("env", *env, *release.argv), release.bios, release.vgabios, False,
                 tuple(release.files()), release.suite)  # fmt: skip


def bochs_for(release: BochsRelease, cpu_model: str) -> Bochs:
    """The release's Bochs when it has the model, else the host's (Bochs 3.0 dropped 2.7's
    configurable bx_generic): the verdict's `emulator` names the one that ran."""
    if cpu_model in release.models():
        return release_bochs(release)
    if shutil.which(BOCHS_BIN) is None:
        lacks = f"model {cpu_model}, which Bochs of {release.suite} does not have"
        raise ToolMissing(BOCHS_BIN, "bochs bochsbios vgabios", lacks)
    return host_bochs()


@dataclass(frozen=True)
class BochsBackend:
    name: str = "bochs"
    firmware_step: bool = True  # GRUB on the boot ISO writes MSRs before the kernel
    injects: frozenset[str] = frozenset()  # Bochs delivers no NMI or #MC from outside
    restores: bool = True  # --snapshot: a saved guest stands for a boot (bochs_snapshot)
    # the artifact cache, where snapshots live (None: every guest boots fresh)
    cache_root: Path | None = None
    # Bochs from this Debian suite's packages (rig.artifacts.emulator); "" = the host's
    emulator: str = ""

    def unavailable(self) -> str | None:
        if self.emulator:
            if self.cache_root is None:
                return f"Bochs of {self.emulator} needs the artifact cache to live in"
            for tool in ("debootstrap", "unshare", "setpriv"):
                if shutil.which(tool) is None:
                    return f"{tool} missing (apt-get install {tool}), for Bochs of {self.emulator}"
            return None
        if shutil.which(BOCHS_BIN) is None:
            return "Bochs is not installed (apt-get install bochs bochsbios vgabios)"
        if not BIOS.exists() or not VGABIOS.exists():
            return "Bochs BIOS images missing (apt-get install bochsbios vgabios)"
        for tool in ("unshare", "setpriv"):
            if shutil.which(tool) is None:
                return f"{tool} missing (apt-get install util-linux)"
        return None

    def boot(self, spec: BootSpec) -> BootResult:
        why = self.unavailable()
        if why is not None:
            raise ToolMissing(BOCHS_BIN, "bochs bochsbios vgabios", why)
        if spec.feature_control is not None and not SEABIOS.exists():
            raise ToolMissing(
                str(SEABIOS), "seabios", "a firmware that leaves FEATURE_CONTROL open"
            )
        return self._run(spec, self._usable_snapshot(spec))

    def bochs(self, cpu_model: str) -> Bochs:
        """The Bochs of this lane for a model (bochs_for); the release's is made on first use."""
        if not self.emulator:
            return host_bochs()
        assert self.cache_root is not None  # unavailable() says so first
        cache = Cache(self.cache_root)
        return bochs_for(bochs_release(cache, self.emulator, DEBIAN_MIRROR, stderr_progress),
                         cpu_model)  # fmt: skip

    def _usable_snapshot(self, spec: BootSpec) -> Path | None:
        """The save this boot may restore (rig.lanes.snapshots), or None: boot fresh."""
        if not spec.restorable() or self.cache_root is None:
            return None
        make = lambda folder, tmp: self._save(spec, folder, tmp)  # noqa: E731
        store = Store(self.cache_root, SNAPSHOTS, self._snapshot_name(spec), make)
        return usable(spec, store, self._run)

    def _snapshot_name(self, spec: BootSpec) -> str:
        warm = spec.image.warm
        assert warm is not None
        emulator = [file_id(p) for p in self.bochs(spec.cpu_model).files]
        key = digest("bochs-snapshot", SNAPSHOT_RECIPE, warm.key, spec.cpu_model,
                     spec.memory_mib, emulator)  # fmt: skip
        return f"{spec.cpu_model}-{key}"

    def _run(self, spec: BootSpec, snapshot: Path | None) -> BootResult:
        """Boot the guest, or restore it from `snapshot` (a save of its base guest)."""
        wd = spec.workdir
        console, agent, log = wd / CONSOLE_FILE, wd / AGENT_FILE, wd / "bochs.log"
        for stale in (console, agent):
            stale.unlink(missing_ok=True)
        bochs = self.bochs(spec.cpu_model)
        if snapshot is not None and not fit_medium(spec, snapshot):
            snapshot = None  # a carrier bigger than the CD the guest knows: boot fresh
        # Bochs logs into a fifo; its VMX lines and errors reach bochs.log (bochs_witness).
        with filtered_log(log) as fifo, _removed(wd / "state"):
            if snapshot is not None:
                warm = spec.image.warm
                assert warm is not None
                state = wd / "state"
                shutil.rmtree(state, ignore_errors=True)
                config = restore_config((snapshot / "config").read_text(), console=console,
                                        agent=agent, log=fifo, medium=warm.carrier)  # fmt: skip
                restore_dir(snapshot, state, config)
                argv = ["-r", str(state)]
            else:
                rc = wd / "bochsrc"
                iso = boot_iso(spec.image, wd, spec.feature_control)
                rc.write_text(bochsrc(spec, iso, console, agent, fifo, witness=spec.cpu_witness,
                                      bios=bochs.bios, vgabios=bochs.vgabios))  # fmt: skip
                argv = ["-f", str(rc)]
            argv = bochs.argv(wd, argv)
            with owned_process(argv, cwd=wd, stdout=wd / "bochs.out",
                               pidfile=wd / "emulator.pid") as p:  # fmt: skip
                alive = lambda: p.poll() is None  # noqa: E731
                watch = watch_console(
                    console, alive=alive, timeout_s=spec.timeout_s, panic_ends=not spec.expect_crash
                )
        (wd / "boot.iso").unlink(missing_ok=True)
        said = _VERSION.search(read_text(wd / "bochs.out", cap=4096))
        ran = f"bochs {said[1] if said else '?'} ({bochs.release or 'host'})"
        result = replace(self._result(spec, watch), emulator=ran)
        return replace(result, restored=snapshot.parent.name) if snapshot is not None else result

    def _save(self, spec: BootSpec, save: Path, tmp: Path) -> dict[str, object]:
        """Boot the base guest and save the machine into `save` while it waits."""
        warm = spec.image.warm
        assert warm is not None
        boot = tmp / "boot"
        boot.mkdir()
        image = GuestImage(kernel=spec.image.kernel, initrd=warm.base, cmdline=spec.image.cmdline)
        iso = boot_iso(image, boot)
        rc, bochs = boot / "bochsrc", self.bochs(spec.cpu_model)
        text = bochsrc(replace(spec, image=image), iso, boot / CONSOLE_FILE, boot / AGENT_FILE,
                       boot / "bochs.log", save=True, bios=bochs.bios,
                       vgabios=bochs.vgabios)  # fmt: skip
        rc.write_text(text)
        argv = bochs.argv(boot, ["-f", str(rc)])
        # Bochs' output goes to build.log: a failed save keeps it (NAME.failed.log)
        ready = save_machine(argv, boot, save, boot / AGENT_FILE, spec.timeout_s,
                             out=tmp / "build.log")  # fmt: skip
        made: dict[str, object] = {"ready_s": round(ready, 1), "medium_bytes": iso.stat().st_size}
        iso.unlink()
        return made

    def _result(self, spec: BootSpec, watch: ConsoleWatch) -> BootResult:
        wd = spec.workdir
        log, out = wd / "bochs.log", wd / "bochs.out"
        bochs_log = log.read_text(errors="replace") if log.exists() else ""
        kept = "\n".join(
            line
            for line in bochs_log.splitlines()
            if _LOG_KEEP.search(line) and not _DEBUG_LINE.match(line)
        )
        detail = ""
        if watch.end is BootEnd.EMULATOR:
            if "soft power off" in bochs_log:
                # The guest powered off but the console missed the kernel's last line.
                watch.end, watch.detail = BootEnd.POWEROFF, "guest powered off (ACPI soft off)"
            else:
                said = out.read_text(errors="replace")
                panics = "\n".join(ln for ln in said.splitlines() if ">>PANIC<<" in ln)
                detail = "Bochs stopped before the guest powered off: " + (
                    tail(kept, 5) or tail(panics, 3) or tail(said, 5) or "no reason logged"
                )
        triple = bool(TRIPLE_FAULT_RE.search(kept))
        result = make_result(wd, watch, emulator_log=kept, detail=detail, triple_fault=triple)
        if not spec.cpu_witness:
            return result
        beneath = beneath_from_file(log)
        (wd / BENEATH_FILE).write_text(beneath_text(beneath))
        return replace(result, beneath=beneath)


SNAPSHOT_RECIPE = "1"  # bump when what a snapshot holds changes
SNAPSHOTS = "bochs-snapshots"  # the cache kind of the saves


@contextlib.contextmanager
def _removed(path: Path) -> Iterator[None]:
    """Delete `path` (a cell's links into a save) when the block ends, however it ends."""
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


def bochs_binary() -> Path:
    found = shutil.which(BOCHS_BIN)
    return Path(found) if found else Path(BOCHS_BIN)
