"""pytest plugin: a matrix file collects into one test item per (cell, stage).

    pytest -n auto matrix.yaml --rig-lane bochs --junitxml=out.xml

Each cell is a collector whose five items are the stages of rig.model.STAGES
(`matrix.yaml::<cell-id>::<stage>`); with `--dist loadscope` one worker gets all of a cell, boots
its guest once and judges every stage from what that guest printed. Infrastructure trouble is
raised in setup (JUnit <error>), driver misbehaviour in the call (JUnit <failure>), untestable
cells are skips with their reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rig.artifacts import Artifacts, Cache, default_cache_root
from rig.errors import ExitCode
from rig.matrix import load_matrix
from rig.model import STAGES, Cell, CellVerdict, Outcome, StageVerdict
from rig.runner import CellRunner, RunConfig
from rig.sweep import new_run_id, run_lock, sweep, sweep_embed_pool

VERDICTS = pytest.StashKey[dict[str, CellVerdict]]()
RUNNER = pytest.StashKey[CellRunner]()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("vmlaunch-rig", "vmlaunch-rig matrix runs")
    g.addoption("--rig-lane", action="append", default=[], help="lane name (repeatable)")
    g.addoption("--rig-kernel", action="append", default=[], help="kernel name (repeatable)")
    g.addoption("--rig-cpu", action="append", default=[], help="CPU generation (repeatable)")
    g.addoption("--rig-driver", default="driver", help="driver source tree (default: driver/)")
    g.addoption("--rig-param", action="append", default=[], help="module parameter name=value")
    g.addoption("--rig-timeout", type=int, default=None, help="per-cell timeout in seconds")
    g.addoption(
        "--rig-uri", action="append", default=[], help="libvirt URI (repeatable: cells spread)"
    )
    g.addoption(
        "--rig-guest", choices=("initramfs", "vm"), default=None, help="guest flavour override"
    )
    g.addoption("--rig-repeat", type=int, default=1, help="load/unload cycles per guest")
    g.addoption(
        "--rig-preload", action="append", default=[],
        help="module source tree loaded before the driver and left loaded (repeatable)",
    )  # fmt: skip
    g.addoption(
        "--rig-kernel-arg", action="append", default=[],
        help="word appended to the guest kernel command line (repeatable)",
    )  # fmt: skip
    g.addoption(
        "--rig-feature-control", type=lambda v: int(v, 0), default=None,
        help="IA32_FEATURE_CONTROL written by the boot loader before the kernel (bochs lane)",
    )  # fmt: skip
    g.addoption("--rig-runs-dir", default=".rig/runs", help="where run directories live")
    g.addoption("--rig-cache", default=None, help="artifact cache (default ~/.cache/vmlaunch-rig)")
    g.addoption("--rig-run-id", default=None, help="run id (default: a new one per run)")


def _run_id(config: pytest.Config) -> str:
    worker: dict[str, Any] | None = getattr(config, "workerinput", None)
    if worker is not None and "rig_run_id" in worker:
        return str(worker["rig_run_id"])
    if not config.option.rig_run_id:
        config.option.rig_run_id = new_run_id()
    return str(config.option.rig_run_id)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[VERDICTS] = {}


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller -> worker: every worker of this run shares the run id."""
    node.workerinput["rig_run_id"] = _run_id(node.config)


def _runner(config: pytest.Config) -> CellRunner:
    if RUNNER not in config.stash:
        run_id = _run_id(config)
        runs_root = Path(config.option.rig_runs_dir).resolve()
        run_dir = runs_root / run_id
        cache_root = (
            Path(config.option.rig_cache) if config.option.rig_cache else default_cache_root()
        )
        embed_pool = cache_root / "libvirt-embed"
        # Every process of the run (each xdist worker) holds a shared lock on the run
        # directory while it lives; then it sweeps what dead runs left behind.
        held = contextlib.ExitStack()
        held.enter_context(run_lock(run_dir))
        sweep(runs_root)
        sweep_embed_pool(embed_pool)
        # At the end, QEMUs whose libvirt child died (their embed slot unlocked) go too.
        held.callback(sweep_embed_pool, embed_pool)
        config.add_cleanup(held.close)
        config.stash[RUNNER] = CellRunner(
            config=RunConfig(
                run_id=run_id,
                run_dir=run_dir,
                driver=Path(config.option.rig_driver).resolve(),
                module_params=tuple(config.option.rig_param),
                timeout_s=config.option.rig_timeout,
                uris=tuple(config.option.rig_uri),
                guest=config.option.rig_guest,
                repeat=config.option.rig_repeat,
                preload=tuple(Path(p).resolve() for p in config.option.rig_preload),
                kernel_args=tuple(config.option.rig_kernel_arg),
                feature_control=config.option.rig_feature_control,
            ),
            artifacts=Artifacts(Cache(cache_root)),
            embed_pool=embed_pool,
        )
    return config.stash[RUNNER]


def _message(sv: StageVerdict) -> str:
    return sv.reason + (f"\nguest evidence:\n{sv.evidence}" if sv.evidence else "")


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix in (".yaml", ".yml") and file_path.name.startswith("matrix"):
        return MatrixFile.from_parent(parent, path=file_path)
    return None


