"""The `rig` subcommands (the parser and dispatch are rig.cli): run, doctor, images, clean.

Exit codes: 0 all passed or skipped, 1 a check failed, 2 bad input or usage,
3 infrastructure error (see rig.errors.ExitCode).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from rig.artifacts import EMBED_KIND, HOST_FILES, HOST_TOOLS, Artifacts, Cache, default_cache_root
from rig.errors import ExitCode, UsageError
from rig.hostcheck import kvm_usable
from rig.lanes import backend_for
from rig.matrix import load_matrix
from rig.options import (
    pytest_words,
    select,
    settings_from,
    values_of,
)
from rig.paths import DEFAULT_DRIVER, DEFAULT_MATRIX
from rig.remote_sweep import RemoteSweep, sweep_remote
from rig.runner import RunConfig, arrangements, check_required


def _default_matrix() -> Path:
    local = Path("matrix.yaml")
    return local if local.exists() else DEFAULT_MATRIX


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

    # what dead runs left on their libvirt hosts (domains, per-boot volumes)
    _report_remote(sweep_remote(settings.runs_dir))
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
    from rig.pool import total_slots

    slots = total_slots(settings.uris)  # a bad slots= is exit 2 here
    jobs = args.jobs or (str(slots) if len(settings.uris) > 1 else "1")
    if jobs not in ("0", "1"):
        argv += ["-n", jobs, "--dist", "loadscope"]
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
    from rig.pool_run import dead_hosts

    for host, why in dead_hosts(settings.runs_dir / values["run_id"]):
        what = "could not run" if why.startswith("lane ") else "was dead for this run"
        print(f"rig: libvirt host {host} {what} (its cells went to the others): {why}")
    if args.junit.exists() and rc != pytest.ExitCode.USAGE_ERROR:
        print(f"rig: JUnit: {args.junit}; logs: {settings.runs_dir / values['run_id']}/cells/; "
              f"the page: rig report {args.junit} --html rig-report/index.html")  # fmt: skip
    if rc in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERNAL_ERROR):
        return int(ExitCode.USAGE if rc == pytest.ExitCode.USAGE_ERROR else ExitCode.INFRA)
    if rc == pytest.ExitCode.INTERRUPTED:
        return int(ExitCode.INFRA)
    return int(exit_code_from(outcome.stats))


def cmd_matrix(args: argparse.Namespace) -> int:
    import json

    from rig.matrix import cells_json, parse_shard, runner_plan, shard

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
                # per shard, the self-hosted runner labels it needs (rig.matrix.runners)
                "runners": runner_plan(cells, args.shards),
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
    found = [(tool, shutil.which(tool) is not None, *what) for tool, what in HOST_TOOLS.items()]
    found += [(str(path), path.exists(), *what) for path, what in HOST_FILES.items()]
    for name, ok, package, purpose in sorted(found):
        print(f"  {name:16} {'ok' if ok else 'MISSING (apt-get install ' + package + ')'}"
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
        for name in result.skipped:
            print(f"skipped {name}")
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


def cmd_report(args: argparse.Namespace) -> int:
    from rig.report.command import cmd_report as report

    return report(args)


def _report_remote(swept: RemoteSweep) -> None:
    for what in swept.domains:
        print(f"destroyed domain {what}")
    for what in swept.volumes:
        print(f"deleted volume {what}")
    for what in swept.unreachable:
        print(f"libvirt host not swept (tried again next time): {what}", file=sys.stderr)


def cmd_clean(args: argparse.Namespace) -> int:
    from rig.runs import sweep, sweep_embed_pool

    result = sweep(args.runs_dir.resolve())
    qemus = sweep_embed_pool((args.cache or default_cache_root()) / "libvirt-embed")
    for path in result.skipped:
        print(f"skipped {path}")
    _report_remote(sweep_remote(args.runs_dir.resolve()))
    print(
        f"checked {result.runs_checked} dead runs: killed {result.processes_killed + qemus} "
        f"processes, removed {result.scratch_removed} scratch files"
    )
    return 0
