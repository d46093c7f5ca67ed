"""A libvirt host that shares no filesystem with the controller (`qemu+ssh://...`).

    is_remote(uri) -> bool                        a host part, or a transport other than unix
    remote_media(conn, plan) -> ctx[xml]          kernel/initrd uploaded, the host's domain XML
    ConsoleStreams(files)                         the serial ports streamed into local files

Used by the libvirt child (rig.lanes.libvirt_child) for a remote URI; `embed` and local URIs
keep file consoles and controller paths.

Media: a dir storage pool of the rig's own on the host (POOL at POOL_TARGET, defined, built
and started when absent). The kernel is a shared volume named by its content
(`vmlinuz-<sha256[:16]>`), kept, and reused by every later boot of any controller. It is
uploaded (as virt-install does: `vol.upload` + 1 MiB `stream.send` + `finish`) under a name of
this upload's own (`NAME.partial-<random>`), then cloned by the host into NAME
(`createXMLFrom`, a copy on the host) and the partial deleted; an upload that fails deletes its
partial. So a volume under a final name is never half-written by a client: a controller killed
mid-upload leaves at most a partial (swept once older than STALE_S). Races with a concurrent
controller: both may upload; the second clone fails ("already exists") and that controller
uses the first's volume. A volume found while the host still copies it answers a download
with "still being allocated": the boot waits for that (`_settled`). A volume under the name
whose size differs (not the bytes the name stands for) is deleted and uploaded again.

The initrd holds the cell's run id and module, so no other boot can reuse it: it is uploaded
under the domain's own name (`<domain>.initrd`) and deleted when the boot ends. Each boot
records its volumes in the cell directory (REMOTE_FILE): {uri, pool, uploaded, reused,
per_boot, deleted, bytes_uploaded}.

Console: the serial ports are ptys on the host, each read through `virDomainOpenConsole`
(by alias: serial0 is the console, serial1 the agent channel) into a non-blocking stream
whose event callback appends to the local file at once, so a host that dies mid-boot still
leaves what the guest printed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import secrets
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from rig.errors import InfraError

POOL = "vmlaunch-rig"
POOL_TARGET = "/var/lib/libvirt/vmlaunch-rig"
REMOTE_FILE = "remote.json"
HOST_XML_FILE = "domain-host.xml"  # the domain as the host's libvirt reported it, running
CHUNK = 1 << 20
STALE_S = 24 * 3600.0  # a partial or per-boot volume this old is a killed run's leftover
SETTLE_S = 120.0  # how long a boot waits for a volume the host is still copying
VIR_ERR_NO_STORAGE_POOL, VIR_ERR_NO_STORAGE_VOL = 49, 50


def is_remote(uri: str) -> bool:
    """A URI naming a host, or a transport other than the local unix socket."""
    if uri == "embed":
        return False
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    return bool(parts.hostname) or transport not in ("", "unix")


@functools.lru_cache(maxsize=16)
def remote_kvm_unusable(uri: str, timeout_s: float = 90.0) -> str | None:
    """Why the host behind `uri` cannot run kvm domains (None: it can), from its libvirt's
    domain capabilities for type kvm. Asked in a child process, as boots are (libvirt's
    process-wide state stays out of ours); once per URI and process."""
    argv = [sys.executable, "-m", "rig.lanes.libvirt_remote", "kvm", uri]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"libvirt host {uri}: no answer about KVM in {timeout_s:.0f} s"
    if out.returncode == 0:
        return None
    why = (out.stdout.strip() or out.stderr.strip()).splitlines()[-1:] or ["no reason given"]
    return f"libvirt host {uri} has no usable KVM: {why[0]}"


def _kvm_probe(uri: str) -> int:
    """`python -m rig.lanes.libvirt_remote kvm URI`: exit 0 when the host offers kvm domains
    for x86_64, else print why and exit 1."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(uri)
        try:
            caps = ET.fromstring(conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0))  # noqa: S314
        finally:
            conn.close()
    except libvirt.libvirtError as exc:
        print(exc)
        return 1
    if caps.findtext("domain") != "kvm":
        print(f"its domain capabilities are for {caps.findtext('domain')!r}, not kvm")
        return 1
    return 0


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while data := fh.read(CHUNK):
            h.update(data)
    return h.hexdigest()


