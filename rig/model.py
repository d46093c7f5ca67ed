"""Typed records passed between the pipeline stages.

matrix -> artifacts -> provision -> guest -> verdict -> report. Each stage consumes the
records of the stage before it and produces its own; nothing flows backwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

STAGES: tuple[str, ...] = ("build", "vmxon", "vmlaunch", "vmcall_exit", "teardown")
"""The five checks (JUnit testcases) of every matrix cell, in order."""


# --------------------------------------------------------------------------- matrix
@dataclass(frozen=True)
class KernelSpec:
    """One guest kernel: a Debian kernel package from one suite."""

    name: str  # "6.12": the name used in matrix.yaml and on the command line
    suite: str  # Debian suite whose toolchain builds the module: "trixie"
    abi: str  # kernel ABI name, as in linux-image-<abi>: "6.12.57+deb13-amd64"
    version: str = ""  # pinned Debian package version of linux-image-<abi> ("" = newest)
    mirror: str = "http://deb.debian.org/debian"
    extra_suites: tuple[str, ...] = ()  # e.g. ("bookworm-security",) for newest 6.1
    check_valid_until: bool = True  # False for suites whose Release looks expired (sid)
    # A kernel you built instead of a Debian package (rig/artifacts/built.py): `build`, a
    # kernel build directory (bzImage, .config, Module.symvers), or `tree` + `ref`, a git tree
    # the rig builds at that commit with `config` ("minimal", a file, or "debian:NAME").
    # `suite` is then the toolchain suite that builds it (and the driver against it).
    build: str = ""
    tree: str = ""
    ref: str = ""  # a full commit SHA once resolved (the cache keys by it)
    config: str = ""
    patch: str = ""  # a patch applied to the tree before the build (bisection --patch)
    config_from: KernelSpec | None = None  # config "debian:NAME": that Debian kernel
    # A Debian version the suite's index no longer lists: its packages' pool URLs (image,
    # headers, kbuild), installed from the files (rig bisect --debian)
    pool: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """'debian' (a package), 'build' (a build directory) or 'tree' (a git tree + ref)."""
        return "build" if self.build else "tree" if self.tree else "debian"

    def describe(self) -> str:
        """What the kernel is, for reports: the ABI, or where it was built from."""
        if self.build:
            return f"build {self.build}"
        if self.tree:
            return f"tree {self.tree} @ {self.ref[:12]} ({self.config or 'minimal'})"
        return self.abi


@dataclass(frozen=True)
class CpuSpec:
    """One CPU generation and its model name in each lane ("" = not available there)."""

    name: str  # "haswell"
    models: dict[str, str] = field(default_factory=dict, hash=False)  # lane -> model

    def model_for(self, lane: str) -> str | None:
        return self.models.get(lane) or None


@dataclass(frozen=True)
class LaneSpec:
    name: str  # "bochs" | "tcg" | "kvm"
    backend: str  # "bochs" | "libvirt"
    vmx: bool  # does the guest CPU of this lane have VMX at all?
    guest: str = "initramfs"  # "initramfs" | "vm"
    uri: str = ""  # libvirt connection ("" = embedded default)
    domain_type: str = "qemu"  # libvirt <domain type=...>: "qemu" (TCG) or "kvm"
    # nested lane (rig.lanes.nested): L1's kernel, and the Bochs model (L0) backing each L2
    # model ("" key = every model not named)
    l1_kernel: KernelSpec | None = None
    l0_cpus: tuple[tuple[str, str], ...] = ()
    launcher: str = "qemu"  # nested: how L1 starts L2: "qemu" (command line) or "libvirt"
    emulator: str = ""  # bochs: Bochs of this Debian suite (rig.artifacts.emulator); "" = host's


@dataclass(frozen=True)
class Cell:
    lane: LaneSpec
    kernel: KernelSpec
    cpu: CpuSpec
    timeout_s: int = 300
    memory_mib: int = 512
    vcpus: int = 1
    skip_reason: str | None = None  # excluded in matrix.yaml, or the lane lacks this CPU

    @property
    def id(self) -> str:
        return f"{self.lane.name}-{self.kernel.name}-{self.cpu.name}"

    @property
    def cpu_model(self) -> str | None:
        return self.cpu.model_for(self.lane.name)


# --------------------------------------------------------------------------- artifacts
@dataclass(frozen=True)
class KernelArtifacts:
    spec: KernelSpec
    vmlinuz: Path
    headers: Path  # /usr/src/linux-headers-<abi> inside the chroot
    chroot: Path  # the suite's toolchain chroot that built modules for this kernel
    # A kernel you built: its build directory and source tree on the host, which module
    # builds see read-only (None: the headers are in the chroot), its release and the
    # directory holding its KVM modules; `key` names it in the keys of what is built from it.
    kbuild: Path | None = None
    ksrc: Path | None = None
    release: str = ""
    kvm_dir: Path | None = None
    key: str = ""


@dataclass(frozen=True)
class ModuleBuild:
    """Result of building one driver tree against one kernel (never raises on a compile error)."""

    name: str  # module name, "vmlaunch"
    ok: bool
    log: str  # full make output (attached to the `build` testcase)
    ko: Path | None
    warnings: int = 0


@dataclass(frozen=True)
class Probe:
    """A snapshot's fidelity gate (rig.guest.carrier): `image()` makes a guest that boots fresh
    (its initrd) and the same /rig as a carrier (its warm.carrier); `facts(console, agent)`
    picks what must read the same after a restore as after that fresh boot."""

    image: Callable[[], GuestImage]
    facts: Callable[[str, str], list[str]]


@dataclass(frozen=True)
class WarmStart:
    """The same guest split for a lane that restores snapshots (rig.guest.carrier): `base`
    boots and waits with no /rig; `carrier` brings the cell's /rig after a restore. `key`
    names everything the base guest is made of (kernel, base initrd, command line)."""

    base: Path
    carrier: Path
    key: str
    probe: Probe | None = None  # the gate a save must pass before a cell restores it


@dataclass(frozen=True)
class GuestImage:
    """What a guest boots: a kernel, an initrd and the kernel's command line."""

    kernel: Path
    initrd: Path
    cmdline: str
    warm: WarmStart | None = None  # the run asked for snapshots and this guest can have one


