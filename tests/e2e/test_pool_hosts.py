"""One run over several libvirt hosts (#22, pool mode): cells lease slots on live hosts.

Two fake hosts (tests/e2e/fake_host.py), each its own mount namespace, libvirtd and sshd port;
the controller reaches them over qemu+ssh only. slots=1 each, so at most two boots at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.artifacts.cache import default_cache_root
from rig.lanes.libvirt_remote import POOL, POOL_TARGET
from rig.model import Outcome
from rig.pool import URIS_FILE, public
from rig.pool_run import ATTEMPTS_FILE
from rig.remote_sweep import SWEPT_FILE
from rig.report import by_cell, read_junit
from tests.e2e.conftest import REPO, RigRunner
from tests.e2e.fake_host import FakeHost, fake_host, freeze, thaw_and_end
from tests.e2e.test_remote_host import volumes

CELLS = ("tcg-6.12-penryn", "tcg-6.12-nehalem")
PASSED = Outcome.PASSED
TWO = ("--lane", "tcg", "--kernel", "6.12", "--cpu", "penryn", "--cpu", "nehalem")


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[FakeHost, FakeHost]]:
    hide = [REPO, tmp_path, default_cache_root()]
    with fake_host(hide=hide) as a, fake_host(hide=hide) as b:
        yield a, b


class Watch:
    """Polls each host's domains while a run goes on: the most it ever saw at once."""

    def __init__(self, hosts: tuple[FakeHost, ...]) -> None:
        self.hosts = hosts
        self.most = [0] * len(hosts)
        self.polls = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll)

    def _poll(self) -> None:
        while not self.stop.is_set():
            for i, host in enumerate(self.hosts):
                out = host.run("virsh", "-c", "qemu:///system", "list", "--name")
                if out.returncode == 0:
                    self.most[i] = max(self.most[i], len(out.stdout.split()))
            self.polls += 1
            time.sleep(0.3)

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(120)


def test_two_hosts_with_one_slot_each_run_one_cell_each(
    rig: RigRunner, hosts: tuple[FakeHost, FakeHost]
) -> None:
    a, b = hosts
    with Watch(hosts) as watch:
        run = rig(*TWO, "--uri", a.uri + "&slots=1", "--uri", b.uri + "&slots=1")
    print(f"{watch.polls} polls, most domains at once per host: {watch.most}")
    assert run.rc == 0, run.output[-3000:]
    assert watch.most == [1, 1], watch.most  # both hosts booted, never over their slot
    used = {}
    for cell_id in CELLS:
        props = run.cells[cell_id]["teardown"].properties
        # tcg has no VMX: its three VMX stages skip, build and teardown pass
        assert run.outcomes(cell_id)["build"] is run.outcomes(cell_id)["teardown"] is PASSED
        assert props["slot"] == "0"
        assert "keyfile" not in props["host"] and "root@" not in props["host"], props
        used[cell_id] = props["host"]
    assert sorted(used.values()) == sorted([public(a.uri), public(b.uri)]), used
    assert "-n 2" in run.output or "2 workers" in run.output, run.output[:2000]
    assert a.domains() == b.domains() == []


def _kill_libvirtd(host: FakeHost) -> None:
    for pid in host.processes():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"/usr/sbin/libvirtd\0"):
                os.kill(pid, signal.SIGKILL)
                return
    raise AssertionError("no libvirtd in the host's namespace")


def test_a_host_dead_before_the_run_gets_no_cell(
    rig: RigRunner, hosts: tuple[FakeHost, FakeHost]
) -> None:
    a, b = hosts
    _kill_libvirtd(b)  # the host's init stops sshd too: its connection fails
    run = rig(*TWO, "--uri", a.uri, "--uri", b.uri)
    assert run.rc == 0, run.output[-3000:]
    for cell_id in CELLS:
        props = run.cells[cell_id]["teardown"].properties
        assert props["host"] == public(a.uri), props
    assert f"libvirt host {public(b.uri)} was dead for this run" in run.output, run.output[-3000:]
    named = [run.cells[c]["teardown"].properties.get("dead_host", "") for c in CELLS]
    assert all(v.startswith(public(b.uri) + ": ") for v in named), named  # in the JUnit
    dead = list(run.runs_dir.glob("*/dead/*.json"))
    assert [json.loads(p.read_text())["host"] for p in dead] == [public(b.uri)]


