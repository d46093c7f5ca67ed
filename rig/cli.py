"""`rig` command line: run, doctor, images, clean.

Exit codes: 0 all passed or skipped, 1 a check failed, 2 bad input or usage,
3 infrastructure error (see rig.errors.ExitCode).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rig.artifacts import EMBED_KIND, HOST_TOOLS, Artifacts, Cache, default_cache_root
from rig.errors import ExitCode, RigError, UsageError
from rig.hostcheck import kvm_usable
from rig.lanes import backend_for
from rig.matrix import load_matrix
from rig.model import Outcome, worst
from rig.options import (
    add_to_argparse,
    check_param,
    pytest_words,
    select,
    settings_from,
    values_of,
)
from rig.paths import DEFAULT_DRIVER, DEFAULT_MATRIX
from rig.runner import RunConfig, arrangements, check_required

RUN_HELP = """\
Run the selected cells of the matrix (one guest per cell; five checks each) and write JUnit.

Selection: --lane/--kernel/--cpu filter the full matrix on the axes given; an axis not given
falls back to default_slice in the matrix file (a cross product, or a list of them), or, with
--all, to every name on it. --shard I/N then keeps shard I of N of those cells (a deterministic
split: `rig matrix --all --shard I/N` lists the same cells). An empty shard is not an error.

Progress: a line when a cell starts and ends (verdict, seconds), what an artifact build is
doing; at the end the run directory and the console of every cell that did not pass.

Several --uri spread the cells of libvirt lanes over those connections; they must be local
ones today (the console, the images and SSH are local paths).

Exit codes: 0 every check passed or was skipped, 1 a check failed (the driver misbehaved),
2 bad input or usage, 3 infrastructure error (a tool missing, a guest that never booted,
a required lane that cannot run here, an internal error of the rig).
"""


def _default_matrix() -> Path:
    local = Path("matrix.yaml")
    return local if local.exists() else DEFAULT_MATRIX


def _jobs(value: str) -> str:
    if value == "auto" or (value.isdigit() and int(value) >= 0):
        return value
    raise argparse.ArgumentTypeError(f"-n takes a number or 'auto', not {value!r}")


def _msr_value(value: str) -> int:
    try:
        number = int(value, 0)
    except ValueError:
        number = -1
    if not 0 <= number <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"expected a 32-bit number such as 0x1, not {value!r}")
    return number


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
    run.add_argument("-n", dest="jobs", type=_jobs, default="1", help="workers: N or auto")
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

    bis = sub.add_parser("bisect", help="find the first bad kernel (good/bad/skip, repeats)")
    bis.add_argument("--matrix", type=Path, default=None)
    bis.add_argument("--lane", required=True)
    bis.add_argument("--cpu", required=True)
    bis.add_argument("--good", required=True, help="a kernel name known to pass")
    bis.add_argument("--bad", required=True, help="a kernel name known to fail")
    bis.add_argument("--repeat", type=int, default=1, help="runs per kernel (flaky results)")
    bis.add_argument("--driver", type=Path, default=DEFAULT_DRIVER)
    bis.add_argument("--param", action="append", default=[])
    bis.add_argument("--junit", type=Path, default=Path("rig-bisect.xml"))
    bis.add_argument("--runs-dir", type=Path, default=Path(".rig/runs"))
    bis.add_argument("--cache", type=Path, default=None)

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


class _Outcome:
    """pytest plugin object that remembers the session's report stats for our exit code."""

    def __init__(self) -> None:
        self.stats: dict[str, list[Any]] = {}

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        self.stats = dict(terminalreporter.stats)


