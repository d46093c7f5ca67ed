"""What a dead run left on the libvirt hosts it used (`rig clean`, and every `rig run` first).

A run records the URIs its cells could lease (rig.pool.URIS_FILE). Once no process of the run
is left (its run.lock unheld), each of those hosts is asked, in a child process with a timeout
(`python -m rig.remote_sweep URI NAME...`), to destroy (and undefine) the domains named
exactly `rig-<run id>-<cell>` for the run's cell directories, and to delete the per-boot
volumes `<that name>.initrd` from the rig's pool: nothing of another run, nothing shared (the
kernels). A run whose every host answered is done: its record becomes `uris.swept.json`. A
host that does not answer (asked once per sweep, TIMEOUT_S at most) is tried again next time,
for a day (then the host's own sweep of stale volumes, rig.lanes.libvirt_remote.sweep_stale,
and AUTODESTROY have the rest).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rig.lanes.libvirt_remote import POOL, STALE_S
from rig.pool import URIS_FILE, public, run_child
from rig.runs import lock_held

SWEPT_FILE = "uris.swept.json"
TIMEOUT_S = 30.0


@dataclass
class RemoteSweep:
    domains: list[str] = field(default_factory=list)  # "host: name"
    volumes: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)  # "host: why"


def _names(run_dir: Path) -> list[str]:
    cells = run_dir / "cells"
    if not cells.is_dir() or cells.is_symlink():
        return []
    return sorted(f"rig-{run_dir.name}-{c.name}" for c in cells.iterdir() if c.is_dir())


def _local_only(uri: str) -> bool:
    """The embedded driver's URIs: rig.runs.sweep_embed_pool sweeps those."""
    return uri == "embed" or uri.startswith("qemu:///embed")


def sweep_remote(runs_root: Path, now: float | None = None) -> RemoteSweep:
    result = RemoteSweep()
    failed: set[str] = set()
    now = time.time() if now is None else now
    if not runs_root.is_dir():
        return result
    for run_dir in sorted(runs_root.iterdir()):
        record = run_dir / URIS_FILE
        if run_dir.is_symlink() or not record.is_file() or record.is_symlink():
            continue
        if lock_held(run_dir / "run.lock") or now - record.stat().st_mtime > STALE_S:
            continue
        try:
            uris = [str(u) for u in json.loads(record.read_text())]
        except (OSError, ValueError):
            continue
        names = _names(run_dir)
        done = True
        for uri in uris:
            if _local_only(uri) or not names:
                continue
            if uri in failed:  # asked once per sweep: a dead host costs TIMEOUT_S once
                done = False
                continue
            why = _sweep_host(uri, names, result)
            if why is not None:
                done = False
                failed.add(uri)
                result.unreachable.append(f"{public(uri)}: {why}")
        if done:
            record.replace(run_dir / SWEPT_FILE)
    return result


def _sweep_host(uri: str, names: list[str], result: RemoteSweep) -> str | None:
    argv = [sys.executable, "-m", "rig.remote_sweep", uri, *names]
    rc, out = run_child(argv, TIMEOUT_S)
    if rc is None:
        return f"no answer in {TIMEOUT_S:.0f} s"
    if rc != 0:
        return (out.strip() or "failed").splitlines()[-1]
    gone = json.loads(out.strip().splitlines()[-1])
    result.domains += [f"{public(uri)}: {n}" for n in gone["domains"]]
    result.volumes += [f"{public(uri)}: {n}" for n in gone["volumes"]]
    return None


def _child(uri: str, names: list[str]) -> int:
    """Destroy the named domains and delete their per-boot volumes; print what went."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    wanted = set(names)
    initrds = {f"{n}.initrd" for n in names}
    gone: dict[str, list[str]] = {"domains": [], "volumes": []}
    try:
        conn = libvirt.open(uri)
        try:
            for dom in conn.listAllDomains(0):
                name = dom.name()
                if name not in wanted:
                    continue
                persistent = dom.isPersistent()  # a transient one is gone once destroyed
                if dom.isActive():
                    dom.destroy()
                if persistent:
                    dom.undefine()
                gone["domains"].append(name)
            try:
                pool = conn.storagePoolLookupByName(POOL)
            except libvirt.libvirtError:
                pool = None  # no rig pool on that host: no volume of ours
            for vol in pool.listAllVolumes(0) if pool is not None else ():
                if vol.name() in initrds:
                    vol.delete(0)
                    gone["volumes"].append(vol.name())
        finally:
            conn.close()
    except libvirt.libvirtError as exc:
        print(exc)
        return 1
    print(json.dumps(gone))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2:]))
