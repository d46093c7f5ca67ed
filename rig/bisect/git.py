"""`git bisect` driven in a clone of the rig's own, the user's kernel tree left untouched.

`RigClone.open(user, dest)` makes (or reuses) `git clone --shared --no-checkout USER DEST`: the
clone reads every object of the user's repository through alternates and copies none. The
user's repository is only read (`rev-parse`, and what `git clone` reads): no worktree, ref,
HEAD, index, config, BISECT_* file or gc there, even while the user bisects on their own.
Every write (bisection state, checkouts, reverts, patches) happens in DEST, outside their tree.

GOOD / BAD are always the caller's verdict on a commit (BAD: the driver is broken there). A
normal bisection finds the first BAD commit (git's terms good/bad). fix=True finds the first
GOOD commit after BAD ones, with git's terms old=broken (the caller's BAD) and new=fixed (the
caller's GOOD); `Done.first_bad` then names the first fixed commit.

Git (2.39, Debian 12) prints, on stdout with LC_ALL=C: after `start` and each mark, "Bisecting:
N revisions left to test after this (roughly M steps)" and "[SHA] subject" (SHA checked out,
also in BISECT_EXPECTED_REV); at the end "SHA is the first <new term> commit" and the commit
(exit 0; the log gets "# first <new term> commit: [SHA]"); or "There are only 'skip'ped commits
left to test." and the candidates one a line (exit 2; the log gets "# possible first ..."
lines). `--first-parent` (git >= 2.29) is recorded in the log and honoured by replay.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from rig.artifacts.kbuild import remove_stale_git_locks
from rig.bisect.git_log import (  # the states it returns, re-exported for its callers
    BisectState,
    CommitInfo,
    Done,
    Inconclusive,
    ToTest,
    check_replay_log,
    parse_bisect_output,
    parse_log_state,
)
from rig.bisect.search import Mark
from rig.errors import InfraError, UsageError

__all__ = [
    "BisectState", "CommitInfo", "Done", "Inconclusive", "RigClone", "ToTest",
    "check_replay_log", "parse_bisect_output", "parse_log_state",
]  # fmt: skip
GIT_TIMEOUT = 3600.0  # seconds; a checkout of a kernel tree on a slow disk takes minutes
_OWN_CONFIG = ("-c", "core.hooksPath=/dev/null", "-c", "advice.detachedHead=false")
_CLONE_CONFIG = {
    "user.name": "vmlaunch-rig", "user.email": "vmlaunch-rig@localhost",
    "core.hooksPath": "/dev/null", "advice.detachedHead": "false", "commit.gpgSign": "false",
    "gc.auto": "0", "maintenance.auto": "false",  # never gc: the objects are borrowed
}  # fmt: skip
_TERMS = {False: ("bad", "good"), True: ("fixed", "broken")}  # fix -> (new term, old term)


def _env(ceiling: Path, *, isolated: bool) -> dict[str, str]:
    """The environment of a git call: no inherited GIT_* redirection (GIT_DIR, GIT_INDEX_FILE,
    GIT_CONFIG_PARAMETERS...), English output, no prompt, no optional index refresh, and no
    repository discovery above `ceiling`. `isolated` drops the system and global config too
    (for the rig's own clone); reads of the user's repo keep them (safe.directory)."""
    keep = {"GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "GIT_CONFIG_NOSYSTEM"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in keep}
    env.pop("LANGUAGE", None)
    env.update(
        GIT_TERMINAL_PROMPT="0", LC_ALL="C", GIT_OPTIONAL_LOCKS="0", GIT_PAGER="cat",
        PAGER="cat", GIT_EDITOR="true", GIT_CEILING_DIRECTORIES=str(ceiling),
    )  # fmt: skip
    if isolated:
        env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null")
    return env


def _git(
    where: Path, args: Sequence[str], *, isolated: bool, ok: Sequence[int] = (0,)
) -> subprocess.CompletedProcess[str]:
    """`git -C where ARGS` (no shell); InfraError when its exit status is not in `ok`."""
    argv = ["git", "-C", str(where), *_OWN_CONFIG, *args]
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
            env=_env(where.parent, isolated=isolated), timeout=GIT_TIMEOUT, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"git {args[0]}: timed out", where=str(where)) from exc
    except FileNotFoundError as exc:
        raise InfraError("'git' not found on PATH", fix="apt-get install git") from exc
    if proc.returncode != 0 and "dubious ownership" in proc.stderr:  # safe.directory
        asks = [ln.strip() for ln in proc.stderr.splitlines() if "safe.directory" in ln]
        fix = asks[0] if asks else "run the rig as the owner of the kernel tree"
        at = re.search(r"dubious ownership in repository at '(.*)'", proc.stderr)
        where = Path(at.group(1)) if at else where
        raise UsageError("owned by another user: git refuses to read it", where=str(where), fix=fix)
    if proc.returncode not in ok:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-10:])
        what = shlex.join(["git", *args])
        raise InfraError(f"{what} failed (exit {proc.returncode}):\n{tail}", where=str(where))
    return proc


def _inside(path: Path, top: Path) -> bool:
    return path == top or path.is_relative_to(top)


def _resolved(paths: Sequence[str]) -> set[Path]:
    return {Path(p).resolve() for p in paths if p and not p.startswith("#")}


_ELSEWHERE = "remove it or choose another directory for the clone"


class RigClone:
    """A shared clone of the user's repository in `dest`, where bisections, checkouts, reverts
    and patches happen. It holds no open resources (only paths), so there is nothing to close:
    the clone, and any bisection in it, stays in `dest` for a later run to reuse (resume)."""

    def __init__(self, user: Path, dest: Path, user_objects: Path) -> None:
        self.user, self.dest, self.user_objects = user, dest, user_objects

    @classmethod
    def open(cls, user: Path, dest: Path) -> RigClone:
        """Make `git clone --shared --no-checkout USER DEST`, or reuse the clone of the same
        repository that an earlier run left in DEST. UsageError when USER is not the top of a
        work tree, a .git or a bare repo, or DEST lies inside it or holds something else."""
        user, dest = user.expanduser().resolve(), dest.expanduser().resolve()
        args = ["rev-parse", "--path-format=absolute", "--git-common-dir"]
        probe = _git(user, args, isolated=False, ok=range(256)) if user.is_dir() else None
        if probe is None or probe.returncode != 0:
            fix = "pass the top directory of the kernel's git tree (or its bare repository)"
            raise UsageError("not a git repository", where=str(user), fix=fix)
        git_dir = Path(probe.stdout.strip()).resolve()  # the common one for a linked worktree
        tops = {user, git_dir, *([git_dir.parent] if git_dir.name == ".git" else [])}
        if any(_inside(dest, top) for top in tops) or _inside(user, dest):
            raise UsageError(
                f"the rig's clone {dest} would lie inside the user's repository (or around it)",
                where=str(user),
                fix="put the clone in the run directory, outside the kernel tree",
            )
        clone = cls(user, dest, git_dir / "objects")
        if (dest / ".git").exists():
            top = clone._git("rev-parse", "--show-toplevel").stdout.strip()
            alternates = dest / ".git" / "objects" / "info" / "alternates"
            lines = alternates.read_text().splitlines() if alternates.is_file() else []
            if Path(top).resolve() != dest or clone.user_objects not in _resolved(lines):
                what = f"holds a git repository that is not a shared clone of {user}"
                raise UsageError(what, where=str(dest), fix=_ELSEWHERE)
        else:
            if dest.exists() and any(dest.iterdir()):
                raise UsageError(
                    "neither empty nor the rig's clone", where=str(dest), fix=_ELSEWHERE
                )
            dest.parent.mkdir(parents=True, exist_ok=True)
            args = ["clone", "--shared", "--no-checkout", "--quiet", "--template="]
            _git(dest.parent, [*args, "--", str(user), str(dest)], isolated=False)
        for key, value in _CLONE_CONFIG.items():
            clone._git("config", key, value)
        return clone

    def _git(self, *args: str, ok: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
        return _git(self.dest, args, isolated=True, ok=ok)

    def unlock(self) -> list[str]:
        """Remove the lock files a killed git left in the clone (index.lock, HEAD.lock, a ref's
        lock): only for a caller that holds the bisection's own lock, so that no live git of
        the rig's can be using the clone. The paths removed, relative to .git."""
        return remove_stale_git_locks(self._gitdir)

    @property
    def worktree(self) -> Path:
        """Where the sources of the checked-out commit are (the clone's work tree)."""
        return self.dest

    @property
    def _gitdir(self) -> Path:
        return self.dest / ".git"

    # -- commits -------------------------------------------------------------------------

    def resolve(self, ref: str) -> str:
        """The full SHA of the commit that `ref` (tag, branch, HEAD~3, short SHA) names in the
        user's repository, by a read-only `rev-parse`; UsageError when it names none."""
        args = ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"]
        proc = _git(self.user, args, isolated=False, ok=range(256))
        if proc.returncode != 0 or not ref.strip():
            raise UsageError(
                f"{ref!r} names no commit in the kernel tree",
                where=str(self.user),
                fix=f"check it with: git -C {self.user} log -1 {shlex.quote(ref or 'REF')}",
            )
        return proc.stdout.strip()

    def _commit(self, sha: str) -> str:
        """The full SHA of a commit named in the clone (it sees all the user's objects)."""
        args = ("rev-parse", "--verify", "--quiet", "--end-of-options", f"{sha}^{{commit}}")
        proc = self._git(*args, ok=range(256))
        if proc.returncode != 0:
            raise UsageError(f"{sha!r} names no commit", where=str(self.dest))
        return proc.stdout.strip()

    def commit_info(self, sha: str) -> CommitInfo:
        """Subject, author, date and parents of a commit, read in the clone."""
        full = self._commit(sha)
        out = self._git("show", "-s", "--format=%H%x00%s%x00%an <%ae>%x00%aI%x00%P", full)
        h, subject, author, date, parents = out.stdout.rstrip("\n").split("\x00")
        return CommitInfo(h, subject, author, date, tuple(parents.split()))

    # -- the work tree -------------------------------------------------------------------

    def _clean(self) -> None:
        """Drop local changes and untracked files (build products too); a fresh no-checkout
        clone (no index yet) has nothing checked out to reset."""
        if (self._gitdir / "index").exists():
            self._git("reset", "--hard", "--quiet")
        self._git("clean", "-ffdxq")

    def checkout(self, sha: str) -> None:
        """Detach the work tree at `sha`, cleaned: the commit's files and nothing else. The
        bisection's state is untouched (current() still names the commit to test)."""
        full = self._commit(sha)
        self._clean()
        self._git("checkout", "--force", "--detach", "--quiet", full)
        self._clean()

    def apply_patch(self, patch: Path) -> bool:
        """Apply `patch` to the work tree (no commit). False, the tree exactly as before, when
        it does not apply (`git apply --check`); git apply refuses paths outside the tree."""
        if not patch.is_file():
            raise UsageError("no such patch file", where=str(patch))
        path = str(patch.resolve())
        if self._git("apply", "--check", path, ok=range(256)).returncode != 0:
            return False
        self._git("apply", path)
        return True

    def revert_onto(self, culprit: str, onto: str) -> str | None:
        """A new commit: `onto` with `culprit` reverted (`-m 1`, the mainline, for a merge),
        checked out detached in the work tree; None, the tree clean at `onto`, when the revert
        stops (a conflict, or nothing to revert). The bisection's state (BISECT_*,
        refs/bisect, its log) is untouched, but the work tree moves: call it once the search
        is done, or checkout(current()) before testing on."""
        info = self.commit_info(culprit)
        self.checkout(onto)
        mainline = ["-m", "1"] if info.is_merge else []
        proc = self._git("revert", "--no-edit", *mainline, info.sha, ok=range(256))
        if proc.returncode == 0:
            return self._git("rev-parse", "HEAD").stdout.strip()
        if not any((self._gitdir / f).exists() for f in ("REVERT_HEAD", "sequencer")):
            raise InfraError(f"git revert failed:\n{proc.stderr}", where=str(self.dest))
        self._git("revert", "--abort", ok=range(256))
        self.checkout(onto)
        return None

    # -- bisection -----------------------------------------------------------------------

    def _bisecting(self) -> bool:
        if not (self._gitdir / "BISECT_START").exists():
            return False
        terms = tuple(self._terms_file.read_text().split())
        if terms not in _TERMS.values():
            raise UsageError(
                f"the bisection in the clone uses terms {terms}, not the rig's",
                where=str(self.dest),
                fix=f"git -C {self.dest} bisect reset",
            )
        return True

    @property
    def _terms_file(self) -> Path:
        return self._gitdir / "BISECT_TERMS"  # "new term\nold term\n", written by start

    def _fixing(self) -> bool:
        return self._terms_file.read_text().split()[0] == "fixed"

    def _ends(self) -> tuple[list[str], list[str]]:
        """The bisection's (new end, old ends) from refs/bisect (git keeps them narrowed)."""
        term_new, term_old = _TERMS[self._fixing()]
        refs = self._git("for-each-ref", "--format=%(objectname) %(refname)", "refs/bisect/")
        pairs = [line.split() for line in refs.stdout.splitlines()]
        new = [sha for sha, ref in pairs if ref == f"refs/bisect/{term_new}"]
        return new, [sha for sha, ref in pairs if ref.startswith(f"refs/bisect/{term_old}-")]

    def _settle(self, state: BisectState | None) -> BisectState | None:
        """Inconclusive candidates oldest first (topologically), whichever output named them.
        One candidate is the answer: git lists the BAD end among them, and a skipped commit
        marked again later (a retry) stays skipped for git, which then names it alone."""
        if not isinstance(state, Inconclusive):
            return state
        olds = ["--not", *self._ends()[1]]
        out = self._git("rev-list", "--topo-order", "--reverse", *state.candidates, *olds)
        cands = tuple(c for c in out.stdout.split() if c in state.candidates)
        return Done(cands[0]) if len(cands) == 1 else Inconclusive(cands)

    def _bisect(self, *args: str) -> BisectState:
        """`git bisect ARGS`, then the state: as its output announces it, else (replay, which
        announces every step) as the clone's files say it."""
        proc = self._git("bisect", *args, ok=(0, 2))
        said = parse_bisect_output(proc.stdout) if args[0] != "replay" else None
        state = self._settle(said) if said else self.state()
        if state is None or (proc.returncode == 2 and isinstance(state, ToTest)):
            raise InfraError(f"git bisect {args[0]} failed:\n{proc.stderr}", where=str(self.dest))
        return state

    def start(
        self,
        good: str | Sequence[str],
        bad: str | Sequence[str],
        *,
        first_parent: bool = False,
        fix: bool = False,
    ) -> BisectState:
        """Start a bisection (ending any earlier one in the clone) between commits that the
        caller judged GOOD and BAD (refs of the user's tree, resolved there). Normal: one BAD
        commit and GOOD ancestors of it; finds the first BAD one. fix=True: one GOOD (fixed)
        commit and BAD (broken) ancestors of it; finds the first GOOD one. Returns what to
        test first (or Done at once when nothing lies between the ends)."""
        goods = [self.resolve(r) for r in ([good] if isinstance(good, str) else good)]
        bads = [self.resolve(r) for r in ([bad] if isinstance(bad, str) else bad)]
        olds, news = (bads, goods) if fix else (goods, bads)
        new_word, old_word = ("GOOD", "BAD") if fix else ("BAD", "GOOD")
        if len(news) != 1 or not olds:
            raise UsageError(
                f"a bisection needs exactly one {new_word} commit and at least one {old_word}",
                fix=f"name one {new_word} end (the newest) and the {old_word} ones before it",
            )
        for old in olds:
            ancestor = self._git("merge-base", "--is-ancestor", old, news[0], ok=(0, 1))
            if old == news[0] or ancestor.returncode != 0:
                raise UsageError(
                    f"the {old_word} commit {old[:12]} is not an ancestor of the {new_word} "
                    f"commit {news[0][:12]}",
                    where=str(self.user),
                    fix=f"pick {old_word} commits older than the {new_word} one, on its history",
                )
        self.reset()
        self._clean()
        term_new, term_old = _TERMS[fix]
        opts = ["--first-parent"] if first_parent else []
        opts += [f"--term-old={term_old}", f"--term-new={term_new}"] if fix else []
        return self._bisect("start", *opts, news[0], *olds, "--")

    def mark(self, sha: str, mark: Mark | Literal["good", "bad", "skip"]) -> BisectState:
        """Record the caller's verdict on the commit `sha` (always named: never the implicit
        HEAD) and return what comes next. The work tree is cleaned first (patches, build
        products) so that git can check out the next commit."""
        self._need_bisection()
        full = self._commit(sha)
        (term_new, term_old), verdict = _TERMS[self._fixing()], Mark(mark)
        if verdict is Mark.SKIP:
            term = "skip"
        else:  # with fix=True GOOD is the new term (fixed), BAD the old one (broken)
            term = term_new if (verdict is Mark.BAD) != self._fixing() else term_old
        self._clean()
        return self._bisect(term, full)

    def _need_bisection(self) -> None:
        if not self._bisecting():
            raise UsageError("no bisection under way", where=str(self.dest), fix="start() first")

    def state(self) -> BisectState | None:
        """The bisection's state as the clone's files say it (also for a new object on the
        clone of an earlier run); None when no bisection is under way (or an end is missing)."""
        if not self._bisecting():
            return None
        ended = self._settle(parse_log_state(self.log()))
        expected = self._gitdir / "BISECT_EXPECTED_REV"
        if ended is not None or not expected.exists():
            return ended
        return ToTest(expected.read_text().strip(), *self.remaining())

    def current(self) -> str | None:
        """The commit git checked out for testing; None when done or not bisecting."""
        state = self.state()
        return state.sha if isinstance(state, ToTest) else None

    def remaining(self) -> tuple[int, int]:
        """(revisions left to test after the current one, roughly how many steps), by
        `git rev-list --bisect-vars` over the current ends (skipped commits still count, so
        it can differ from git's "Bisecting:" line); (0, 0) once the search ended."""
        if parse_log_state(self.log()) is not None:
            return 0, 0
        new, olds = self._ends()
        fp = ["--first-parent"] if (self._gitdir / "BISECT_FIRST_PARENT").exists() else []
        out = self._git("rev-list", "--bisect-vars", *fp, *new, "--not", *olds).stdout
        vars_ = dict(line.split("=", 1) for line in out.splitlines())
        return max(0, int(vars_["bisect_nr"])), int(vars_["bisect_steps"])

    def log(self) -> str:
        """`git bisect log`: a replayable record of the bisection (start and every mark)."""
        self._need_bisection()
        return self._git("bisect", "log").stdout

    def replay(self, log_text: str) -> BisectState:
        """End any bisection, redo the one that `log_text` (from log()) records, and return
        where it stands, so that a resumed bisection goes on from where it was saved."""
        check_replay_log(log_text)
        self.reset()
        self._clean()
        saved = self._gitdir / "rig-bisect-replay.log"
        saved.write_text(log_text)
        try:
            return self._bisect("replay", str(saved))
        finally:
            saved.unlink()

    def reset(self) -> None:
        """End any bisection in the clone (`git bisect reset HEAD`: the work tree stays)."""
        if self._bisecting():
            self._git("bisect", "reset", "HEAD")
