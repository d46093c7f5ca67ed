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
from rig.errors import ExitCode, RigError, exit_code_of
from rig.matrix import load_matrix
from rig.model import STAGES, Cell, CellVerdict, Outcome, StageVerdict, worst
from rig.options import RUN_OPTIONS, add_to_pytest, select, settings_from, values_of
from rig.paths import PROJECT_ROOT
from rig.pool_run import run_cell, where_it_ran
from rig.report.shape import LOG_FILES, NOT_REACHED, carrier, case_name, dead
from rig.runner import CellRunner, RunConfig, check_required
from rig.runs import new_run_id, run_lock, sweep, sweep_embed_pool, verdict_for
from rig.textsafe import no_markers, shown

VERDICTS = pytest.StashKey[dict[str, CellVerdict]]()
RUNNER = pytest.StashKey[CellRunner]()
DEFAULT_DRIVER = PROJECT_ROOT / "driver"


def pytest_addoption(parser: pytest.Parser) -> None:
    add_to_pytest(parser.getgroup("vmlaunch-rig", "vmlaunch-rig matrix runs").addoption)


def _values(config: pytest.Config) -> dict[str, Any]:
    return values_of(config.option, "rig_")


def asked(config: pytest.Config) -> bool:
    """Did this pytest session ask for a matrix run (any --rig-* option given)?"""
    defaults = {o.dest: ([] if o.repeat else o.default) for o in RUN_OPTIONS}
    return any(v != defaults[k] for k, v in _values(config).items())


def _run_id(config: pytest.Config) -> str:
    worker: dict[str, Any] | None = getattr(config, "workerinput", None)
    if worker is not None and "rig_run_id" in worker:
        return str(worker["rig_run_id"])
    if not config.option.rig_run_id:
        config.option.rig_run_id = new_run_id()
    return str(config.option.rig_run_id)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[VERDICTS] = {}
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist)
        from rig.progress import Progress

        config.pluginmanager.register(Progress(config, _run_dir_of), "rig-progress")


