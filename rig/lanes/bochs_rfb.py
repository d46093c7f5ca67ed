"""Press Bochs' "Suspend" button over its RFB display: the only trigger of a Bochs save.

    press_suspend(port) -> (width, height)     in Bochs' network namespace (see below)
    python -m rig.lanes.bochs_rfb PORT         lo up, then the same: for `nsenter --net`

Bochs (2.7 to 3.0) saves its whole machine only from the GUI's headerbar "Suspend" button
(gui/gui.cc save_restore_handler); with `display_library: rfb` a pointer press at y < 32
calls the headerbar handler, whose right-hand buttons are, right to left, power then Suspend,
32 px each (gui/rfb.cc, gui/gui.cc). Bochs then asks on its stdin (`no_gui_console`) for the
folder and whether to continue; the lane answers there (rig.lanes.bochs_snapshot).

An RFB 3.3 client with no authentication: version, security type, ClientInit, ServerInit
(width, height), then a PointerEvent press and release. Bochs acts on the press. The socket
is drained while we wait, since Bochs sends framebuffer updates nobody asked for.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import sys
import time

HEADER_Y = 10  # inside the 32-px headerbar
SUSPEND_FROM_RIGHT = 48  # the middle of [W-64, W-32): Suspend, left of the power button


class RfbError(Exception):
    """The display did not speak RFB 3.3 with no authentication."""


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RfbError(f"the RFB server closed the connection ({len(data)} of {n} bytes)")
        data += chunk
    return data


def handshake(sock: socket.socket) -> tuple[int, int]:
    """RFB 3.3 up to ServerInit: the framebuffer's (width, height)."""
    version = _read(sock, 12)
    if not version.startswith(b"RFB 003."):
        raise RfbError(f"not an RFB server: {version!r}")
    sock.sendall(b"RFB 003.003\n")
    (security,) = struct.unpack(">I", _read(sock, 4))
    if security != 1:
        raise RfbError(f"RFB security type {security}, not 1 (none)")
    sock.sendall(b"\x01")  # ClientInit: shared
    width, height = struct.unpack(">HH", _read(sock, 4))
    _read(sock, 16)  # pixel format
    (name_len,) = struct.unpack(">I", _read(sock, 4))
    _read(sock, name_len)
    return width, height


def pointer(x: int, y: int, buttons: int) -> bytes:
    """An RFB PointerEvent message."""
    return struct.pack(">BBHH", 5, buttons, x, y)


def press_suspend(port: int, host: str = "127.0.0.1", timeout_s: float = 20.0) -> tuple[int, int]:
    """Connect (retrying until Bochs listens), press and release Suspend: (width, height)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    with sock:
        width, height = handshake(sock)
        x = max(0, width - SUSPEND_FROM_RIGHT)
        sock.sendall(pointer(x, HEADER_Y, 1) + pointer(x, HEADER_Y, 0))
        sock.settimeout(0.2)
        end = time.monotonic() + 1.0  # keep reading what Bochs sends while it acts
        while time.monotonic() < end:
            try:
                if not sock.recv(65536):
                    break
            except TimeoutError:
                continue
            except OSError:
                break
    return width, height


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """Bring `lo` up: a fresh network namespace (Bochs' own) has it down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack("16sH14x", b"lo", 0)
        (flags,) = struct.unpack("16xH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, req))
        if not flags & IFF_UP:
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m rig.lanes.bochs_rfb PORT", file=sys.stderr)
        return 2
    try:
        loopback_up()
        width, height = press_suspend(int(argv[0]))
    except (OSError, RfbError) as exc:
        print(f"rfb: {exc}", file=sys.stderr)
        return 3
    print(f"pressed Suspend on a {width}x{height} display")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
