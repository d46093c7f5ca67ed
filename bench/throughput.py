"""Cells per hour of the bochs lane at -n 1 vs -n 2 (issue: 2 workers >= 1.7x of 1 on 2 cores).

The artifact cache is warmed first so both runs measure booting and judging only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cpus: list[str], jobs: int, kernel: str, extra: list[str]) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        argv = [
            sys.executable,
            "-m",
            "rig",
            "run",
            "--lane",
            "bochs",
            "--kernel",
            kernel,
            "-n",
            str(jobs),
            "--junit",
            f"{tmp}/j.xml",
            "--runs-dir",
            f"{tmp}/runs",
            *extra,
        ]
        for cpu in cpus:
            argv += ["--cpu", cpu]
        t0 = time.monotonic()
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        return time.monotonic() - t0, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpus", nargs="+", default=["haswell", "penryn", "sandybridge", "ivybridge"])
    ap.add_argument("--kernel", default="6.12")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/throughput.json")
    args = ap.parse_args()
    # warm the cache (kernel artifact + module build) with one cheap call
    subprocess.run(
        [
            sys.executable,
            "-m",
            "rig",
            "images",
            "build",
            "--kernel",
            args.kernel,
            "--lane",
            "bochs",
            "--cpu",
            args.cpus[0],
        ],
        cwd=REPO,
        check=True,
    )
    results = {}
    for jobs in (1, 2):
        wall, rc = run(args.cpus, jobs, args.kernel, [])
        per_hour = len(args.cpus) / wall * 3600
        results[jobs] = {"wall_s": round(wall, 1), "rc": rc, "cells_per_hour": round(per_hour, 1)}
        print(
            f"-n {jobs}: {len(args.cpus)} cells in {wall:.1f} s  ({per_hour:.1f} cells/h, rc={rc})"
        )
    speedup = results[2]["cells_per_hour"] / results[1]["cells_per_hour"]
    print(f"speed-up of 2 workers over 1: {speedup:.2f}x (target >= 1.7x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "cells": args.cpus,
                "kernel": args.kernel,
                "runs": results,
                "speedup": round(speedup, 2),
                "cores": os.cpu_count(),
                "loadavg": os.getloadavg(),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
