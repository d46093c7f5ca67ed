"""rig.bisect.git: real `git bisect` in a shared clone over tiny synthetic repositories.

Each test builds its repository with one `git fast-import` (no global or system config):
commit i writes its index to `n` and, from commit k on, "BUG" into `f`; a predicate reads the
clone's work tree, so a wrong checkout gives a wrong answer.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from rig.bisect.git import (
    BisectState,
    Done,
    Inconclusive,
    RigClone,
    ToTest,
    check_replay_log,
    parse_bisect_output,
    parse_log_state,
)
from rig.bisect.search import Mark
from rig.errors import UsageError

N = 20
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_OPTIONAL_LOCKS": "0",  # the test's own `git status` must not rewrite the index
    "LC_ALL": "C",
}


def git(repo: Path, *args: str, stdin: str | None = None, ok: bool = True) -> str:
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], input=stdin, capture_output=True, text=True, env=ENV
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _data(text: str) -> str:
    return f"data {len(text.encode())}\n{text}\n"


def make_repo(path: Path, files: Callable[[int], dict[str, str]], n: int = N) -> list[str]:
    """A repo at `path` whose branch main has commits 0..n-1 (tags c0..), commit i holding
    files(i); checked out at main. Returns the SHAs, oldest first."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, env=ENV)
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.org")
    stream = []
    for i in range(n):
        stream.append(f"commit refs/heads/main\nmark :{i + 1}\n")
        stream.append(f"committer T <t@e> {1_700_000_000 + i} +0000\n" + _data(f"c{i}"))
        stream.append("deleteall\n")
        for name, text in files(i).items():
            stream.append(f"M 100644 inline {name}\n" + _data(text))
    stream += [f"reset refs/tags/c{i}\nfrom :{i + 1}\n" for i in range(n)]
    git(path, "fast-import", "--quiet", stdin="".join(stream))
    git(path, "reset", "-q", "--hard", "main")
    return git(path, "rev-list", "--reverse", "main").split()


def bug_from(k: int) -> Callable[[int], dict[str, str]]:
    return lambda i: {"n": f"{i}\n", "f": "BUG\n" if i >= k else "ok\n"}


def revertible(k: int) -> Callable[[int], dict[str, str]]:
    """Like bug_from, but each commit adds a file instead of rewriting `n`: only commit k and
    the next to change `f` touch the same lines (a revert of k onto later commits applies)."""
    return lambda i: {"f": "BUG\n" if i >= k else "ok\n", **{f"add{j}": "" for j in range(i + 1)}}


def judge(skip: frozenset[int] = frozenset()) -> Callable[[Path], Mark]:
    def predicate(tree: Path) -> Mark:
        if skip and (tree / "n").read_text().strip() in {str(i) for i in skip}:
            return Mark.SKIP
        return Mark.BAD if "BUG" in (tree / "f").read_text() else Mark.GOOD

    return predicate


def drive(
    clone: RigClone,
    state: BisectState,
    predicate: Callable[[Path], Mark],
    tested: list[str],
    steps: int | None = None,
) -> BisectState:
    """Test what git asks for until it is done (or `steps` marks were made)."""
    while isinstance(state, ToTest) and (steps is None or steps > 0):
        assert clone.current() == state.sha
        assert git(clone.worktree, "rev-parse", "HEAD") == state.sha  # the tree git checked out
        tested.append(state.sha)
        state = clone.mark(state.sha, predicate(clone.worktree))
        steps = None if steps is None else steps - 1
    return state


def marked_in(log: str) -> set[str]:
    """The commits that a bisection log marks (good, bad, skip, fixed, broken)."""
    verbs = {"good", "bad", "skip", "fixed", "broken"}
    return {
        words[3]
        for words in (line.split() for line in log.splitlines())
        if words[:2] == ["git", "bisect"] and words[2] in verbs
    }


