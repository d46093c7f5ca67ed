"""Commands and files over SSH (fabric) to a guest VM; every command has a time limit."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from rig.errors import InfraError

QUICK_CAP_S = 30.0  # a command that runs none of the driver's code


# --------------------------------------------------------------------------- SSH
class GuestLost(Exception):
    """The guest stopped answering during `step` (timed out, or the connection broke)."""

    def __init__(self, step: str, why: str, *, timed_out: bool) -> None:
        self.step = step
        self.why = why
        self.timed_out = timed_out
        super().__init__(f"{step}: {why}")


@dataclass(frozen=True)
class Reply:
    rc: int
    stdout: str
    stderr: str


class Commands(Protocol):
    """Commands in a guest, and hanging up (what ending a VM needs)."""

    def run(self, command: str, step: str, cap_s: float = QUICK_CAP_S) -> Reply: ...

    def close(self) -> None: ...


class Session(Commands, Protocol):
    """What the VM flavour needs of an SSH session: Guest is one (tests have fakes)."""

    def put(self, data: bytes, remote: str, step: str) -> None: ...

    def get(self, remote: str, local: Path, step: str) -> None: ...

    def stream(self, command: str, step: str, cap_s: float, out: IO[str]) -> int: ...


@dataclass
class Guest:
    """Commands and files over one SSH connection; every command has a timeout."""

    conn: Any  # fabric.Connection (untyped)
    deadline: float  # no command runs past it (set per phase: build, test)

    def _budget(self, step: str, cap_s: float) -> float:
        budget = min(cap_s, self.deadline - time.monotonic())
        if budget < 1.0:
            raise GuestLost(step, "its time limit ran out", timed_out=True)
        return budget

    def run(self, command: str, step: str, cap_s: float = QUICK_CAP_S) -> Reply:
        from invoke.exceptions import CommandTimedOut

        budget = self._budget(step, cap_s)
        try:
            r = self.conn.run(
                command, hide=True, warn=True, pty=False, in_stream=False, timeout=budget
            )
        except CommandTimedOut as exc:
            raise GuestLost(step, f"no answer within {budget:.0f} s", timed_out=True) from exc
        except Exception as exc:  # paramiko/socket/invoke errors: the connection broke
            raise GuestLost(step, f"SSH failed: {exc!r}", timed_out=False) from exc
        if r.return_code == -1:  # paramiko: channel closed without an exit status
            raise GuestLost(step, "SSH channel closed without an exit status", timed_out=False)
        return Reply(int(r.return_code), str(r.stdout), str(r.stderr))

    def stream(self, command: str, step: str, cap_s: float, out: IO[str]) -> int:
        """Run `command`, writing its output to `out` as it arrives; its exit status."""
        from invoke.exceptions import CommandTimedOut

        budget = self._budget(step, cap_s)
        try:
            r = self.conn.run(
                command, hide=False, warn=True, pty=False, in_stream=False, timeout=budget,
                out_stream=out, err_stream=out,
            )  # fmt: skip
        except CommandTimedOut as exc:
            raise GuestLost(step, f"no answer within {budget:.0f} s", timed_out=True) from exc
        except Exception as exc:  # paramiko/socket/invoke errors: the connection broke
            raise GuestLost(step, f"SSH failed: {exc!r}", timed_out=False) from exc
        finally:
            out.flush()
        if r.return_code == -1:
            raise GuestLost(step, "SSH channel closed without an exit status", timed_out=False)
        return int(r.return_code)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    def put(self, data: bytes, remote: str, step: str) -> None:
        self._budget(step, QUICK_CAP_S)
        try:
            self.conn.put(io.BytesIO(data), remote=remote)
        except Exception as exc:
            raise GuestLost(step, f"SFTP put failed: {exc!r}", timed_out=False) from exc

    def get(self, remote: str, local: Path, step: str) -> None:
        self._budget(step, QUICK_CAP_S)
        try:
            self.conn.get(remote, local=str(local))
        except Exception as exc:
            raise GuestLost(step, f"SFTP get failed: {exc!r}", timed_out=False) from exc


LOOPBACK = "127.0.0.1"  # QEMU forwards the guest's sshd to a port here


def pin_host_key(client: Any, port: int, host_public: str) -> str:
    """Make a paramiko SSHClient trust exactly `host_public` for [127.0.0.1]:port and refuse
    any other key; the pinned key's fingerprint.

    fabric's Connection sets AutoAddPolicy (accept any key) when it is made: this replaces it
    with RejectPolicy and leaves the pinned key as the client's only known host key, so
    another key raises paramiko's BadHostKeyException and a missing entry SSHException.
    """
    import paramiko

    name = f"[{LOOPBACK}]:{port}"
    entry = None
    if "\n" not in host_public:
        with contextlib.suppress(Exception):  # InvalidHostKey, SSHException, ...: not a key
            entry = paramiko.hostkeys.HostKeyEntry.from_line(f"{name} {host_public}")
    if entry is None or entry.key.get_name() != "ssh-ed25519":
        raise InfraError(f"not an ed25519 public host key: {host_public[:40]!r}")
    known = client.get_host_keys()
    known.clear()
    known.add(name, entry.key.get_name(), entry.key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return fingerprint(entry.key)


def fingerprint(key: Any) -> str:
    """A paramiko key's SHA256 fingerprint, as ssh-keygen -l prints it."""
    raw = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(raw).decode().rstrip('=')}"


@contextlib.contextmanager
def ssh_session(
    port: int, key: Path, host_public: str, deadline: float, *, user: str = "root"
) -> Iterator[Guest]:
    """Log in with the cell's key (retried until sshd has it); closed on exit.

    The server must present the cell's own host key (`host_public`, installed in the guest
    from the seed disk): any other key is an InfraError at once, never retried or accepted.
    """
    import fabric
    import paramiko

    # An explicit empty SSHConfig and lazy=True: no ~/.ssh/config, no fabric config files.
    config = fabric.Config(ssh_config=paramiko.SSHConfig(), lazy=True)
    conn = fabric.Connection(
        host=LOOPBACK,
        port=port,
        user=user,
        config=config,
        connect_timeout=10,
        connect_kwargs={
            "key_filename": [str(key)],
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": 30,
            "auth_timeout": 30,
        },
    )
    pinned = pin_host_key(conn.client, port, host_public)  # after fabric set AutoAddPolicy
    try:
        while True:
            try:
                conn.open()
                break
            except paramiko.BadHostKeyException as exc:
                _hang_up(conn)
                raise InfraError(
                    f"SSH host key mismatch on {LOOPBACK}:{port}: the server presented "
                    f"{fingerprint(exc.key)}, "
                    f"not this cell's pinned key {pinned}; refusing to log in (something other "
                    "than the cell's guest answers on the port, or the guest did not install "
                    "the seed disk's host key)"
                ) from exc
            except Exception as exc:  # sshd not up yet, restarting, ...
                _hang_up(conn)
                if time.monotonic() >= deadline:
                    raise InfraError(f"cannot log in to the guest over SSH: {exc!r}") from exc
                time.sleep(1.0)
        conn.transport.set_keepalive(5)
        yield Guest(conn, deadline)
    finally:
        _hang_up(conn)


def _hang_up(conn: Any) -> None:
    """Close the connection, also one that failed in SSHClient.connect: fabric's close() only
    closes a connection that opened, and paramiko leaves a refused one's transport running."""
    with contextlib.suppress(Exception):
        conn.close()
    with contextlib.suppress(Exception):
        conn.client.close()
