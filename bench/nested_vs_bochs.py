"""The nested lane's cost: the same kernel and CPU generation on the bochs lane (the driver
on Bochs' software VMX) and on the nested lane (Bochs -> L1 KVM -> L2), in one run, one
after the other (-n 1), caches warm. Prints per-cell wall and boot times from each cell's
stored verdict and writes bench/results/nested-vs-bochs.json."""

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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", default="6.12")
    ap.add_argument("--cpu", default="haswell")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "rig", "run", "--lane", "bochs", "--lane", "nested",
                "--kernel", args.kernel, "--cpu", args.cpu, "-n", "1",
                "--junit", f"{tmp}/j.xml", "--runs-dir", f"{tmp}/runs"]  # fmt: skip
        t0 = time.monotonic()
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
        wall = time.monotonic() - t0
        cells = {}
        for verdict in Path(tmp).glob("runs/*/cells/*/verdict.json"):
            data = json.loads(verdict.read_text())
            boot = json.loads((verdict.parent / "boot.json").read_text())
            cells[data["cell"]] = {
                "verdicts": {s: v["outcome"] for s, v in data["stages"].items()},
                "boot_s": boot["duration_s"],
                "timings": data["timings"],
            }
    result = {"rc": proc.returncode, "wall_s": round(wall, 1), "cells": cells,
              "cores": os.cpu_count(), "load": os.getloadavg()}  # fmt: skip
    print(f"{'cell':24} {'boot s':>8}  verdicts")
    for cell, c in sorted(cells.items()):
        print(f"{cell:24} {c['boot_s']:8.1f}  {' '.join(c['verdicts'].values())}")
    print(f"whole run {wall:.0f} s (rc {proc.returncode})")
    out = REPO / "bench" / "results" / "nested-vs-bochs.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
