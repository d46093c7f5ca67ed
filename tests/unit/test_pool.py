"""Pool mode (#22): slots= is the rig's, a lease is an flock per slot shared by the run's
processes, a dead host's slots are never leased again, xdist's remote options are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rig.errors import InfraError, UsageError
from rig.pool import URIS_FILE, Pool, PoolHost, parse_uri, public, total_slots
from rig.pool_run import LEASE_FILE, where_it_ran

REPO = Path(__file__).resolve().parents[2]
SSH = "qemu+ssh://root@10.0.0.7:2222/system?keyfile=/k/id&command=/k/ssh"


def test_slots_is_stripped_before_libvirt_sees_the_uri() -> None:
    h = parse_uri(SSH + "&slots=3")
    assert h == PoolHost(SSH, 3)
    assert parse_uri(SSH) == PoolHost(SSH, 1)
    assert parse_uri("qemu+ssh://h/system?slots=2") == PoolHost("qemu+ssh://h/system", 2)
    assert parse_uri("embed") == PoolHost("embed", 1)
    assert parse_uri("qemu:///system?slots=2") == PoolHost("qemu:///system", 2)
    assert total_slots([SSH + "&slots=3", "embed"]) == 4


@pytest.mark.parametrize("bad", ["0", "x", "65", ""])
def test_a_bad_slot_count_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError, match="slots="):
        parse_uri(f"qemu+ssh://h/system?slots={bad}")


def test_the_host_a_report_shows_has_no_credentials() -> None:
    assert public(SSH) == "qemu+ssh://10.0.0.7:2222/system"
    assert public("qemu+ssh://u@h/system?no_verify=1") == "qemu+ssh://h/system?no_verify=1"
    assert public("qemu:///embed?root=/a") == "qemu:///embed?root=/a"


def test_leases_take_the_first_free_slot_and_wait_when_all_are_busy(tmp_path: Path) -> None:
    a, b = PoolHost("qemu:///embed?root=/a", 1), PoolHost("qemu:///embed?root=/b", 1)
    pool = Pool(tmp_path, [a, b], wait_s=0.05)
    assert json.loads((tmp_path / URIS_FILE).read_text()) == [a.uri, b.uri]
    got: list[tuple[str, int]] = []
    with pool.lease("c1") as one, Pool(tmp_path, [a, b]).lease("c2") as two:
        assert (one.host, two.host) == (a, b)

        def third() -> None:
            with pool.lease("c3") as three:
                got.append((three.host.uri, three.slot))

        t = threading.Thread(target=third)
        t.start()
        time.sleep(0.3)
        assert not got  # every slot busy: it waits
    t.join(5)
    assert got == [(a.uri, 0)]


def test_a_dead_hosts_slots_are_not_leased_again(tmp_path: Path) -> None:
    a, b = PoolHost("qemu:///embed?root=/a", 2), PoolHost("qemu:///embed?root=/b", 1)
    pool = Pool(tmp_path, [a, b])
    pool.mark_dead(a, "connection refused")
    with pool.lease("c1") as lease:
        assert lease.host == b
    assert pool.dead() == {a.host: "connection refused"}
    pool.mark_dead(b, "gone")
    with pytest.raises(InfraError, match="no live libvirt host"), pool.lease("c2"):
        pass


def test_a_lease_names_host_and_slot_in_the_junit_properties(tmp_path: Path) -> None:
    assert where_it_ran(tmp_path, "embed") == [("uri", "embed")]
    (tmp_path / LEASE_FILE).write_text(
        json.dumps({"attempt": 1, "host": public(SSH), "slot": 0, "uri": SSH})
    )
    assert where_it_ran(tmp_path, "embed") == [
        ("uri", SSH), ("host", "qemu+ssh://10.0.0.7:2222/system"), ("slot", "0")
    ]  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [["--tx", "ssh=h//python=python3"], ["--", "--tx=popen"], ["--", "--rsyncdir", "rig"]],
)
def test_xdist_remote_options_are_refused_pointing_to_the_pool(
    tmp_path: Path, args: list[str]
) -> None:
    p = subprocess.run([sys.executable, "-m", "rig", "run", "--lane", "tcg",
                        "--runs-dir", str(tmp_path / "r"), *args],
                       cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 2, p.stdout + p.stderr
    assert "--uri" in p.stderr and "shard" in p.stderr, p.stderr
    assert not (tmp_path / "r").exists()  # nothing started


def _run(runs: Path, run_id: str, uris: list[str]) -> Path:
    run_dir = runs / run_id
    (run_dir / "cells" / "tcg-6.12-penryn").mkdir(parents=True)
    (run_dir / "run.lock").touch()
    (run_dir / URIS_FILE).write_text(json.dumps(uris))
    return run_dir


def test_the_remote_sweep_leaves_live_runs_and_old_records_and_embedded_uris(
    tmp_path: Path,
) -> None:
    from rig.remote_sweep import SWEPT_FILE, sweep_remote
    from rig.runs import run_lock

    done = _run(tmp_path, "r-embedded", ["embed", "qemu:///embed?root=/x"])
    old = _run(tmp_path, "r-old", ["qemu+ssh://nosuchhost.invalid/system"])
    os.utime(old / URIS_FILE, (time.time() - 2 * 86400,) * 2)
    live = _run(tmp_path, "r-live", ["qemu+ssh://nosuchhost.invalid/system"])
    with run_lock(live):
        swept = sweep_remote(tmp_path)
    assert swept.domains == swept.volumes == swept.unreachable == []  # nobody asked
    assert (done / SWEPT_FILE).exists()  # embedded: rig.runs.sweep_embed_pool's business
    assert (old / URIS_FILE).exists() and (live / URIS_FILE).exists()


def test_a_host_that_does_not_answer_is_asked_once_per_sweep_and_kept_for_next_time(
    tmp_path: Path,
) -> None:
    from rig.remote_sweep import sweep_remote

    closed = "qemu+ssh://root@127.0.0.1:1/system?no_tty=1"  # nothing listens on port 1
    runs = [_run(tmp_path, f"r-{i}", [closed]) for i in range(2)]
    t0 = time.monotonic()
    swept = sweep_remote(tmp_path)
    assert len(swept.unreachable) == 1, swept.unreachable
    assert swept.unreachable[0].startswith("qemu+ssh://127.0.0.1:1/system"), swept.unreachable
    assert all((r / URIS_FILE).exists() for r in runs)  # tried again by the next sweep
    assert time.monotonic() - t0 < 30


def test_a_host_whose_preflight_fails_is_out_for_that_lane_only(tmp_path: Path) -> None:
    a, b = PoolHost("qemu:///embed?root=/a", 1), PoolHost("qemu:///embed?root=/b", 1)
    pool = Pool(tmp_path, [a, b])
    no_kvm = {a.uri: "no usable KVM"}
    with pool.lease("k1", "kvm", lambda h: no_kvm.get(h.uri)) as lease:
        assert lease.host == b
    assert pool.live("kvm") == [b] and pool.live("tcg") == pool.live() == [a, b]
    with pool.lease("t1", "tcg") as lease:
        assert lease.host == a  # still a host for tcg
    no_kvm[b.uri] = "no usable KVM either"  # asked at every lease: b is out now
    kvm = pool.lease("k2", "kvm", lambda h: no_kvm.get(h.uri))
    with pytest.raises(InfraError, match="no live libvirt host"), kvm:
        pass
    assert pool.dead("kvm") == {a.host: "no usable KVM", b.host: "no usable KVM either"}
