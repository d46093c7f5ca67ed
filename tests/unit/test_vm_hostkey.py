"""Per-cell SSH host keys, pinned through the seed disk (full-VM guests, --guest vm).

The rig makes a fresh ed25519 host key per cell, puts its private half on the seed disk, the
guest's rig-seed installs it as sshd's only host key, and the rig's SSH client trusts exactly
its public half for [127.0.0.1]:PORT. These tests run a real sshd on loopback (and, as root,
the real rig-seed in a private mount namespace over the real seed disk on a loop device).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from rig.errors import InfraError
from rig.guest.vm.resources import (
    SEED_HOST_KEY,
    cell_key,
    free_port,
    host_key,
    seed_disk,
    ssh_banner,
)
from rig.guest.vm.ssh import pin_host_key, ssh_session
from tests.unit.test_workflows import _tool

REPO = Path(__file__).resolve().parents[2]
GUEST = REPO / "guests" / "vm"
GUEST_HOST_KEY = "/etc/ssh/rig_host_ed25519_key"  # where rig-seed puts it; rig.conf's HostKey


def _sshd() -> str:
    """The sshd binary (openssh-server); CI must have it, elsewhere the test is skipped."""
    found = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        if os.environ.get("RIG_CI"):
            pytest.fail("sshd is not installed (openssh-server), and CI (RIG_CI=1) must run it")
        pytest.skip("sshd is not installed (openssh-server)")
    return found


def _login_user() -> str:
    """Who the test logs in as: whoever runs it (an unprivileged sshd serves only itself)."""
    user = pwd.getpwuid(os.getuid()).pw_name
    if os.getuid() == 0:
        # Without PAM, sshd refuses a locked account ('!' in /etc/shadow) even with a key.
        for line in Path("/etc/shadow").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name == user and rest.startswith("!"):
                why = "root's account is locked here: sshd without PAM refuses it"
                if os.environ.get("RIG_CI"):
                    pytest.fail(f"{why}; CI (RIG_CI=1) must run this test")
                pytest.skip(why)
    return user


def _wait_for_sshd(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited {proc.returncode}:\n{log.read_text(errors='replace')}")
        if ssh_banner(port, timeout_s=1) is not None:
            return
        time.sleep(0.1)
    pytest.fail(f"sshd did not answer on 127.0.0.1:{port}")


def _start(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """sshd (and what starts it) in a session of its own, its output in `log`. A connection's
    sshd calls setsid() and lives on until its client hangs up (LoginGraceTime at most)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True,
        )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def _running(argv: list[str], port: int, log: Path) -> Iterator[int]:
    proc = _start(argv, log)
    try:
        _wait_for_sshd(proc, port, log)
        yield port
    finally:
        _stop(proc)


@contextmanager
def real_sshd(tmp: Path, host_private: Path, authorized: str) -> Iterator[int]:
    """A real sshd on 127.0.0.1 serving `host_private` only; its port."""
    sshd = _sshd()
    user = _login_user()
    auth = tmp / "authorized_keys"
    auth.write_text(authorized + "\n")
    auth.chmod(0o600)
    port = free_port()
    conf = tmp / "sshd_config"
    conf.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_private}\n"
        f"AuthorizedKeysFile {auth}\nStrictModes no\nPidFile none\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PermitRootLogin prohibit-password\nUseDNS no\nAllowUsers {user}\n"
        "LoginGraceTime 15\n"
    )
    argv = [sshd, "-D", "-e", "-f", str(conf)]
    if os.getuid() == 0:  # privilege separation wants /run/sshd: a private /run for it
        argv = [
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs -o mode=755 rig-test /run && mkdir /run/sshd && exec "$@"', "sh",
            *argv,
        ]  # fmt: skip
    with _running(argv, port, tmp / "sshd.log"):
        yield port