@pytest.mark.parametrize("k", [1, 2, 7, 13, 19])
def test_finds_the_first_bad_commit(tmp_path: Path, k: int) -> None:
    shas = make_repo(tmp_path / "user", bug_from(k))
    clone = RigClone.open(tmp_path / "user", tmp_path / "run" / "clone")
    state = clone.start(["c0"], "main")
    if isinstance(state, ToTest):
        assert (state.left, state.steps) == clone.remaining()
    tested: list[str] = []
    assert drive(clone, state, judge(), tested) == Done(shas[k])
    assert clone.current() is None and clone.remaining() == (0, 0)
    assert clone.state() == Done(shas[k])
    assert marked_in(clone.log()) == set(tested)  # every mark names a commit that was tested
    assert len(tested) <= 5


def test_skipped_commits_are_stepped_around(tmp_path: Path) -> None:
    shas = make_repo(tmp_path / "user", bug_from(8))
    clone = RigClone.open(tmp_path / "user", tmp_path / "clone")
    tested: list[str] = []
    state = drive(clone, clone.start("c0", "c19"), judge(frozenset({4, 9, 10, 12})), tested)
    assert state == Done(shas[8])


@pytest.mark.parametrize("k", [5, 11])
def test_skips_around_the_culprit_are_inconclusive(tmp_path: Path, k: int) -> None:
    shas = make_repo(tmp_path / "user", bug_from(k))
    clone = RigClone.open(tmp_path / "user", tmp_path / "clone")
    tested: list[str] = []
    state = drive(clone, clone.start("c0", "c19"), judge(frozenset({k, k + 1})), tested)
    assert isinstance(state, Inconclusive)
    assert set(state.candidates) == {shas[k], shas[k + 1], shas[k + 2]}
    assert clone.state() == Inconclusive(state.candidates) and clone.current() is None
    assert clone.remaining() == (0, 0)


@pytest.mark.parametrize("k", [1, 9, 19])
def test_fix_finds_the_first_fixed_commit(tmp_path: Path, k: int) -> None:
    shas = make_repo(tmp_path / "user", lambda i: {"n": f"{i}\n", "f": "ok\n" if i >= k else "BUG"})
    clone = RigClone.open(tmp_path / "user", tmp_path / "clone")
    state = clone.start(good="c19", bad=["c0"], fix=True)
    tested: list[str] = []
    assert drive(clone, state, judge(), tested) == Done(shas[k])
    assert "--term-new=fixed" in clone.log()
    assert marked_in(clone.log()) == set(tested)


