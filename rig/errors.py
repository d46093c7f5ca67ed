"""Error types of the rig and the exit codes they map to.

Exit codes (documented in README.md):
  0  every check passed or was skipped
  1  a check failed (the driver misbehaved)
  2  bad input or usage (matrix.yaml, command line, unknown kernel/CPU/lane)
  3  infrastructure error (a tool missing, a daemon dead, a guest that never booted)
"""

from __future__ import annotations

from enum import IntEnum

from rig.model import Outcome


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILED = 1
    USAGE = 2
    INFRA = 3


def exit_code_of(outcome: Outcome) -> ExitCode:
    """The exit code of a run whose worst outcome (rig.model.worst) is `outcome`."""
    return {Outcome.ERROR: ExitCode.INFRA, Outcome.FAILED: ExitCode.CHECK_FAILED}.get(
        outcome, ExitCode.OK
    )


class RigError(Exception):
    """Base class: every error the rig raises on purpose carries an exit code and a hint."""

    exit_code: ExitCode = ExitCode.INFRA

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def moved(self, old: str, new: str) -> None:
        """A file it names moved (a failed build's log kept out of its deleted temp dir)."""
        self.what = self.what.replace(old, new)
        self.where = self.where.replace(old, new) if self.where else self.where
        self.args = (self.render(),)

    def render(self) -> str:
        parts = []
        if self.where:
            parts.append(f"{self.where}: ")
        parts.append(self.what)
        if self.fix:
            parts.append(f"\n  fix: {self.fix}")
        return "".join(parts)


class UsageError(RigError):
    """Bad command line or unknown name (exit 2)."""

    exit_code = ExitCode.USAGE


class MatrixError(UsageError):
    """matrix.yaml is malformed or refers to unknown things (exit 2)."""


class InfraError(RigError):
    """The environment failed: a missing tool, a dead daemon, a guest that never booted (exit 3)."""

    exit_code = ExitCode.INFRA


class KernelUnbuildable(InfraError):
    """A kernel the rig builds from a tree did not build, or its config cannot hold what the
    guests need, or a patch does not apply: a bisection skips that commit, a run's cells are
    infrastructure errors (exit 3): it says nothing about the driver."""


class ToolMissing(InfraError):
    """A host program the rig needs is not installed."""

    def __init__(self, tool: str, package: str, purpose: str) -> None:
        super().__init__(
            f"'{tool}' not found on PATH (needed for {purpose})",
            fix=f"apt-get install {package}",
        )
