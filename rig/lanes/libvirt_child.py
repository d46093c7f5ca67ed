"""Boot one transient libvirt domain: `python -m rig.lanes.libvirt_child PLAN OUT`.

Runs inside a private mount namespace (the parent starts it under `unshare --mount`). It owns
the domain: whatever happens (guest end, timeout, SIGTERM from a dying parent) the domain is
destroyed before it exits. It writes a JSON result {end, detail, duration_s, emulator_log}.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from rig.errors import InfraError
from rig.lanes.base import ConsoleWatch, read_text, watch_console
from rig.lanes.libvirt_remote import HOST_XML_FILE, REMOTE_FILE, ConsoleStreams, remote_media
from rig.lanes.libvirt_snapshot import XML_FILE
from rig.lanes.snapshots import ready_line
from rig.model import BootEnd

VIR_ERR_NO_DOMAIN = 42


def qemu_conf() -> str:
    """Embedded driver config: console to a plain file (no virtlogd), QEMU runs as us."""
    return (
        'stdio_handler = "file"\n'
        f'user = "+{os.getuid()}"\ngroup = "+{os.getgid()}"\n'
        "remember_owner = 0\n"
        "namespaces = []\n"
    )


class Terminated(Exception):
    pass


def _on_term(_sig: int, _frame: FrameType | None) -> None:
    raise Terminated


def hide_kvm(placeholder: Path) -> None:
    """Make /dev/kvm unusable to libvirt in this (private) mount namespace.

    libvirt decides "KVM usable" with access(/dev/kvm, R_OK|W_OK); as root that succeeds on any
    device node, and a capabilities cache probed without KVM is then thrown away and re-probed
    on every domain start (~2 s a probe, many probes). A regular file bound read-only over
    /dev/kvm fails W_OK with EROFS even for root, so libvirt sees no KVM and keeps its cache.
    """
    placeholder.parent.mkdir(parents=True, exist_ok=True)
    placeholder.touch()
    subprocess.run(["mount", "--bind", str(placeholder), "/dev/kvm"], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", "/dev/kvm"], check=True)


@contextlib.contextmanager
def event_loop(libvirt: Any) -> Iterator[None]:
    libvirt.virEventRegisterDefaultImpl()
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            libvirt.virEventRunDefaultImpl()

    thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def _refuse_symlink(path: Path) -> None:
    """A slot (or its etc/, its qemu.conf) that is a symlink: never write through it."""
    if path.is_symlink():
        raise InfraError(
            f"embedded libvirt root: {path} is a symlink; the rig never writes through one "
            f"(remove the link: rm {path})"
        )


def _open_nofollow(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if path.is_symlink():
            _refuse_symlink(path)
        raise InfraError(f"embedded libvirt root: cannot open {path}: {exc}") from exc


def _write_conf(root: Path) -> None:
    """root/etc/qemu.conf, written only as a real file in a real directory of the slot."""
    etc = root / "etc"
    _refuse_symlink(etc)
    with contextlib.suppress(FileExistsError):
        etc.mkdir()
    _refuse_symlink(etc)
    conf = etc / "qemu.conf"
    _refuse_symlink(conf)
    fd = _open_nofollow(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w") as fh:
        fh.write(qemu_conf())


@contextlib.contextmanager
def embed_slot(pool: Path, slots: int = 64) -> Iterator[Path]:
    """Lock one embedded-driver root of the pool (one process per root at a time).

    Roots persist between runs so QEMU's capabilities are probed once per slot, not per cell.
    """
    pool.mkdir(parents=True, exist_ok=True)
    for i in range(slots):
        root = pool / f"slot-{i}"
        _refuse_symlink(root)
        with contextlib.suppress(FileExistsError):
            root.mkdir()
        _refuse_symlink(root)
        fd = _open_nofollow(root / "rig.lock", os.O_WRONLY | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        # The lock is never released here: libvirt's embedded driver holds a lock of its own
        # in the root (run/qemu/driver.pid) until this process exits, so the slot is free only
        # then. This process is one boot's child: its exit releases both at once (a slot let go
        # earlier was taken by the next child while the driver still held it: "Failed to
        # acquire pid file", seen when a worker was killed mid-boot).
        try:
            _write_conf(root)
        except BaseException:
            os.close(fd)
            raise
        yield root
        return
    raise RuntimeError(f"all {slots} embedded libvirt roots under {pool} are busy")


def sweep_leftover_domains(conn: Any, libvirt: Any, *, embedded: bool) -> None:
    """In a slot we hold, any running rig domain is a leftover of a killed run: destroy it."""
    if not embedded:
        return
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        if dom.name().startswith("rig-"):
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()


@contextlib.contextmanager
def transient_domain(
    conn: Any, xml: str, name: str, restore_from: str = "", flags: int = 0
) -> Iterator[Any]:
    """The domain `name`, started from `xml` (with createXML's `flags`), or restored from the
    save `restore_from` with it (rig.lanes.libvirt_snapshot); destroyed when the block ends."""
    if restore_from:
        conn.restoreFlags(restore_from, xml, 0)
        dom = conn.lookupByName(name)
    else:
        dom = conn.createXML(xml, flags)
    try:
        yield dom
    finally:
        with contextlib.suppress(Exception):
            if dom.isActive():
                dom.destroy()


def save_when_ready(conn: Any, dom: Any, plan: dict[str, Any], alive: Any) -> dict[str, object]:
    """Wait for the base guest's ready line on its agent channel, then save the domain to
    plan["save_to"] and its XML beside it (rig.lanes.libvirt_snapshot): the child's result."""
    import libvirt

    start = time.monotonic()
    agent, save_to = Path(plan["agent"]), Path(plan["save_to"])
    while (ready := ready_line(read_text(agent))) is None:
        if not alive():
            return {"saved": False, "end": BootEnd.EMULATOR.value,
                    "detail": "the base guest ended before it was ready"}  # fmt: skip
        if (waited := time.monotonic() - start) > float(plan["timeout_s"]):
            detail = f"the base guest was not ready in {waited:.0f} s"
            return {"saved": False, "end": BootEnd.TIMEOUT.value, "detail": detail}
        time.sleep(0.1)
    ready_s = time.monotonic() - start
    if ready != "yes":
        return {"saved": False, "end": BootEnd.POWEROFF.value,
                "detail": "the base guest found no CD-ROM (/dev/sr0)"}  # fmt: skip
    dom.save(str(save_to))
    xml = conn.saveImageGetXMLDesc(str(save_to), libvirt.VIR_DOMAIN_XML_SECURE)
    (save_to.parent / XML_FILE).write_text(xml)
    detail = f"saved after {ready_s:.1f} s"
    return {"saved": True, "ready_s": ready_s, "end": BootEnd.POWEROFF.value, "detail": detail,
            "duration_s": time.monotonic() - start}  # fmt: skip


def remote_domain(
    stack: contextlib.ExitStack, conn: Any, plan: dict[str, Any], closed: list[str]
) -> Any:
    """On a remote host (rig.lanes.libvirt_remote): kernel and initrd uploaded, the domain
    started paused and destroyed by the host should this process (or its connection) die,
    both serial ports streamed into the cell's files before the guest runs a cycle."""
    import libvirt

    conn.setKeepAlive(5, 3)
    why = {0: "an error", 1: "end of file", 2: "keepalive timeout", 3: "closed by us"}
    conn.registerCloseCallback(
        lambda _c, reason, _o: closed.append(why.get(reason, f"reason {reason}")), None
    )
    console = Path(plan["console"])
    files = {"serial0": console, "serial1": Path(plan["agent"])}
    streams = stack.enter_context(ConsoleStreams(files))
    xml = stack.enter_context(remote_media(conn, libvirt, plan, console.with_name(REMOTE_FILE)))
    flags = libvirt.VIR_DOMAIN_START_PAUSED | libvirt.VIR_DOMAIN_START_AUTODESTROY
    dom = stack.enter_context(transient_domain(conn, xml, plan["name"], flags=flags))
    streams.open(conn, dom)
    console.with_name(HOST_XML_FILE).write_text(dom.XMLDesc(0))
    dom.resume()
    return dom


def main(plan_path: str, out_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    out = Path(out_path)
    signal.signal(signal.SIGTERM, _on_term)
    errors: list[str] = []
    start = time.monotonic()
    result: dict[str, object] = {}
    try:
        import libvirt

        libvirt.registerErrorHandler(lambda _ctx, err: errors.append(str(err[2])), None)
        if plan["hide_kvm"] and Path("/dev/kvm").exists():
            hide_kvm(Path(plan["embed_pool"]) / "kvm-placeholder")
        with contextlib.ExitStack() as stack:
            uri = plan["uri"]
            if uri == "embed":
                root = stack.enter_context(embed_slot(Path(plan["embed_pool"])))
                uri = f"qemu:///embed?root={root}"
            elif uri.startswith("qemu:///embed?"):
                # An embedded root named by the user: give it the same configuration.
                named = parse_qs(urlsplit(uri).query).get("root", [""])[0]
                if named:
                    (Path(named) / "etc").mkdir(parents=True, exist_ok=True)
                    (Path(named) / "etc/qemu.conf").write_text(qemu_conf())
            stack.enter_context(event_loop(libvirt))
            conn = libvirt.open(uri)
            stack.callback(conn.close)
            sweep_leftover_domains(conn, libvirt, embedded=plan["uri"] == "embed")
            xml, restore_from = plan["domain_xml"], plan.get("restore_from", "")
            closed: list[str] = []
            if plan.get("remote"):
                dom = remote_domain(stack, conn, plan, closed)
            else:
                dom = stack.enter_context(transient_domain(conn, xml, plan["name"], restore_from))
            if plan.get("started"):
                Path(plan["started"]).touch()

            def alive() -> bool:
                try:
                    return not closed and bool(dom.isActive())
                except libvirt.libvirtError as exc:
                    if not closed and plan.get("remote") and not conn.isAlive():
                        closed.append(str(exc))  # before the close callback says why
                    return False

            if plan.get("save_to"):
                result = save_when_ready(conn, dom, plan, alive)
            else:
                watched = time.monotonic()
                watch = watch_console(
                    Path(plan["console"]), alive=alive, timeout_s=float(plan["timeout_s"])
                )
                lost = f" (connection to the libvirt host lost: {closed[0]})" if closed else ""
                result = {
                    "end": watch.end.value,
                    "detail": watch.detail + lost,
                    # a lost host's last RPC blocks until keepalive gives up: count that too
                    "duration_s": time.monotonic() - watched if closed else watch.duration_s,
                    "panic_line": watch.panic_line,
                    "panic_to_stop_s": watch.panic_to_stop_s,
                }
    except Terminated:
        result = {
            "end": BootEnd.EMULATOR.value,
            "detail": "run interrupted (rig terminated); domain destroyed",
            "duration_s": time.monotonic() - start,
        }
    except Exception as exc:  # every libvirt failure is an infrastructure verdict
        w = ConsoleWatch(BootEnd.EMULATOR, f"libvirt: {exc}", time.monotonic() - start)
        result = {"end": w.end.value, "detail": w.detail, "duration_s": w.duration_s}
    result["emulator_log"] = "\n".join(errors[-20:])
    out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