def make_merge_repo(path: Path) -> dict[str, str]:
    """main: m0 m1 [side: s1 s2(BUG) s3] m2 merge m3 m4; tags name them. Each commit adds a
    file of its own (add_NAME), so reverting the merge onto m4 applies."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, env=ENV)
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.org")
    plan = [  # name, branch, parents, f
        ("m0", "main", [], "ok\n"), ("m1", "main", ["m0"], "ok\n"),
        ("s1", "side", ["m1"], "ok\n"), ("s2", "side", ["s1"], "BUG\n"),
        ("s3", "side", ["s2"], "BUG\n"), ("m2", "main", ["m1"], "ok\n"),
        ("merge", "main", ["m2", "s3"], "BUG\n"), ("m3", "main", ["merge"], "BUG\n"),
        ("m4", "main", ["m3"], "BUG\n"),
    ]  # fmt: skip
    marks = {name: i + 1 for i, (name, *_) in enumerate(plan)}
    ancestry: dict[str, set[str]] = {}
    stream = []
    for t, (name, branch, parents, f) in enumerate(plan):
        ancestry[name] = {name}.union(*(ancestry[p] for p in parents))
        stream.append(f"commit refs/heads/{branch}\nmark :{marks[name]}\n")
        stream.append(f"committer T <t@e> {1_700_000_000 + t} +0000\n" + _data(name))
        stream += [("merge" if j else "from") + f" :{marks[p]}\n" for j, p in enumerate(parents)]
        stream.append("deleteall\nM 100644 inline f\n" + _data(f))
        stream += [f"M 100644 inline add_{a}\n" + _data("") for a in sorted(ancestry[name])]
    stream += [f"reset refs/tags/{name}\nfrom :{m}\n" for name, m in marks.items()]
    git(path, "fast-import", "--quiet", stdin="".join(stream))
    git(path, "reset", "-q", "--hard", "main")
    return {name: git(path, "rev-parse", name) for name in marks}


def test_first_parent_blames_the_merge(tmp_path: Path) -> None:
    sha = make_merge_repo(tmp_path / "user")
    clone = RigClone.open(tmp_path / "user", tmp_path / "clone")
    tested: list[str] = []
    state = drive(clone, clone.start("m1", "m4", first_parent=True), judge(), tested)
    assert state == Done(sha["merge"])
    assert set(tested) <= {sha["m2"], sha["merge"], sha["m3"]}  # never a side commit
    assert drive(clone, clone.start("m1", "m4"), judge(), []) == Done(sha["s2"])  # all parents


def test_resume_from_a_saved_log(tmp_path: Path) -> None:
    shas = make_repo(tmp_path / "user", bug_from(11))
    dest = tmp_path / "run" / "clone"
    first = RigClone.open(tmp_path / "user", dest)
    tested: list[str] = []
    state = drive(first, first.start("c0", "c19"), judge(frozenset({5})), tested, steps=2)
    assert isinstance(state, ToTest) and len(tested) == 2
    saved = first.log()
    first.reset()
    first.checkout("c3")  # the clone's work tree moved on meanwhile
    second = RigClone.open(tmp_path / "user", dest)  # a new run, the same clone
    resumed = second.replay(saved)
    assert resumed == state  # the same commit to test next
    assert drive(second, resumed, judge(frozenset({5})), tested) == Done(shas[11])
    assert marked_in(second.log()) == set(tested)  # no commit marked that was not tested
    assert second.log().startswith(saved.rstrip("\n").rsplit("\ngit bisect", 1)[0])


def test_a_killed_gits_lock_files_are_removed_and_the_bisection_goes_on(tmp_path: Path) -> None:
    """kill -9 of a run while its git held index.lock (seen in CI): the resumed run, holding
    the bisection's lock, removes what the killed git left, then resets and replays."""
    shas = make_repo(tmp_path / "user", bug_from(11))
    clone = RigClone.open(tmp_path / "user", tmp_path / "run" / "clone")
    tested: list[str] = []
    state = drive(clone, clone.start("c0", "c19"), judge(frozenset({5})), tested, steps=2)
    saved = clone.log()
    gitdir = tmp_path / "run" / "clone" / ".git"
    (gitdir / "index.lock").write_text("")
    (gitdir / "refs" / "bisect").mkdir(parents=True, exist_ok=True)
    (gitdir / "refs" / "bisect" / "bad.lock").write_text("")
    again = RigClone.open(tmp_path / "user", tmp_path / "run" / "clone")
    assert sorted(again.unlock()) == ["index.lock", "refs/bisect/bad.lock"]
    assert again.unlock() == []
    again.reset()
    assert again.replay(saved) == state
    assert drive(again, state, judge(frozenset({5})), tested) == Done(shas[11])


def test_resume_of_a_first_parent_fix_bisection(tmp_path: Path) -> None:
    make_repo(tmp_path / "user", lambda i: {"n": f"{i}\n", "f": "ok\n" if i >= 6 else "BUG"})
    clone = RigClone.open(tmp_path / "user", tmp_path / "clone")
    state = drive(clone, clone.start("c19", "c0", fix=True, first_parent=True), judge(), [], 1)
    again = RigClone.open(tmp_path / "user", tmp_path / "clone")
    assert again.state() == state  # what the files say, for an object that did not start it
    assert again.replay(clone.log()) == state
    assert isinstance(drive(again, state, judge(), []), Done)


def test_a_log_the_rig_did_not_write_is_refused(tmp_path: Path) -> None:
    sha = "a" * 40
    check_replay_log(f"# bad: [{sha}] x\ngit bisect start '--first-parent' '{sha}' '{sha}'\n")
    for line in (
        f"git bisect start '--no-checkout' '{sha}' '{sha}'",
        "git bisect run rm -rf /",
        "git bisect good HEAD",
        "git bisect good",  # the implicit HEAD
        f"git bisect bad '{sha}",  # unbalanced quote
        f"git-bisect bad {sha}",
        "rm -rf /",
    ):
        with pytest.raises(UsageError) as err:
            check_replay_log(line + "\n")
        assert err.value.fix


