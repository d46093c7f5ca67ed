"""A kernel you built against a Debian kernel: one bochs cell each, in alternating pairs.

A = the matrix's Debian kernel ("6.12"):   rig run --kernel 6.12 --lane bochs --cpu haswell
B = a minimal kernel the rig builds from your git tree at REF, through a copy of the matrix
    with one kernel more, `built: {tree: DIR, ref: COMMIT, config: minimal}` (COMMIT:
    what REF names when the benchmark starts):
                                           rig run --matrix TMP --kernel built --lane bochs
                                               --cpu haswell

Every run must pass all five stages (read back from the JUnit it wrote) with exit status 0;
one failed run fails the benchmark. Warm: the warmup run of each arm first builds and caches
everything (the Debian kernel's chroot and driver build; your kernel, built once in the
rig's own clone, and the driver against it), so the timed pairs measure booting and judging.

    .venv/bin/python bench/kernel_you_built.py --tree ~/linux --ref v6.12 [--pairs 5]

Writes bench/results/kernel-you-built.json and prints the row of docs/benchmarks.md's table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a script: `bench` from the checkout

from bench.checks import expected_stages, rig_run_argv, rig_verdicts
from bench.cli import add_pair_options
from bench.pairs import REPO, Arm, run_pairs
from bench.results import finish

BUILT = "built"


def matrix_with_tree(source: Path, tree: Path, ref: str, config: str, into: Path) -> Path:
    """A copy of `source` with one kernel more, BUILT, inserted as the first entry under
    `kernels:` (the rest byte for byte); the tree's path is absolute, so the copy may live
    anywhere. Checked by the rig's own loader (a bad entry is exit 2 here, before any run)."""
    from rig.matrix import load_matrix

    text = source.read_text()
    head = re.search(r"^kernels:[ \t]*(#.*)?\n", text, re.MULTILINE)
    if head is None:
        raise SystemExit(f"{source}: no top-level 'kernels:' block to add {BUILT!r} to")
    entry = {"tree": str(tree), "ref": ref, "config": config}
    # JSON strings are YAML double-quoted scalars: any path or ref is quoted safely
    line = f"  {BUILT}: {{{', '.join(f'{k}: {json.dumps(v)}' for k, v in entry.items())}}}\n"
    out = into / source.name
    out.write_text(text[: head.end()] + line + text[head.end() :])
    kernels = load_matrix(out).kernels
    if BUILT not in kernels:
        raise SystemExit(f"{out}: the rig does not see kernel {BUILT!r} in the copy")
    return out


def resolve(tree: Path, ref: str) -> str:
    """REF's commit in the tree (read only): the matrix copy names it, so a branch that moves
    during the benchmark changes nothing; recorded beside the numbers."""
    p = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
    )
    if p.returncode != 0:
        raise SystemExit(f"--ref {ref}: not a commit of the git tree {tree}")
    return p.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--tree", type=Path, required=True, help="a kernel git tree (only read)")
    ap.add_argument("--ref", required=True, help="the commit, tag or branch to build")
    ap.add_argument("--config", default="minimal", help="minimal (default) | FILE | debian:NAME")
    ap.add_argument("--kernel", default="6.12", help="the Debian kernel of the matrix (A)")
    ap.add_argument("--cpu", default="haswell")
    ap.add_argument("--matrix", type=Path, default=REPO / "matrix.yaml")
    add_pair_options(ap)
    args = ap.parse_args()
    tree = args.tree.expanduser().resolve()
    commit = resolve(tree, args.ref)
    config = args.config
    if config not in ("minimal",) and not config.startswith("debian:"):
        config = str(Path(config).expanduser().resolve())  # a file: absolute, as the tree
    with tempfile.TemporaryDirectory(prefix="bench-matrix-") as tmp:
        # the commit REF names now: every run builds and boots the same kernel
        matrix = matrix_with_tree(args.matrix, tree, commit, config, Path(tmp))
        lane_cpu = ["--lane", "bochs", "--cpu", args.cpu]
        debian_cell = f"bochs-{args.kernel}-{args.cpu}"
        built_cell = f"bochs-{BUILT}-{args.cpu}"
        a_args = ["--kernel", args.kernel, *lane_cpu]
        if args.matrix != REPO / "matrix.yaml":
            a_args = ["--matrix", str(args.matrix), *a_args]
        debian = Arm(
            f"debian {args.kernel}",
            rig_run_argv(*a_args),
            check=rig_verdicts({debian_cell: expected_stages()}),
        )
        built = Arm(
            f"built {config}",
            rig_run_argv("--matrix", str(matrix), "--kernel", BUILT, *lane_cpu),
            check=rig_verdicts({built_cell: expected_stages()}),
        )
        print(
            f"A = {debian_cell} (Debian {args.kernel}); B = {built_cell} "
            f"({tree} at {args.ref} = {commit[:12]}, config {config})"
        )
        if args.warmup:
            print(
                "warm: the first (warmup) run of each arm builds and caches the kernels, "
                "their toolchain chroots and the driver builds; only the pairs after it "
                "are timed"
            )
        else:
            print("--warmup 0: the first pair may include builds (not a warm measurement)")
        result = run_pairs(debian, built, args.pairs, args.warmup, keep=args.keep)
    warm = [(r.arm, round(r.seconds, 1)) for r in result.runs if r.phase == "warmup"]
    for arm, seconds in warm:
        print(f"warmup (may include builds) {arm}: {seconds} s")
    extra: dict[str, object] = {
        "cells": {"a": debian_cell, "b": built_cell},
        "tree": str(tree),
        "ref": args.ref,
        "commit": commit,
        "config": config,
        "warm": "one untimed warmup run of each arm first (it builds and caches everything)",
    }
    return finish("kernel-you-built", result, extra=extra, out_dir=args.results)


if __name__ == "__main__":
    sys.exit(main())
