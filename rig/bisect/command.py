"""`rig bisect`: the CLI wiring of the bisection stage (what is tested, how a run is done).

    rig bisect --lane L --cpu C --good A --bad B                  the matrix's kernels
    rig bisect ... --debian SUITE[:LINE] --good V --bad V         a Debian line's versions
    rig bisect ... --kernel-tree DIR --good REF --bad REF         a git tree, built by the rig
    rig bisect --resume RUN                                       go on after Ctrl-C / kill -9

Each run of a probe is one cell (lane x that kernel x cpu) run by the same CellRunner as
`rig run`, in a run directory of its own under the bisection's (runs/<role>-<label>-<n>/), so
every run keeps its console and logs. Exit: 0 a culprit, verified, confident; 1 inconclusive,
low confidence, or the checks disagree; 2 bad input or ends that do not test as said;
3 too many infrastructure errors.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from rig.artifacts import Artifacts, Cache, default_cache_root, tree_digest
from rig.artifacts.kbuild import build_facts
from rig.bisect.decide import LOW_CONFIDENCE, RunMark, run_mark
from rig.bisect.engine import Outcome, Stepper, bisect_git, bisect_list, verify
from rig.bisect.git import RigClone
from rig.bisect.output import print_outcome, write_junit
from rig.bisect.record import BisectArgs, Records, RunRecord
from rig.errors import ExitCode, InfraError, KernelUnbuildable, RigError, UsageError
from rig.matrix import Matrix, load_matrix
from rig.model import STAGES, KernelSpec
from rig.paths import DEFAULT_DRIVER, DEFAULT_MATRIX
from rig.runs import new_run_id, run_lock, sweep


def add_arguments(bis: argparse.ArgumentParser) -> None:
    bis.add_argument("--matrix", type=Path, default=None, help="default: ./matrix.yaml")
    bis.add_argument("--lane", help="the lane every probe runs on (bochs: any machine)")
    bis.add_argument("--cpu", help="the CPU model of the lane every probe runs on")
    bis.add_argument("--good", help="the old end: a kernel name, Debian version or git ref")
    bis.add_argument("--bad", help="the new end (with --fix: the old end, that fails)")
    bis.add_argument(
        "--debian",
        metavar="SUITE[:LINE]",
        help="bisect the package versions of one Debian line (e.g. trixie-security)",
    )
    bis.add_argument("--kernel-tree", type=Path, help="bisect the commits of a kernel git tree")
    bis.add_argument(
        "--config",
        default="minimal",
        help="tree kernels' base config: minimal, FILE or debian:NAME",
    )
    bis.add_argument("--toolchain", default="trixie", help="the suite that builds tree kernels")
    bis.add_argument("--patch", type=Path, help="applied at every step (skip where it fails)")
    bis.add_argument("--fix", action="store_true", help="find the first commit that passes")
    bis.add_argument("--first-parent", action="store_true", help="follow first parents only")
    bis.add_argument("--stage", choices=STAGES, help="whose failure is bad (earlier: skip)")
    bis.add_argument("--repeat", type=int, default=1, help="runs per step (flaky bugs)")
    bis.add_argument("--driver", type=Path, default=DEFAULT_DRIVER)
    bis.add_argument("--param", action="append", default=[])
    bis.add_argument("--max-infra", type=int, default=3, help="steps lost to infra errors")
    bis.add_argument("--resume", metavar="RUN", help="go on with an interrupted bisection")
    bis.add_argument("--junit", type=Path, default=Path("rig-bisect.xml"))
    bis.add_argument("--runs-dir", type=Path, default=Path(".rig/runs"))
    bis.add_argument("--cache", type=Path, default=None)


def default_matrix() -> Path:
    """./matrix.yaml when there is one, else the matrix the rig ships."""
    local = Path("matrix.yaml")
    return local if local.exists() else DEFAULT_MATRIX


def _args_of(ns: argparse.Namespace) -> BisectArgs:
    for need in ("lane", "cpu", "good", "bad"):
        if not getattr(ns, need):
            raise UsageError(f"--{need} is required", fix="or --resume RUN")
    if ns.debian and ns.kernel_tree:
        raise UsageError("--debian and --kernel-tree exclude each other")
    if ns.repeat < 1 or ns.max_infra < 0:
        raise UsageError("--repeat takes at least 1, --max-infra at least 0")
    driver = ns.driver.resolve()
    return BisectArgs(
        source="git" if ns.kernel_tree else "debian" if ns.debian else "matrix",
        good=ns.good,
        bad=ns.bad,
        lane=ns.lane,
        cpu=ns.cpu,
        driver=str(driver),
        driver_digest=tree_digest(driver),
        stage=ns.stage,
        repeat=ns.repeat,
        matrix=str((ns.matrix or default_matrix()).resolve()),
        debian=ns.debian or "",
        tree=str(ns.kernel_tree.resolve()) if ns.kernel_tree else "",
        config=ns.config
        if ns.config in ("minimal",) or ns.config.startswith("debian:")
        else str(Path(ns.config).resolve()),
        patch=str(ns.patch.resolve()) if ns.patch else "",
        suite=ns.toolchain,
        fix=ns.fix,
        first_parent=ns.first_parent,
        params=tuple(ns.param),
        max_infra=ns.max_infra,
    )


def _run_dir(ns: argparse.Namespace, runs_root: Path) -> tuple[Path, BisectArgs]:
    if not ns.resume:
        return runs_root / new_run_id(), _args_of(ns)
    run_dir = Path(ns.resume) if "/" in ns.resume else runs_root / ns.resume
    args = BisectArgs.load(run_dir)
    if tree_digest(Path(args.driver)) != args.driver_digest:
        raise UsageError(
            f"the driver at {args.driver} changed since this bisection began",
            fix="start a new bisection (a resumed one must test the same driver)",
        )
    return run_dir, args


@contextlib.contextmanager
def _only_one(run_dir: Path) -> Iterator[None]:
    """One process per bisection: a second --resume of a live one is exit 2, never a second
    writer of its records."""
    with (run_dir / "bisect.lock").open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"{run_dir}: this bisection is running in another process",
                fix="wait for it, or stop it, then --resume",
            ) from None
        yield


def cmd_bisect(ns: argparse.Namespace) -> int:
    from rig.runner import CellRunner, RunConfig

    runs_root = ns.runs_dir.resolve()
    run_dir, args = _run_dir(ns, runs_root)
    matrix = load_matrix(Path(args.matrix))
    matrix.cell(args.lane, next(iter(matrix.kernels)), args.cpu)  # lane and cpu exist (exit 2)
    cache_root = ns.cache or default_cache_root()
    artifacts = Artifacts(Cache(cache_root))
    sweep(runs_root)
    with run_lock(run_dir), _only_one(run_dir):
        if not ns.resume:
            args.save(run_dir)
        print(
            f"rig bisect: {args.source} {args.good}..{args.bad} on {args.lane}/{args.cpu}; "
            f"records in {run_dir} (resume: rig bisect --resume {run_dir})",
            flush=True,
        )
        records = Records(run_dir)

        def tester(spec: KernelSpec, label: str, role: str, run: int) -> RunRecord:
            t0 = time.monotonic()
            try:  # built (or fetched) here: "does not build" is a skip, and timed apart
                kernel = artifacts.kernel(spec)
            except KernelUnbuildable as exc:
                return RunRecord(
                    label,
                    role,
                    run,
                    RunMark.SKIP,
                    f"kernel does not build: {exc.what}",
                    time.monotonic() - t0,
                    facts={"unbuildable": True},
                )
            except InfraError as exc:
                return RunRecord(label, role, run, RunMark.INFRA, exc.what, time.monotonic() - t0)
            build_s = time.monotonic() - t0
            cell_dir = run_dir / "runs" / f"{role}-{label[:16]}-{run}"
            runner = CellRunner(
                config=RunConfig(
                    run_id=run_dir.name,
                    run_dir=cell_dir,
                    driver=Path(args.driver),
                    module_params=args.params,
                ),
                artifacts=artifacts,
                embed_pool=cache_root / "libvirt-embed",
            )
            cell = matrix.with_kernels([spec]).cell(args.lane, spec.name, args.cpu)
            t1 = time.monotonic()
            verdict = runner.run(cell)
            mark, reason = run_mark(verdict, args.stage)
            facts = {k: v for k, v in build_facts(kernel).items() if k != "ok"}
            facts["stages"] = {
                n: [v.outcome.value, v.reason[:300]] for n, v in verdict.stages.items()
            }
            return RunRecord(
                label,
                role,
                run,
                mark,
                reason,
                round(build_s, 1),
                round(time.monotonic() - t1, 1),
                str(cell_dir / "cells" / cell.id),
                facts,
            )

        stepper = Stepper(
            records, tester, args.repeat, args.max_infra, say=lambda s: print(s, flush=True)
        )
        outcome = _search(args, matrix, run_dir, stepper, artifacts)
    write_junit(ns.junit, args, outcome)
    print_outcome(args, outcome, run_dir)
    if outcome.first_bad is None and stepper.infra_steps:
        print(f"rig bisect: {stepper.infra_steps} step(s) lost to infrastructure errors hide "
              "the boundary", file=sys.stderr)  # fmt: skip
        return int(ExitCode.INFRA)
    trusted = outcome.first_bad is not None and outcome.confidence >= LOW_CONFIDENCE
    agree = not outcome.notes or all("merge" in n for n in outcome.notes)
    return int(ExitCode.OK if trusted and agree else ExitCode.CHECK_FAILED)


def _search(
    args: BisectArgs, matrix: Matrix, run_dir: Path, stepper: Stepper, artifacts: Artifacts
) -> Outcome:
    if args.source == "git":
        return _search_git(args, run_dir, stepper, artifacts)
    if args.source == "debian":
        from rig.bisect.debian_search import search_debian

        return search_debian(args, matrix, run_dir, stepper, artifacts)
    names = _matrix_range(matrix, args.good, args.bad)
    outcome = bisect_list(names, lambda n: matrix.kernels[n], stepper)
    verify(outcome, lambda n: matrix.kernels[n], stepper)
    return outcome


def _matrix_range(matrix: Matrix, good: str, bad: str) -> list[str]:
    def key(name: str) -> tuple[int, ...]:
        return tuple(int(p) if p.isdigit() else -1 for p in name.replace("-", ".").split("."))

    names = sorted((n for n, k in matrix.kernels.items() if k.kind == "debian"), key=key)
    for end in (good, bad):
        if end not in names:
            raise UsageError(f"unknown kernel {end!r}", fix=f"one of: {', '.join(names)}")
    lo, hi = names.index(good), names.index(bad)
    if lo >= hi:
        raise UsageError("--good must be an older kernel than --bad")
    return names[lo : hi + 1]


def _search_git(args: BisectArgs, run_dir: Path, stepper: Stepper, artifacts: Artifacts) -> Outcome:
    clone = RigClone.open(Path(args.tree), run_dir / "tree")
    for lock in clone.unlock():  # we hold bisect.lock: a killed run's git left it
        print(f"rig bisect: removed {lock} that a killed git left in the clone", flush=True)
    config_from = None
    if args.config.startswith("debian:"):
        matrix = load_matrix(Path(args.matrix))
        config_from = matrix.kernels.get(args.config[7:])
        if config_from is None or config_from.kind != "debian":
            raise UsageError(f"--config {args.config}: no such Debian kernel in the matrix")

    def spec_of(sha: str) -> KernelSpec:
        # the rig's clone (it holds the revert commits too); builds are cached by content
        return KernelSpec(
            name=sha[:12],
            suite=args.suite,
            abi="",
            tree=str(clone.dest),
            ref=sha,
            config=args.config,
            patch=args.patch,
            config_from=config_from,
        )

    def image_of(sha: str) -> str | None:
        try:
            digest = build_facts(artifacts.kernel(spec_of(sha))).get("image_digest")
        except RigError:
            return None
        return str(digest) if digest else None

    def save_log(text: str) -> None:
        (run_dir / "bisect.log").write_text(text)

    old, new = (args.bad, args.good) if args.fix else (args.good, args.bad)
    outcome = bisect_git(
        clone,
        old,
        new,
        spec_of,
        stepper,
        fix=args.fix,
        first_parent=args.first_parent,
        save_log=save_log,
    )
    verify(outcome, spec_of, stepper, clone=clone, new_end=new, fix=args.fix, image_of=image_of)
    outcome.notes = [n for n in outcome.notes if n]
    return replace(outcome, log=(run_dir / "bisect.log").read_text())
