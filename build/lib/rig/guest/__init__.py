"""Guest flavours: how a cell's guest is made, how its one agent runs, what it reports.

    flavour_for(name).run(job, lane) -> GuestRun(build, boot, timings)

Two flavours, as equals behind one protocol: `initramfs` (the module built on the host, a
busybox appliance whose /init runs the agent; any lane boots it) and `vm` (a disposable Debian
VM that compiles the module itself; the agent runs over SSH; lanes that can attach disks and a
network). Both run the same agent script (guests/agent/rig-agent) and hand the judge the same
two channels: the kernel's console and the agent's protocol.
"""

from __future__ import annotations

from rig.errors import UsageError
from rig.guest.base import Flavour, GuestJob, GuestRun


def flavour_for(name: str) -> Flavour:
    from rig.guest.initramfs import InitramfsFlavour
    from rig.guest.vm import VmFlavour

    flavours: dict[str, Flavour] = {"initramfs": InitramfsFlavour(), "vm": VmFlavour()}
    if name not in flavours:
        raise UsageError(f"unknown guest flavour {name!r}", fix=f"one of: {', '.join(flavours)}")
    return flavours[name]


__all__ = ["Flavour", "GuestJob", "GuestRun", "flavour_for"]
