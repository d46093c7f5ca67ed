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
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from rig.runs import lock_held

RECIPE_VERSION = "1"
"""Bump when a recipe changes in a way that must invalidate cached artifacts."""


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


@dataclass(frozen=True)
class Cache:
    """A content-addressed directory store with per-key locks."""

    root: Path

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
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
            try:
                yield final, tmp
                tmp.rename(final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise

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
        """
        result = Prune()
        if not self.root.exists():
            return result
        for kind_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for entry in sorted(p for p in kind_dir.iterdir() if p.is_dir()):
                name = entry.name
                if name.startswith("."):  # `.KEY.XXXX`: a build's temp dir
                    key = name[1:].rsplit(".", 1)[0]
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
        out: list[tuple[str, str, int]] = []
        if not self.root.exists():
            return out
        for kind_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for entry in sorted(kind_dir.iterdir()):
                if entry.is_dir() and not entry.name.startswith("."):
                    size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
                    out.append((kind_dir.name, entry.name, size))
        return out