def ensure_pool(conn: Any, libvirt: Any) -> Any:
    """The rig's dir pool on the host, defined, built and started if absent (a concurrent
    controller may do the same at once: "already exists" / "already active" are fine)."""
    try:
        pool = conn.storagePoolLookupByName(POOL)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != VIR_ERR_NO_STORAGE_POOL:
            raise
        el = ET.Element("pool", type="dir")
        ET.SubElement(el, "name").text = POOL
        ET.SubElement(ET.SubElement(el, "target"), "path").text = POOL_TARGET
        try:
            pool = conn.storagePoolDefineXML(ET.tostring(el, encoding="unicode"), 0)
            pool.build(0)
            pool.setAutostart(1)
        except libvirt.libvirtError:
            pool = conn.storagePoolLookupByName(POOL)  # defined by another controller
    if not pool.isActive():
        with contextlib.suppress(libvirt.libvirtError):
            pool.create(0)
        if not pool.isActive():
            raise InfraError(f"libvirt storage pool {POOL} on the host does not start")
    return pool


def _volume_xml(name: str, size: int) -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(size)
    ET.SubElement(ET.SubElement(vol, "target"), "format", type="raw")
    return ET.tostring(vol, encoding="unicode")


def _lookup(pool: Any, libvirt: Any, name: str) -> Any | None:
    try:
        return pool.storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != VIR_ERR_NO_STORAGE_VOL:
            raise
        return None


def _upload(conn: Any, vol: Any, path: Path, size: int) -> None:
    stream = conn.newStream(0)
    vol.upload(stream, 0, size, 0)
    try:
        with path.open("rb") as fh:
            while data := fh.read(CHUNK):
                view = memoryview(data)
                while view:
                    view = view[stream.send(bytes(view)) :]
        stream.finish()
    except BaseException:
        with contextlib.suppress(Exception):
            stream.abort()
        raise


def upload_new(conn: Any, pool: Any, libvirt: Any, path: Path, name: str) -> Any:
    """A new volume `name` holding the file's bytes; deleted again if the upload fails."""
    size = path.stat().st_size
    vol = pool.createXML(_volume_xml(name, size), 0)
    try:
        _upload(conn, vol, path, size)
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            vol.delete(0)
        raise
    return vol