def cmd_run(args: argparse.Namespace) -> int:
    import pytest

    from rig.plugin import exit_code_from

    matrix_path = (args.matrix or _default_matrix()).resolve()
    if not matrix_path.is_file():
        raise UsageError(f"--matrix {matrix_path}: no such file", fix="pass a matrix YAML file")
    matrix = load_matrix(matrix_path)  # MatrixError (exit 2) before anything starts
    # Every option is checked here, before any kernel is fetched or module built (exit 2).
    values = values_of(args)
    settings = settings_from(values, default_driver=DEFAULT_DRIVER)
    cells = select(matrix, settings)
    if not cells and settings.shard is None:
        raise UsageError("the selection contains no cell", fix="check --lane/--kernel/--cpu")
    check_required(matrix, cells, settings.require_lanes)
    arrangements(RunConfig.from_settings(settings, run_id="check", run_dir=Path()))
    from rig.runs import new_run_id

    values["run_id"] = settings.run_id or new_run_id()
    values["driver"] = str(settings.driver)
    values["runs_dir"] = str(settings.runs_dir)
    values["preload"] = [str(p) for p in settings.preload]
    argv = [
        str(matrix_path),
        "-p", "no:vmlaunch_rig", "-p", "rig.plugin", "-p", "no:cacheprovider", "-p", "no:benchmark",
        "--rootdir", str(matrix_path.parent),
        "-o", "junit_family=xunit1", "-o", "junit_logging=all",
        "-o", "junit_suite_name=vmlaunch-rig", "-o", "console_output_style=classic",
        "-W", "ignore::pytest.PytestAssertRewriteWarning",
        f"--junitxml={args.junit}", "-rfE", "--show-capture=no",
        *pytest_words(values),
    ]  # fmt: skip
    if args.jobs not in ("0", "1"):
        argv += ["-n", args.jobs, "--dist", "loadscope"]
    argv += list(args.pytest_args)
    outcome = _Outcome()
    try:
        rc = pytest.main(argv, plugins=[outcome])
    finally:
        # Every process of the run has exited (workers, the in-process runner): what a worker
        # killed mid-cell left (scratch files, pid files) goes now, not at the next run. A
        # failure here must not replace the run's own outcome: the next run sweeps again.
        from rig.runs import sweep

        try:
            sweep(settings.runs_dir)
        except OSError as exc:
            print(f"rig: cleaning up the run directory failed ({exc}); the next run or "
                  "`rig clean` retries", file=sys.stderr)  # fmt: skip
    if args.junit.exists() and rc != pytest.ExitCode.USAGE_ERROR:
        print(f"rig: JUnit: {args.junit}; logs: {settings.runs_dir / values['run_id']}/cells/; "
              f"the page: rig report {args.junit} --html rig-report/index.html")  # fmt: skip
    if rc in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERNAL_ERROR):
        return int(ExitCode.USAGE if rc == pytest.ExitCode.USAGE_ERROR else ExitCode.INFRA)
    if rc == pytest.ExitCode.INTERRUPTED:
        return int(ExitCode.INFRA)
    return int(exit_code_from(outcome.stats))


