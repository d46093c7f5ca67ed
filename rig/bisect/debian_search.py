"""`rig bisect --debian SUITE[:LINE] --good V --bad V`: the versions of one Debian line.

Versions come in dpkg order from the suite's index (rig/bisect/debian_line.py); before a
version is built, its image and headers are looked for in the pools (debian_pool.probe): a
version whose files are gone is SKIP ("unreachable"), never bad. When the search ends on two
adjacent versions it names the upstream range to bisect next in a kernel git tree, and keeps
the good version's config (good-config in the run directory) to start that bisection from.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rig.artifacts import Artifacts
from rig.bisect.debian_line import (
    LineVersion,
    parse_suite_arg,
    select_range,
    upstream_range,
    versions_for,
)
from rig.bisect.debian_pool import probe
from rig.bisect.decide import RunMark
from rig.bisect.engine import Outcome, Stepper, bisect_list, verify
from rig.bisect.record import BisectArgs, RunRecord
from rig.errors import RigError
from rig.matrix import Matrix
from rig.model import KernelSpec


def search_debian(
    args: BisectArgs, matrix: Matrix, run_dir: Path, stepper: Stepper, artifacts: Artifacts
) -> Outcome:
    arg = parse_suite_arg(args.debian)
    template = next(iter(matrix.kernels.values()))
    versions = select_range(versions_for(template, arg), args.good, args.bad)
    by_label = {v.version: v for v in versions}
    inner = stepper.tester
    reach: dict[str, str | None] = {}
    urls: dict[str, tuple[str, ...]] = {}

    def tester(spec: KernelSpec, label: str, role: str, run: int) -> RunRecord:
        if label not in reach:
            found = probe(by_label[label], by_label[label].mirror)
            reach[label] = None if found.reachable else found.reason()
            urls[label] = tuple(found.urls)
        why = reach[label]
        if why is not None:
            return RunRecord(label, role, run, RunMark.SKIP, f"unreachable: {why}",
                             facts={"unreachable": True})  # fmt: skip
        # from the pool files the probe found: the index lists headers for few versions
        return inner(replace(spec, pool=urls[label]), label, role, run)

    stepper.tester = tester

    def spec_of(label: str) -> KernelSpec:
        return by_label[label].spec()

    labels = [v.version for v in versions]
    outcome = bisect_list(labels, spec_of, stepper)
    verify(outcome, spec_of, stepper)
    if outcome.first_bad is not None:
        outcome.next_step = _next_step(by_label[outcome.last_good], by_label[outcome.first_bad],
                                       run_dir, artifacts)  # fmt: skip
    return outcome


def _next_step(good: LineVersion, bad: LineVersion, run_dir: Path, artifacts: Artifacts) -> str:
    """The git bisection that goes below these two versions, with the good one's config."""
    tag_good, tag_bad = upstream_range(good, bad)
    config = run_dir / "good-config"
    try:
        kernel = artifacts.kernel(good.spec())
        config.write_text((kernel.chroot / kernel.headers.relative_to("/") / ".config").read_text())
    except (RigError, OSError) as exc:
        return (f"rig bisect --kernel-tree LINUX --good {tag_good} --bad {tag_bad} "
                f"(the good version's config could not be kept: {exc})")  # fmt: skip
    series = ".".join(good.abi.split(".")[:2])
    return (f"rig bisect --kernel-tree LINUX --good {tag_good} --bad {tag_bad} --config {config}"
            " (upstream tags lack Debian's patches: if both ends test the same, bisect a tree "
            f"made from linux-source-{series})")  # fmt: skip