class MatrixFile(pytest.File):
    def collect(self) -> Iterator[pytest.Collector]:
        opt = self.config.option
        matrix = load_matrix(self.path)
        cells = matrix.select(lanes=opt.rig_lane, kernels=opt.rig_kernel, cpus=opt.rig_cpu)
        for index, cell in enumerate(cells):
            yield CellNode.from_parent(self, name=cell.id, cell=cell, index=index)


class CellNode(pytest.Collector):
    """One matrix cell: its stages are its children, so `--dist loadscope` keeps them on one
    worker (node ids `matrix.yaml::<cell>::<stage>`; JUnit classname ends with the cell)."""

    def __init__(self, *, cell: Cell, index: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.cell = cell
        self.index = index

    def collect(self) -> Iterator[pytest.Item]:
        for stage in STAGES:
            yield StageItem.from_parent(
                self, name=stage, cell=self.cell, stage=stage, index=self.index
            )


class StageItem(pytest.Item):
    def __init__(self, *, cell: Cell, stage: str, index: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.cell = cell
        self.stage = stage
        self.index = index
        self.user_properties += [
            ("cell", cell.id),
            ("lane", cell.lane.name),
            ("kernel", cell.kernel.name),
            ("kernel_abi", cell.kernel.abi),
            ("cpu", cell.cpu.name),
            ("cpu_model", cell.cpu_model or ""),
            ("stage", stage),
        ]

    def _verdict(self) -> CellVerdict:
        verdicts = self.config.stash[VERDICTS]
        if self.cell.id not in verdicts:
            verdicts[self.cell.id] = _runner(self.config).run(self.cell, self.index)
        return verdicts[self.cell.id]

    def setup(self) -> None:
        verdict = self._verdict()
        sv = verdict.stages[self.stage]
        self._attach(verdict)
        if sv.outcome is Outcome.ERROR:
            # Raised in setup: JUnit records it as an <error> (infrastructure), not a failure.
            pytest.fail("infrastructure: " + _message(sv), pytrace=False)

    def runtest(self) -> None:
        sv = self._verdict().stages[self.stage]
        if sv.outcome is Outcome.SKIPPED:
            pytest.skip(sv.reason)
        if sv.outcome is Outcome.FAILED:
            pytest.fail(_message(sv), pytrace=False)
        assert sv.outcome is Outcome.PASSED, sv

    def _attach(self, verdict: CellVerdict) -> None:
        sv = verdict.stages[self.stage]
        self.user_properties.append(("reason", sv.reason))
        if self.cell.lane.backend == "libvirt":
            uri = _runner(self.config).uri_for(self.index) or self.cell.lane.uri or "embed"
            self.user_properties.append(("uri", uri))
        for key, secs in verdict.timings.items():
            self.user_properties.append((f"time_{key}_s", f"{secs:.1f}"))
        if self.stage == "build" and verdict.build_log:
            self.add_report_section("setup", "stdout", "build log:\n" + verdict.build_log)
        elif verdict.console:
            self.add_report_section("setup", "stdout", "guest console:\n" + verdict.console)
        if verdict.emulator_log:
            self.add_report_section("setup", "stderr", "emulator:\n" + verdict.emulator_log)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.cell.id}::{self.stage}"


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem: str, report: pytest.TestReport, sched: Any) -> None:
    """An xdist worker died mid-cell (kill -9, out of memory): infrastructure, never a verdict
    on the driver. Reported in setup, so JUnit has an <error> and `rig run` exits 3. The
    worker's emulator died with it (parent-death signal); the next run's sweep or `rig clean`
    removes its scratch files."""
    if crashitem.split("::")[-1] not in STAGES:
        return
    report.when = "setup"
    report.longrepr = (
        f"infrastructure: {report.longrepr} (the pytest-xdist worker process died: killed "
        "or out of memory); this is not a verdict on the driver"
    )


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows: dict[str, dict[str, str]] = {}
    for key in ("passed", "failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(key, []):
            parts = str(getattr(rep, "nodeid", "")).split("::")
            if len(parts) < 3 or parts[-1] not in STAGES:
                continue  # not one of ours
            cell, stage = parts[-2], parts[-1]
            if key == "error" or (rep.when == "setup" and rep.failed):
                rows.setdefault(cell, {})[stage] = "ERROR"
            elif rep.when == "call" or key == "skipped":
                rows.setdefault(cell, {}).setdefault(
                    stage, key.upper() if key != "passed" else "ok"
                )
    if not rows:
        return
    tr = terminalreporter
    tr.section("vmlaunch-rig matrix")
    width = max(len(c) for c in rows)
    tr.write_line("cell".ljust(width) + "  " + "  ".join(s.ljust(11) for s in STAGES))
    for cell in sorted(rows):
        tr.write_line(
            cell.ljust(width) + "  " + "  ".join(rows[cell].get(s, "-").ljust(11) for s in STAGES)
        )


def exit_code_from(stats: dict[str, list[Any]]) -> ExitCode:
    """Map a finished session to the rig's exit codes (errors outrank failures)."""
    if stats.get("error"):
        return ExitCode.INFRA
    if stats.get("failed"):
        return ExitCode.CHECK_FAILED
    return ExitCode.OK