# --------------------------------------------------------------------------- provision
class BootEnd(StrEnum):
    POWEROFF = "poweroff"  # the guest shut itself down: the normal end
    PANIC = "panic"  # the guest kernel panicked or oopsed (seen on the console)
    TIMEOUT = "timeout"  # the per-cell timeout expired
    EMULATOR = "emulator"  # the emulator/hypervisor died or refused (triple fault, libvirt)
    FLOOD = "flood"  # the guest wrote past the rig's cap on a channel: stopped (infrastructure)


@dataclass(frozen=True)
class BootSpec:
    image: GuestImage
    cpu_model: str
    memory_mib: int
    vcpus: int
    timeout_s: int
    workdir: Path  # per-cell scratch + logs directory, owned by the run
    # IA32_FEATURE_CONTROL as the firmware leaves it (lanes with a firmware step: bochs);
    # None: as the lane's own firmware leaves it
    feature_control: int | None = None
    inject: tuple[str, ...] = ()  # events injected from outside while the driver is loaded
    expect_crash: bool = False  # the guest panics on purpose: a panic does not end the boot
    cpu_witness: bool = False  # the emulator logs the guest's VMX instructions (BootResult.beneath)

    def restorable(self) -> bool:
        """A boot a restored snapshot can stand for: the guest comes split (image.warm) and
        the run is one a save can stand for (restore_stands_for)."""
        return self.image.warm is not None and restore_stands_for(
            feature_control=self.feature_control,
            cpu_witness=self.cpu_witness,
            inject=self.inject,
            crash=self.expect_crash,
        )


def restore_stands_for(
    *, feature_control: int | None, cpu_witness: bool, inject: Sequence[str], crash: bool
) -> bool:
    """Whether a snapshot saved before the module arrived can stand for a fresh boot of a run:
    not one that sets IA32_FEATURE_CONTROL in the firmware's step, the emulator's VMX log (set
    at boot), injects events from outside or boots a crash kernel. The one rule the guest (what
    to split) and the lanes (what to restore) both follow."""
    return feature_control is None and not cpu_witness and not inject and not crash


@dataclass(frozen=True)
class BootResult:
    console: str  # everything the guest's kernel wrote on its console (ttyS0)
    end: BootEnd
    duration_s: float
    emulator_log: str = ""  # tail of bochs.log / libvirt / qemu log
    detail: str = ""  # for people: how `end` came about (never parsed)
    # facts the lane saw, for the judge
    panic_line: str = ""  # the console's panic line, when end is PANIC
    panic_to_stop_s: float | None = None  # from the panic reaching the console to the stop
    triple_fault: bool = False  # the emulator stopped on a triple fault (shutdown)
    # the guest agent's protocol channel (second serial port, or SSH); records come only from
    # here (docs/contract.md section 2, "Provenance"): "" = the agent said nothing
    agent: str = ""
    # the CPU beneath as witness: what the emulator or hypervisor under the guest saw of its
    # VMX instructions and exits (None: this lane has no such witness)
    beneath: Beneath | None = None
    # the guest was restored from this snapshot (its cache key), not booted: "" = booted
    restored: str = ""
    # which emulator ran it, when a lane has a choice ("bochs 3.0 (trixie)"): "" = not said
    emulator: str = ""


