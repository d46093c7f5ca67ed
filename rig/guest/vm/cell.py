"""The full-VM guest flavour (`--guest vm`): a disposable Debian VM per cell, over SSH.

    run_vm_cell(plan, image, backend) -> VmCellResult(build, boot, timings)

One cell: a qcow2 overlay of the cached image (rig.guest.vm.image), a fresh ed25519 login key
and host key, a seed disk carrying the login key's public half and the host key's private
half (the rig trusts that host key only), a transient libvirt domain booted from the image's own
kernel and initrd, with QEMU user networking forwarding a free loopback port to the guest's
sshd (rig.guest.vm.resources). Over SSH (fabric, rig.guest.vm.ssh) the driver is copied in and
compiled against the guest's own headers (that is the `build` stage); then the guest agent,
the same script the initramfs guest runs (guests/agent/rig-agent), loads and unloads it
`repeat` times, its protocol streamed from the SSH session into the cell's agent.txt while
the kernel's lines go to the serial console (console.txt). Finally `poweroff`, wait for the
domain to end (destroy it after POWEROFF_WAIT_S), and delete overlay, seed disk and keys.

A guest that stops answering (every SSH command has a time limit) ends the agent's channel
where it stopped; BootEnd says why: PANIC (the console shows a panic, or the domain died with
one), TIMEOUT (the guest still runs but does not answer), EMULATOR (the domain ended otherwise).
"""

from __future__ import annotations

import contextlib
import io
import shlex
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from rig.artifacts.module import module_name, source_tarball
from rig.errors import InfraError, UsageError
from rig.guest.initramfs import write_plan
from rig.guest.vm.image import VmImage
from rig.guest.vm.resources import (
    SCRATCH_DIR,
    cell_key,
    free_port,
    host_key,
    overlay_disk,
    port_collision,
    scratch_dir,
    seed_disk,
    vm_devices,
    wait_for_banner,
)
from rig.guest.vm.ssh import QUICK_CAP_S, Commands, GuestLost, Session, ssh_session
from rig.lanes.base import (
    AGENT_FILE,
    CHANNEL_CAP,
    CONSOLE_FILE,
    PANIC_GRACE_S,
    PANIC_RE,
    read_text,
    tail,
)
from rig.lanes.libvirt import Domain, DomainLane
from rig.model import BootEnd, BootResult, BootSpec, GuestImage, ModuleBuild
from rig.options import check_param

GUEST_DIR = "/root/rig"  # where the driver goes in the guest
PORT_ATTEMPTS = 5  # a port taken between our probe and QEMU's bind: try another
# Time limits. Booting and compiling are the rig's own work: each has its own limit (TCG on a
# busy 2-core machine: boot to SSH up to ~170 s, compiling the driver ~180 s). The cell
# timeout (matrix `timeout`, --timeout) bounds the test itself, from RIG-BEGIN to RIG-END, as
# it bounds an initramfs guest: a driver that hangs the guest fails at it.
BOOT_TO_SSH_CAP_S = 420.0
CONNECT_CAP_S = 60.0  # after the banner: sshd up, the key being installed
BUILD_CAP_S = 600.0
STEP_CAP_S = 120.0  # insmod, rmmod: the driver's own code runs
POWEROFF_WAIT_S = 60.0
# The libvirt child destroys the domain by itself after all of the above (if we hang).
CHILD_EXTRA_S = BOOT_TO_SSH_CAP_S + CONNECT_CAP_S + BUILD_CAP_S + POWEROFF_WAIT_S + 60.0

Progress = Callable[[str], None]


# --------------------------------------------------------------------------- plan and result
@dataclass(frozen=True)
class VmCellPlan:
    """Everything one VM cell needs (from the matrix cell and the run configuration)."""

    run_id: str
    cell_id: str
    driver: Path
    cpu_model: str
    workdir: Path
    timeout_s: int  # the test (RIG-BEGIN..RIG-END); boot and build have their own limits
    memory_mib: int = 1024
    vcpus: int = 1
    module_params: tuple[str, ...] = ()
    repeat: int = 1
    boot_to_ssh_s: float = BOOT_TO_SSH_CAP_S  # from starting the domain to sshd's banner
    witness: tuple[Path, ...] = ()  # the teardown witness's files (the kernel's KVM modules)