def test_a_cell_whose_host_freezes_mid_boot_runs_again_on_the_other(
    hosts: tuple[FakeHost, FakeHost], tmp_path: Path
) -> None:
    a, b = hosts
    runs, junit = tmp_path / "runs", tmp_path / "junit.xml"
    argv = [sys.executable, "-m", "rig", "run", "--junit", str(junit), "--runs-dir", str(runs),
            *TWO, "--uri", a.uri, "--uri", b.uri]  # fmt: skip
    with (tmp_path / "rig.log").open("wb") as log:
        rig = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    frozen: list[int] = []
    try:
        deadline = time.monotonic() + 600
        while not b.domains():  # the cell that leased b's slot has its domain there
            assert rig.poll() is None and time.monotonic() < deadline
            time.sleep(0.3)
        frozen = freeze(b)
        rc = rig.wait(timeout=600)
    finally:
        thaw_and_end(frozen, rig)
    output = (tmp_path / "rig.log").read_text(errors="replace")
    print(output[-4000:])
    assert rc == 0, output[-3000:]  # every cell ended on the live host, and passed
    cells = by_cell(read_junit(junit))
    retried = []
    for cell_id in CELLS:
        props = cells[cell_id]["teardown"].properties
        assert props["host"] == public(a.uri), props
        cell_dir = next(runs.glob(f"*/cells/{cell_id}"))
        attempts = json.loads((cell_dir / ATTEMPTS_FILE).read_text())
        if len(attempts) == 2:
            retried.append(cell_id)
            first, second = attempts
            assert first["host"] == public(b.uri) and first["outcome"] == "error", first
            assert first["host_lost"] and public(b.uri) in first["reason"], first
            assert second["host"] == public(a.uri) and second["outcome"] == "passed", second
            assert props["lost_host"] == public(b.uri), props
            assert (cell_dir / "attempt-1" / "console.txt").exists()
    assert len(retried) == 1, retried
    assert f"libvirt host {public(b.uri)} was dead for this run" in output


IDLE_DOMAIN = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>
<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><memballoon model='none'/></devices></domain>"""


def _leftovers(host: FakeHost, run_id: str, cell: str) -> str:
    """A dead run's domain (running, transient) and per-boot volume on the host."""
    name = f"rig-{run_id}-{cell}"
    xml = host.state / f"{name}.xml"
    xml.write_text(IDLE_DOMAIN.format(name=name))  # the host's state dir: seen from inside
    made = host.run("virsh", "-c", "qemu:///system", "create", str(xml))
    assert made.returncode == 0, made.stderr
    vol = host.run("virsh", "-c", "qemu:///system", "vol-create-as", POOL, f"{name}.initrd", "1M")
    assert vol.returncode == 0, vol.stderr
    return name


def _dead_run(runs: Path, run_id: str, cell: str, uris: list[str]) -> Path:
    run_dir = runs / run_id
    (run_dir / "cells" / cell).mkdir(parents=True)
    (run_dir / "run.lock").touch()  # nobody holds it: the run is dead
    (run_dir / URIS_FILE).write_text(json.dumps(uris))
    return run_dir