@dataclass(frozen=True)
class VmxEvent:
    """One VMX event seen beneath the guest, in the order it happened."""

    kind: str  # vmxon | vmxoff | vmclear | vmptrld | vmlaunch | vmresume | exit | vmfail
    # | entry (a VM entry began; it ran only if an exit follows) | entry_fail (a VM entry that
    # failed its checks: an exit with bit 31 set)
    reason: int | None = None  # exit, entry_fail: the basic exit reason; vmfail: VM-insn error
    said: str = ""  # the witness's own line, quoted in reasons
    vmcs: int | None = None  # vmlaunch, vmresume, entry: the current VMCS's address, if seen


@dataclass(frozen=True)
class Beneath:
    """What the emulator or hypervisor beneath the guest saw (Bochs' log, L1's KVM trace)."""

    source: str  # who saw it: "Bochs" | "KVM in L1"
    events: tuple[VmxEvent, ...] = ()
    complete: bool = True  # the witness's record covers the whole test (not cut or lost)
    note: str = ""  # what it could not see, said in reasons
    sees: frozenset[str] = frozenset(
        {"vmxon", "vmxoff", "vmclear", "vmptrld", "vmlaunch", "vmresume", "exit", "vmfail"}
    )  # the event kinds this witness can report at all (Bochs: no successful VMXON/VMXOFF)


# --------------------------------------------------------------------------- verdict
class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"  # the driver misbehaved
    SKIPPED = "skipped"  # cannot be tested here (stated reason)
    ERROR = "error"  # infrastructure: the check could not be made


SEVERITY: dict[Outcome, int] = {
    Outcome.PASSED: 0,
    Outcome.SKIPPED: 1,
    Outcome.FAILED: 2,
    Outcome.ERROR: 3,
}
"""The one order of outcomes, worst last: the verdict (repeated runs), the report (a stage
reported twice), bisection and the exit code all rank with it. An infrastructure ERROR
outranks a FAILED check: a result the rig could not trust is never read as the driver's."""


def worst(outcomes: Iterable[Outcome]) -> Outcome:
    """The worst of some outcomes (PASSED for none)."""
    return max(outcomes, key=SEVERITY.__getitem__, default=Outcome.PASSED)


DECLINE_REASONS: tuple[str, ...] = (
    "no_vmx",
    "vmx_disabled_by_bios",
    "vmx_disabled_in_smx",
    "vmx_disabled_by_kernel",
    "vmx_busy",
    "fred_enabled",
    "host_fs_gs_selector",
)
"""The driver's `why=` values for a legitimate refusal (docs/contract.md)."""


@dataclass(frozen=True)
class Arranged:
    """What the run set up in the guest that makes the driver's refusal the right answer.

    A decline is SKIPPED only when the run arranged its cause; on a lane that promises VMX
    any other decline is the driver's FAILURE.
    """

    declines: frozenset[str] = frozenset()  # e.g. {"vmx_busy"}: a fixture holds VMX
    why: tuple[tuple[str, str], ...] = ()  # decline -> what arranged it (for the reason)
    witness: bool = False  # the guest runs the teardown witness after its last run
    beside: str = ""  # "kvm": KVM holds VMX with a VM open while the driver runs
    crash: bool = False  # the guest is crashed with the driver loaded (kexec -p, sysrq c)

    def because(self, decline: str) -> str:
        return dict(self.why).get(decline, "")


NOTHING_ARRANGED = Arranged()


@dataclass(frozen=True)
class StageVerdict:
    stage: str
    outcome: Outcome
    reason: str
    evidence: str = ""  # the guest lines the verdict was taken from
    witness: str = ""  # who beneath the guest confirmed or contradicted it ("Bochs",
    # "KVM in L1"), "none" on a VMX lane without one, "" where no witness applies


@dataclass(frozen=True)
class CellVerdict:
    cell_id: str
    stages: dict[str, StageVerdict]
    console: str = ""
    build_log: str = ""
    emulator_log: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    restored: str = ""  # the guest came from this snapshot (BootResult.restored): "" = booted
    emulator: str = ""  # what ran the guest (BootResult.emulator): "" = not said