@dataclass(frozen=True)
class VmCellResult:
    build: ModuleBuild | None  # None: the guest never got as far as the compile
    boot: BootResult | None  # None: nothing was loaded (the module did not build)
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- guest steps
def build_in_guest(guest: Session, driver: Path, name: str, workdir: Path) -> ModuleBuild:
    """Copy the driver in and compile it against the guest's own kernel headers."""
    dest = f"{GUEST_DIR}/driver"
    q_dest = shlex.quote(dest)
    guest.run(f"rm -rf {shlex.quote(GUEST_DIR)} && mkdir -p {q_dest}", "copy")
    guest.put(source_tarball(driver), f"{GUEST_DIR}/driver.tar", "copy")
    r = guest.run(f"tar -m -C {q_dest} -xf {shlex.quote(GUEST_DIR)}/driver.tar", "copy")
    if r.rc != 0:
        raise InfraError(f"unpacking the driver in the guest failed: {r.stderr.strip()[-300:]}")
    make = f"make -C /lib/modules/$(uname -r)/build M={q_dest}"
    r = guest.run(f"{make} 2>&1", "build", BUILD_CAP_S)
    ko = f"{dest}/{name}.ko"
    built = guest.run(f"test -f {shlex.quote(ko)}", "build").rc == 0
    ok = r.rc == 0 and built
    log = f"$ {make}\n{r.stdout}{r.stderr}"
    if r.rc == 0 and not built:
        log += f"\nrig: make succeeded but {name}.ko was not produced\n"
    local: Path | None = None
    if ok:
        local = workdir / f"{name}.ko"
        guest.get(ko, local, "build")
    warnings = sum(1 for line in log.splitlines() if "warning:" in line.lower())
    return ModuleBuild(name=name, ok=ok, log=log, ko=local, warnings=warnings)


def agent_tarball(plan: VmCellPlan, ko: Path) -> bytes:
    """The agent's directory (guests/agent/rig-agent, its plan, the module), as a tar."""
    with tempfile.TemporaryDirectory(prefix="rig-agent-", dir=plan.workdir) as tmp:
        root = Path(tmp)
        write_plan(
            root,
            [(ko, plan.repeat, plan.module_params)],
            run_id=plan.run_id,
            cell_id=plan.cell_id,
        )
        if plan.witness:  # the same witness as the initramfs guest's (the VM's own kernel)
            (root / "witness").mkdir()
            for path in plan.witness:
                shutil.copy2(path, root / "witness" / path.name)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(str(root), arcname=".")
        return buf.getvalue()


def run_agent(guest: Session, plan: VmCellPlan, ko: Path, out: IO[str]) -> None:
    """The guest agent over SSH, its protocol streamed into `out` as it comes.

    The same script as the initramfs guest's (guests/agent/rig-agent): the kernel's lines go
    to the VM's serial console, the protocol to the SSH session. Raises GuestLost when the
    guest stops answering (the cell timeout bounds the test, from RIG-BEGIN to RIG-END).
    """
    agent = f"{GUEST_DIR}/agent"
    q_agent = shlex.quote(agent)
    guest.run(f"rm -rf {q_agent} && mkdir -p {q_agent}", "copy")
    guest.put(agent_tarball(plan, ko), f"{agent}.tar", "copy")
    r = guest.run(f"tar -m -C {q_agent} -xf {q_agent}.tar", "copy")
    if r.rc != 0:
        raise InfraError(f"unpacking the agent in the guest failed: {r.stderr.strip()[-300:]}")
    # as the initramfs /init does: boot noise out of the kernel log, quiet console
    command = f"dmesg -n 4; dmesg -c >/dev/null; exec sh {q_agent}/rig-agent {q_agent}"
    guest.stream(command, "test", plan.timeout_s, out)


