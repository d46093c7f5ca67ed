"""A libvirt host on this machine that shares no filesystem with the controller.

    with fake_host(hide=[checkout, runs_parent, cache]) as host:
        host.uri        qemu+ssh://root@127.0.0.1:PORT/system?keyfile=...&command=...
        host.domains()  the domains its libvirtd has (its own socket, inside its namespace)
        host.read(path) a file as the host sees it

The host is a process tree in a mount namespace of its own (`unshare --mount --propagation
private`): this file run as a script (`serve`), which mounts tmpfs over every path in `hide`
and over libvirt's state (/run/libvirt, /var/lib/libvirt, /var/cache/libvirt,
/var/log/libvirt, /etc/libvirt) and sshd's /run/sshd, then runs virtlogd, libvirtd (unix
socket only, no --listen) and `sshd -D` on 127.0.0.1:PORT with a fresh host key and a fresh
client key. The controller's ssh is a wrapper (`command=` of the URI) that checks the host
key against this host's own known_hosts (libvirt's ssh transport passes no known_hosts file;
`no_verify=1` would write into root's ~/.ssh/known_hosts). On SIGTERM the server destroys
its domains, stops its daemons and kills every process left in its namespace.

`fake_host(hide, net=True)`: the host has a network namespace of its own too, reached over a
veth pair (this side 10.77.K.1/30, the host's eth0 10.77.K.2/30, sshd listening there; the
server waits for the link before its daemons start). Taking the host's eth0 down cuts it off
without a reset: this side keeps its route and every packet is dropped. Several hosts run side
by side (virtlogd's pid file is in the host's own /run/libvirt).

Only the standard library is imported: the checkout (and its .venv) is hidden in there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

STATE_DIRS = ("/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt",
              "/etc/libvirt", "/run/sshd")  # fmt: skip
LIBVIRTD_CONF = 'unix_sock_dir = "/run/libvirt"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\n'
# libvirt's per-domain /dev namespace cannot move our read-only /dev/kvm placeholder into it
# ("Unable to move /run/libvirt/qemu/N-NAME.kvm mount to /dev/kvm: Invalid argument")
QEMU_CONF = "namespaces = []\n"
READY = "ready"
NET, NET_READY = "net", "net-ready"  # the host has a network namespace; its veth is up


def _mount_tmpfs(path: str) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", path], check=True)


def _same_namespace() -> list[int]:
    """The other processes in this mount namespace."""
    mine = os.readlink("/proc/self/ns/mnt")
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "mnt") == mine:
                    pids.append(int(entry.name))
    return pids


def outermost(paths: Sequence[str]) -> list[str]:
    """`paths` less those inside another of them (CI's cache lives in the checkout)."""
    real = sorted({os.path.realpath(p) for p in paths})
    return [p for p in real if not any(p.startswith(q.rstrip("/") + "/") for q in real)]


def serve(state: Path, hide: Sequence[str]) -> int:
    """The host's init, inside its own mount namespace."""
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda sig, _f: stop.append(sig))
    signal.signal(signal.SIGINT, lambda sig, _f: stop.append(sig))
    if (state / NET).exists():  # a network namespace of its own: sshd waits for its link
        while not stop and not (state / NET_READY).exists():
            time.sleep(0.05)
    for path in STATE_DIRS:
        _mount_tmpfs(path)
    for path in outermost(hide):  # a path inside one hidden already is hidden with it
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", path], check=True)
    if Path("/dev/kvm").exists():  # TCG only: no KVM probes on every start
        (state / "kvm-placeholder").touch()
        subprocess.run(["mount", "--bind", str(state / "kvm-placeholder"), "/dev/kvm"], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", "/dev/kvm"], check=True)
    Path("/etc/libvirt/qemu.conf").write_text(QEMU_CONF)
    daemons: list[subprocess.Popen[bytes]] = []
    for name, argv in (
        # its pid file in the host's /run/libvirt, not /run: two hosts run side by side
        ("virtlogd", ["/usr/sbin/virtlogd", "--pid-file", "/run/libvirt/virtlogd.pid"]),
        ("libvirtd", ["/usr/sbin/libvirtd", "-f", str(state / "libvirtd.conf"),
                      "--pid-file", "/run/libvirt/libvirtd.pid"]),
        ("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(state / "sshd_config")]),
    ):  # fmt: skip
        with (state / f"{name}.log").open("wb") as log:
            daemons.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 60
    while not stop and time.monotonic() < deadline:
        if Path("/run/libvirt/libvirt-sock").exists() and "Server listening" in (
            state / "sshd.log"
        ).read_text(errors="replace"):
            (state / READY).touch()
            break
        time.sleep(0.1)
    while not stop and all(d.poll() is None for d in daemons):
        time.sleep(0.2)
    virsh = ["virsh", "-c", "qemu:///system"]
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        names = subprocess.run([*virsh, "list", "--name"], capture_output=True, text=True,
                               timeout=30).stdout.split()  # fmt: skip
        for name in names:
            subprocess.run([*virsh, "destroy", name], capture_output=True, timeout=30)
    for d in reversed(daemons):
        d.terminate()
        try:
            d.wait(10)
        except subprocess.TimeoutExpired:
            d.kill()
            d.wait()
    for pid in _same_namespace():  # sshd sessions, a QEMU libvirtd left: nothing outlives us
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return 0


@dataclass(frozen=True)
class FakeHost:
    uri: str
    state: Path
    pid: int  # the server's: its mount namespace is the host's
    ns: str  # that namespace (readlink /proc/PID/ns/mnt)
    link: str = ""  # net=True: this side's end of its veth pair

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """argv inside the host's mount namespace."""
        return subprocess.run(["nsenter", "-t", str(self.pid), "-m", "--", *argv],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    def domains(self) -> list[str]:
        """Every domain the host's libvirtd has (running or not), asked over its own socket."""
        out = self.run("virsh", "-c", "qemu:///system", "list", "--all", "--name")
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    def read(self, path: str) -> str:
        out = self.run("cat", path)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def processes(self) -> list[int]:
        """The processes left in the host's mount namespace (none once it has stopped)."""
        left = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "ns" / "mnt") == self.ns:
                        left.append(int(entry.name))
        return left


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _keys(state: Path, port: int, addr: str) -> None:
    for key in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"rig-{key}",
                        "-f", str(state / key)], check=True)  # fmt: skip
    (state / "authorized_keys").write_text((state / "client.pub").read_text())
    host_pub = (state / "host.pub").read_text().split()
    (state / "known_hosts").write_text(f"[{addr}]:{port} {host_pub[0]} {host_pub[1]}\n")
    (state / "sshd_config").write_text(
        f"Port {port}\nListenAddress {addr}\nHostKey {state / 'host'}\n"
        f"AuthorizedKeysFile {state / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPidFile none\n"
    )
    (state / "libvirtd.conf").write_text(LIBVIRTD_CONF)
    ssh = state / "ssh"
    ssh.write_text(
        "#!/bin/sh\n"
        f"exec ssh -F none -o UserKnownHostsFile={state / 'known_hosts'} "
        '-o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes "$@"\n'
    )
    ssh.chmod(0o755)


