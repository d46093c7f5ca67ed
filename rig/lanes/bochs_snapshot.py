"""Bochs snapshots: boot the base guest once, save the machine while it waits, restore per cell.

    save_machine(argv, workdir, folder, agent, timeout_s, out=) -> float   seconds to ready
    restore_config(saved, console=, agent=, log=, medium=) -> str     the cell's DIR/config
    restore_dir(folder, state, config)                                a per-cell view of a save
    gate(spec, folder, boot) -> Gate                                  may cells restore it?

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

The fidelity gate: before any cell restores a save, the guest's probe (WarmStart.probe: the
rig's own driver, then both of its injected faults) runs once booted fresh and once restored
from the save; what the probe's `facts` pick from each (the driver's capability, control, exit
and decoded-error lines, the guest's CPU line) must be equal. The outcome is kept beside the
save (gate.json, with both boots' consoles): a save that failed it is never restored, and
its cells boot fresh. Deleting gate.json makes the next run gate the save again.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from filelock import FileLock

from rig.errors import InfraError
from rig.lanes.base import owned_process, read_text, tail
from rig.model import BootEnd, BootResult, BootSpec

READY = "RIG-SNAPSHOT ready"
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


_READY_LINE = re.compile(rf"^{READY} sr0=(\w+)\r?\n", re.M)  # a tty ends lines \r\n


def save_machine(
    argv: list[str], workdir: Path, folder: Path, agent: Path, timeout_s: float, *, out: Path
) -> float:
    """Boot `argv` (Bochs with a no_gui_console rfb display, its output to `out`) until the
    guest is ready, save it into the existing, empty `folder`; the seconds until ready."""
    start = time.monotonic()
    with owned_process(argv, cwd=workdir, stdout=out, stdin_pipe=True) as proc:
        while (ready := _READY_LINE.search(read_text(agent))) is None:  # the whole line
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
        if ready[1] != "yes":
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


def restore_config(saved: str, *, console: Path, agent: Path, log: Path, medium: Path) -> str:
    """The saved config with the cell's paths, and plugins in a boot's order."""
    config = _set(saved, "com1.dev", str(console))
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


GATE_FILE = "gate.json"


@dataclass(frozen=True)
class Gate:
    ok: bool
    why: str  # for people: the first difference, or what kept the gate from running


def _differ(fresh: list[str], restored: list[str]) -> str:
    for i, (a, b) in enumerate(zip(fresh, restored, strict=False)):
        if a != b:
            return f"line {i + 1}: booted {a!r}, restored {b!r}"
    if len(fresh) != len(restored):
        return f"booted {len(fresh)} lines, restored {len(restored)}"
    return ""


def gate(spec: BootSpec, folder: Path, boot: Callable[[BootSpec, Path | None], BootResult]) -> Gate:
    """Whether cells may restore the save in `folder`: its gate's outcome, run once (under
    a lock beside the save) by booting the probe fresh and restored with `boot`."""
    warm = spec.image.warm
    entry = folder.parent
    with FileLock(str(entry / "gate.lock")):
        if (entry / GATE_FILE).is_file():
            kept = json.loads((entry / GATE_FILE).read_text())
            return Gate(bool(kept.get("ok")), str(kept.get("why", "")))
        if warm is None or warm.probe is None:
            return Gate(False, "the guest brought no probe for the gate")
        probe = warm.probe.image()
        work = entry / "gate"
        shutil.rmtree(work, ignore_errors=True)
        facts: dict[str, list[str]] = {}
        ends: dict[str, BootEnd] = {}
        for how, image, save in (
            ("booted", replace(probe, warm=None), None),
            ("restored", probe, folder),
        ):
            (work / how).mkdir(parents=True)
            result = boot(replace(spec, image=image, workdir=work / how), save)
            if save is not None and not result.restored:
                return Gate(False, "the probe's carrier did not fit the save's CD: not gated")
            facts[how] = warm.probe.facts(result.console, result.agent)
            ends[how] = result.end
        if set(ends.values()) != {BootEnd.POWEROFF}:  # not the save's fault: not kept
            how_ended = f"{ends['booted']} booted, {ends['restored']} restored"
            return Gate(False, f"the probe's guests ended {how_ended}: gated again next time")
        why = _differ(facts["booted"], facts["restored"])
        if not why and not facts["booted"]:
            why = "the probe printed nothing to compare"
        outcome = {"ok": not why, "why": why, **facts}
        tmp = entry / f".{GATE_FILE}.tmp"
        tmp.write_text(json.dumps(outcome, indent=1) + "\n")
        tmp.replace(entry / GATE_FILE)  # a killed writer leaves no half a file
        return Gate(not why, why)