def user_bisect_log(user: Path) -> bool:
    return (user / ".git" / "BISECT_LOG").exists()


def _tree_digest(root: Path) -> dict[str, tuple[int, int, int, str]]:
    out: dict[str, tuple[int, int, int, str]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        content = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, content)
    return out


def snapshot(user: Path) -> dict[str, object]:
    gitdir = user / ".git"
    return {
        "head": git(user, "rev-parse", "HEAD"),
        "refs": git(user, "for-each-ref"),
        "status": git(user, "status", "--porcelain=v2", "--branch"),
        "index": (gitdir / "index").read_bytes(),
        "config": (gitdir / "config").read_bytes(),
        "worktrees": git(user, "worktree", "list", "--porcelain"),
        "bisect": sorted(p.name for p in gitdir.glob("BISECT_*")),
        "bisect_log": (gitdir / "BISECT_LOG").read_bytes() if user_bisect_log(user) else b"",
        "every_file": _tree_digest(user),  # .git and the work tree: bytes, modes, mtimes
    }


@pytest.mark.parametrize("user_bisecting", [False, True])
def test_the_users_repository_is_untouched(tmp_path: Path, user_bisecting: bool) -> None:
    user = tmp_path / "user"
    shas = make_repo(user, revertible(7))
    (user / "untracked.txt").write_text("mine\n")
    (user / "f").write_text("local edit\n")
    if user_bisecting:
        git(user, "stash", "-q")
        git(user, "bisect", "start", "c19", "c0")
        git(user, "bisect", "good")
        assert (user / ".git" / "BISECT_LOG").exists()
    else:
        assert not (user / ".git" / "refs" / "bisect").exists()
    before = snapshot(user)
    clone = RigClone.open(user, tmp_path / "clone")
    state = drive(clone, clone.start(["c0"], "HEAD" if not user_bisecting else "c19"), judge(), [])
    assert state == Done(shas[7])
    assert clone.revert_onto(shas[7], shas[19]) is not None
    clone.checkout("c3")
    RigClone.open(user, tmp_path / "clone").replay(clone.log())
    assert snapshot(user) == before
    if not user_bisecting:
        assert not list((user / ".git").glob("BISECT_*"))
        assert not (user / ".git" / "refs" / "bisect").exists()


def test_a_bare_user_repository(tmp_path: Path) -> None:
    shas = make_repo(tmp_path / "src", bug_from(4))
    git(tmp_path, "clone", "-q", "--bare", str(tmp_path / "src"), str(tmp_path / "k.git"))
    before = _tree_digest(tmp_path / "k.git")
    clone = RigClone.open(tmp_path / "k.git", tmp_path / "clone")
    assert drive(clone, clone.start("c0", "c19"), judge(), []) == Done(shas[4])
    assert _tree_digest(tmp_path / "k.git") == before


def test_revert_onto_removes_the_bug(tmp_path: Path) -> None:
    shas = make_repo(tmp_path / "user", revertible(7))
    clone = RigClone.open(tmp_path / "user", tmp_path / "clone")
    assert drive(clone, clone.start("c0", "c19"), judge(), []) == Done(shas[7])
    log = clone.log()
    reverted = clone.revert_onto(shas[7], "c19")
    assert reverted is not None
    assert git(clone.worktree, "rev-parse", "HEAD") == reverted
    assert clone.commit_info(reverted).parents == (shas[19],)
    assert (clone.worktree / "f").read_text() == "ok\n"
    assert (clone.worktree / "add19").exists() and not (clone.worktree / "add7").exists()
    assert clone.log() == log and clone.state() == Done(shas[7])  # the bisection's state stays


def test_a_conflicting_revert_gives_none_and_a_clean_clone(tmp_path: Path) -> None:
    files = revertible(7)  # then "BUG2" from commit 12 on: reverting 7 onto 19 conflicts
    shas = make_repo(
        tmp_path / "user", lambda i: {**files(i), "f": "BUG2\n"} if i > 11 else files(i)
    )
    clone = RigClone.open(tmp_path / "user", tmp_path / "clone")
    assert clone.revert_onto(shas[7], "c19") is None
    assert git(clone.worktree, "rev-parse", "HEAD") == shas[19]
    assert git(clone.worktree, "status", "--porcelain", "--ignored") == ""
    assert not (clone.worktree / ".git" / "REVERT_HEAD").exists()
    assert not (clone.worktree / ".git" / "sequencer").exists()


