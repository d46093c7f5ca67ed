"""The allocation witness's records (docs/contract.md section 2, `RIG-ALLOC`).

    parse_alloc(lines) -> AllocWitness     one run's records, never raises
    alloc_witness(run) -> AllocWitness     the same, from a parsed run (RawRun.live)

In every load/unload cycle the agent (guests/agent/rig-agent) traces the guest kernel's own
kmem tracepoints (mm_page_alloc, kmalloc, kmalloc_node with a stack each; mm_page_free,
mm_page_free_batched, kfree) from just before insmod to just after rmmod, and says after the
rmmod what the module allocated (an allocation whose call site, the first frame past the
allocator's own functions, is in the module) and which of those allocations the page
allocator or slab never got back:

    RIG-ALLOC summary allocated=<n> freed=<n> held=<n> pages=<n> held_pages=<n> lost=<n>
        unattributed=<n>                       (one line)
    RIG-ALLOC held kind=page pfn=<pfn> order=<n> site=<frame>
    RIG-ALLOC held kind=kmalloc ptr=<address> bytes=<n> site=<frame>
    RIG-ALLOC held-more count=<n>
    RIG-ALLOC off reason=<word>

What the lines mean for the driver is rig.verdict.pages's business. Only protocol records
count (rig.guest.protocol.is_record): kernel text holding `RIG-ALLOC` is never read here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from rig.guest.protocol import RawRun, is_record

MAX_HELD = 64  # held lines read from one run (the agent writes at most 20, then a count)
SUMMARY_RE = re.compile(r"\s*RIG-ALLOC\s+summary\b(?P<rest>.*)$")
FIELD_RE = re.compile(r"\b(?P<name>[a-z_]{1,16})=(?P<value>-?\d{1,12})\b")
HELD_RE = re.compile(
    r"\s*RIG-ALLOC\s+held\s+kind=(?P<kind>page|kmalloc)\s+(?P<what>.*?)\s*\bsite=(?P<site>.*)$"
)
MORE_RE = re.compile(r"\s*RIG-ALLOC\s+held-more\s+count=(?P<n>\d{1,12})\b")
OFF_RE = re.compile(r"\s*RIG-ALLOC\s+off\b(?:\s+reason=(?P<reason>\S{0,64}))?")
ANY_RE = re.compile(r"\s*RIG-ALLOC\b")

# why the agent could not trace (RIG-ALLOC off reason=<word>), in words
OFF_REASONS = {
    "no_tracefs": "the guest kernel has no tracefs mounted",
    "no_snapshot": "the guest kernel's tracer has no snapshot buffer",
    "no_trace_marker": "the guest kernel's tracefs has no trace_marker",
    "no_tracing_on": "the guest kernel's tracefs has no tracing_on",
    "no_sym-offset": "the guest kernel's tracer has no sym-offset option",
    "no_kmem_events": "the guest kernel has no kmem tracepoints (or no event triggers)",
    "setup_failed": "the guest kernel refused to enable the kmem tracepoints",
}


@dataclass(frozen=True)
class HeldAlloc:
    """One allocation the module made that was not handed back by the end of its rmmod."""

    kind: str  # page | kmalloc
    what: str  # `pfn=0x2630 order=0` | `ptr=ffff8be002461000 bytes=4096`
    site: str  # its call site: `vml_alloc+0x4a/0x1f0 [vmlaunch]`, or
    # `0xffffffffc03e8058 [vmlaunch init]` (__init code, gone when the trace was read)
    raw: str  # the record


@dataclass(frozen=True)
class AllocWitness:
    """What the guest kernel's page allocator and slab saw of one run of the module."""

    allocated: int = 0  # allocations whose call site is in the module
    freed: int = 0  # of those, handed back by the end of rmmod
    held: int = 0  # still held after rmmod
    held_sites: tuple[HeldAlloc, ...] = ()  # the first of them (at most 20), as listed
    seen: bool = False  # the tracing worked: a summary record came
    note: str = ""  # why not seen, or what limits what was seen
    pages: int = 0  # pages in the page allocations (2^order each)
    held_pages: int = 0  # of those, still held
    lost: int = 0  # trace events the ring buffer overwrote (it overflowed)
    unattributed: int = 0  # allocations whose stack or address could not be read
    more: int = 0  # held allocations beyond the listed ones (held-more)
    evidence: tuple[str, ...] = ()  # the RIG-ALLOC records


def parse_alloc(lines: Iterable[str]) -> AllocWitness:
    """One run's allocation witness from its lines (protocol records only; kernel text is
    skipped). Never raises; a run without any RIG-ALLOC record is `seen=False`."""
    records = [ln.strip() for ln in lines if is_record(ln) and ANY_RE.match(ln)]
    if not records:
        return AllocWitness(note="no RIG-ALLOC record: the allocation witness did not report")
    evidence = tuple(records[: MAX_HELD + 4])
    off = next((m for ln in records if (m := OFF_RE.match(ln))), None)
    summary = next((m for ln in records if (m := SUMMARY_RE.match(ln))), None)
    if summary is None:
        if off is not None:
            reason = off["reason"] or "unknown"
            said = OFF_REASONS.get(reason, f"reason {reason}")
            return AllocWitness(
                note=f"the allocation witness could not run: {said}", evidence=evidence
            )
        return AllocWitness(
            note="no RIG-ALLOC summary: the allocation witness did not finish", evidence=evidence
        )
    fields = {m["name"]: int(m["value"]) for m in FIELD_RE.finditer(summary["rest"])}
    held = tuple(
        HeldAlloc(m["kind"], " ".join(m["what"].split()), m["site"].strip(), ln)
        for ln in records[: MAX_HELD + 4]
        if (m := HELD_RE.match(ln))
    )[:MAX_HELD]
    more = next((int(m["n"]) for ln in records if (m := MORE_RE.match(ln))), 0)
    w = AllocWitness(
        allocated=max(fields.get("allocated", 0), 0),
        freed=max(fields.get("freed", 0), 0),
        held=max(fields.get("held", 0), 0),
        held_sites=held,
        seen=True,
        pages=max(fields.get("pages", 0), 0),
        held_pages=max(fields.get("held_pages", 0), 0),
        lost=max(fields.get("lost", 0), 0),
        unattributed=max(fields.get("unattributed", 0), 0),
        more=more,
        evidence=evidence,
    )
    notes = []
    if w.lost:
        notes.append(f"the trace buffer overflowed ({w.lost} events lost)")
    if w.unattributed:
        notes.append(f"{w.unattributed} allocations could not be attributed (no stack or address)")
    if w.held != len(held) + more:
        notes.append(f"summary says {w.held} held, {len(held) + more} listed")
    return replace(w, note="; ".join(notes)) if notes else w


def alloc_witness(run: RawRun) -> AllocWitness:
    """The allocation witness of one parsed run (its records sit between `RIG-STEP rmmod` and
    its dump, in RawRun.live)."""
    return parse_alloc(run.live)