def test_clean_and_the_next_run_sweep_a_dead_runs_domains_and_volumes_on_its_hosts(
    rig: RigRunner, hosts: tuple[FakeHost, FakeHost], tmp_path: Path
) -> None:
    a, b = hosts
    virsh = ("virsh", "-c", "qemu:///system")
    for h in (a, b):  # the rig's pool, as a run of the rig defines it
        (h.state / "pool.xml").write_text(f"<pool type='dir'><name>{POOL}</name><target><path>"
                                          f"{POOL_TARGET}</path></target></pool>")  # fmt: skip
        for step in (("pool-define", str(h.state / "pool.xml")), ("pool-build", POOL),
                     ("pool-start", POOL)):  # fmt: skip
            done = h.run(*virsh, *step)
            assert done.returncode == 0, done.stderr
    runs = tmp_path / "runs"
    dead = "20260101-000000-dead01"
    mine = [_leftovers(a, dead, CELLS[0]), _leftovers(b, dead, CELLS[1])]
    _dead_run(runs, dead, CELLS[0], [a.uri, b.uri, "embed"])
    (runs / dead / "cells" / CELLS[1]).mkdir()
    other = _leftovers(a, "20260101-000000-other1", CELLS[0])  # another run's: not in runs/
    same_cell_elsewhere = _leftovers(b, "20260101-000000-dead01x", CELLS[0])  # a longer run id
    clean = subprocess.run([sys.executable, "-m", "rig", "clean", "--runs-dir", str(runs)],
                           cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    print(clean.stdout, clean.stderr)
    assert clean.returncode == 0, clean.stderr
    assert f"destroyed domain {public(a.uri)}: {mine[0]}" in clean.stdout
    assert f"deleted volume {public(b.uri)}: {mine[1]}.initrd" in clean.stdout
    assert a.domains() == [other] and b.domains() == [same_cell_elsewhere]
    assert volumes(a) == [f"{other}.initrd"]
    assert volumes(b) == [f"{same_cell_elsewhere}.initrd"]
    assert (runs / dead / SWEPT_FILE).exists() and not (runs / dead / URIS_FILE).exists()
    # the next run sweeps too: a second dead run, then a run of one cell on host a
    later = "20260101-000001-dead02"
    left = _leftovers(a, later, CELLS[0])
    _dead_run(runs, later, CELLS[0], [a.uri])
    run = rig("--lane", "tcg", "--kernel", "6.12", "--cpu", "penryn", "--uri", a.uri)
    assert run.rc == 0, run.output[-3000:]
    assert f"destroyed domain {public(a.uri)}: {left}" in run.output
    assert a.domains() == [other] and left + ".initrd" not in volumes(a)
    assert f"{other}.initrd" in volumes(a)


def test_a_host_cut_off_without_a_reset_errs_within_keepalive_while_the_other_finishes(
    tmp_path: Path,
) -> None:
    hide = [REPO, tmp_path, default_cache_root()]
    with fake_host(hide=hide) as a, fake_host(hide=hide, net=True) as b:
        _cut_mid_cell(a, b, tmp_path)


def _cut_mid_cell(a: FakeHost, b: FakeHost, tmp_path: Path) -> None:
    runs, junit = tmp_path / "runs", tmp_path / "junit.xml"
    argv = [sys.executable, "-m", "rig", "run", "--junit", str(junit), "--runs-dir", str(runs),
            *TWO, "--uri", a.uri, "--uri", b.uri]  # fmt: skip
    with (tmp_path / "rig.log").open("wb") as log:
        rig = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not b.domains():  # b's own socket (its mount namespace): no network needed
            assert rig.poll() is None and time.monotonic() < deadline
            time.sleep(0.3)
        # the host's end goes down: ours loses its carrier, keeps its route, and every packet
        # to the host is dropped; no RST, no ICMP: only libvirt's keepalive can tell
        cut = b.run("nsenter", "-t", str(b.pid), "-n", "ip", "link", "set", "eth0", "down")
        assert cut.returncode == 0, cut.stderr
        cut_at = time.time()
        rc = rig.wait(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(rig.pid, signal.SIGKILL)
        rig.wait()
    output = (tmp_path / "rig.log").read_text(errors="replace")
    print(output[-3000:])
    assert rc == 0, output[-3000:]
    cells = by_cell(read_junit(junit))
    lost = []
    for cell_id in CELLS:
        assert cells[cell_id]["teardown"].properties["host"] == public(a.uri)
        cell_dir = next(runs.glob(f"*/cells/{cell_id}"))
        attempts = json.loads((cell_dir / ATTEMPTS_FILE).read_text())
        if attempts[0]["host"] == public(b.uri):
            lost.append(cell_id)
            assert attempts[0]["outcome"] == "error" and attempts[0]["host_lost"], attempts
            ended = (cell_dir / "attempt-1" / "domain-result.json").stat().st_mtime - cut_at
            print(f"{cell_id}: its boot on the cut host ended {ended:.1f} s after the cut")
            assert ended < 30, ended  # keepalive: 5 s x 3 unanswered, then the child's end
            result = json.loads((cell_dir / "attempt-1" / "domain-result.json").read_text())
            assert "keepalive" in result["detail"], result
        else:
            assert attempts == [{**attempts[0], "outcome": "passed", "host_lost": None}]
    assert len(lost) == 1, lost


def test_a_lane_no_host_can_run_skips_naming_each_while_the_others_cells_run(
    rig: RigRunner, hosts: tuple[FakeHost, FakeHost]
) -> None:
    a, b = hosts  # neither offers KVM (a read-only /dev/kvm placeholder): the kvm lane's
    # preflight fails on each, which is then out for that lane only, not for tcg
    run = rig("--lane", "tcg", "--lane", "kvm", "--kernel", "6.12", "--cpu", "penryn",
              "--uri", a.uri, "--uri", b.uri)  # fmt: skip
    assert run.rc == 0, run.output[-3000:]
    assert run.outcomes("tcg-6.12-penryn")["teardown"] is PASSED
    kvm = [c for c in run.cells if c.startswith("kvm-")]
    assert kvm, run.cells.keys()
    for cell_id in kvm:
        assert set(run.outcomes(cell_id).values()) == {Outcome.SKIPPED}, cell_id
        reason = run.reasons(cell_id)["build"]
        assert "lane kvm cannot run on any libvirt host of the run" in reason, reason
        for h in (a, b):
            host = public(h.uri)
            assert f"{host}: libvirt host {host} has no usable KVM" in reason, reason
        assert "keyfile" not in reason, reason
    for h in (a, b):
        assert f"rig: libvirt host {public(h.uri)} could not run" in run.output
    tcg_host = run.cells["tcg-6.12-penryn"]["teardown"].properties["host"]
    assert tcg_host in (public(a.uri), public(b.uri))
