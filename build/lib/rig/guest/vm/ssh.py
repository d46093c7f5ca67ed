"""Commands and files over SSH (fabric) to a guest VM; every command has a time limit."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

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


@contextlib.contextmanager
def ssh_session(port: int, key: Path, deadline: float) -> Iterator[Guest]:
    """Log in as root with the cell's key (retried until sshd has it); closed on exit."""
    import fabric
    import paramiko

    # An explicit empty SSHConfig and lazy=True: no ~/.ssh/config, no fabric config files.
    config = fabric.Config(ssh_config=paramiko.SSHConfig(), lazy=True)
    conn = fabric.Connection(
        host="127.0.0.1",
        port=port,
        user="root",
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
    try:
        while True:
            try:
                conn.open()
                break
            except Exception as exc:  # auth before rig-seed ran, sshd restarting, ...
                with contextlib.suppress(Exception):
                    conn.close()
                if time.monotonic() >= deadline:
                    raise InfraError(f"cannot log in to the guest over SSH: {exc!r}") from exc
                time.sleep(1.0)
        conn.transport.set_keepalive(5)
        yield Guest(conn, deadline)
    finally:
        with contextlib.suppress(Exception):
            conn.close()
