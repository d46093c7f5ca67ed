"""The command line: the options every benchmark shares, and the command of bench/compare.py.

    add_pair_options(ap)   --pairs (at least MIN_PAIRS), --warmup, --keep, --results
    main(argv) -> int      compare two commands in alternating pairs (bench/compare.py --help)

A command `rig run ARGS` runs as an arm checked by the verdicts of the cells it names
(--a-pass / --a-decline); any other command by its exit status.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

from bench.checks import expected_stages, rig_run_argv, rig_verdicts
from bench.pairs import MIN_PAIRS, Arm, run_pairs
from bench.results import RESULTS, finish


def pairs_count(text: str) -> int:
    """argparse type of --pairs: at least MIN_PAIRS (the method's floor)."""
    n = int(text)
    if n < MIN_PAIRS:
        raise argparse.ArgumentTypeError(f"at least {MIN_PAIRS} pairs (got {n})")
    return n


def _count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"a count, 0 or more (got {n})")
    return n


def add_pair_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--pairs",
        type=pairs_count,
        default=MIN_PAIRS,
        help=f"timed A/B pairs, ABBA order (default and minimum {MIN_PAIRS})",
    )
    ap.add_argument(
        "--warmup",
        type=_count,
        default=1,
        metavar="N",
        help="untimed, checked runs of each arm first (default 1)",
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep every run's directory (failed runs' are always kept)",
    )
    ap.add_argument(
        "--results", type=Path, default=RESULTS, help="where NAME.json goes (default bench/results)"
    )


def cli_arm(
    ap: argparse.ArgumentParser, name: str, command: str, passes: list[str], declines: list[str]
) -> Arm:
    """An arm of the command line. `rig run ...` runs as `python -m rig run ... --junit
    {workdir}/junit.xml --runs-dir {workdir}/runs` and must name the cells it must pass
    (--X-pass: all five stages PASSED; --X-decline: a lane without VMX, the no_vmx decline):
    its check is their verdicts. Any other command is checked by its exit status."""
    words = shlex.split(command)
    expect = {c: expected_stages() for c in passes}
    expect |= {c: expected_stages(vmx=False) for c in declines}
    if words[:2] == ["rig", "run"]:
        if not expect:
            ap.error(
                f"{name}: a `rig run` arm is checked by its verdicts: name its cells "
                "with --a-pass / --a-decline (--b-...)"
            )
        return Arm(name, rig_run_argv(*words[2:]), cwd=Path.cwd(), check=rig_verdicts(expect))
    if expect:
        ap.error(f"{name}: --X-pass / --X-decline are for `rig run ...` arms only")
    if not words:
        ap.error(f"{name}: an empty command")
    return Arm(name, words, cwd=Path.cwd())


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Compare two commands in alternating pairs; a failed run fails the "
        "benchmark. A command `rig run ARGS` runs this Python's rig with its JUnit and run "
        "directory in the run's own directory, and is checked by the verdicts of the cells "
        "--a-pass / --a-decline name (any other command by its exit status). The benchmarks "
        "in bench/ use the harness's API (bench/pairs.py).",
    )
    ap.add_argument("name", help="benchmark name: writes RESULTS/NAME.json")
    for arm in ("a", "b"):
        ap.add_argument(
            f"--{arm}",
            required=True,
            metavar="CMD",
            help=f"arm {arm.upper()}'s command (shell words)",
        )
        ap.add_argument(f"--{arm}-name", default=arm.upper())
        ap.add_argument(
            f"--{arm}-pass",
            action="append",
            default=[],
            metavar="CELL",
            help="a cell that must pass all five stages (rig run arms)",
        )
        ap.add_argument(
            f"--{arm}-decline",
            action="append",
            default=[],
            metavar="CELL",
            help="a cell on a lane without VMX: build and teardown pass, the "
            "driver's no_vmx decline skips the rest (rig run arms)",
        )
    add_pair_options(ap)
    args = ap.parse_args(argv)
    a = cli_arm(ap, args.a_name, args.a, args.a_pass, args.a_decline)
    b = cli_arm(ap, args.b_name, args.b, args.b_pass, args.b_decline)
    result = run_pairs(a, b, args.pairs, args.warmup, keep=args.keep)
    return finish(args.name, result, out_dir=args.results)