# --------------------------------------------------------------------------- the cell
def _tail_of(dom: Domain) -> str:
    text = dom.console.read_text(errors="replace") if dom.console.exists() else ""
    return tail(text.replace("\r", ""), 30)


@contextlib.contextmanager
def started_domain(
    backend: DomainLane, spec: BootSpec, overlay: Path, seed: Path, deadline: float
) -> Iterator[tuple[Domain, int]]:
    """The running domain and its forwarded SSH port (another port if QEMU lost the race)."""
    why = ""
    for _ in range(PORT_ATTEMPTS):
        port = free_port()
        devices = vm_devices(overlay, seed, port)
        with backend.running(spec, vm=devices, extra_s=CHILD_EXTRA_S) as dom:
            while not dom.started() and not dom.ended() and time.monotonic() < deadline:
                time.sleep(0.1)
            if not dom.started():
                if not dom.ended():
                    raise InfraError("the VM did not start before its boot deadline")
                res = dom.result()
                if port_collision(res):
                    why = res.detail
                    continue
                raise InfraError(f"the VM did not start: {res.detail}\n{tail(res.emulator_log)}")
            yield dom, port
            return
    raise InfraError(f"no free loopback port for the VM's sshd after {PORT_ATTEMPTS} tries: {why}")


def run_vm_cell(
    plan: VmCellPlan,
    image: VmImage,
    backend: DomainLane,
    *,
    progress: Progress | None = None,
) -> VmCellResult:
    """Boot, build, test and power off one VM. Infrastructure trouble raises InfraError."""
    say = progress or (lambda _msg: None)
    name = module_name(plan.driver)
    for p in plan.module_params:
        check_param(p)
    if not 1 <= plan.repeat <= 1000:
        raise UsageError("repeat takes 1 to 1000")
    wd = plan.workdir
    timings: dict[str, float] = {}
    t_start = time.monotonic()
    if not 0 < plan.boot_to_ssh_s <= BOOT_TO_SSH_CAP_S:
        raise UsageError(f"boot_to_ssh_s takes 0 to {BOOT_TO_SSH_CAP_S:.0f} s")
    boot_deadline = t_start + plan.boot_to_ssh_s
    spec = BootSpec(
        image=GuestImage(kernel=image.kernel, initrd=image.initrd, cmdline=image.cmdline),
        cpu_model=plan.cpu_model,
        memory_mib=plan.memory_mib,
        vcpus=plan.vcpus,
        timeout_s=plan.timeout_s,
        workdir=wd,
    )
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(scratch_dir(wd / SCRATCH_DIR))
        key = stack.enter_context(cell_key(scratch))
        hostkey = stack.enter_context(host_key(scratch))
        seed = stack.enter_context(seed_disk(scratch, key.public, hostkey.private))
        overlay = stack.enter_context(overlay_disk(image.disk, scratch))
        t0 = time.monotonic()
        dom, port = stack.enter_context(started_domain(backend, spec, overlay, seed, boot_deadline))
        say(f"{plan.cell_id}: VM started, sshd forwarded to 127.0.0.1:{port}")
        banner = wait_for_banner(port, dom, boot_deadline)
        if banner is None:
            state = "the domain ended" if dom.ended() else "the guest still runs"
            raise InfraError(
                f"the guest's sshd did not answer on 127.0.0.1:{port} within "
                f"{plan.boot_to_ssh_s:.0f} s ({state}); serial console tail:\n{_tail_of(dom)}"
            )
        guest = stack.enter_context(
            ssh_session(port, key.private, hostkey.public, time.monotonic() + CONNECT_CAP_S)
        )
        timings["boot_to_ssh"] = time.monotonic() - t0
        say(f"{plan.cell_id}: SSH up after {timings['boot_to_ssh']:.0f} s ({banner})")

        t0 = time.monotonic()
        guest.deadline = t0 + BUILD_CAP_S + 4 * QUICK_CAP_S
        try:
            build = build_in_guest(guest, plan.driver, name, wd)
        except GuestLost as gone:
            raise InfraError(
                f"the guest stopped answering while building the driver ({gone}); "
                f"serial console tail:\n{_tail_of(dom)}"
            ) from gone
        timings["compile"] = time.monotonic() - t0
        (wd / "build.log").write_text(build.log)
        say(f"{plan.cell_id}: build {'ok' if build.ok else 'FAILED'} in {timings['compile']:.0f} s")

        lost: GuestLost | None = None
        agent_file = wd / AGENT_FILE
        if build.ok and build.ko is not None:
            t0 = time.monotonic()
            guest.deadline = t0 + plan.timeout_s + 4 * QUICK_CAP_S
            with agent_file.open("w") as fh:
                out = cast("IO[str]", CappedText(fh, CHANNEL_CAP))  # a text stream, as fh is
                try:
                    run_agent(guest, plan, build.ko, out)
                except GuestLost as exc:
                    lost = exc
            timings["load"] = time.monotonic() - t0
        t0 = time.monotonic()
        guest.deadline = t0 + QUICK_CAP_S
        end, detail = finish_vm(dom, guest, lost)
        if agent_file.exists() and agent_file.stat().st_size >= CHANNEL_CAP:
            end = BootEnd.FLOOD
            detail = f"the guest wrote more than {CHANNEL_CAP // 2**20} MiB on {AGENT_FILE}"
        timings["poweroff"] = time.monotonic() - t0
        emulator_log = ""
        with contextlib.suppress(InfraError):
            emulator_log = dom.result().emulator_log
    timings["vm_total"] = time.monotonic() - t_start
    if not build.ok:
        return VmCellResult(build, None, timings)
    boot = BootResult(
        console=read_text(wd / CONSOLE_FILE),
        agent=read_text(agent_file),
        end=end,
        duration_s=time.monotonic() - t_start,
        emulator_log=emulator_log,
        detail=detail,
    )
    return VmCellResult(build, boot, timings)


