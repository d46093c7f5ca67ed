"""The guest flavour protocol: what a flavour gets (GuestJob) and gives (GuestRun)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rig.artifacts import Artifacts
from rig.errors import RigError
from rig.lanes import Backend
from rig.model import BootResult, Cell, ModuleBuild


@dataclass(frozen=True)
class GuestJob:
    """Everything one cell's guest needs, from the matrix cell and the run's settings."""

    cell: Cell
    cpu_model: str
    workdir: Path
    run_id: str
    driver: Path
    artifacts: Artifacts
    timeout_s: int
    module_params: tuple[str, ...] = ()
    repeat: int = 1
    preload: tuple[Path, ...] = ()
    kernel_args: tuple[str, ...] = ()
    feature_control: int | None = None
    inject: tuple[str, ...] = ()  # events the lane injects while the driver is loaded
    beside: str | None = None  # "kvm": KVM loaded first, holding VMX with a VM open
    crash: bool = False  # load the driver, then crash the guest into a kexec crash kernel
    cpu_witness: bool = False  # the lane's emulator logs the guest's VMX (--cpu-witness)
    snapshot: bool = False  # --snapshot: a lane that can restores the guest from a snapshot
    witness: bool = False  # after the last run, KVM loads and runs a VM (the teardown witness)
    mark_boot: Callable[[], None] = lambda: None  # called as the guest is started


@dataclass(frozen=True)
class GuestRun:
    build: ModuleBuild | None  # None: the module was never built (setup failed before)
    boot: BootResult | None  # None: nothing was booted (the module did not build, or `error`)
    timings: dict[str, float] = field(default_factory=dict)
    error: RigError | OSError | None = None  # infrastructure trouble after the build
    witness: bool = False  # the guest was given the teardown witness (job.witness, if it can)


class Flavour(Protocol):
    name: str

    def unsupported(self, job: GuestJob, lane: Backend) -> str | None:
        """Why this flavour cannot run this job on this lane (a stated skip), or None."""
        ...

    def run(self, job: GuestJob, lane: Backend) -> GuestRun:
        """Build, boot and run the agent. RigError/OSError for infrastructure trouble."""
        ...
