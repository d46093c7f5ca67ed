"""The runner labels of the nightly's shards (rig.matrix.runners, `rig matrix --shards N`)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig.matrix import (
    EMULATION_LABEL,
    KVM_LABEL,
    SELF_HOSTED_LABELS,
    needs_kvm,
    parse_matrix,
    runner_plan,
    shard,
    shard_labels,
)
from rig.model import Cell, CpuSpec, KernelSpec, LaneSpec
from tests.unit.reportkit import REPO, rig

MATRIX = """\
version: 1
kernels:
  "6.12": {suite: trixie, abi: "6.12.117+deb13-amd64"}
cpus:
  penryn: {bochs: core2_penryn_t9600, tcg: Penryn, kvm: Penryn, nested: Penryn}
  haswell: {bochs: corei7_haswell_4770, kvm: Haswell-noTSX}
  tigerlake: {bochs: tigerlake}
lanes:
  bochs: {backend: bochs, vmx: true}
  tcg: {backend: libvirt, vmx: false, domain_type: qemu}
  kvm: {backend: libvirt, vmx: true, domain_type: kvm, guest: vm}
  nested: {backend: nested, vmx: true, l1_kernel: "6.12", l0_cpu: corei7_haswell_4770}
exclude:
  - {lane: kvm, cpu: haswell, reason: "no such runner"}
default_slice: {lanes: [bochs], kernels: ["6.12"], cpus: [penryn]}
"""

LANES = {
    "bochs": LaneSpec("bochs", "bochs", vmx=True),
    "tcg": LaneSpec("tcg", "libvirt", vmx=False, domain_type="qemu"),
    "kvm": LaneSpec("kvm", "libvirt", vmx=True, domain_type="kvm", guest="vm"),
    "nested": LaneSpec("nested", "nested", vmx=True),
    "nestedvirt": LaneSpec("nestedvirt", "nested", vmx=True, launcher="libvirt"),
}


def test_only_a_libvirt_lane_on_kvm_needs_the_hosts_kvm() -> None:
    assert [name for name, lane in LANES.items() if needs_kvm(lane)] == ["kvm"]


def test_labels_by_the_lanes_of_the_runnable_cells() -> None:
    m = parse_matrix(MATRIX, "m.yaml")
    cell = m.cell
    base = list(SELF_HOSTED_LABELS)
    assert base == ["self-hosted", "linux"]
    assert shard_labels([cell("bochs", "6.12", "penryn"), cell("kvm", "6.12", "penryn")]) == [
        *base,
        KVM_LABEL,
    ]
    software = [cell(lane, "6.12", "penryn") for lane in ("bochs", "tcg", "nested")]
    assert shard_labels(software) == [*base, EMULATION_LABEL]
    # a skipped kvm cell (excluded; no model) boots nothing: no KVM needed for it
    skipped = [cell("kvm", "6.12", "haswell"), cell("kvm", "6.12", "tigerlake")]
    assert all(c.skip_reason for c in skipped)
    assert shard_labels([*software, *skipped]) == [*base, EMULATION_LABEL]
    assert shard_labels([]) == [*base, EMULATION_LABEL]  # more shards than cells
    assert (KVM_LABEL, EMULATION_LABEL) == ("kvm-nested", "emulation")


def test_runner_plan_is_one_entry_per_shard_of_the_same_split() -> None:
    m = parse_matrix(MATRIX, "m.yaml")
    cells = m.all_cells()
    plan = runner_plan(cells, 5)
    assert [p["shard"] for p in plan] == [f"{i}/5" for i in range(1, 6)]
    for i, entry in enumerate(plan, 1):
        part = shard(cells, i, 5)
        kvm = any(c.lane.name == "kvm" and c.skip_reason is None for c in part)
        assert entry["kvm"] is kvm
        assert entry["labels"] == shard_labels(part)
        assert (KVM_LABEL in entry["labels"]) is kvm
    assert json.loads(json.dumps(plan)) == plan
    assert runner_plan([], 2) == [
        {"shard": f"{i}/2", "labels": [*SELF_HOSTED_LABELS, EMULATION_LABEL], "kvm": False}
        for i in (1, 2)
    ]


_KERNEL = KernelSpec("6.12", "trixie", "6.12.117+deb13-amd64")


@st.composite
def cells(draw: st.DrawFn) -> list[Cell]:
    picked = draw(
        st.lists(
            st.tuples(st.sampled_from(sorted(LANES)), st.integers(0, 30), st.booleans()),
            max_size=40,
            unique_by=lambda t: (t[0], t[1]),
        )
    )
    return [
        Cell(
            lane=LANES[lane],
            kernel=_KERNEL,
            cpu=CpuSpec(f"cpu{n}", {lane: "Model"}),
            skip_reason="excluded" if skipped else None,
        )
        for lane, n, skipped in picked
    ]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(cells(), st.integers(1, 12))
def test_every_shard_gets_labels_and_a_kvm_cell_always_gets_kvm_nested(
    selection: list[Cell], count: int
) -> None:
    plan = runner_plan(selection, count)
    assert [p["shard"] for p in plan] == [f"{i}/{count}" for i in range(1, count + 1)]
    for i, entry in enumerate(plan, 1):
        labels = entry["labels"]
        assert labels[:2] == list(SELF_HOSTED_LABELS)
        assert (KVM_LABEL in labels) != (EMULATION_LABEL in labels)  # exactly one of them
        part = shard(selection, i, count)
        if any(c.lane.name == "kvm" and c.skip_reason is None for c in part):
            assert KVM_LABEL in labels and entry["kvm"] is True
        else:
            assert labels == [*SELF_HOSTED_LABELS, EMULATION_LABEL] and entry["kvm"] is False


def test_rig_matrix_shards_json_lists_the_runners() -> None:
    plan = json.loads(rig("matrix", "--all", "--json", "--shards", "8", cwd=REPO).stdout)
    assert plan["shards"] == [f"{i}/8" for i in range(1, 9)]  # unchanged: report reads it
    assert [r["shard"] for r in plan["runners"]] == plan["shards"]
    for r in plan["runners"]:
        assert r["labels"][:2] == ["self-hosted", "linux"]
        assert r["labels"][2] == ("kvm-nested" if r["kvm"] else "emulation")
        ids = {
            c["id"]
            for c in json.loads(
                rig("matrix", "--all", "--shard", r["shard"], "--json", cwd=REPO).stdout
            )
            if not c["skip_reason"]
        }
        assert r["kvm"] is any(i.startswith("kvm-") for i in ids)