def _veth(pid: int, state: Path, link: str, addr: str) -> None:
    """The host's end of a veth pair moved into its network namespace (pid's), both ends up:
    LINK (this side) 10.77.K.1/30, the host's 10.77.K.2/30 and its loopback."""
    ours = addr.rsplit(".", 1)[0] + ".1"
    deadline = time.monotonic() + 10  # unshare(1) may not have unshared yet
    while os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net"):
        assert time.monotonic() < deadline, "the host's network namespace never came"
        time.sleep(0.02)
    steps = [
        ["ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", str(pid)],
        ["ip", "addr", "add", f"{ours}/30", "dev", link],
        ["ip", "link", "set", link, "up"],
        *(["nsenter", "-t", str(pid), "-n", "ip", *cmd] for cmd in (
            ["addr", "add", f"{addr}/30", "dev", "eth0"], ["link", "set", "eth0", "up"],
            ["link", "set", "lo", "up"])),
    ]  # fmt: skip
    for argv in steps:
        subprocess.run(argv, check=True, capture_output=True)
    (state / NET_READY).touch()


@contextlib.contextmanager
def fake_host(hide: Sequence[Path], net: bool = False) -> Iterator[FakeHost]:
    """Start the host, hiding `hide` from it; on exit stop it and check nothing is left.
    `net`: in a network namespace of its own too, reached over a veth pair (FakeHost.link,
    this side's end: `ip link set LINK down` cuts the host off without a reset)."""
    from rig.lanes.base import owned_process

    state = Path(tempfile.mkdtemp(prefix="rig-host-", dir="/tmp"))
    for path in hide:
        assert not state.is_relative_to(path), f"{state} would be hidden by {path}"
    port = _free_port()
    k = port % 250 + 2
    addr, link = (f"10.77.{k}.2", f"righ{port}") if net else ("127.0.0.1", "")
    _keys(state, port, addr)
    if net:
        (state / NET).touch()
    unshare = ["unshare", "--mount", *(["--net"] if net else []), "--propagation", "private"]
    argv = [*unshare, "--", sys.executable,
            str(Path(__file__).resolve()), "serve", str(state), *map(str, hide)]  # fmt: skip
    try:
        with owned_process(argv, cwd=state, stdout=state / "server.log", deathsig="TERM") as p:
            try:
                if net:
                    _veth(p.pid, state, link, addr)
                deadline = time.monotonic() + 60
                while not (state / READY).exists():
                    logs = {n: _read(state / f"{n}.log") for n in ("server", "libvirtd", "sshd")}
                    assert p.poll() is None and time.monotonic() < deadline, logs
                    time.sleep(0.2)
                host = FakeHost(
                    uri=f"qemu+ssh://root@{addr}:{port}/system?keyfile={state / 'client'}"
                    f"&command={state / 'ssh'}",
                    state=state,
                    pid=p.pid,
                    ns=os.readlink(f"/proc/{p.pid}/ns/mnt"),
                    link=link,
                )
                assert host.ns != os.readlink("/proc/self/ns/mnt")
                yield host
            finally:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(60)
        assert not host.processes(), "processes left in the host's namespace"
        for daemon in ("libvirtd", "sshd"):  # virtlogd names no path: the namespace check
            left = subprocess.run(["pgrep", "-f", f"{daemon}.*{state}"], capture_output=True)
            assert left.returncode == 1, f"{daemon} left running: {left.stdout!r}"
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(state)], check=False)


def _read(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    sys.exit(serve(Path(sys.argv[2]), sys.argv[3:]))


def freeze(host: FakeHost) -> list[int]:
    """SIGSTOP every process of the host but its init (libvirtd, QEMU, the ssh session): the
    TCP connection stays open and nothing answers; only libvirt's keepalive can tell."""
    frozen = [pid for pid in host.processes() if pid != host.pid]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    return frozen


def thaw_and_end(frozen: Sequence[int], rig: subprocess.Popen[bytes]) -> None:
    """A test's cleanup: the frozen processes go on, the `rig run` (a session of its own)
    is killed with everything it started, and reaped."""
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(rig.pid, signal.SIGKILL)
    rig.wait()
