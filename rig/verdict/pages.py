"""The allocation witness's rule: did every allocation the module made come back by the end
of its rmmod, as the page allocator and slab saw it (rig.guest.alloc, `RIG-ALLOC` records)?

    judge_pages(witness, driver_freed_pages, module=...) -> WitnessFinding | None

The driver's own `freed ok pages=N` line is its word; the guest kernel's kmem tracepoints are
the witness. Allocations still held after rmmod fail `teardown` with both sides in the
reason; everything handed back passes with the counts; a witness that could not run (no
tracefs) or could not see everything (its buffer overflowed) says so and decides nothing.
"""

from __future__ import annotations

from rig.guest.alloc import AllocWitness, HeldAlloc
from rig.model import Outcome
from rig.verdict.witness import WitnessFinding

SITES_SHOWN = 3  # call sites named in a reason


def _sites(held: tuple[HeldAlloc, ...], more: int) -> str:
    """`5 pages from vml_alloc+0x4a/0x1f0 [vmlaunch]; 1 kmalloc from ...`, in listed order."""
    groups: dict[tuple[str, str], int] = {}
    for h in held:
        groups[(h.kind, h.site)] = groups.get((h.kind, h.site), 0) + 1
    said = [
        f"{n} {kind}{'s' if n > 1 else ''} from {site}"
        for (kind, site), n in list(groups.items())[:SITES_SHOWN]
    ]
    rest = sum(list(groups.values())[SITES_SHOWN:]) + more
    if rest:
        said.append(f"{rest} more")
    return "; ".join(said)


def _driver_said(driver_freed_pages: int | None) -> str:
    if driver_freed_pages is None:
        return "the driver reports no pages freed"
    return f"the driver reports {driver_freed_pages} pages freed"


def judge_pages(
    witness: AllocWitness | None,
    driver_freed_pages: int | None,
    *,
    module: str = "the module",
) -> WitnessFinding | None:
    """What the allocation witness says of one run, beside the driver's `freed ok pages=N`.

    None: no witness record at all for the run (the run never reached its rmmod: the hang or
    crash rules speak). FAILED: allocations the module made were still held after rmmod.
    PASSED: every one came back (the counts in the reason). SKIPPED: the witness could not
    run, or lost trace events while it seems to see allocations held: stated in the reason,
    and it decides nothing (the stage keeps the driver's word and says it was unwitnessed).
    """
    if witness is None:
        return None
    evidence = witness.evidence
    if not witness.seen:
        return WitnessFinding(
            Outcome.SKIPPED,
            f"no allocation witness: {witness.note or 'it did not report'}",
            evidence,
        )
    driver = _driver_said(driver_freed_pages)
    pages = f"{witness.held_pages} pages, " if witness.held_pages else ""
    if witness.held and witness.lost:
        return WitnessFinding(
            Outcome.SKIPPED,
            f"allocation witness not conclusive: {witness.held} allocations of {module} seem "
            f"held after rmmod, but the trace buffer overflowed ({witness.lost} events lost, "
            f"frees among them maybe); {driver}",
            evidence,
        )
    if witness.held:
        return WitnessFinding(
            Outcome.FAILED,
            f"{driver}, {witness.held} allocations it made were still held after rmmod "
            f"({pages}allocation witness: the guest kernel's kmem tracepoints): "
            f"site {_sites(witness.held_sites, witness.more)}",
            evidence,
        )
    unseen = (
        f"; {witness.unattributed} allocations could not be attributed"
        if witness.unattributed
        else ""
    )
    if not witness.allocated:
        return WitnessFinding(
            Outcome.PASSED,
            f"the allocation witness saw no allocation by {module} (page allocator, kmalloc); "
            f"{driver}{unseen}",
            evidence,
        )
    return WitnessFinding(
        Outcome.PASSED,
        f"every allocation of {module} came back by the end of rmmod: {witness.allocated} "
        f"allocations ({witness.pages} pages) made, {witness.freed} freed (allocation "
        f"witness); {driver}{unseen}",
        evidence,
    )
