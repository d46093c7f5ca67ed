"""The host's Bochs against a Debian release's Bochs: one bochs cell each, in alternating pairs.

A = the host's bochs-bin (Debian 12's 2.7, built with its debugger and instrumentation)
B = Bochs of a Debian release (default trixie: 3.0), run from the rig's cached debootstrap of
    that release (rig.artifacts.emulator)

Each arm runs `rig run --matrix COPY --kernel K --lane bochs --cpu C` on a copy of the matrix
whose bochs lane names its emulator (A: none, B: `emulator: RELEASE`); the copies differ in
that key only, and the rig's own loader checks both. Every run must pass all five stages (read
back from the JUnit it wrote) with exit status 0, and the JUnit's `emulator` property must
name the arm's Bochs: a run on the wrong binary fails the benchmark. Warm: the warmup run of
each arm builds and caches everything (B: the release's debootstrap), so the pairs time the
boot and the judge.

    .venv/bin/python bench/bochs_release.py [--kernel 6.12] [--cpu haswell] [--pairs 5]

Writes bench/results/bochs-release.json and prints the row of docs/benchmarks.md's table.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a script: `bench` from the checkout

from bench.checks import expected_stages, rig_run_argv, rig_verdicts
from bench.cli import add_pair_options
from bench.pairs import REPO, Arm, Check, Proc, run_pairs
from bench.results import finish

_LANE = re.compile(r"^(  bochs: \{)([^}]*)(\})", re.M)


def matrix_with_emulator(source: Path, release: str, into: Path) -> Path:
    """A copy of `source` whose bochs lane runs Bochs of `release` ("" = the host's)."""
    from rig.matrix import load_matrix

    text = source.read_text()
    m = _LANE.search(text)
    if m is None:
        raise SystemExit(f"{source}: no one-line `  bochs: {{...}}` lane to set the emulator of")
    keys = re.sub(r",\s*emulator:\s*\w+", "", m[2])
    keys += f", emulator: {release}" if release else ""
    out = into / f"{release or 'host'}-{source.name}"
    out.write_text(text[: m.start()] + m[1] + keys + m[3] + text[m.end() :])
    if load_matrix(out).lanes["bochs"].emulator != release:
        raise SystemExit(f"{out}: the rig does not see emulator {release!r} on the bochs lane")
    return out


def ran_on(expected: str, verdicts: Check) -> Check:
    """The verdict check, and every testcase's `emulator` property names `expected`."""

    def check(proc: Proc, workdir: Path) -> str | None:
        why = verdicts(proc, workdir)
        if why is not None:
            return why
        junit = workdir / "junit.xml"
        found = {p.get("value", "") for p in ET.parse(junit).getroot().iter("property")
                 if p.get("name") == "emulator"}  # fmt: skip
        if not found or any(f"({expected})" not in v for v in found):
            return f"the run's Bochs was {sorted(found)}, not the {expected} one"
        return None

    return check


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--release", default="trixie", help="the Debian release of B's Bochs")
    ap.add_argument("--kernel", default="6.12")
    ap.add_argument("--cpu", default="haswell")
    ap.add_argument("--matrix", type=Path, default=REPO / "matrix.yaml")
    add_pair_options(ap)
    args = ap.parse_args()
    cell = f"bochs-{args.kernel}-{args.cpu}"
    with tempfile.TemporaryDirectory(prefix="bench-matrix-") as tmp:
        arms = []
        for release in ("", args.release):
            matrix = matrix_with_emulator(args.matrix, release, Path(tmp))
            argv = rig_run_argv("--matrix", str(matrix), "--kernel", args.kernel,
                                "--lane", "bochs", "--cpu", args.cpu)  # fmt: skip
            check = ran_on(release or "host", rig_verdicts({cell: expected_stages()}))
            arms.append(Arm(f"bochs {release or 'host'}", argv, check=check))
        print(f"A = {cell} on the host's Bochs; B = the same cell on Bochs of {args.release}")
        result = run_pairs(arms[0], arms[1], args.pairs, args.warmup, keep=args.keep)
    extra: dict[str, object] = {
        "cell": cell,
        "release": args.release,
        "warm": "one untimed warmup run of each arm first (B: the release's debootstrap)",
    }
    return finish("bochs-release", result, extra=extra, out_dir=args.results)


if __name__ == "__main__":
    sys.exit(main())