def test_revert_of_a_merge_uses_the_mainline(tmp_path: Path) -> None:
    sha = make_merge_repo(tmp_path / "user")
    clone = RigClone.open(tmp_path / "user", tmp_path / "clone")
    info = clone.commit_info("merge")
    assert info.is_merge and info.parents == (sha["m2"], sha["s3"])
    assert info.subject == "merge" and info.author == "T <t@e>"
    assert not clone.commit_info("m4").is_merge
    reverted = clone.revert_onto(sha["merge"], "m4")
    assert reverted is not None and (clone.worktree / "f").read_text() == "ok\n"


def test_apply_patch(tmp_path: Path) -> None:
    make_repo(tmp_path / "user", bug_from(7))
    clone = RigClone.open(tmp_path / "user", tmp_path / "clone")
    good = tmp_path / "good.patch"
    good.write_text(git(tmp_path / "user", "diff", "c6", "c7", "--", "f") + "\n")
    bad = tmp_path / "bad.patch"
    bad.write_text(git(tmp_path / "user", "diff", "c7", "c6", "--", "f") + "\n")
    clone.checkout("c3")
    (clone.worktree / "build.o").write_text("product")
    assert clone.apply_patch(bad) is False  # the tree has "ok", the patch wants "BUG"
    assert git(clone.worktree, "status", "--porcelain") == "?? build.o"
    clone.checkout("c3")  # clean: the build product is gone
    assert git(clone.worktree, "status", "--porcelain", "--ignored") == ""
    assert clone.apply_patch(good) is True
    assert (clone.worktree / "f").read_text() == "BUG\n"
    clone.checkout("c3")
    assert (clone.worktree / "f").read_text() == "ok\n"


def test_mark_cleans_a_patched_tree(tmp_path: Path) -> None:
    shas = make_repo(tmp_path / "user", bug_from(7))
    clone = RigClone.open(tmp_path / "user", tmp_path / "clone")
    patch = tmp_path / "p.patch"
    patch.write_text(git(tmp_path / "user", "diff", "c0", "c19", "--", "n") + "\n")
    state = clone.start("c0", "c19")
    while isinstance(state, ToTest):
        verdict = judge()(clone.worktree)
        (clone.worktree / "n").write_text("19\n")  # a local change the next checkout must drop
        (clone.worktree / "vmlinux").write_text("built")
        state = clone.mark(state.sha, verdict)
    assert state == Done(shas[7])
    assert patch.exists()


def test_errors_say_what_and_how_to_fix(tmp_path: Path) -> None:
    make_repo(tmp_path / "user", bug_from(7))
    (tmp_path / "plain").mkdir()
    (tmp_path / "user" / "sub").mkdir()
    cases: list[Callable[[], object]] = [
        lambda: RigClone.open(tmp_path / "plain", tmp_path / "c1"),
        lambda: RigClone.open(tmp_path / "missing", tmp_path / "c2"),
        lambda: RigClone.open(tmp_path / "user" / "sub", tmp_path / "c3"),
        lambda: RigClone.open(tmp_path / "user", tmp_path / "user" / "rig-clone"),
        lambda: RigClone.open(tmp_path / "user", tmp_path / "plain"),  # holds junk
    ]
    (tmp_path / "plain" / "junk").write_text("x")
    for case in cases:
        with pytest.raises(UsageError) as err:
            case()
        assert err.value.fix and err.value.where
    clone = RigClone.open(tmp_path / "user", tmp_path / "clone")
    for good, bad in [("nope", "c19"), ("c0", "v9.9"), ("c19", "c5"), ("c5", "c5"), ("", "c3")]:
        with pytest.raises(UsageError) as err:
            clone.start(good, bad)
        assert err.value.fix, (good, bad)
    with pytest.raises(UsageError):
        clone.start(["c0"], ["c5", "c6"])  # two BAD ends
    with pytest.raises(UsageError):
        clone.mark("c3", Mark.GOOD)  # nothing started
    make_repo(tmp_path / "other", bug_from(3))
    with pytest.raises(UsageError, match="not a shared clone"):
        RigClone.open(tmp_path / "other", tmp_path / "clone")
    assert not (tmp_path / "user" / "rig-clone").exists()