@pytest.fixture
def login(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    keys = tmp_path / "login"
    keys.mkdir()
    with cell_key(keys) as key:
        yield key.private, key.public


def _fingerprint(public: str) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", "-"],
        input=public + "\n", capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.split()[1]


# --------------------------------------------------------------------------- host side
@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_host_key_is_a_fresh_ed25519_secret_removed_on_exit(tmp_path: Path) -> None:
    with host_key(tmp_path) as a:
        assert a.private == tmp_path / SEED_HOST_KEY
        assert a.public.startswith("ssh-ed25519 ")
        assert stat.S_IMODE(a.private.stat().st_mode) == 0o600
        assert a.private.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert not list(tmp_path.iterdir())
    with host_key(tmp_path) as b:
        assert b.public != a.public
    with pytest.raises(RuntimeError), host_key(tmp_path):
        raise RuntimeError("the cell failed")
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(
    shutil.which("mke2fs") is None or shutil.which("debugfs") is None, reason="e2fsprogs"
)
def test_seed_disk_carries_the_private_host_key_0600(tmp_path: Path) -> None:
    with cell_key(tmp_path) as login_key, host_key(tmp_path) as host:
        with seed_disk(tmp_path, login_key.public, host.private) as img:
            assert stat.S_IMODE(img.stat().st_mode) == 0o600  # it holds a secret
            assert not (tmp_path / "seed").exists()  # the staging copy is gone
            cat = subprocess.run(
                ["debugfs", "-R", f"cat /{SEED_HOST_KEY}", str(img)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            assert cat.stdout == host.private.read_text()
            st = subprocess.run(
                ["debugfs", "-R", f"stat /{SEED_HOST_KEY}", str(img)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            mode = re.search(r"Mode:\s+(\d+)", st.stdout)
            assert mode is not None and mode.group(1) == "0600", st.stdout
            keys = subprocess.run(
                ["debugfs", "-R", "cat /authorized_keys", str(img)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            assert keys.stdout == login_key.public + "\n"
        assert not (tmp_path / "seed.img").exists()
    assert not list(tmp_path.iterdir())


def test_seed_disk_refuses_what_is_not_a_private_key(tmp_path: Path) -> None:
    public = tmp_path / "not-a-key"
    public.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITest rig-test\n")
    with (
        pytest.raises(InfraError, match="not an OpenSSH private key"),
        seed_disk(tmp_path, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITest rig-test", public),
    ):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["not-a-key"]


@pytest.mark.parametrize(
    "bad",
    ["ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC", "garbage", "ssh-ed25519 AAAA\n[x]:1 ssh-rsa AAA"],
)
def test_pinning_takes_only_one_ed25519_public_key(bad: str) -> None:
    import paramiko

    with pytest.raises(InfraError, match="not an ed25519 public host key"):
        pin_host_key(paramiko.SSHClient(), 2222, bad)


# --------------------------------------------------------------------------- guest side
def test_rig_seed_passes_shellcheck_as_posix_sh() -> None:
    shellcheck = _tool("shellcheck")
    proc = subprocess.run([shellcheck, "-s", "sh", "-S", "style", str(GUEST / "rig-seed")],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sshd_serves_only_the_key_rig_seed_installs() -> None:
    conf = (GUEST / "sshd-rig.conf").read_text()
    host_keys = [ln.split()[1] for ln in conf.splitlines() if ln.lower().startswith("hostkey ")]
    assert host_keys == [GUEST_HOST_KEY]
    seed = (GUEST / "rig-seed").read_text()
    assert f"hostkey={GUEST_HOST_KEY}\n" in seed
    assert f'install -m 600 -o root -g root "$mnt/{SEED_HOST_KEY}" "$hostkey"' in seed


# --------------------------------------------------------------------------- a real sshd
@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_the_pinned_host_key_logs_in(tmp_path: Path, login: tuple[Path, str]) -> None:
    with host_key(tmp_path) as host, real_sshd(tmp_path, host.private, login[1]) as port:
        deadline = time.monotonic() + 30
        with ssh_session(port, login[0], host.public, deadline, user=_login_user()) as guest:
            reply = guest.run("echo pinned", "probe")
            assert (reply.rc, reply.stdout) == (0, "pinned\n")
            served = guest.conn.transport.get_remote_server_key()
            assert served.get_base64() == host.public.split()[1]


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_another_host_key_on_the_port_is_refused_at_once(
    tmp_path: Path, login: tuple[Path, str], kind: str
) -> None:
    """The port answers with a key that is not the cell's (another ed25519 key, or only an RSA
    key): an InfraError that names both keys, at once (not retried until the deadline)."""
    impostor = tmp_path / f"impostor_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(impostor)], check=True)
    served = _fingerprint(impostor.with_suffix(".pub").read_text().strip())
    with host_key(tmp_path) as host, real_sshd(tmp_path, impostor, login[1]) as port:
        t0 = time.monotonic()
        with (
            pytest.raises(InfraError, match="host key mismatch") as raised,
            ssh_session(port, login[0], host.public, t0 + 60, user=_login_user()),
        ):
            pytest.fail("logged in to a server with another host key")
        assert time.monotonic() - t0 < 15
    message = str(raised.value)
    assert f"127.0.0.1:{port}" in message
    assert served in message and _fingerprint(host.public) in message
    assert "refusing to log in" in message


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_a_port_with_no_pinned_key_is_rejected_not_added(
    tmp_path: Path, login: tuple[Path, str]
) -> None:
    """fabric's Connection makes its client with AutoAddPolicy; pin_host_key replaces it: a
    server on a port with no pinned key is rejected, and nothing is learnt from it."""
    import fabric
    import paramiko

    with host_key(tmp_path) as host, real_sshd(tmp_path, host.private, login[1]) as port:
        conn = fabric.Connection(
            "127.0.0.1", port=port, user=_login_user(),
            config=fabric.Config(ssh_config=paramiko.SSHConfig(), lazy=True),
            connect_kwargs={"key_filename": [str(login[0])], "look_for_keys": False,
                            "allow_agent": False},
        )  # fmt: skip
        assert isinstance(conn.client._policy, paramiko.AutoAddPolicy)  # fabric's default
        pin_host_key(conn.client, port + 1, host.public)  # pinned for another port only
        try:
            with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
                conn.open()
        finally:
            conn.client.close()  # fabric's close() leaves a connection that failed open
        assert conn.client.get_host_keys().lookup(f"[127.0.0.1]:{port}") is None


# --------------------------------------------------------------------------- the whole chain
def _root_with_loop_devices() -> str | None:
    if os.getuid() != 0:
        return "needs root (mount namespace, loop device)"
    for tool in ("losetup", "unshare", "mount", "mknod", "mke2fs", "blkid"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not Path("/dev/loop-control").exists():
        return "no loop devices"
    return None


@contextmanager
def _loop(image: Path) -> Iterator[Path]:
    proc = subprocess.run(["losetup", "--find", "--show", "--read-only", str(image)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"no loop device: {proc.stderr.strip()}")
    dev = Path(proc.stdout.strip())
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", str(dev)], check=False)


GUEST_BOOT = r"""
set -eu
# the guest's view, in a private mount namespace: the seed disk as /dev/vdb, fresh /run,
# /root and /etc/ssh (nothing of the host's)
mount -t tmpfs -o mode=755 rig-test /dev
mknod -m 666 /dev/null c 1 3
mknod -m 666 /dev/zero c 1 5
mknod -m 666 /dev/urandom c 1 9
mknod -m 600 /dev/vdb b "$SEED_MAJOR" "$SEED_MINOR"
mount -t tmpfs -o mode=755 rig-test /run
mount -t tmpfs -o mode=700 rig-test /root
mount -t tmpfs -o mode=755 rig-test /etc/ssh
mkdir /run/sshd /etc/ssh/sshd_config.d
cp "$GUEST/sshd-rig.conf" /etc/ssh/sshd_config.d/rig.conf
# Debian's sshd_config starts so; the rest of it is commented out defaults
printf '%s\n' 'Include /etc/ssh/sshd_config.d/*.conf' "ListenAddress 127.0.0.1" \
  "Port $PORT" 'PidFile none' 'UsePAM no' 'LoginGraceTime 15' > /etc/ssh/sshd_config
sh "$GUEST/rig-seed"
stat -c '%a %U %n' /etc/ssh/rig_host_ed25519_key /root/.ssh/authorized_keys > "$OUT/installed"
"$SSHD" -T -C user=root,host=guest,addr=127.0.0.1 | grep -i '^hostkey ' > "$OUT/hostkeys"
exec "$SSHD" -D -e -f /etc/ssh/sshd_config
"""


@pytest.mark.skipif(_root_with_loop_devices() is not None, reason=str(_root_with_loop_devices()))
def test_rig_seed_installs_the_host_key_that_sshd_serves_and_the_rig_pins(
    tmp_path: Path,
) -> None:
    """The whole chain but QEMU: the rig's keys and seed disk, the guest's own rig-seed and
    sshd drop-in (root's /dev, /run, /root, /etc/ssh replaced in a private mount namespace),
    a real sshd, and the rig's pinned login."""
    sshd = _sshd()
    _login_user()
    out = tmp_path / "out"
    out.mkdir()
    with (
        cell_key(tmp_path) as login_key,
        host_key(tmp_path) as host,
        seed_disk(tmp_path, login_key.public, host.private) as img,
        _loop(img) as dev,
    ):
        rdev = dev.stat().st_rdev
        port = free_port()
        env = {
            **os.environ, "SEED_MAJOR": str(os.major(rdev)), "SEED_MINOR": str(os.minor(rdev)),
            "GUEST": str(GUEST), "PORT": str(port), "OUT": str(out), "SSHD": sshd,
        }  # fmt: skip
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", GUEST_BOOT]
        log = tmp_path / "sshd.log"
        proc = _start(argv, log, env)
        try:
            _wait_for_sshd(proc, port, log)
            with ssh_session(port, login_key.private, host.public, time.monotonic() + 30) as g:
                reply = g.run(f"cat {GUEST_HOST_KEY}", "probe")
                assert reply.stdout == host.private.read_text()
        finally:
            _stop(proc)
    assert (out / "installed").read_text().splitlines() == [
        f"600 root {GUEST_HOST_KEY}",
        "600 root /root/.ssh/authorized_keys",
    ]
    assert (out / "hostkeys").read_text().split() == ["hostkey", GUEST_HOST_KEY]
