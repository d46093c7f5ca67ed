"""`rig` command line: run, doctor, images, clean.

Exit codes: 0 all passed or skipped, 1 a check failed, 2 bad input or usage,
3 infrastructure error (see rig.errors.ExitCode).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from rig.commands import (
    cmd_clean,
    cmd_doctor,
    cmd_images,
    cmd_matrix,
    cmd_report,
    cmd_run,
)
from rig.errors import ExitCode, RigError, UsageError
from rig.options import (
    add_to_argparse,
)
from rig.paths import DEFAULT_DRIVER, version

RUN_HELP = """\
Run the selected cells of the matrix (one guest per cell; five checks each) and write JUnit.

Selection: --lane/--kernel/--cpu filter the full matrix on the axes given; an axis not given
falls back to default_slice in the matrix file (a cross product, or a list of them), or, with
--all, to every name on it. --shard I/N then keeps shard I of N of those cells (a deterministic
split: `rig matrix --all --shard I/N` lists the same cells). An empty shard is not an error.

Progress: a line when a cell starts and ends (verdict, seconds), what an artifact build is
doing; at the end the run directory and the console of every cell that did not pass.

Several --uri make a pool of libvirt hosts: each cell of a libvirt lane leases a free slot on
a live host (`--uri qemu+ssh://root@HOST/system?slots=2`: slots= is the rig's, default 1; -n
defaults to the pool's total slots). A host whose connection fails is dead for the run, its
cells go to the others; a cell whose host is lost mid-boot is an infrastructure error naming
the host and runs once more on another. A remote host gets the kernel and initrd uploaded into
its storage pool and its consoles streamed back; it boots initramfs guests (README: "A run
over N libvirt hosts"). xdist's --tx/--rsyncdir are refused: use --uri, or shards.

Exit codes: 0 every check passed or was skipped, 1 a check failed (the driver misbehaved),
2 bad input or usage, 3 infrastructure error (a tool missing, a guest that never booted,
a required lane that cannot run here, an internal error of the rig).
"""


def _jobs(value: str) -> str:
    if value == "auto" or (value.isdigit() and int(value) >= 0):
        return value
    raise argparse.ArgumentTypeError(f"-n takes a number or 'auto', not {value!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rig", description="Prove the vmlaunch driver across a matrix."
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True)

    def matrix_filters(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--matrix", type=Path, default=None, help="matrix file (default matrix.yaml)"
        )
        sp.add_argument("--lane", action="append", default=[], help="lane (repeatable)")
        sp.add_argument("--kernel", action="append", default=[], help="kernel name (repeatable)")
        sp.add_argument("--cpu", action="append", default=[], help="CPU generation (repeatable)")
        sp.add_argument("--cache", type=Path, default=None, help="artifact cache directory")

    run = sub.add_parser(
        "run",
        help="run matrix cells and write JUnit XML",
        description=RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--matrix", type=Path, default=None, help="matrix file (any name)")
    add_to_argparse(run.add_argument)
    run.add_argument("--junit", type=Path, default=Path("rig-junit.xml"), help="JUnit XML output")
    run.add_argument(
        "-n", dest="jobs", type=_jobs, default=None,
        help="workers: N or auto (default 1; with several --uri, their total slots)",
    )  # fmt: skip
    run.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")

    mat = sub.add_parser(
        "matrix",
        help="list the cells a selection holds (--json: machine-readable, for planning shards)",
        description="List the cells of the matrix that `rig run` with the same selection runs: "
        "lane, kernel, CPU, the lane's CPU model and why a cell would be skipped.",
    )
    mat.add_argument("--matrix", type=Path, default=None, help="matrix file (default matrix.yaml)")
    for name in ("lane", "kernel", "cpu"):
        mat.add_argument(f"--{name}", action="append", default=[], help=f"{name} (repeatable)")
    mat.add_argument("--all", action="store_true", help="the whole matrix, not default_slice")
    mat.add_argument("--shard", metavar="I/N", default=None, help="only shard I of N")
    mat.add_argument("--json", action="store_true", help="JSON: one object per cell")
    mat.add_argument(
        "--shards", type=int, default=None, metavar="N",
        help="with --json: an object {shards: ['1/N', ...], cells: [...]} for a CI matrix",
    )  # fmt: skip

    doctor = sub.add_parser("doctor", help="what this host can run, lane by lane")
    doctor.add_argument("--matrix", type=Path, default=None)
    doctor.add_argument(
        "--lane", action="append", default=[],
        help="a lane that must be able to run here (repeatable): exit 3 if it cannot",
    )  # fmt: skip

    images = sub.add_parser("images", help="build, list or prune cached artifacts")
    isub = images.add_subparsers(dest="images_command", required=True)
    ib = isub.add_parser("build", help="build kernels and driver modules for the selected cells")
    matrix_filters(ib)
    ib.add_argument("--driver", type=Path, default=DEFAULT_DRIVER)
    il = isub.add_parser("list", help="list cached artifacts")
    il.add_argument("--cache", type=Path, default=None)
    ip = isub.add_parser(
        "prune", help="delete cached artifacts nobody is using (never one a live run holds)"
    )
    ip.add_argument("--cache", type=Path, default=None)
    ip.add_argument(
        "--unused", action="store_true",
        help="only what the matrix no longer names (kernels, their modules and VM images)",
    )  # fmt: skip
    ip.add_argument("--matrix", type=Path, default=None)
    iu = isub.add_parser("update", help="pin matrix.yaml's kernels to the newest in the archive")
    iu.add_argument("--matrix", type=Path, default=None, help="matrix file (default matrix.yaml)")
    iu.add_argument("--kernel", action="append", default=[], help="kernel name (repeatable)")

    bis = sub.add_parser(
        "bisect",
        help="find the first bad kernel: matrix kernels, a Debian line's versions, a git tree",
        description="Bisect by kernel: the matrix's kernels, the package versions of one "
        "Debian line (--debian), or the commits of a kernel git tree (--kernel-tree, built "
        "by the rig). Exit: 0 culprit found, verified and confident; 1 inconclusive, low "
        "confidence or checks disagree; 2 bad input or ends that do not test as said; 3 too "
        "many infrastructure errors.",
    )
    from rig.bisect.command import add_arguments as bisect_arguments

    bisect_arguments(bis)

    from rig.report.command import add_arguments as report_arguments

    report = sub.add_parser(
        "report",
        help="JUnit files -> HTML page (+ logs), Markdown summary, comparison, history",
        description="Merge JUnit files (e.g. the nightly's shards) into the page people triage "
        "from, with each cell's logs copied beside it; compare with a baseline; keep a history."
        " Exit codes: 0 made, 2 bad input, 3 coverage lost (--expect, --expect-shards).",
    )
    report_arguments(report)

    clean = sub.add_parser("clean", help="kill and delete what dead runs left behind")
    clean.add_argument("--runs-dir", type=Path, default=Path(".rig/runs"))
    clean.add_argument("--cache", type=Path, default=None)
    return p


def _bisect(args: argparse.Namespace) -> int:
    from rig.bisect.command import cmd_bisect

    return cmd_bisect(args)


XDIST_REMOTE = ("--tx", "--rsyncdir", "--rsyncignore")


def refuse_xdist_remote(argv: Sequence[str]) -> None:
    """xdist's remote workers (--tx ssh=..., --rsyncdir) would run the rig on other machines
    with this machine's paths: refused (UsageError), pointing to what does scale out."""
    for word in argv:
        if word.split("=", 1)[0] in XDIST_REMOTE:
            raise UsageError(
                f"{word.split('=', 1)[0]}: xdist's remote workers are not supported by rig run",
                fix="spread cells over KVM hosts with --uri qemu+ssh://HOST/system?slots=N "
                "(pool mode), or split the run into shards (--shard I/N, README: CI and shards)",
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["run"]:
        try:
            refuse_xdist_remote(words[1:])
        except UsageError as exc:
            print(f"rig: error: {exc.render()}", file=sys.stderr)
            return int(exc.exit_code)
    args = parser.parse_args(argv)
    handlers = {
        "run": cmd_run,
        "matrix": cmd_matrix,
        "doctor": cmd_doctor,
        "images": cmd_images,
        "report": cmd_report,
        "bisect": _bisect,
        "clean": cmd_clean,
    }
    try:
        rc = handlers[args.command](args)
        sys.stdout.flush()  # a reader gone away shows here, not in the interpreter's last flush
        return rc
    except RigError as exc:
        print(f"rig: error: {exc.render()}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("rig: interrupted", file=sys.stderr)
        return int(ExitCode.INFRA)
    except BrokenPipeError:  # the reader went away (`rig doctor | head`): as a SIGPIPE death
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    except Exception:  # a bug of the rig or an unforeseen environment: never "a check failed"
        traceback.print_exc()
        print("rig: internal error (the traceback above); this is not a verdict on the driver",
              file=sys.stderr)  # fmt: skip
        return int(ExitCode.INFRA)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
