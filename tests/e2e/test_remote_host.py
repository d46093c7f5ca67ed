"""A tcg cell on a libvirt host that shares no filesystem with the controller (#22): kernel and
initrd uploaded into the host's pool, the console streamed back, orphans autodestroyed.

The host is real libvirtd + sshd in a mount namespace of their own (tests/e2e/fake_host.py),
where the checkout, the run directory's parent and the artifact cache are hidden under
tmpfs; the controller reaches it over qemu+ssh only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rig.artifacts.cache import default_cache_root
from rig.lanes.libvirt_remote import HOST_XML_FILE, POOL, REMOTE_FILE, sha256_of
from rig.model import Outcome
from rig.pool import public
from tests.e2e.conftest import REPO, RigRun, RigRunner
from tests.e2e.fake_host import FakeHost, fake_host, freeze, thaw_and_end

CELL = "tcg-6.12-penryn"
TCG = ("--lane", "tcg", "--kernel", "6.12", "--cpu", "penryn")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    with fake_host(hide=[REPO, tmp_path, default_cache_root()]) as h:
        yield h


def controller_paths(tmp_path: Path) -> list[str]:
    return [str(REPO), str(tmp_path), str(default_cache_root())]


def facts(run: RigRun) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((run.cell_dir(CELL) / REMOTE_FILE).read_text())
    return record


def volumes(host: FakeHost) -> list[str]:
    out = host.run("virsh", "-c", "qemu:///system", "vol-list", POOL)
    assert out.returncode == 0, out.stderr
    return [line.split()[0] for line in out.stdout.splitlines()[2:] if line.strip()]


def test_a_tcg_cell_passes_on_a_host_that_shares_no_filesystem(
    rig: RigRunner, host: FakeHost, tmp_path: Path
) -> None:
    local = rig(*TCG)
    assert local.rc == 0, local.output[-3000:]
    remote = rig(*TCG, "--uri", host.uri)
    assert remote.rc == 0, remote.output[-3000:]
    assert remote.outcomes(CELL) == local.outcomes(CELL)
    assert remote.cells[CELL]["teardown"].properties["uri"] == host.uri
    cell = remote.cell_dir(CELL)
    console = (cell / "console.txt").read_text(errors="replace")
    assert "vmlaunch:" in console and "reboot: Power down" in console, console[-2000:]
    assert "RIG-" in (cell / "agent.txt").read_text(errors="replace")
    record = facts(remote)
    assert record["uri"] == host.uri
    assert [v for v in record["uploaded"] if v.startswith("vmlinuz-")], record  # a fresh host
    assert record["deleted"] == record["per_boot"], record  # the cell's initrd is gone again
    # what the host ran names none of the controller's paths: its domain XML (as its libvirt
    # reported it, running) and the QEMU command line in its own log
    host_xml = (cell / HOST_XML_FILE).read_text()
    name = host_xml.split("<name>", 1)[1].split("</name>", 1)[0]
    qemu_log = host.read(f"/var/log/libvirt/qemu/{name}.log")
    assert "-kernel /var/lib/libvirt/vmlaunch-rig/vmlinuz-" in qemu_log, qemu_log
    for path in controller_paths(tmp_path):
        assert path not in host_xml, path
        assert path not in qemu_log, path
    assert "<serial type='pty'>" in host_xml
    assert host.domains() == []


def test_a_second_run_uploads_no_kernel(rig: RigRunner, host: FakeHost) -> None:
    first = rig(*TCG, "--uri", host.uri)
    assert first.rc == 0, first.output[-3000:]
    second = rig(*TCG, "--uri", host.uri)
    assert second.rc == 0, second.output[-3000:]
    one, two = facts(first), facts(second)
    kernel = [v for v in one["uploaded"] if v.startswith("vmlinuz-")]
    assert len(kernel) == 1, one
    # the second run sends only what no run can share: its cell's initrd (it holds the run id
    # and the module), deleted when the boot ended
    assert two["uploaded"] == two["per_boot"] == two["deleted"], two
    assert [v.endswith(".initrd") for v in two["uploaded"]] == [True], two
    assert two["reused"] == kernel, two
    assert volumes(host) == kernel  # no partial upload, no initrd left behind


def test_a_killed_child_leaves_no_domain_on_the_host(host: FakeHost, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    argv = [sys.executable, "-m", "rig", "run", "--junit", str(tmp_path / "junit.xml"),
            "--runs-dir", str(runs), *TCG, "--uri", host.uri]  # fmt: skip
    with (tmp_path / "rig.log").open("wb") as log:
        rig = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not host.domains():
            assert rig.poll() is None and time.monotonic() < deadline, (
                tmp_path / "rig.log"
            ).read_text()[-3000:]
            time.sleep(0.5)
        pidfile = next(runs.glob(f"*/cells/{CELL}/child.pid"))
        child = int(pidfile.read_text().split()[0])
        assert b"rig.lanes.libvirt_child" in Path(f"/proc/{child}/cmdline").read_bytes()
        os.kill(child, signal.SIGKILL)  # no chance to destroy its domain itself
        killed = time.monotonic()
        while host.domains():
            assert time.monotonic() - killed < 10, host.domains()
            time.sleep(0.2)
        print(f"domain gone {time.monotonic() - killed:.1f} s after kill -9 of the child")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(rig.pid, signal.SIGKILL)
        rig.wait()


def test_a_host_without_kvm_skips_the_kvm_lane_naming_the_host(
    rig: RigRunner, host: FakeHost
) -> None:
    # the host's /dev/kvm is a read-only placeholder: its libvirt offers no kvm domains,
    # whatever this machine's own /dev/kvm can do
    run = rig("--lane", "kvm", "--kernel", "6.12", "--cpu", "haswell", "--uri", host.uri)
    assert run.rc == 0, run.output[-3000:]
    cell = run.cells["kvm-6.12-haswell"]
    assert {case.outcome for case in cell.values()} == {Outcome.SKIPPED}
    reason = cell["build"].message
    # named without its key file and ssh command (rig.pool.public), since pool mode (#22)
    shown = public(host.uri)
    assert f"libvirt host {shown} has no usable KVM" in reason, reason
    assert "keyfile" not in reason and "root@" not in reason, reason


UPLOADER = """
import json, sys, time
from pathlib import Path
import libvirt
from rig.lanes.libvirt_remote import ensure_pool, shared_volume
libvirt.registerErrorHandler(lambda _c, _e: None, None)
conn = libvirt.open(sys.argv[1])
while not Path(sys.argv[3]).exists():
    time.sleep(0.01)