def _settled(vol: Any, conn: Any, libvirt: Any) -> None:
    """Wait while the host still copies `vol` (a download is refused until it is done)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        stream = conn.newStream(0)
        try:
            vol.download(stream, 0, 1, 0)
            stream.recv(1)
            stream.finish()
            return
        except libvirt.libvirtError as exc:
            with contextlib.suppress(Exception):
                stream.abort()
            if "still being allocated" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def shared_volume(conn: Any, pool: Any, libvirt: Any, path: Path, stem: str) -> tuple[Any, bool]:
    """The content-named volume of `path` (uploaded when absent): (volume, uploaded)."""
    size = path.stat().st_size
    name = f"{stem}-{sha256_of(path)[:16]}"
    vol = _lookup(pool, libvirt, name)
    if vol is not None and int(vol.info()[1]) != size:
        with contextlib.suppress(libvirt.libvirtError):
            vol.delete(0)  # not the bytes the name stands for: upload them again
        vol = None
    if vol is not None:
        _settled(vol, conn, libvirt)
        return vol, False
    partial = upload_new(conn, pool, libvirt, path, f"{name}.partial-{secrets.token_hex(4)}")
    try:
        vol = pool.createXMLFrom(_volume_xml(name, size), partial, 0)
    except libvirt.libvirtError:
        vol = _lookup(pool, libvirt, name)  # a concurrent controller's clone won
        if vol is None:
            raise
        _settled(vol, conn, libvirt)
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            partial.delete(0)
    return vol, True


def sweep_stale(pool: Any, libvirt: Any, now: float | None = None) -> list[str]:
    """Delete partial uploads and per-boot volumes older than STALE_S (killed runs')."""
    gone = []
    now = time.time() if now is None else now
    for vol in pool.listAllVolumes(0):
        name = vol.name()
        if ".partial-" not in name and not name.endswith(".initrd"):
            continue
        with contextlib.suppress(libvirt.libvirtError, ValueError, TypeError):
            mtime = ET.fromstring(vol.XMLDesc(0)).findtext("target/timestamps/mtime")  # noqa: S314
            if mtime and now - float(mtime) > STALE_S:
                vol.delete(0)
                gone.append(name)
    return gone


def host_xml(xml: str, *, kernel: str, initrd: str) -> str:
    """The domain with the host's paths of the kernel and the initrd."""
    dom = ET.fromstring(xml)  # noqa: S314 - the rig's own domain XML
    for tag, path in (("os/kernel", kernel), ("os/initrd", initrd)):
        el = dom.find(tag)
        if el is None:
            raise InfraError(f"domain XML without <{tag}>")
        el.text = path
    return ET.tostring(dom, encoding="unicode")


@contextlib.contextmanager
def remote_media(conn: Any, libvirt: Any, plan: Mapping[str, Any], facts: Path) -> Iterator[str]:
    """Upload what the host lacks; yield the domain XML with the host's paths. On exit the
    per-boot initrd is deleted and the boot's REMOTE_FILE written."""
    record: dict[str, Any] = {"uri": plan["uri"], "pool": POOL, "uploaded": [], "reused": [],
                              "per_boot": [], "deleted": [], "bytes_uploaded": 0}  # fmt: skip
    pool = ensure_pool(conn, libvirt)
    record["swept"] = sweep_stale(pool, libvirt)
    kernel_path, initrd_path = Path(plan["kernel"]), Path(plan["initrd"])
    try:
        kernel, uploaded = shared_volume(conn, pool, libvirt, kernel_path, "vmlinuz")
        record["uploaded" if uploaded else "reused"].append(kernel.name())
        record["bytes_uploaded"] += kernel_path.stat().st_size if uploaded else 0
        name = f"{plan['name']}.initrd"
        stale = _lookup(pool, libvirt, name)
        if stale is not None:
            stale.delete(0)
        initrd = upload_new(conn, pool, libvirt, initrd_path, name)
        record["uploaded"].append(name)
        record["per_boot"].append(name)
        record["bytes_uploaded"] += initrd_path.stat().st_size
        try:
            yield host_xml(plan["domain_xml"], kernel=kernel.path(), initrd=initrd.path())
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                initrd.delete(0)
                record["deleted"].append(name)
    finally:
        facts.write_text(json.dumps(record, indent=1) + "\n")


class _Pipe:
    """One serial port's stream, appended to its file as the bytes come."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.done = threading.Event()
        self.lock = threading.Lock()  # the event loop's thread writes, the main one closes
        self.stream: Any = None

    def on_event(self, stream: Any, events: int, libvirt: Any) -> None:
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            while True:
                try:
                    data = stream.recv(1 << 16)
                except libvirt.libvirtError:
                    break
                if isinstance(data, int):  # -2: nothing more for now
                    return
                if not data:
                    break  # end of stream: the domain is gone
                with self.lock:
                    if self.done.is_set():
                        return
                    self.out.write(data)
                    self.out.flush()
        elif not events & (libvirt.VIR_STREAM_EVENT_HANGUP | libvirt.VIR_STREAM_EVENT_ERROR):
            return
        self.close()

    def close(self) -> None:
        with self.lock:
            if self.done.is_set() or self.stream is None:
                return
            self.done.set()
        with contextlib.suppress(Exception):
            self.stream.eventRemoveCallback()
        with contextlib.suppress(Exception):
            self.stream.abort()


class ConsoleStreams:
    """The domain's serial ports (by alias) streamed into local files: `open(conn, dom)` once
    the domain exists (started paused, so nothing is printed before); leaving the block waits
    up to `drain_s` for the streams' ends (the domain destroyed before), then closes them."""

    def __init__(self, files: Mapping[str, Path], drain_s: float = 5.0) -> None:
        self.files = dict(files)
        self.drain_s = drain_s
        self.pipes: dict[str, _Pipe] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ConsoleStreams:
        for alias, path in self.files.items():
            self.pipes[alias] = _Pipe(self._stack.enter_context(path.open("ab")))
        return self

    def open(self, conn: Any, dom: Any) -> None:
        import libvirt

        flags = libvirt.VIR_DOMAIN_CONSOLE_FORCE | libvirt.VIR_DOMAIN_CONSOLE_SAFE
        events = (libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_HANGUP
                  | libvirt.VIR_STREAM_EVENT_ERROR)  # fmt: skip
        for alias, pipe in self.pipes.items():
            stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
            dom.openConsole(alias, stream, flags)
            pipe.stream = stream
            stream.eventAddCallback(events, lambda s, e, _o, p=pipe: p.on_event(s, e, libvirt),
                                    None)  # fmt: skip

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + self.drain_s
        for pipe in self.pipes.values():
            if pipe.stream is not None:
                pipe.done.wait(max(0.0, deadline - time.monotonic()))
                pipe.close()
        self._stack.close()


def _ping(uri: str) -> int:
    """`python -m rig.lanes.libvirt_remote ping URI`: exit 0 when the host's libvirt answers
    (rig.pool leases its slots), else print why and exit 1."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(uri)
        try:
            conn.getLibVersion()
        finally:
            conn.close()
    except libvirt.libvirtError as exc:
        print(exc)
        return 1
    return 0


if __name__ == "__main__" and sys.argv[1:2] in (["kvm"], ["ping"]):
    sys.exit((_kvm_probe if sys.argv[1] == "kvm" else _ping)(sys.argv[2]))
