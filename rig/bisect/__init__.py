"""Bisection stage: which kernel (a matrix name, a Debian package version, a git commit)
first broke the driver.

    search.py       the pure search over an ordered list (good / bad / skip), repeats
    git.py          `git bisect` driven in a clone of the rig's own (the user's tree untouched)
    git_log.py      what `git bisect` prints and logs, parsed (pure)
    debian_line.py  the package versions of one Debian line, in dpkg order, probed
"""

from rig.bisect.search import BisectResult, Mark, bisect, combine, mark_of

__all__ = ["BisectResult", "Mark", "bisect", "combine", "mark_of"]