def _run_dir_of(config: pytest.Config) -> Path:
    return Path(config.option.rig_runs_dir or ".rig/runs").resolve() / _run_id(config)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller -> worker: every worker of this run shares the run id."""
    node.workerinput["rig_run_id"] = _run_id(node.config)


def _runner(config: pytest.Config) -> CellRunner:
    if RUNNER not in config.stash:
        settings = settings_from(_values(config), default_driver=DEFAULT_DRIVER)
        run_id = _run_id(config)
        runs_root = settings.runs_dir
        run_dir = runs_root / run_id
        cache_root = settings.cache or default_cache_root()
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
            config=RunConfig.from_settings(settings, run_id=run_id, run_dir=run_dir),
            artifacts=Artifacts(Cache(cache_root)),
            embed_pool=embed_pool,
        )
    return config.stash[RUNNER]


def _message(sv: StageVerdict) -> str:
    reason = sv.reason
    if sv.outcome is Outcome.ERROR and not reason.startswith("infrastructure: "):
        reason = "infrastructure: " + reason
    return reason + (f"\nguest evidence:\n{sv.evidence}" if sv.evidence else "")


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    """A matrix file is collected only when asked for: named on the command line (any file
    name), or, with a --rig-* option, a `matrix*.yaml` found under the given paths. A bare
    `pytest` in this or any other project collects none."""
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    config = parent.config
    named = {Path(str(a).split("::")[0]).resolve() for a in config.args}
    if file_path.resolve() in named or (asked(config) and file_path.name.startswith("matrix")):
        return MatrixFile.from_parent(parent, path=file_path)
    return None


class MatrixFile(pytest.File):
    def collect(self) -> Iterator[pytest.Collector]:
        try:
            settings = settings_from(_values(self.config), default_driver=DEFAULT_DRIVER)
            matrix = load_matrix(self.path)
            cells = select(matrix, settings)
            check_required(matrix, cells, settings.require_lanes)
        except RigError as exc:
            raise pytest.UsageError(exc.render()) from exc
        for index, cell in enumerate(cells):
            yield CellNode.from_parent(self, name=cell.id, cell=cell, index=index)


class CellNode(pytest.Collector):
    """One matrix cell: its stages are its children (node ids `<matrix>::<cell>::<stage>`).
    Whatever worker runs a stage, the cell is judged once (rig.runs.verdict_for)."""

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
            ("kernel_abi", cell.kernel.abi or cell.kernel.describe()),
            ("cpu", cell.cpu.name),
            ("cpu_model", cell.cpu_model or ""),
            ("stage", stage),
        ]

    def _verdict(self) -> CellVerdict:
        verdicts = self.config.stash[VERDICTS]
        if self.cell.id not in verdicts:
            runner = _runner(self.config)
            cell_dir = runner.config.run_dir / "cells" / self.cell.id
            # What the runner says while it works (artifact builds) goes to the terminal as it
            # happens, not into this testcase's captured output.
            capman = self.config.pluginmanager.getplugin("capturemanager")
            with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
                verdicts[self.cell.id] = verdict_for(
                    cell_dir, self.cell.id, lambda: run_cell(runner, self.cell)
                )
        return verdicts[self.cell.id]

    def setup(self) -> None:
        verdict = self._verdict()
        sv = verdict.stages[self.stage]
        self._attach(verdict)
        outcomes = {s: v.outcome for s, v in verdict.stages.items()}
        if self.stage != STAGES[0] and dead(
            outcomes, {s: v.reason for s, v in verdict.stages.items()}
        ):
            # One error for a cell that never reached the test, not five.
            pytest.skip(f"{NOT_REACHED}the cell's infrastructure error is reported on "
                        f"{case_name(self.cell.id, STAGES[0])}")  # fmt: skip
        if sv.outcome is Outcome.ERROR:
            # Raised in setup: JUnit records it as an <error> (infrastructure), not a failure.
            pytest.fail(_message(sv), pytrace=False)

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
        if sv.witness:  # who beneath the guest saw this stage ("none": nobody could)
            self.user_properties.append(("witness", sv.witness))
        cell_dir = _runner(self.config).config.run_dir / "cells" / self.cell.id
        if self.cell.lane.backend == "libvirt":
            self.user_properties += where_it_ran(cell_dir, self.cell.lane.uri or "embed")
        if verdict.restored:  # restored from a saved guest, not booted (--snapshot)
            self.user_properties.append(("snapshot", verdict.restored))
        if verdict.emulator:  # the lane's choice of emulator (bochs: emulator: trixie)
            self.user_properties.append(("emulator", verdict.emulator))
        for key, secs in verdict.timings.items():
            self.user_properties.append((f"time_{key}_s", f"{secs:.1f}"))
        self.user_properties.append(("cell_dir", str(cell_dir)))
        logs = [(k, cell_dir / f) for k, f in LOG_FILES.items() if (cell_dir / f).is_file()]
        self.user_properties += [(f"log_{key}", str(path)) for key, path in logs]
        # The cell's logs once per cell: the build log on `build`, the console and the
        # emulator's log on the one stage that carries them (the failing one).
        if self.stage == "build" and verdict.build_log:
            log = no_markers(shown(verdict.build_log))  # the module's own Makefile wrote it
            self.add_report_section("setup", "stdout", "build log:\n" + log)
        if self.stage != carrier({s: v.outcome for s, v in verdict.stages.items()}):
            return
        attach = "".join(f"[[ATTACHMENT|{path}]]\n" for _, path in logs)
        if verdict.console or attach:
            # no_markers: a guest line cannot add an attachment marker of its own (a host file)
            self.add_report_section(
                "setup", "stdout", attach + "guest console:\n" + no_markers(verdict.console)
            )
        if verdict.emulator_log:
            log = no_markers(shown(verdict.emulator_log))  # it quotes the guest too
            self.add_report_section("setup", "stderr", "emulator:\n" + log)

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


def exit_code_from(stats: dict[str, list[Any]]) -> ExitCode:
    """Map a finished session to the rig's exit codes, by the one severity order."""
    seen = [Outcome.ERROR] if stats.get("error") else []
    seen += [Outcome.FAILED] if stats.get("failed") else []
    return exit_code_of(worst(seen))
