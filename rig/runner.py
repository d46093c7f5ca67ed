"""One matrix cell, end to end: artifacts -> provision -> guest -> verdict.

`CellRunner.run(cell)` never raises for anything the guest or the environment did: every
outcome becomes a CellVerdict (infrastructure trouble as ERROR stages with the reason).
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from rig.artifacts import Artifacts
from rig.errors import RigError, UsageError
from rig.guest import GuestJob, flavour_for
from rig.lanes import backend_for
from rig.matrix import Matrix
from rig.model import (
    DECLINE_REASONS,
    STAGES,
    Arranged,
    BootResult,
    Cell,
    CellVerdict,
    Outcome,
    StageVerdict,
)
from rig.options import RunSettings
from rig.runs import sweep_cell
from rig.verdict import judge
from rig.verdict.profiles import profile_named


@dataclass(frozen=True)
class RunConfig:
    run_id: str
    run_dir: Path
    driver: Path
    profile: str = "vmlaunch-rig"  # how the module's lines are read (rig.verdict.profiles)
    strict_build: bool = False  # build warnings fatal whatever the profile
    module_params: tuple[str, ...] = ()
    timeout_s: int | None = None  # overrides the matrix's per-cell timeout
    # libvirt connections for the libvirt lanes (empty = the lane's default), each may carry
    # `slots=N`: every libvirt cell leases a free slot on a live one (rig.pool): how a team
    # scales out over KVM runners.
    uris: tuple[str, ...] = ()
    guest: str | None = None  # "initramfs" | "vm": overrides the lane's guest flavour
    repeat: int = 1  # load/unload cycles of the driver in one guest
    # module source trees built like the driver, loaded before it and left loaded (fixtures:
    # tests/drivers/vmxhog takes VMX first, to prove the driver's vmx_busy refusal)
    preload: tuple[Path, ...] = ()
    kernel_args: tuple[str, ...] = ()  # appended to the guest kernel's command line
    # IA32_FEATURE_CONTROL as the "firmware" leaves it (written by GRUB: ISO-booted lanes)
    feature_control: int | None = None
    inject: tuple[str, ...] = ()
    beside: str | None = None
    crash: bool = False
    cpu_witness: bool = False  # --cpu-witness (the bochs lane)
    snapshot: bool = False  # --snapshot (the bochs and tcg lanes restore saved guests)
    keep_images: bool = False
    # lanes that must run here: one that cannot is an infrastructure ERROR, not a skip
    required_lanes: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, s: RunSettings, *, run_id: str, run_dir: Path) -> RunConfig:
        return cls(
            run_id=run_id,
            run_dir=run_dir,
            driver=s.driver,
            profile=s.profile,
            strict_build=s.strict_build,
            module_params=s.module_params,
            timeout_s=s.timeout_s,
            uris=s.uris,
            guest=s.guest,
            repeat=s.repeat,
            preload=s.preload,
            kernel_args=s.kernel_args,
            feature_control=s.feature_control,
            inject=s.inject,
            beside=s.beside,
            crash=s.crash,
            cpu_witness=s.cpu_witness,
            snapshot=s.snapshot,
            required_lanes=s.require_lanes,
        )


def check_required(matrix: Matrix, cells: Sequence[Cell], required: Sequence[str]) -> None:
    """--require-lane names a lane of the matrix that the selection runs (UsageError)."""
    for lane in required:
        if lane not in matrix.lanes:
            raise UsageError(
                f"--require-lane {lane!r}: no such lane in the matrix",
                fix=f"one of: {', '.join(matrix.lanes)}",
            )
        if not any(c.lane.name == lane for c in cells):
            raise UsageError(
                f"--require-lane {lane}: the selection has no cell of that lane",
                fix=f"add --lane {lane} (or select its kernels and CPUs)",
            )


FIXTURE_ARRANGES = "ARRANGES"
"""File in a --preload fixture's tree: the driver refusals (why= words) the fixture sets up."""
FC_LOCK, FC_VMX_OUTSIDE_SMX = 0x1, 0x4  # IA32_FEATURE_CONTROL bits


def arrangements(config: RunConfig) -> Arranged:
    """What this run sets up that makes a refusal of the driver the right answer.

    Raises UsageError (exit 2) for a fixture that declares something the driver cannot say.
    """
    why: dict[str, str] = {}
    for src in config.preload:
        declared = src / FIXTURE_ARRANGES
        words = declared.read_text().split() if declared.is_file() else []
        for word in words:
            if word not in DECLINE_REASONS:
                raise UsageError(
                    f"{declared}: {word!r} is not a refusal of the driver",
                    fix=f"one of: {', '.join(DECLINE_REASONS)}",
                )
            why.setdefault(word, f"--preload {src.name} holds it")
    fc = config.feature_control
    if fc is not None and fc & FC_LOCK and not fc & FC_VMX_OUTSIDE_SMX:
        why["vmx_disabled_by_bios"] = f"--feature-control {fc:#x} locks VMX off"
    for arg in config.kernel_args:
        name, _, value = arg.partition("=")
        if name == "clearcpuid" and "vmx" in value.split(","):
            why["vmx_disabled_by_kernel"] = f"--kernel-arg {arg}"
    if config.beside == "kvm":
        why["vmx_busy"] = "--beside kvm: kvm_intel holds VMX with a VM open"
    return Arranged(
        frozenset(why), tuple(sorted(why.items())), beside=config.beside or "", crash=config.crash
    )


