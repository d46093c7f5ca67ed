"""Bochs snapshots: boot the base guest once, save the machine while it waits, restore per cell.

    save_machine(argv, workdir, folder, agent, timeout_s, out=) -> float   seconds to ready
    restore_config(saved, console=, agent=, log=, medium=, more=) -> str   the cell's DIR/config
    restore_dir(folder, state, config)                                a per-cell view of a save

Saving (Bochs 2.7-3.0 have one trigger, the GUI's Suspend button): Bochs runs with
`display_library: rfb, options="timeout=0, no_gui_console"` and its stdin a pipe. When the
base guest says `RIG-SNAPSHOT ready` on its agent channel (guests/initramfs/init), the rig
presses Suspend over RFB from inside Bochs' network namespace (rig.lanes.bochs_rfb, run by
`nsenter --net`), then answers Bochs' two questions on stdin: the folder, and "no" to
continuing. Bochs writes the folder and exits.

Restoring: `bochs-bin -q -r DIR` reads everything from DIR/config (bochsrc is ignored), so a
cell gets its own DIR: a symlink to each file of the save but `config`, which names the cell's
console, agent channel, log, and its carrier as the CD's medium (rig.guest.carrier). Media are
paths, not saved: the guest reads the carrier where the boot ISO was. The save itself is only
read, so any number of cells restore it at once.

Bochs 2.7 restores optional plugins in the order of the saved `plugin_ctrl:` line and its
timers by index; a save lists usb_uhci before serial while a boot initialises it last, which
left a restored guest's serial ports receiving NUL bytes. `restore_config` puts usb_uhci back
where a boot has it (measured: ../shared/notes/speed.md).

Which save a cell may restore, and the fidelity gate before any does: rig.lanes.snapshots.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from rig.errors import InfraError
from rig.lanes.base import owned_process, read_text, tail
from rig.lanes.snapshots import ready_line

RFB_PORT = 5900  # Bochs' first RFB port: it is alone in its network namespace
SAVE_TIMEOUT_S = 60.0  # from the press to Bochs' exit (0.5 s measured)


def _ask_bochs_to_save(pid: int, stdin: IO[bytes] | None, folder: Path) -> None:
    try:
        proc = subprocess.run(
            ["nsenter", f"--target={pid}", "--net", "--", sys.executable, "-m",
             "rig.lanes.bochs_rfb", str(RFB_PORT)],
            capture_output=True, text=True, timeout=60, check=False,
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise InfraError("pressing Bochs' Suspend button took over 60 s") from exc
    if proc.returncode != 0:
        raise InfraError(f"pressing Bochs' Suspend button failed: {proc.stderr.strip()[-300:]}")
    if stdin is None:
        raise InfraError("Bochs was started without a stdin to answer on")
    stdin.write(f"{folder}\nno\n".encode())
    stdin.flush()


def save_machine(
    argv: list[str], workdir: Path, folder: Path, agent: Path, timeout_s: float, *, out: Path
) -> float:
    """Boot `argv` (Bochs with a no_gui_console rfb display, its output to `out`) until the
    guest is ready, save it into the existing, empty `folder`; the seconds until ready."""
    start = time.monotonic()
    with owned_process(argv, cwd=workdir, stdout=out, stdin_pipe=True) as proc:
        while (ready := ready_line(read_text(agent))) is None:
            if proc.poll() is not None:
                raise InfraError(
                    "Bochs stopped before the snapshot's guest was ready: "
                    + (tail(read_text(out), 5) or "no reason logged"),
                    where=str(workdir),
                )
            if time.monotonic() - start > timeout_s:
                raise InfraError(
                    f"the snapshot's guest was not ready in {timeout_s:.0f} s", where=str(workdir)
                )
            time.sleep(0.25)
        ready_s = time.monotonic() - start
        if ready != "yes":
            raise InfraError(
                "the snapshot's guest found no CD-ROM (/dev/sr0): its kernel did not load the "
                "drivers the rig gave it",
                where=str(agent),
                fix="run without --snapshot",
            )
        _ask_bochs_to_save(_bochs_pid(proc.pid), proc.stdin, folder)
        try:
            proc.wait(timeout=SAVE_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise InfraError("Bochs did not finish its save", where=str(workdir)) from exc
    if not (folder / "config").is_file():
        raise InfraError(
            "Bochs exited without saving: " + (tail(read_text(out), 5) or "no reason logged"),
            where=str(workdir),
        )
    return ready_s


def _bochs_pid(leader: int) -> int:
    """The bochs-bin process under setpriv/unshare (both exec: the same pid), or a child."""
    children = Path(f"/proc/{leader}/task/{leader}/children")
    kids = children.read_text().split() if children.exists() else []
    return int(kids[0]) if kids else leader


def _set(config: str, key: str, value: str) -> str:
    """`key:` line's option (`dev=` / `path=`) or whole value set to a quoted path."""
    if '"' in value or "\n" in value:
        raise InfraError(f"path not usable in a Bochs config: {value!r}")
    line, opt = key.split(".") if "." in key else (key, "")
    pattern = re.compile(rf"^({re.escape(line)}: .*?\b{opt}=)(\"[^\"]*\"|[^,\s]*)", re.M)
    if opt:
        new, n = pattern.subn(lambda m: f'{m[1]}"{value}"', config)
    else:
        new, n = re.subn(rf"^{re.escape(line)}: .*$", f'{line}: "{value}"', config, flags=re.M)
    if n != 1:
        raise InfraError(f"a saved Bochs config without one `{key}` setting")
    return new


def restore_config(
    saved: str,
    *,
    console: Path,
    agent: Path,
    log: Path,
    medium: Path,
    more: tuple[tuple[str, Path], ...] = (),
) -> str:
    """The saved config with the cell's paths (`more`: further ports, ("com3.dev", path)), and
    plugins in a boot's order."""
    config = saved
    for key, path in more:
        config = _set(config, key, str(path))
    config = _set(config, "com1.dev", str(console))
    config = _set(config, "com2.dev", str(agent))
    config = _set(config, "ata0-master.path", str(medium))
    config = _set(config, "log", str(log))

    def boot_order(m: re.Match[str]) -> str:
        plugins = [p.strip() for p in m[2].split(",")]
        uhci = [p for p in plugins if p.startswith("usb_uhci=")]
        return m[1] + ", ".join([p for p in plugins if not p.startswith("usb_uhci=")] + uhci)

    return re.sub(r"^(plugin_ctrl: )(.*)$", boot_order, config, count=1, flags=re.M)


def restore_dir(folder: Path, state: Path, config: str) -> None:
    """A cell's DIR for `bochs -r`: the save's files as symlinks, its own config."""
    state.mkdir(parents=True)
    for f in sorted(folder.iterdir()):
        if f.name != "config":
            (state / f.name).symlink_to(f)
    (state / "config").write_text(config)
