"""The module build sandbox against a module tree that attacks it (tests/drivers/escape).

The fixture's build, run by the rig's own build_module in the 6.12 kernel's toolchain chroot,
tries the classic chroot escape (writing a proof file on the host), to write the chroot's
compiler, headers and /usr/bin, and to connect to a port this test listens on. The build must
succeed, and none of that may reach the host: no proof file, the chroot unchanged (a digest
of every path's metadata and every regular file's contents), no connection.

Needs the 6.12 kernel's chroot (built on first use, about a minute, from the Debian mirror);
the kernel comes from RIG_CACHE_DIR (or the default cache), the module build goes to a
cache of the test's own, so every run builds the fixture afresh.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import stat
from pathlib import Path

from rig.artifacts import Artifacts, Cache, default_cache_root
from rig.artifacts.module import build_module
from rig.matrix import load_matrix

REPO = Path(__file__).resolve().parents[2]


def tree_state(root: Path) -> str:
    """Every path under `root`: type and mode, owner, size, mtime, a link's target and a
    regular file's sha256 (about 1.5 s for a 700 MB chroot)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            h.update(f"{rel}\0{st.st_mode:o}\0{st.st_uid}:{st.st_gid}\0{st.st_size}\0"
                     f"{st.st_mtime_ns}\0".encode())  # fmt: skip
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(path).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


def test_a_hostile_module_build_changes_nothing_outside_its_build_dir(tmp_path: Path) -> None:
    spec = load_matrix(REPO / "matrix.yaml").kernels["6.12"]
    kernel = Artifacts(Cache(default_cache_root())).kernel(spec)
    proof = Path(f"/tmp/rig-escape-proof-{secrets.token_hex(8)}")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    src = tmp_path / "escape"
    shutil.copytree(REPO / "tests/drivers/escape", src)
    (src / "escape.conf").write_text(f"ESCAPE_PROOF := {proof}\nESCAPE_PORT := {port}\n")
    before = tree_state(kernel.chroot)
    try:
        build = build_module(Cache(tmp_path / "cache"), kernel, src, lambda _msg: None)
        after = tree_state(kernel.chroot)
        escaped = proof.exists()
        try:
            conn, peer = listener.accept()
            conn.close()
            connected: str | None = f"{peer}"
        except BlockingIOError:
            connected = None
    finally:
        listener.close()
        proof.unlink(missing_ok=True)
    print(build.log)
    attempts = [line for line in build.log.splitlines() if line.startswith("escape: ")]
    # the attacks ran (else this test proves nothing) ...
    for part in ("(a) chroot(", "(a) open(proof)", "(b) compiler /", "(b) header /",
                 "(b) new file /", "(c) network "):
        assert any(part in line for line in attempts), f"no {part!r} attempt in the build log"
    # ... the build still made its module ...
    assert build.ok, build.log
    assert build.ko is not None and build.ko.stat().st_size > 0
    # ... and nothing got out ...
    assert not escaped, f"the chroot escape wrote {proof} on the host"
    assert after == before, "the build changed the kernel's toolchain chroot"
    assert connected is None, f"the build connected to the host's 127.0.0.1:{port}"
    for word in ("ESCAPED", "WRITABLE", "CONNECTED"):
        assert not [line for line in attempts if word in line], build.log
    # ... from a build that ran as nobody, without capabilities
    assert "escape: the build runs as uid 65534 gid 65534" in build.log
    assert "CapEff: 0000000000000000" in build.log
    assert "CapBnd: 0000000000000000" in build.log
    assert "NoNewPrivs: 1" in build.log