def version() -> str:
    """The rig's version: the installed distribution's, else the package's own."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    import rig

    try:
        return dist_version("vmlaunch-rig")
    except PackageNotFoundError:
        return rig.__version__


def cmd_matrix(args: argparse.Namespace) -> int:
    import json

    from rig.matrix import cells_json, parse_shard, shard

    matrix = load_matrix((args.matrix or _default_matrix()).resolve())
    cells = matrix.select(lanes=args.lane, kernels=args.kernel, cpus=args.cpu, everything=args.all)
    if args.shard:
        cells = shard(cells, *parse_shard(args.shard))
    if args.shards is not None and not 1 <= args.shards <= 256:
        raise UsageError("--shards takes a number from 1 to 256")
    rows = cells_json(cells)
    if args.json:
        data: object = rows
        if args.shards is not None:
            data = {
                "shards": [f"{i}/{args.shards}" for i in range(1, args.shards + 1)],
                "runnable": sum(1 for r in rows if not r["skip_reason"]),
                "cells": rows,
            }
        print(json.dumps(data, indent=None if args.shards else 1))
        return 0
    for r in rows:
        model = r["cpu_model"] or "-"
        print(
            f"{r['id']:28} {model:28} {'skipped: ' + r['skip_reason'] if r['skip_reason'] else ''}"
        )
    runnable = sum(1 for r in rows if not r["skip_reason"])
    print(f"{len(rows)} cells, {runnable} runnable")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    matrix = load_matrix((args.matrix or _default_matrix()).resolve())
    pool = default_cache_root() / "libvirt-embed"
    print("host:")
    kvm = kvm_usable()
    print(f"  usable KVM with nested VMX: {'yes' if kvm is None else 'no: ' + kvm}")
    for tool, (package, purpose) in sorted(HOST_TOOLS.items()):
        where = shutil.which(tool)
        print(f"  {tool:14} {'ok' if where else 'MISSING (apt-get install ' + package + ')'}"
              f"  [{purpose}]")  # fmt: skip
    for name in args.lane:
        if name not in matrix.lanes:
            raise UsageError(
                f"--lane {name!r}: no such lane", fix=f"one of: {', '.join(matrix.lanes)}"
            )
    print("lanes:")
    runnable, missing = 0, []
    for lane in matrix.lanes.values():
        why = backend_for(lane, embed_pool=pool).unavailable()
        runnable += why is None
        required = " (required)" if lane.name in args.lane else ""
        print(f"  {lane.name:6} {'can run here' if why is None else 'SKIPPED here: ' + why}"
              f"{required}")  # fmt: skip
        if why is not None and required:
            missing.append(lane.name)
    if missing:
        print(f"rig doctor: required lane(s) cannot run here: {', '.join(missing)}",
              file=sys.stderr)  # fmt: skip
        return int(ExitCode.INFRA)
    return int(ExitCode.OK if runnable else ExitCode.INFRA)


def cmd_images(args: argparse.Namespace) -> int:
    if args.images_command == "update":
        from rig.matrix.pinning import cmd_update

        return cmd_update(args.matrix or _default_matrix(), args.kernel)
    cache = Cache(args.cache or default_cache_root())
    if args.images_command == "list":
        total = 0
        for kind, name, size in cache.entries():
            total += size
            print(f"{kind:10} {name:48} {size / 2**20:8.1f} MiB")
        print(f"{'total':59} {total / 2**20:8.1f} MiB  ({cache.root})")
        return 0
    if args.images_command == "prune":
        keep = lambda _kind, _name: False  # noqa: E731
        if args.unused:
            names = set(load_matrix((args.matrix or _default_matrix()).resolve()).kernels)
            keep = lambda kind, name: kind == EMBED_KIND or _kernel_of(name) in names  # noqa: E731
        result = cache.prune(keep)
        for name in result.removed:
            print(f"removed {name}")
        for name in result.busy:
            print(f"in use, kept {name}")
        print(f"pruned {len(result.removed)}, {len(result.busy)} in use, "
              f"{len(result.kept)} still named by the matrix")  # fmt: skip
        return 0
    matrix = load_matrix((args.matrix or _default_matrix()).resolve())
    cells = matrix.select(lanes=args.lane, kernels=args.kernel, cpus=args.cpu)
    arts = Artifacts(cache)
    failed = 0
    for spec in {c.kernel.name: c.kernel for c in cells}.values():
        kernel = arts.kernel(spec)
        build = arts.module(kernel, args.driver.resolve())
        failed += not build.ok or build.warnings > 0
        print(f"{spec.name:6} {spec.abi:28} module {'ok' if build.ok else 'FAILED'}"
              f" ({build.warnings} warnings)")  # fmt: skip
    return int(ExitCode.CHECK_FAILED if failed else ExitCode.OK)


def _kernel_of(entry: str) -> str:
    """The kernel name in a cache entry's name: `6.12-<key>`, `vmlaunch-6.12-<key>`."""
    parts = entry.split("-")
    return parts[-2] if len(parts) >= 2 else entry


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.\-+~]", name))


