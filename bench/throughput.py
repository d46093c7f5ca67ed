"""The bochs lane's throughput: the same cells at -n 2 (A) and -n 1 (B), in alternating pairs.

Issue target: 2 workers >= 1.7x the cells per hour of 1 on 2 cores, i.e. B/A (the ratio of
median wall times) >= 1.7. Every run must pass: each selected cell PASSED in all five stages
and `rig run` exit status 0 (read back from the JUnit it wrote); one failed run fails the
benchmark (exit status 1, no numbers). The warmup run of each arm builds and caches the
kernel's chroot and the driver, so the timed pairs measure booting and judging only (warm).

    .venv/bin/python bench/throughput.py [--cpus haswell penryn ...] [--kernel 6.12] [--pairs 5]

Writes bench/results/throughput.json and prints the row of docs/benchmarks.md's table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a script: `bench` from the checkout

from bench.checks import expected_stages, rig_run_argv, rig_verdicts
from bench.cli import add_pair_options
from bench.pairs import Arm, run_pairs
from bench.results import finish

TARGET = 1.7


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--cpus", nargs="+", default=["haswell", "penryn", "sandybridge", "ivybridge"])
    ap.add_argument("--kernel", default="6.12")
    ap.add_argument("--timeout", type=int, default=None, help="rig run --timeout (per cell)")
    add_pair_options(ap)
    args = ap.parse_args()
    selection = ["--lane", "bochs", "--kernel", args.kernel]
    for cpu in args.cpus:
        selection += ["--cpu", cpu]
    if args.timeout is not None:
        selection += ["--timeout", str(args.timeout)]
    expect = {f"bochs-{args.kernel}-{cpu}": expected_stages(vmx=True) for cpu in args.cpus}
    check = rig_verdicts(expect)
    two = Arm("rig run -n 2", rig_run_argv(*selection, "-n", "2"), check=check)
    one = Arm("rig run -n 1", rig_run_argv(*selection, "-n", "1"), check=check)
    print(f"{len(expect)} bochs cells ({', '.join(expect)}): A = -n 2, B = -n 1")
    result = run_pairs(two, one, args.pairs, args.warmup, keep=args.keep)
    extra: dict[str, object] = {"cells": list(expect), "kernel": args.kernel, "target": TARGET}
    sa, sb = result.stats(two.name), result.stats(one.name)
    if result.ratio is not None and sa is not None and sb is not None:
        per_hour = {
            two.name: len(expect) / sa.median * 3600,
            one.name: len(expect) / sb.median * 3600,
        }
        extra |= {
            "cells_per_hour_at_median": {k: round(v, 1) for k, v in per_hour.items()},
            "speedup": round(result.ratio, 3),
            "target_met": result.ratio >= TARGET,
        }
        for name, rate in per_hour.items():
            print(f"{name}: {rate:.1f} cells/h (at the median)")
        met = "met" if result.ratio >= TARGET else "NOT met"
        print(
            f"speed-up of 2 workers over 1 (B/A): {result.ratio:.2f}x (target >= {TARGET}x: {met})"
        )
    return finish("throughput", result, extra=extra, out_dir=args.results)


if __name__ == "__main__":
    sys.exit(main())
