"""Which self-hosted runner each nightly shard needs: GitHub routes a shard by its labels.

    SELF_HOSTED_LABELS, KVM_LABEL, EMULATION_LABEL   the runner labels (README "CI")
    needs_kvm(lane)                 does this lane boot its guests on the host's own KVM?
    shard_labels(cells)             the labels the runner of one shard must carry
    runner_plan(cells, count)       `rig matrix --json --shards N`'s "runners": one entry a shard

Every shard runs on a self-hosted Linux runner. A shard with a runnable cell on a lane whose
guests boot on the host's KVM (a libvirt lane with `domain_type: kvm`: hardware VMX, kvm_intel
with nested=Y) needs a `kvm-nested` runner; a shard of software lanes only (Bochs, QEMU's TCG,
and the nested lanes, whose L0 is Bochs) runs on any runner labelled `emulation`. A skipped
cell (excluded, or its lane has no model for the CPU) boots nothing anywhere: it needs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypedDict

from rig.matrix.select import shard
from rig.model import Cell, LaneSpec

SELF_HOSTED_LABELS = ("self-hosted", "linux")
"""Every shard's runner: self-hosted (the boots need the runner's cache and Bochs), Linux."""
KVM_LABEL = "kvm-nested"
"""A runner with usable KVM and nested VMX (`rig doctor --lane kvm` passes there)."""
EMULATION_LABEL = "emulation"
"""A runner that runs the software lanes only (Bochs, QEMU/TCG, Bochs-backed nested)."""


class RunnerEntry(TypedDict):
    """One shard of the plan and the runner it needs (JSON: the "runners" list)."""

    shard: str  # "I/N", as in the plan's "shards" and `rig run --shard`
    labels: list[str]  # GitHub's runs-on: every label the runner must carry
    kvm: bool  # KVM_LABEL is among the labels: the shard needs the host's KVM


def needs_kvm(lane: LaneSpec) -> bool:
    """True for a lane whose guests run on the host's KVM (libvirt, `domain_type: kvm`)."""
    return lane.backend == "libvirt" and lane.domain_type == "kvm"


def shard_needs_kvm(cells: Iterable[Cell]) -> bool:
    """True when one of these cells is runnable and on a lane that needs the host's KVM."""
    return any(c.skip_reason is None and needs_kvm(c.lane) for c in cells)


def shard_labels(cells: Iterable[Cell]) -> list[str]:
    """The runner labels of the shard holding these cells: GitHub's `runs-on` for it."""
    extra = KVM_LABEL if shard_needs_kvm(cells) else EMULATION_LABEL
    return [*SELF_HOSTED_LABELS, extra]


def runner_plan(cells: Sequence[Cell], count: int) -> list[RunnerEntry]:
    """Per shard "I/N" of the selection: {"shard", "labels", "kvm"}, in shard order.

    `kvm` says whether the shard needs the kvm-nested runner (the workflow's doctor step and
    `--require-lane kvm` run only there). The shards are those of `shard(cells, i, count)`,
    so `rig run --shard I/N` runs exactly the cells these labels were chosen for.
    """
    plan: list[RunnerEntry] = []
    for index in range(1, count + 1):
        part = shard(cells, index, count)
        plan.append(
            RunnerEntry(
                shard=f"{index}/{count}", labels=shard_labels(part), kvm=shard_needs_kvm(part)
            )
        )
    return plan