def plans_witness(config: RunConfig, cell: Cell) -> bool:
    """The teardown witness runs on every VMX lane, unless the run set up something that uses
    or forbids VMX itself (a fixture, a FEATURE_CONTROL value): then KVM's word is not the
    driver's. A crash run has no rmmod: its crash kernel is the witness."""
    return (
        cell.lane.vmx and not config.preload and config.feature_control is None and not config.crash
    )


BOOTS_LOG = "boots.log"
BOOT_FILE = "boot.json"


def record_boot(workdir: Path, boot: BootResult) -> None:
    """How the guest ended, beside its console and agent channel (for reports, golden data)."""
    fact = {"end": boot.end.value, "detail": boot.detail, "duration_s": round(boot.duration_s, 1),
            "restored": boot.restored, "emulator": boot.emulator}  # fmt: skip
    (workdir / BOOT_FILE).write_text(json.dumps(fact) + "\n")


def log_boot(workdir: Path) -> None:
    """One line per guest booted for the cell (a cell judged once boots once)."""
    with (workdir / BOOTS_LOG).open("a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid={os.getpid()} boot\n")


def uniform(cell: Cell, outcome: Outcome, reason: str, build_log: str = "") -> CellVerdict:
    stages = {s: StageVerdict(s, outcome, reason) for s in STAGES}
    return CellVerdict(cell_id=cell.id, stages=stages, build_log=build_log)


def infra_reason(exc: RigError | OSError) -> str:
    """The reason of an infrastructure ERROR: what failed, where, and how to fix it."""
    if isinstance(exc, RigError):
        return f"infrastructure: {exc.render()}"
    hint = ""
    if exc.errno == errno.ENOSPC:
        hint = " (free space on that filesystem, or point RIG_CACHE_DIR / --runs-dir elsewhere)"
    return f"infrastructure: {exc.strerror or exc}: {exc.filename or ''}{hint}"


@dataclass
class CellRunner:
    config: RunConfig
    artifacts: Artifacts
    embed_pool: Path
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, cell: Cell) -> CellVerdict:
        """The cell's verdict on its lane's own libvirt URI, if any (a run over a pool of
        hosts leases a slot first: rig.pool_run.run_cell)."""
        return self.run_on(cell, None)

    def run_on(self, cell: Cell, uri: str | None) -> CellVerdict:
        """The cell's verdict, its libvirt lane (if any) on `uri` (None: the lane's own)."""
        if cell.skip_reason:
            return uniform(cell, Outcome.SKIPPED, cell.skip_reason)
        model = cell.cpu_model
        if model is None:
            return uniform(
                cell, Outcome.SKIPPED, f"lane {cell.lane.name} has no model for {cell.cpu.name}"
            )
        backend = backend_for(cell.lane, embed_pool=self.embed_pool, uri=uri)
        why = backend.unavailable()
        if why is not None and cell.lane.name in self.config.required_lanes:
            return uniform(
                cell,
                Outcome.ERROR,
                f"infrastructure: lane {cell.lane.name} is required (--require-lane) but "
                f"cannot run on this host: {why}",
            )
        if why is not None:
            return uniform(
                cell, Outcome.SKIPPED, f"lane {cell.lane.name} cannot run on this host: {why}"
            )
        workdir = self.config.run_dir / "cells" / cell.id
        workdir.mkdir(parents=True, exist_ok=True)
        sweep_cell(workdir)  # what a crashed earlier attempt at this cell left running
        flavour = flavour_for(self.config.guest or cell.lane.guest)
        job = GuestJob(
            cell=cell,
            cpu_model=model,
            workdir=workdir,
            run_id=self.config.run_id,
            driver=self.config.driver,
            artifacts=self.artifacts,
            timeout_s=self.config.timeout_s or cell.timeout_s,
            module_params=self.config.module_params,
            repeat=self.config.repeat,
            preload=self.config.preload,
            kernel_args=self.config.kernel_args,
            feature_control=self.config.feature_control,
            inject=self.config.inject,
            beside=self.config.beside,
            crash=self.config.crash,
            cpu_witness=self.config.cpu_witness,
            snapshot=self.config.snapshot,
            witness=plans_witness(self.config, cell),
            mark_boot=lambda: log_boot(workdir),
        )
        why = flavour.unsupported(job, backend)
        if why is not None:
            return uniform(cell, Outcome.SKIPPED, why)
        try:
            ran = flavour.run(job, backend)
        except (RigError, OSError) as exc:
            return uniform(cell, Outcome.ERROR, infra_reason(exc))
        if ran.error is not None:
            build_log = ran.build.log if ran.build else ""
            return uniform(cell, Outcome.ERROR, infra_reason(ran.error), build_log=build_log)
        if ran.boot is not None:
            record_boot(workdir, ran.boot)
        arranged = replace(arrangements(self.config), witness=ran.witness)
        if not ran.witness:
            arranged = replace(arranged, beside="")  # the flavour could not set it up
        profile = profile_named(self.config.profile, strict_build=self.config.strict_build)
        verdict = judge(cell, ran.build, ran.boot, arranged, profile)
        return replace(verdict, timings={**ran.timings, **verdict.timings})
