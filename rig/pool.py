"""Pool mode: a run's libvirt cells lease slots on several hosts (`--uri URI?slots=N ...`).

    parse_uri(text) -> PoolHost          the libvirt URI (slots= stripped) and its slot count
    public(uri) -> str                   the URI without credentials (user, keyfile, command)
    Pool(run_dir, hosts).lease(cell)     ctx[Lease]: the first free slot of a live host

A lease is an flock on `<run>/slots/<host-hash>-<i>.lock`, so the run's xdist workers (local
processes) share the slots; a cell waits while every slot of every live host is held. Before
a remote host's slot is handed out its libvirt is asked for its version (`python -m
rig.lanes.libvirt_remote ping URI`, in a child process with a timeout): a host whose
connection fails is dead for the rest of the run (`<run>/dead/<host-hash>.json`, its reason)
and its slots are never leased again. Every URI the run may use is in `<run>/uris.json`
(rig.remote_sweep destroys what a dead run left on each).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

from rig.errors import InfraError, UsageError
from rig.lanes.libvirt_remote import is_remote

URIS_FILE = "uris.json"
SLOTS_DIR = "slots"
DEAD_DIR = "dead"
PING_TIMEOUT_S = 20.0
MAX_SLOTS = 64
SECRET_PARAMS = ("keyfile", "command", "sshauth", "known_hosts")


@dataclass(frozen=True)
class PoolHost:
    uri: str  # what libvirt is given: slots= stripped
    slots: int = 1

    @property
    def key(self) -> str:
        return hashlib.sha256(self.uri.encode()).hexdigest()[:12]

    @property
    def host(self) -> str:
        return public(self.uri)


def parse_uri(text: str) -> PoolHost:
    """`URI?slots=N`: slots is the rig's own parameter (default 1), never passed to libvirt."""
    if text == "embed":
        return PoolHost(text)
    parts = urlsplit(text)
    query = parse_qsl(parts.query, keep_blank_values=True)
    slots = [v for k, v in query if k == "slots"]
    rest = [(k, v) for k, v in query if k != "slots"]
    n = 1
    if slots:
        if len(slots) > 1 or not slots[0].isdigit() or not 1 <= int(slots[0]) <= MAX_SLOTS:
            raise UsageError(f"--uri {text}: slots= takes one number from 1 to {MAX_SLOTS}")
        n = int(slots[0])
    return PoolHost(_join(parts, parts.netloc, rest) if slots else text, n)


def _join(parts: SplitResult, netloc: str, query: Sequence[tuple[str, str]]) -> str:
    """scheme://netloc/path?query (urlunsplit drops the `//` of an empty host: qemu:///system),
    urlencoded with safe='/': the query's paths stay readable."""
    q = urlencode(query, safe="/")
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{q}" if q else "")


def public(uri: str) -> str:
    """The URI as a report may show it: no user name, no key file or ssh command."""
    if uri == "embed":
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc.rpartition("@")[2]
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k not in SECRET_PARAMS]  # fmt: skip
    return _join(parts, netloc, query)


def run_child(argv: Sequence[str], timeout_s: float) -> tuple[int | None, str]:
    """(exit status or None on timeout, output) of a child that talks to a libvirt host. A
    session of its own: on timeout its ssh (waiting on a frozen host) is killed with it; the
    output in a file, not a pipe that an ssh outside the group could hold open."""
    with tempfile.TemporaryFile("w+") as log:
        with subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True) as proc:  # fmt: skip
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return None, ""
        log.seek(0)
        return proc.returncode, log.read()


def ping(uri: str, timeout_s: float = PING_TIMEOUT_S) -> str | None:
    """Why the libvirt behind `uri` does not answer (None: it does)."""
    rc, out = run_child([sys.executable, "-m", "rig.lanes.libvirt_remote", "ping", uri], timeout_s)
    if rc is None:
        return f"no answer in {timeout_s:.0f} s"
    if rc == 0:
        return None
    return (out.strip().splitlines() or ["no reason given"])[-1]


class NoLiveHost(InfraError):
    """Every host of the pool (but those a cell avoids) is dead for this run."""


Preflight = Callable[[PoolHost], str | None] | None


@dataclass(frozen=True)
class Lease:
    host: PoolHost
    slot: int


