"""Bisection stage: which kernel (a matrix name, a Debian package version, a git commit)
first broke the driver.

    search.py       the pure search over an ordered list (good / bad / skip), repeats
    git.py          `git bisect` driven in a clone of the rig's own (the user's tree untouched)
    git_log.py      what `git bisect` prints and logs, parsed (pure)
    debian_line.py  the package versions of one Debian line, in dpkg order
    debian_pool.py  where each version's files are in the pools (probed; config extraction)
    decide.py       what one run and one step's runs say; confidence
    record.py       the run records as they are made (resume)
    engine.py       one engine for a list and for git; the final checks (again, reverted)
    debian_search.py, output.py, command.py   `rig bisect`'s wiring, summary and JUnit
"""

from rig.bisect.search import BisectResult, Mark, bisect, combine, mark_of

__all__ = ["BisectResult", "Mark", "bisect", "combine", "mark_of"]