def test_refs_resolve_in_the_users_tree(tmp_path: Path) -> None:
    shas = make_repo(tmp_path / "user", bug_from(7))
    clone = RigClone.open(tmp_path / "user", tmp_path / "clone")
    git(tmp_path / "user", "tag", "-a", "-m", "annotated", "v1", "c4")
    assert clone.resolve("v1") == shas[4]  # after the clone was made: read in the user's repo
    assert clone.resolve("HEAD~3") == shas[16]
    assert clone.resolve(shas[9][:9]) == shas[9]
    assert clone.resolve("main") == shas[19]


# Output of git 2.39 (LC_ALL=C), verbatim.
FIRST_BAD = """\
{a} is the first bad commit
commit {a}
Author: t <t@e>

    c7
    {b} is the first bad commit
    Bisecting: 3 revisions left to test after this (roughly 2 steps)

 f | 2 +-
"""
SKIPPED = """\
There are only 'skip'ped commits left to test.
The first fixed commit could be any of:
{a}
{b}
We cannot bisect more!
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bisecting: 9 revisions left to test after this (roughly 3 steps)\n[{a}] c9\n",
         ToTest("{a}", 9, 3)),
        ("Bisecting: 1 revision left to test after this (roughly 1 step)\n[{b}] merge\n",
         ToTest("{b}", 1, 1)),
        ("Bisecting: 0 revisions left to test after this (roughly 0 steps)\n[{a}] [{b}] x\n",
         ToTest("{a}", 0, 0)),
        (FIRST_BAD, Done("{a}")),
        ("{b} is the first fixed commit\ncommit {b}\n", Done("{b}")),
        (SKIPPED, Inconclusive(("{a}", "{b}"))),
        ("status: waiting for both good and bad commits\n", None),
        ("status: waiting for bad commit, 1 good commit known\n", None),
        ("", None),
    ],
)  # fmt: skip
def test_parse_bisect_output(text: str, expected: BisectState | None) -> None:
    a, b = "1" * 40, "b" * 64  # SHA-1 and SHA-256
    fill = {"a": a, "b": b}
    if isinstance(expected, ToTest):
        expected = ToTest(expected.sha.format(**fill), expected.left, expected.steps)
    elif isinstance(expected, Done):
        expected = Done(expected.first_bad.format(**fill))
    elif isinstance(expected, Inconclusive):
        expected = Inconclusive(tuple(c.format(**fill) for c in expected.candidates))
    assert parse_bisect_output(text.format(**fill)) == expected


def test_parse_bisect_output_refuses_truncated_output() -> None:
    with pytest.raises(ValueError, match="without the commit"):
        parse_bisect_output("Bisecting: 2 revisions left to test after this (roughly 1 step)\n")
    with pytest.raises(ValueError, match="without candidates"):
        parse_bisect_output("There are only 'skip'ped commits left to test.\n")


def test_parse_log_state() -> None:
    a, b = "a" * 40, "b" * 40
    start = f"git bisect start '{b}' '{a}'\n# bad: [{b}] x\ngit bisect bad {b}\n"
    assert parse_log_state(start) is None
    assert parse_log_state(start + f"# first bad commit: [{b}] x\n") == Done(b)
    assert parse_log_state(start + f"# first fixed commit: [{b}] x\n") == Done(b)
    skipped = f"# only skipped commits left to test\n# possible first bad commit: [{a}] x\n"
    skipped += f"# possible first bad commit: [{b}] y\n"
    assert parse_log_state(start + skipped) == Inconclusive((a, b))
    # a mark after the search ended (a skipped candidate retried) makes it go on
    assert parse_log_state(start + skipped + f"git bisect good {a}\n") is None


def test_ends_next_to_each_other_are_done_at_once(tmp_path: Path) -> None:
    shas = make_repo(tmp_path / "user", bug_from(7), n=10)
    clone = RigClone.open(tmp_path / "user", tmp_path / "clone")
    assert clone.start("c6", "c7") == Done(shas[7])
    state = clone.start(["c6", "c2"], "c9")  # two GOOD ends
    assert isinstance(state, ToTest) and state.sha in shas[7:9]
    assert drive(clone, state, judge(), []) == Done(shas[7])


def test_an_inconclusive_log_replays_and_a_candidate_can_be_retried(tmp_path: Path) -> None:
    shas = make_repo(tmp_path / "user", bug_from(5), n=10)
    clone = RigClone.open(tmp_path / "user", tmp_path / "clone")
    state = drive(clone, clone.start("c0", "c9"), judge(frozenset({5, 6})), [])
    assert state == Inconclusive((shas[5], shas[6], shas[7]))  # oldest first
    again = RigClone.open(tmp_path / "user", tmp_path / "clone")
    assert again.replay(clone.log()) == state
    assert again.mark(shas[5], Mark.BAD) == Done(shas[5])  # a retry that could judge


def test_a_linked_worktree_of_the_user(tmp_path: Path) -> None:
    shas = make_repo(tmp_path / "user", bug_from(3), n=8)
    git(tmp_path / "user", "worktree", "add", "-q", "--detach", str(tmp_path / "wt"), "c5")
    before = _tree_digest(tmp_path / "user")
    clone = RigClone.open(tmp_path / "wt", tmp_path / "clone")
    assert clone.resolve("HEAD") == shas[5]  # the linked worktree's HEAD, not main's
    assert drive(clone, clone.start("c0", "HEAD"), judge(), []) == Done(shas[3])
    assert _tree_digest(tmp_path / "user") == before
    with pytest.raises(UsageError):  # inside the main work tree
        RigClone.open(tmp_path / "wt", tmp_path / "user" / "clone")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the tree to another user")
def test_a_tree_of_another_user_needs_safe_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = tmp_path / "user"
    shas = make_repo(user, bug_from(2), n=4)
    for p in [user, *user.rglob("*")]:
        os.lchown(p, 65534, 65534)  # nobody
    monkeypatch.delenv("SUDO_UID", raising=False)
    config = tmp_path / "gitconfig"
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))  # the caller's own global config
    trusted: list[Path] = []
    for asked in (user, user / ".git"):  # git 2.39 asks for the work tree, then (clone) .git
        config.write_text("".join(f"[safe]\n\tdirectory = {p}\n" for p in trusted))
        with pytest.raises(UsageError, match="another user") as err:
            RigClone.open(user, tmp_path / "clone")
        assert err.value.fix == f"git config --global --add safe.directory {asked}"
        trusted.append(asked)
    config.write_text("".join(f"[safe]\n\tdirectory = {p}\n" for p in trusted))
    clone = RigClone.open(user, tmp_path / "clone")
    assert drive(clone, clone.start("c0", "c3"), judge(), []) == Done(shas[2])


def test_a_tree_kernels_checkout_survives_a_killed_git_and_a_failing_git_is_infra(
    tmp_path: Path,
) -> None:
    """The kernel build's own clone (rig.artifacts.kbuild): a lock file a killed git left is
    removed under the checkout's lock (CI's kill -9 test hit one); a git that fails is an
    InfraError, never a reason cached as "does not build"."""
    from rig.artifacts.kbuild import _checkout
    from rig.errors import InfraError

    shas = make_repo(tmp_path / "user", bug_from(11))
    checkout, log = tmp_path / "ktree", tmp_path / "build.log"
    assert _checkout(tmp_path / "user", checkout, shas[3], b"", log) is None
    (checkout / ".git" / "index.lock").write_text("")
    assert _checkout(tmp_path / "user", checkout, shas[4], b"", log) is None
    assert "removed index.lock that a killed git left" in log.read_text()
    assert git(checkout, "rev-parse", "HEAD").strip() == shas[4]
    with pytest.raises(InfraError, match="git could not check out"):
        _checkout(tmp_path / "user", checkout, "0" * 40, b"", log)