def cmd_bisect(args: argparse.Namespace) -> int:
    from rig.bisect import Mark, bisect, mark_of
    from rig.runner import CellRunner, RunConfig
    from rig.runs import new_run_id, run_lock, sweep

    matrix = load_matrix((args.matrix or _default_matrix()).resolve())
    names = sorted(matrix.kernels, key=_version_key)
    for end in (args.good, args.bad):
        if end not in names:
            raise UsageError(f"unknown kernel {end!r}", fix=f"one of: {', '.join(names)}")
    lo, hi = names.index(args.good), names.index(args.bad)
    if lo >= hi:
        raise UsageError("--good must be an older kernel than --bad")
    if args.repeat < 1:
        raise UsageError("--repeat takes at least 1")
    params = tuple(check_param(p) for p in args.param)
    matrix.cell(args.lane, args.good, args.cpu)  # validates lane and cpu names (exit 2)
    run_id = new_run_id()
    runs_root = args.runs_dir.resolve()
    sweep(runs_root)
    cache_root = args.cache or default_cache_root()
    from rig.report.shape import finish_suite

    cases = ET.Element("testsuite", name="vmlaunch-rig-bisect")
    started = time.monotonic()
    with run_lock(runs_root / run_id) as run_dir:
        runner = CellRunner(
            config=RunConfig(run_id=run_id, run_dir=run_dir, driver=args.driver.resolve(),
                             module_params=params),
            artifacts=Artifacts(Cache(cache_root)),
            embed_pool=cache_root / "libvirt-embed",
        )  # fmt: skip
        attempt = 0
        infra: list[str] = []

        def probe(kernel: str) -> Mark:
            nonlocal attempt
            attempt += 1
            t = time.monotonic()
            verdict = runner.run(matrix.cell(args.lane, kernel, args.cpu))
            mark = mark_of(verdict)
            broken = worst(v.outcome for v in verdict.stages.values()) is Outcome.ERROR
            if broken:
                infra.append(kernel)
            reasons = "; ".join(f"{s}: {v.outcome.value} ({v.reason})"
                                for s, v in verdict.stages.items())  # fmt: skip
            print(f"  {kernel:8} try {attempt:3}: {mark.value:4}  {reasons[:160]}")
            case = ET.SubElement(cases, "testcase", classname=f"vmlaunch-rig-bisect.{args.lane}",
                                 name=f"{args.lane}-{kernel}-{args.cpu}::try{attempt}",
                                 time=f"{time.monotonic() - t:.3f}")  # fmt: skip
            if broken:
                ET.SubElement(case, "error", message="infrastructure: cannot judge").text = reasons
            elif mark is Mark.BAD:
                ET.SubElement(case, "failure", message="bad").text = reasons
            elif mark is Mark.SKIP:
                ET.SubElement(case, "skipped", message="skip: cannot judge").text = reasons
            return mark

        try:
            result = bisect(names[lo : hi + 1], probe, repeats=args.repeat)
        except ValueError as exc:
            raise UsageError(str(exc), fix="check --good/--bad with `rig run`") from exc
        finally:
            finish_suite(cases, time.monotonic() - started).write(
                args.junit, encoding="unicode", xml_declaration=True
            )
    if result.first_bad:
        print(f"first bad kernel: {result.first_bad} (last good: {result.last_good})")
        return int(ExitCode.OK)
    print(f"inconclusive: the first bad is one of {', '.join(result.suspects)} "
          f"(skipped kernels hide the boundary; last good: {result.last_good})")  # fmt: skip
    if infra:
        print(f"rig bisect: {len(infra)} probe(s) were infrastructure errors: {', '.join(infra)}",
              file=sys.stderr)  # fmt: skip
        return int(ExitCode.INFRA)
    return int(ExitCode.CHECK_FAILED)


def cmd_report(args: argparse.Namespace) -> int:
    from rig.report.command import cmd_report as report

    return report(args)


def cmd_clean(args: argparse.Namespace) -> int:
    from rig.runs import sweep, sweep_embed_pool

    result = sweep(args.runs_dir.resolve())
    qemus = sweep_embed_pool((args.cache or default_cache_root()) / "libvirt-embed")
    print(
        f"checked {result.runs_checked} dead runs: killed {result.processes_killed + qemus} "
        f"processes, removed {result.scratch_removed} scratch files"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "run": cmd_run,
        "matrix": cmd_matrix,
        "doctor": cmd_doctor,
        "images": cmd_images,
        "report": cmd_report,
        "bisect": cmd_bisect,
        "clean": cmd_clean,
    }
    try:
        return handlers[args.command](args)
    except RigError as exc:
        print(f"rig: error: {exc.render()}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("rig: interrupted", file=sys.stderr)
        return int(ExitCode.INFRA)
    except Exception:  # a bug of the rig or an unforeseen environment: never "a check failed"
        traceback.print_exc()
        print("rig: internal error (the traceback above); this is not a verdict on the driver",
              file=sys.stderr)  # fmt: skip
        return int(ExitCode.INFRA)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