class CappedText(io.TextIOBase):
    """The agent's SSH stream into its channel file, kept to `cap` characters: what a guest
    sends past them is dropped (the cell is then a FLOOD, an infrastructure error)."""

    def __init__(self, out: IO[str], cap: int) -> None:
        self.out, self.left = out, cap

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.left > 0:
            self.out.write(text[: self.left])
            self.left -= min(len(text), self.left)
        return len(text)

    def flush(self) -> None:
        self.out.flush()


def finish_vm(dom: Domain, guest: Commands, lost: GuestLost | None) -> tuple[BootEnd, str]:
    """End the VM and say how: power it off (tests done), or judge why the guest went away."""
    if lost is None:
        with contextlib.suppress(GuestLost):
            guest.run("systemctl --no-block poweroff", "poweroff", 15)
        guest.close()
        if dom.wait(POWEROFF_WAIT_S):
            res = dom.result()
            return res.end, res.detail
        dom.stop()
        dom.wait(30)
        return BootEnd.TIMEOUT, (
            f"the guest did not power off within {POWEROFF_WAIT_S:.0f} s after the test; "
            "domain destroyed"
        )
    # The guest went away during a step. A panic (panic=-1 reboots, the domain is destroyed on
    # reboot) ends the domain by itself within moments; give it that time.
    dom.wait(PANIC_GRACE_S + 3)
    if dom.ended():
        res = dom.result()
        end = res.end if res.end is not BootEnd.POWEROFF else BootEnd.EMULATOR
        return end, f"during {lost.step}: {lost.why}; {res.detail}"
    console = dom.console.read_text(errors="replace") if dom.console.exists() else ""
    dom.stop()
    dom.wait(30)
    m = PANIC_RE.search(console)
    if m:
        line = console[m.start() : console.find("\n", m.start())].strip()
        return BootEnd.PANIC, f"during {lost.step}: {lost.why}; guest panicked: {line}"
    what = "timed out" if lost.timed_out else "lost"
    return BootEnd.TIMEOUT, (
        f"during {lost.step}: SSH {what} ({lost.why}) while the guest still ran; domain destroyed"
    )
