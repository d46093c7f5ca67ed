"""Lane backends: interchangeable ways of booting a guest (see rig.lanes.base.Backend)."""

from __future__ import annotations

from pathlib import Path

from rig.errors import UsageError
from rig.lanes.base import Backend
from rig.lanes.bochs import BochsBackend
from rig.lanes.libvirt import EMBED, LibvirtBackend
from rig.lanes.nested import NestedBackend
from rig.model import LaneSpec


def backend_for(lane: LaneSpec, *, embed_pool: Path, uri: str | None = None) -> Backend:
    if lane.backend == "bochs":
        # snapshots live in the cache root, beside the embedded pool (cli/plugin)
        return BochsBackend(name=lane.name, cache_root=embed_pool.parent, emulator=lane.emulator)
    if lane.backend == "libvirt":
        where = uri or lane.uri or EMBED
        return LibvirtBackend(
            name=lane.name,
            domain_type=lane.domain_type,
            uri=where,
            require_vmx=lane.vmx,
            embed_pool=embed_pool,
            # saves restore under the embedded driver, tested under TCG (rig.lanes.libvirt)
            restores=where == EMBED and lane.domain_type == "qemu",
        )
    if lane.backend == "nested":
        # the embedded pool lives in the cache root (cli/plugin): L1's image is cached there too
        return NestedBackend(name=lane.name, l1_kernel=lane.l1_kernel, l0_cpus=lane.l0_cpus,
                             cache_root=embed_pool.parent, launcher=lane.launcher)  # fmt: skip
    raise UsageError(f"lane {lane.name!r}: unknown backend {lane.backend!r}")


__all__ = ["Backend", "BochsBackend", "LibvirtBackend", "NestedBackend", "backend_for"]