class Pool:
    """The run's hosts and their slots (shared by every process of the run)."""

    def __init__(self, run_dir: Path, hosts: Sequence[PoolHost], wait_s: float = 0.5) -> None:
        self.run_dir = run_dir
        self.hosts = list(hosts)
        self.wait_s = wait_s
        (run_dir / SLOTS_DIR).mkdir(parents=True, exist_ok=True)
        (run_dir / DEAD_DIR).mkdir(exist_ok=True)
        record = run_dir / URIS_FILE
        if not record.exists():
            tmp = record.with_name(f".{URIS_FILE}.{os.getpid()}")
            tmp.write_text(json.dumps([h.uri for h in self.hosts], indent=1) + "\n")
            tmp.replace(record)

    def _marker(self, host: PoolHost, lane: str | None) -> Path:
        """dead/<key>.json: dead for every lane; dead/<key>.<lane>.json: cannot run that lane."""
        return self.run_dir / DEAD_DIR / (f"{host.key}.{lane}.json" if lane else f"{host.key}.json")

    def dead(self, lane: str | None = None) -> dict[str, str]:
        """host (public URI) -> why, for every host this run gave up on (for `lane` too)."""
        found = {}
        for h in self.hosts:
            for marker in {self._marker(h, None), self._marker(h, lane)}:
                with contextlib.suppress(OSError, ValueError):
                    found[h.host] = str(json.loads(marker.read_text())["reason"])
        return found

    def live(self, lane: str | None = None) -> list[PoolHost]:
        return [h for h in self.hosts if not self.is_dead(h, lane)]

    def is_dead(self, host: PoolHost, lane: str | None = None) -> bool:
        return self._marker(host, None).exists() or (
            lane is not None and self._marker(host, lane).exists()
        )

    def mark_dead(self, host: PoolHost, reason: str, lane: str | None = None) -> None:
        """Dead for the run (`lane` None: its connection failed) or for one lane (its
        preflight failed there: no usable KVM)."""
        fact = {"host": host.host, "reason": reason, "lane": lane,
                "at": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
        path = self._marker(host, lane)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(fact) + "\n")
        tmp.replace(path)
        what = f"cannot run lane {lane}" if lane else "is dead"
        print(f"rig: libvirt host {host.host} {what} for this run: {reason}", flush=True)

    def _try(self, host: PoolHost, slot: int) -> IO[str] | None:
        fh = (self.run_dir / SLOTS_DIR / f"{host.key}-{slot}.lock").open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return None
        return fh

    @contextlib.contextmanager
    def lease(self, holder: str, lane: str | None = None, preflight: Preflight = None,
              avoid: Sequence[PoolHost] = ()) -> Iterator[Lease]:  # fmt: skip
        """The first free slot of a live host (not in `avoid`), held until the block ends.
        `preflight(host)`: why the host cannot run `lane` (None: it can), asked once the host
        answered; a host that cannot is marked so and the next is tried. Raises NoLiveHost
        once every host (but those avoided) is dead, for this lane or for all."""
        while True:
            live = [h for h in self.live(lane) if h not in avoid]
            if not live:
                dead = "; ".join(f"{h}: {why}" for h, why in self.dead(lane).items())
                raise NoLiveHost(f"no live libvirt host left for this cell ({dead or 'none'})")
            got = self._first_free(live, holder, lane, preflight)
            if got is not None:
                lease, fh = got
                try:
                    yield lease
                finally:
                    fh.close()
                return
            time.sleep(self.wait_s)

    def _first_free(self, live: Sequence[PoolHost], holder: str, lane: str | None,
                    preflight: Preflight) -> tuple[Lease, IO[str]] | None:  # fmt: skip
        for host in live:
            for slot in range(host.slots):
                fh = self._try(host, slot)
                if fh is None:
                    continue
                why = ping(host.uri) if is_remote(host.uri) else None
                if why is not None:
                    fh.close()
                    self.mark_dead(host, why)
                    break
                why = preflight(host) if preflight is not None else None
                if why is not None:
                    fh.close()
                    self.mark_dead(host, why, lane)
                    break
                fh.seek(0)
                fh.truncate()
                fh.write(f"{os.getpid()} {holder}\n")
                fh.flush()
                return Lease(host, slot), fh
        return None


def total_slots(uris: Sequence[str]) -> int:
    return sum(parse_uri(u).slots for u in uris)
