"""The artifact cache: a content-addressed directory store with per-key locks.

Everything expensive is built once, keyed by a hash of what went into it (recipe version,
package versions, sources). Builds happen in a temporary directory next to the final one and
are renamed into place under the key's file lock, so several pytest-xdist workers asking for
the same artifact at once build it once; `prune` deletes only what nobody holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from rig.errors import InfraError, RigError
from rig.runs import lock_held, real_dir

RECIPE_VERSION = "2"
"""Bump when a recipe changes in a way that must invalidate cached artifacts (2: module builds
are sandboxed; a chroot that an unsandboxed build could have written is made anew)."""


def default_cache_root() -> Path:
    env = os.environ.get("RIG_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmlaunch-rig"


def digest(*parts: object) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([RECIPE_VERSION, *parts], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    """A file's sha256, read in 1 MiB blocks (kernels, initrds, emulators in cache keys)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


Progress = Callable[[str], None]


def stderr_progress(msg: str) -> None:
    print(f"[rig artifacts] {msg}", file=sys.stderr, flush=True)


EMBED_KIND = "libvirt-embed"  # the embedded libvirt roots live in the cache too


def slot_in_use(root: Path) -> bool:
    """An embedded libvirt root whose slot lock a live libvirt child holds."""
    return lock_held(root / "rig.lock")


@dataclass
class Prune:
    removed: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # in use by a live run or build: kept
    kept: list[str] = field(default_factory=list)  # still named by the matrix (--unused)
    skipped: list[str] = field(default_factory=list)  # symlinks (or their locks): not followed


@dataclass(frozen=True)
class Cache:
    """A content-addressed directory store with per-key locks."""

    root: Path
    min_free: int = 1 << 30
    """A build starts only with this much free space on the cache's file system."""

    def slot(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    @contextlib.contextmanager
    def building(self, kind: str, key: str) -> Iterator[tuple[Path, Path | None]]:
        """Yield (final_path, tmp_dir). tmp_dir is None when final_path already exists.

        The caller fills tmp_dir; on normal exit it is renamed to final_path atomically.
        """
        final = self.slot(kind, key)
        if final.exists():
            yield final, None
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):
            if final.exists():
                yield final, None
                return
            # We hold the key's lock: any temp dir of this key is a killed build's leftover.
            for stale in final.parent.glob(f".{key}.*"):
                shutil.rmtree(stale, ignore_errors=True)
            self._room_for(kind, key)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
            try:
                yield final, tmp
                tmp.rename(final)
            except BaseException as exc:
                log = tmp / "build.log"
                kept = final.parent / f"{key}.failed.log"
                if log.is_file() and not log.is_symlink():
                    log.replace(kept)  # the log an error names outlives the temp dir
                    if isinstance(exc, RigError):
                        exc.moved(str(log), str(kept))
                shutil.rmtree(tmp, ignore_errors=True)
                raise

    def _room_for(self, kind: str, key: str) -> None:
        free = shutil.disk_usage(self.root).free
        if free < self.min_free:
            raise InfraError(
                f"only {free >> 20} MiB free on the file system holding the cache; building "
                f"{kind}/{key} needs at least {self.min_free >> 20} MiB to start",
                where=str(self.root),
                fix="free disk space: `rig cache prune` deletes what no run uses, or set "
                "RIG_CACHE_DIR to a directory on a larger disk",
            )

    @contextlib.contextmanager
    def held(self, kind: str, key: str) -> Iterator[bool]:
        """Try to take an entry's build lock without waiting: True when nobody holds it."""
        lock = FileLock(str(self.slot(kind, key)) + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def prune(self, keep: Callable[[str, str], bool] = lambda _k, _n: False) -> Prune:
        """Delete entries (and killed builds' temp dirs) that nobody is using, except `keep`.

        An entry whose build lock is held is being built: left alone. An embedded libvirt
        root (kind `libvirt-embed`) is left alone while its slot lock is held (a live run).
        A kind or entry that is a symlink, or whose lock file is one, is skipped (`skipped`):
        nothing outside the cache is deleted or locked through it.
        """
        result = Prune()
        for kind_dir in self._real_dirs(self.root, result.skipped):
            for failed in sorted(kind_dir.glob("*.failed.log")):
                if _plain_file(failed):  # the last failed build's log of a key
                    failed.unlink()
                    result.removed.append(self._rel(failed))
            for entry in self._real_dirs(kind_dir, result.skipped):
                name = entry.name
                temp = name.startswith(".")  # `.KEY.XXXX`: a build's temp dir
                key = name[1:].rsplit(".", 1)[0] if temp else name
                lock = Path(f"{self.slot(kind_dir.name, key)}.lock")
                if lock.is_symlink():  # never locked through (listed in skipped, as a link)
                    continue
                if temp:
                    with self.held(kind_dir.name, key) as free:
                        if free:
                            shutil.rmtree(entry, ignore_errors=True)
                            result.removed.append(f"{kind_dir.name}/{name}")
                    continue
                if keep(kind_dir.name, name):
                    result.kept.append(f"{kind_dir.name}/{name}")
                    continue
                if kind_dir.name == EMBED_KIND and slot_in_use(entry):
                    result.busy.append(f"{kind_dir.name}/{name}")
                    continue
                with self.held(kind_dir.name, name) as free:
                    if not free:
                        result.busy.append(f"{kind_dir.name}/{name}")
                        continue
                    shutil.rmtree(entry)
                    result.removed.append(f"{kind_dir.name}/{name}")
        return result

    def entries(self) -> list[tuple[str, str, int]]:
        """(kind, key, bytes) of every entry; symlinks are neither listed nor followed."""
        out: list[tuple[str, str, int]] = []
        for kind_dir in self._real_dirs(self.root, []):
            for entry in self._real_dirs(kind_dir, []):
                if not entry.name.startswith("."):
                    size = sum(f.lstat().st_size for f in entry.rglob("*") if _plain_file(f))
                    out.append((kind_dir.name, entry.name, size))
        return out

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def _real_dirs(self, path: Path, skipped: list[str]) -> list[Path]:
        """The real directories in `path` (the root, or a real directory); symlinks in it go
        to `skipped`, never followed."""
        if not path.is_dir():
            return []
        found = []
        for p in sorted(path.iterdir()):
            if p.is_symlink():
                skipped.append(f"{self._rel(p)} (a symlink, not followed)")
            elif real_dir(p):
                found.append(p)
        return found


def _plain_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False
