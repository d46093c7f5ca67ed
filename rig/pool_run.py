"""A libvirt cell of a pool run (rig.pool): lease a slot, run there, and when the host was
lost mid-cell, mark it dead and run the cell once more on another live host.

The cell directory records where it ran: LEASE_FILE (the last attempt's host, slot, URI) and
ATTEMPTS_FILE (every attempt: host, slot, outcome, reason, and whether the host was lost);
the files of a first attempt that lost its host move to `attempt-1/`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rig.lanes import backend_for
from rig.lanes.libvirt_remote import is_remote
from rig.model import Cell, CellVerdict, Outcome, StageVerdict
from rig.pool import DEAD_DIR, Lease, NoLiveHost, Pool, PoolHost, parse_uri, ping
from rig.runner import CellRunner, infra_reason, uniform
from rig.runs import PIDFILES, SCRATCH

LEASE_FILE = "lease.json"
ATTEMPTS_FILE = "attempts.json"
KEPT = (LEASE_FILE, ATTEMPTS_FILE)


def _write(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def read_attempts(cell_dir: Path) -> list[dict[str, Any]]:
    try:
        data: list[dict[str, Any]] = json.loads((cell_dir / ATTEMPTS_FILE).read_text())
    except (OSError, ValueError):
        return []
    return data


def read_lease(cell_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((cell_dir / LEASE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data


def _errored(verdict: CellVerdict) -> StageVerdict | None:
    return next((v for v in verdict.stages.values() if v.outcome is Outcome.ERROR), None)


def _set_aside(workdir: Path, attempt: int) -> None:
    """The logs of an attempt that lost its host, kept in `attempt-N/` (the verdict's lock,
    pid files and scratch stay where rig.runs looks for them)."""
    keep = workdir / f"attempt-{attempt}"
    keep.mkdir(exist_ok=True)
    stay = {*KEPT, "verdict.lock", *PIDFILES, *SCRATCH}
    for entry in workdir.iterdir():
        if entry.name in stay or entry.name.startswith("attempt-") or entry.is_symlink():
            continue
        shutil.move(str(entry), str(keep / entry.name))


def _lost(cell: Cell, verdict: CellVerdict, lease: Lease, why: str) -> CellVerdict:
    """The attempt's verdict: an infrastructure ERROR naming the lost host."""
    first = _errored(verdict)
    detail = first.reason.removeprefix("infrastructure: ") if first else ""
    reason = f"infrastructure: libvirt host {lease.host.host} lost mid-cell ({why}): {detail}"
    stages = {s: StageVerdict(s, Outcome.ERROR, reason) for s in verdict.stages}
    return CellVerdict(cell_id=cell.id, stages=stages, build_log=verdict.build_log)


def _unable(runner: CellRunner, cell: Cell, why: dict[str, str]) -> CellVerdict:
    """No host of the pool can run the cell's lane: a skip, or an ERROR if it is required."""
    reasons = "; ".join(f"{host}: {reason}" for host, reason in why.items())
    lane = cell.lane.name
    if lane in runner.config.required_lanes:
        why_not = f"lane {lane} is required (--require-lane) but no libvirt host of the run "
        return uniform(cell, Outcome.ERROR, f"infrastructure: {why_not}can run it: {reasons}")
    return uniform(
        cell, Outcome.SKIPPED, f"lane {lane} cannot run on any libvirt host of the run: {reasons}"
    )


def run_cell(runner: CellRunner, cell: Cell) -> CellVerdict:
    """The cell's verdict: a libvirt cell of a run with --uri leases a slot on a live host
    first and is retried once elsewhere when its host is lost mid-cell (run_leased); any
    other cell runs on its lane's own (CellRunner.run)."""
    pooled = cell.lane.backend == "libvirt" and runner.config.uris
    if pooled and not cell.skip_reason and cell.cpu_model is not None:
        return run_leased(runner, cell)
    return runner.run(cell)


def run_leased(runner: CellRunner, cell: Cell) -> CellVerdict:
    config = runner.config
    pool = Pool(config.run_dir, [parse_uri(u) for u in config.uris])
    workdir = config.run_dir / "cells" / cell.id
    workdir.mkdir(parents=True, exist_ok=True)
    lane = cell.lane.name

    def preflight(host: PoolHost) -> str | None:  # the lane's own check, there (KVM)
        why = backend_for(cell.lane, embed_pool=runner.embed_pool, uri=host.uri).unavailable()
        return why.replace(host.uri, host.host) if why else None  # no key file named

    attempts: list[dict[str, Any]] = []
    lost: CellVerdict | None = None  # the first attempt's, when it lost its host
    for attempt in (1, 2):
        try:
            with pool.lease(cell.id, lane, preflight) as lease:
                fact = {"attempt": attempt, "host": lease.host.host, "slot": lease.slot,
                        "uri": lease.host.uri}  # fmt: skip
                _write(workdir / LEASE_FILE, fact)
                verdict = runner.run_on(cell, lease.host.uri)
                why = None
                # the host or the boot? Asked only when another live host could take the cell
                # (a frozen host answers nothing: the ask costs PING_TIMEOUT_S)
                others = [h for h in pool.live() if h != lease.host]
                if _errored(verdict) is not None and is_remote(lease.host.uri) and others:
                    why = ping(lease.host.uri)
        except NoLiveHost as exc:
            if lost is None and pool.live():  # hosts answer, none can run the lane
                return _unable(runner, cell, pool.dead(lane))
            verdict = uniform(cell, Outcome.ERROR, infra_reason(exc))
            reason = verdict.stages["build"].reason
            attempts.append({"attempt": attempt, "host": None, "slot": None,
                             "outcome": "error", "reason": reason})  # fmt: skip
            _write(workdir / ATTEMPTS_FILE, attempts)
            return lost or verdict
        if why is not None:
            pool.mark_dead(lease.host, why)
            verdict = _lost(cell, verdict, lease, why)
        worst = _errored(verdict) or next(iter(verdict.stages.values()))
        attempts.append({**fact, "outcome": worst.outcome.value, "reason": worst.reason,
                         "host_lost": why})  # fmt: skip
        _write(workdir / ATTEMPTS_FILE, attempts)
        if why is None or attempt == 2 or not pool.live():
            return verdict
        lost = verdict
        _set_aside(workdir, attempt)
        print(f"rig: {cell.id}: host {lease.host.host} lost mid-cell; once more on another host",
              flush=True)  # fmt: skip
    return verdict


def where_it_ran(cell_dir: Path, default_uri: str) -> list[tuple[str, str]]:
    """A libvirt cell's JUnit properties: uri, host (no credentials) and slot of its lease,
    and every host an earlier attempt lost (lost_host)."""
    lease = read_lease(cell_dir)
    if lease is None:
        return [("uri", default_uri)]
    props = [("uri", str(lease["uri"])), ("host", str(lease["host"])), ("slot", str(lease["slot"]))]
    props += [("lost_host", str(a["host"])) for a in read_attempts(cell_dir) if a.get("host_lost")]
    props += [("dead_host", f"{host}: {why}") for host, why in dead_hosts(cell_dir.parent.parent)]
    return props


def dead_hosts(run_dir: Path) -> list[tuple[str, str]]:
    """(host, why) of every host the run gave up on so far (rig.pool.DEAD_DIR), for every
    lane (why: its reason) or for one (why: `lane L: reason`)."""
    found = []
    for path in sorted((run_dir / DEAD_DIR).glob("*.json")):
        try:
            fact = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        lane = f"lane {fact['lane']}: " if fact.get("lane") else ""
        found.append((str(fact["host"]), lane + str(fact["reason"])))
    return found
