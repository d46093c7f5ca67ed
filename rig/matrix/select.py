"""A validated matrix and the cells selected from it.

    Matrix.select(lanes, kernels, cpus, everything=False)   the cells of one run
    Matrix.all_cells() / Matrix.cell(lane, kernel, cpu)
    parse_shard("2/4") -> (2, 4); shard(cells, 2, 4)          one part of a selection
    cells_json(cells)                                         the cells as plain JSON data

Selection rule (documented for `rig run`): an axis given on the command line selects those names
from the whole matrix; an axis not given falls back to `default_slice` in matrix.yaml (one cross
product, or a list of them: a cell is in the default slice when one entry holds it, with the
given axes replacing that entry's names); with
`everything=True` an axis not given means every name on it. Cells that cannot run (the lane has
no model for the CPU, or an `exclude` entry matches) are returned with `skip_reason` set: they
are never dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rig.errors import UsageError
from rig.model import Cell, CpuSpec, KernelSpec, LaneSpec


@dataclass(frozen=True)
class Exclusion:
    lane: str | None
    kernel: str | None
    cpu: str | None
    reason: str

    def matches(self, lane: str, kernel: str, cpu: str) -> bool:
        return (
            self.lane in (None, lane) and self.kernel in (None, kernel) and self.cpu in (None, cpu)
        )


@dataclass(frozen=True)
class Slice:
    lanes: tuple[str, ...]
    kernels: tuple[str, ...]
    cpus: tuple[str, ...]


@dataclass(frozen=True)
class Matrix:
    """A validated matrix. Dicts keep the order of matrix.yaml."""

    source: str
    kernels: dict[str, KernelSpec]
    cpus: dict[str, CpuSpec]
    lanes: dict[str, LaneSpec]
    exclude: tuple[Exclusion, ...]
    default_slice: Slice  # the names on each axis of the default slice(s)
    # the default selection: the union of these cross products (default: `default_slice`)
    default_slices: tuple[Slice, ...] = ()
    timeout_s: int = 400
    memory_mib: int = 512
    vcpus: int = 1
    lane_overrides: dict[str, tuple[int | None, int | None, int | None]] = field(
        default_factory=dict
    )

    def with_kernels(self, specs: Iterable[KernelSpec]) -> Matrix:
        """This matrix with more kernels (one-off kernels of `rig run --kernel PATH`)."""
        return replace(self, kernels={**self.kernels, **{k.name: k for k in specs}})

    # ----------------------------------------------------------------- selection
    def select(
        self,
        lanes: Iterable[str] | None = (),
        kernels: Iterable[str] | None = (),
        cpus: Iterable[str] | None = (),
        *,
        everything: bool = False,
        full: bool = False,
    ) -> list[Cell]:
        """Cells for these filters, ordered lane, kernel, CPU.

        An axis with names selects exactly those (from the whole matrix, in the order given);
        an empty (or None) axis means `default_slice`'s names, or every name of the axis when
        `everything` is true (`full` is the older name of `everything`).
        Raises UsageError (exit 2) for an unknown name, listing the valid ones.
        """
        every = everything or full
        lane_names = self._axis(
            "lane", list(lanes or ()), self.lanes, self.default_slice.lanes, every
        )
        kernel_names = self._axis(
            "kernel", list(kernels or ()), self.kernels, self.default_slice.kernels, every
        )
        cpu_names = self._axis("cpu", list(cpus or ()), self.cpus, self.default_slice.cpus, every)
        given = (bool(lanes), bool(kernels), bool(cpus))
        slices = () if every or all(given) else (self.default_slices or (self.default_slice,))

        def in_default(lane: str, kernel: str, cpu: str) -> bool:
            return not slices or any(
                (given[0] or lane in s.lanes)
                and (given[1] or kernel in s.kernels)
                and (given[2] or cpu in s.cpus)
                for s in slices
            )

        return [
            self.cell(lane, kernel, cpu)
            for lane in lane_names
            for kernel in kernel_names
            for cpu in cpu_names
            if in_default(lane, kernel, cpu)
        ]

    def all_cells(self) -> list[Cell]:
        return self.select(everything=True)

    def cell(self, lane: str, kernel: str, cpu: str) -> Cell:
        """The one cell lane x kernel x cpu, with its skip reason if it cannot run."""
        self._axis("lane", [lane], self.lanes, (), True)
        self._axis("kernel", [kernel], self.kernels, (), True)
        self._axis("cpu", [cpu], self.cpus, (), True)
        lane_spec, cpu_spec = self.lanes[lane], self.cpus[cpu]
        skip: str | None = None
        for rule in self.exclude:
            if rule.matches(lane, kernel, cpu):
                skip = f"excluded in {Path(self.source).name}: {rule.reason}"
                break
        if skip is None and cpu_spec.model_for(lane) is None:
            skip = f"lane '{lane}' has no CPU model for '{cpu}'"
        timeout, memory, vcpus = self.lane_overrides.get(lane, (None, None, None))
        return Cell(
            lane=lane_spec,
            kernel=self.kernels[kernel],
            cpu=cpu_spec,
            timeout_s=timeout if timeout is not None else self.timeout_s,
            memory_mib=memory if memory is not None else self.memory_mib,
            vcpus=vcpus if vcpus is not None else self.vcpus,
            skip_reason=skip,
        )

    def _axis(
        self,
        axis: str,
        wanted: list[str],
        known: dict[str, Any],
        default: tuple[str, ...],
        every: bool,
    ) -> list[str]:
        if not wanted:
            return list(known) if every else list(default)
        unknown = [w for w in wanted if w not in known]
        if unknown:
            names = ", ".join(repr(u) for u in unknown)
            raise UsageError(
                f"unknown {axis} {names} (not in {self.source})",
                fix=f"valid {axis} names: {', '.join(known)}",
            )
        return list(dict.fromkeys(wanted))


# --------------------------------------------------------------------------- shards
_SHARD_RE = re.compile(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*")
_SHARD_FIX = "write the shard as I/N with 1 <= I <= N, e.g. 1/4 for the first of four"


def _check_shard(index: int, count: int, spec: str) -> None:
    if count < 1 or not 1 <= index <= count:
        raise UsageError(
            f"shard {spec!r} is out of range: the index must be between 1 and the count",
            fix=_SHARD_FIX,
        )


def parse_shard(spec: str) -> tuple[int, int]:
    """'2/4' -> (2, 4): the second of four shards. UsageError (exit 2) for anything else."""
    m = _SHARD_RE.fullmatch(spec)
    if m is None:
        raise UsageError(f"shard {spec!r} is not of the form I/N", fix=_SHARD_FIX)
    index, count = int(m[1]), int(m[2])
    _check_shard(index, count, spec)
    return index, count


def shard(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
    """Shard `index` of `count` (1-based) of a selection, in the selection's order.

    The cells are dealt round-robin: first the runnable ones, then the skipped ones, each
    group sorted by cell id. So every cell is in exactly one shard, the shards' sizes differ
    by at most one and so do their numbers of runnable cells, and which shard a cell is in
    depends on the set of cells selected, not on the order of matrix.yaml or the command line.
    """
    _check_shard(index, count, f"{index}/{count}")
    dealt = sorted(range(len(cells)), key=lambda i: (cells[i].skip_reason is not None, cells[i].id))
    mine = {i for turn, i in enumerate(dealt) if turn % count == index - 1}
    return [cell for i, cell in enumerate(cells) if i in mine]


def cells_json(cells: Iterable[Cell]) -> list[dict[str, str | None]]:
    """The cells as JSON-ready dicts (for the nightly's shard planning and for tools)."""
    return [
        {
            "id": c.id,
            "lane": c.lane.name,
            "kernel": c.kernel.name,
            "kernel_abi": c.kernel.abi or c.kernel.describe(),
            "cpu": c.cpu.name,
            "cpu_model": c.cpu_model,
            "skip_reason": c.skip_reason,
        }
        for c in cells
    ]