pool = ensure_pool(conn, libvirt)
vol, uploaded = shared_volume(conn, pool, libvirt, Path(sys.argv[2]), "vmlinuz")
print(json.dumps({"name": vol.name(), "path": vol.path(), "uploaded": uploaded}))
"""


def test_two_controllers_uploading_one_kernel_at_once_share_one_whole_volume(
    host: FakeHost, tmp_path: Path
) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(os.urandom(24 << 20))  # big enough that both find no volume
    gate = tmp_path / "go"
    argv = [sys.executable, "-c", UPLOADER, host.uri, str(kernel), str(gate)]
    procs = [
        subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        time.sleep(8)  # both connected (an ssh login and the host's first probe each)
        gate.touch()
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert [p.returncode for p in procs] == [0, 0], outs
    got = [json.loads(out.decode().splitlines()[-1]) for out, _err in outs]
    print(got)
    assert got[0]["name"] == got[1]["name"] == f"vmlinuz-{sha256_of(kernel)[:16]}"
    assert any(g["uploaded"] for g in got)
    assert volumes(host) == [got[0]["name"]]  # no partial left, one volume
    on_host = host.run("sha256sum", got[0]["path"]).stdout.split()[0]
    assert on_host == sha256_of(kernel)  # whole, as the file


def test_a_host_that_freezes_mid_boot_ends_the_cell_and_keeps_its_console(
    host: FakeHost, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    argv = [sys.executable, "-m", "rig", "run", "--junit", str(tmp_path / "junit.xml"),
            "--runs-dir", str(runs), *TCG, "--uri", host.uri]  # fmt: skip
    daemons = [pid for pid in host.processes() if pid != host.pid]
    with (tmp_path / "rig.log").open("wb") as log:
        rig = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    frozen: list[int] = []
    try:
        deadline = time.monotonic() + 600
        while not any(p.stat().st_size for p in runs.glob(f"*/cells/{CELL}/console.txt")):
            assert rig.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        frozen = freeze(host)
        stopped = time.monotonic()
        assert set(daemons) <= set(frozen)
        rc = rig.wait(timeout=120)
        took = time.monotonic() - stopped
        print(f"cell ended {took:.1f} s after the host froze")
        assert rc == 3, (tmp_path / "rig.log").read_text()[-3000:]
        cell = next(runs.glob(f"*/cells/{CELL}"))
        result = json.loads((cell / "domain-result.json").read_text())
        assert "connection to the libvirt host lost" in result["detail"], result
        assert result["duration_s"] > 15, result  # keepalive: 5 s, then 3 probes unanswered
        assert (cell / "console.txt").read_text(errors="replace").strip()
    finally:
        thaw_and_end(frozen, rig)
    deadline = time.monotonic() + 30  # thawed, the host sees the connection gone
    while host.domains():
        assert time.monotonic() < deadline, host.domains()
        time.sleep(0.5)


SWEEPER = """
import json, sys
import libvirt
from rig.lanes.libvirt_remote import ensure_pool, sweep_stale
libvirt.registerErrorHandler(lambda _c, _e: None, None)
conn = libvirt.open(sys.argv[1])
print(json.dumps(sweep_stale(ensure_pool(conn, libvirt), libvirt)))
"""


def test_a_killed_runs_leftover_volumes_are_swept_once_a_day_old(host: FakeHost) -> None:
    virsh = ("virsh", "-c", "qemu:///system")
    assert host.run(*virsh, "pool-list").returncode == 0
    argv = [sys.executable, "-c", SWEEPER, host.uri]
    swept = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert swept.returncode == 0 and json.loads(swept.stdout) == [], swept.stderr  # the pool
    names = ["vmlinuz-0123456789abcdef.partial-dead", "rig-r-c.initrd", "rig-new-c.initrd",
             "vmlinuz-0123456789abcdef"]  # fmt: skip
    for name in names:
        made = host.run(*virsh, "vol-create-as", POOL, name, "1M")
        assert made.returncode == 0, made.stderr
    for name in [*names[:2], names[3]]:  # two days old; the kernel too: kept all the same
        old = host.run("touch", "-d", "2 days ago", f"/var/lib/libvirt/vmlaunch-rig/{name}")
        assert old.returncode == 0, old.stderr
    swept = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert swept.returncode == 0, swept.stderr
    assert sorted(json.loads(swept.stdout)) == sorted(names[:2])
    assert sorted(volumes(host)) == sorted(names[2:])
