"""Full-VM guests (`--guest vm`): a disposable Debian VM per cell, driven over SSH.

    run_vm_cell(plan, image, backend) -> VmCellResult(build, boot, timings)

One cell: a qcow2 overlay of the cached image (rig.vmimage), a fresh ed25519 key and a seed
disk carrying its public half, a transient libvirt domain booted from the image's own kernel
and initrd (the existing libvirt child: private mount namespace, embedded-driver slot pool,
/dev/kvm hidden when unusable) with QEMU user networking forwarding a free loopback port to
the guest's sshd. Over SSH (fabric) the driver is copied in and compiled against the guest's
own headers (that is the `build` stage), then loaded and unloaded `repeat` times exactly as the
initramfs appliance does (guests/initramfs/init). Finally `poweroff`, wait for the domain to
end (destroy it after POWEROFF_WAIT_S), and delete overlay, seed disk and key (all in the
cell's `vm/` scratch directory).

The guest's answers are written as a console transcript in the protocol of docs/contract.md
(RIG-BEGIN ... RIG-END), interleaved with what the serial console showed meanwhile (boot log
before RIG-BEGIN; the live kernel lines of each step before its RIG-STEP line; the poweroff
after RIG-END), so rig.verdict.judge reads it like an initramfs guest's console. A guest that
stops answering (every SSH command has a timeout) ends the transcript where it stopped, with
the serial console since then appended; BootEnd says why: PANIC (the console shows a panic,
or the domain died with one), TIMEOUT (the guest still runs but does not answer), EMULATOR (the
domain ended otherwise).
"""

from __future__ import annotations

import contextlib
import io
import shlex
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig.artifacts import _PARAM_RE, _module_name
from rig.errors import InfraError, ToolMissing, UsageError
from rig.lanes.base import PANIC_GRACE_S, PANIC_RE, tail
from rig.lanes.libvirt import Disk, LibvirtBackend, LiveDomain, VmDevices
from rig.model import BootEnd, BootResult, BootSpec, GuestImage, ModuleBuild
from rig.vmimage import VmImage

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
QUICK_CAP_S = 30.0  # everything else
POWEROFF_WAIT_S = 60.0
# The libvirt child destroys the domain by itself after all of the above (if we hang).
CHILD_EXTRA_S = BOOT_TO_SSH_CAP_S + CONNECT_CAP_S + BUILD_CAP_S + POWEROFF_WAIT_S + 60.0
SERIAL_SETTLE_S = 0.15

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


@dataclass(frozen=True)
class VmCellResult:
    build: ModuleBuild | None  # None: the guest never got as far as the compile
    boot: BootResult | None  # None: nothing was loaded (the module did not build)
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- owned resources
SCRATCH_DIR = "vm"  # under the cell's workdir: overlay, seed disk, key; removed after the VM


@contextlib.contextmanager
def scratch_dir(path: Path) -> Iterator[Path]:
    """The VM's scratch directory (one name for a sweeper to find after a kill -9)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: str


@contextlib.contextmanager
def cell_key(workdir: Path) -> Iterator[KeyPair]:
    """A fresh ed25519 key for this cell only (no passphrase); both halves deleted on exit."""
    private = workdir / "id_ed25519"
    public = workdir / "id_ed25519.pub"
    for f in (private, public):
        f.unlink(missing_ok=True)
    try:
        _check(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rig-cell",
             "-f", str(private)],
            "ssh-keygen", "openssh-client",
        )  # fmt: skip
        yield KeyPair(private, public.read_text().strip())
    finally:
        private.unlink(missing_ok=True)
        public.unlink(missing_ok=True)


@contextlib.contextmanager
def seed_disk(workdir: Path, public_key: str) -> Iterator[Path]:
    """A tiny raw ext4 disk (label `rigseed`) holding authorized_keys; deleted on exit.

    The image's rig-seed.service installs it for root before sshd starts (guests/vm/rig-seed).
    """
    if "\n" in public_key or not public_key.startswith("ssh-ed25519 "):
        raise InfraError(f"not an ed25519 public key: {public_key[:40]!r}")
    staging = workdir / "seed"
    image = workdir / "seed.img"
    shutil.rmtree(staging, ignore_errors=True)
    image.unlink(missing_ok=True)
    try:
        staging.mkdir()
        (staging / "authorized_keys").write_text(public_key + "\n")
        _check(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", "rigseed",
             "-d", str(staging), str(image), "2M"],
            "mke2fs", "e2fsprogs",
        )  # fmt: skip
        shutil.rmtree(staging)
        yield image
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        image.unlink(missing_ok=True)


@contextlib.contextmanager
def overlay_disk(base: Path, workdir: Path) -> Iterator[Path]:
    """A qcow2 overlay of the cached image for one VM; deleted on exit."""
    overlay = workdir / "overlay.qcow2"
    overlay.unlink(missing_ok=True)
    try:
        _check(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
             str(overlay)],
            "qemu-img", "qemu-utils",
        )  # fmt: skip
        yield overlay
    finally:
        overlay.unlink(missing_ok=True)


def _check(argv: Sequence[str], tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise ToolMissing(tool, package, "full-VM guests")
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise InfraError(f"{tool} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")


# --------------------------------------------------------------------------- networking
def free_port() -> int:
    """A loopback port that was free a moment ago (QEMU binds it; a collision is retried)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def vm_devices(overlay: Path, seed: Path, port: int) -> VmDevices:
    """Root overlay (vda), seed disk (vdb), and user networking with sshd forwarded."""
    return VmDevices(
        disks=(
            Disk(overlay, "qcow2", "vda"),
            Disk(seed, "raw", "vdb", readonly=True),
        ),
        qemu_args=(
            "-netdev",
            f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device",
            # a fixed high slot: QEMU would otherwise take slot 2 before libvirt's disks
            "virtio-net-pci,netdev=n0,bus=pci.0,addr=0x1e",
        ),
    )


def _port_collision(result: BootResult) -> bool:
    text = f"{result.detail}\n{result.emulator_log}"
    return "host forwarding" in text or "Address already in use" in text


def ssh_banner(port: int, timeout_s: float = 3.0) -> str | None:
    """The first line sshd sends, or None (QEMU accepts TCP long before the guest's sshd)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            data = s.recv(256)
    except OSError:
        return None
    line = data.split(b"\n", 1)[0].decode(errors="replace").strip()
    return line if line.startswith("SSH-") else None


def wait_for_banner(port: int, dom: LiveDomain, deadline: float) -> str | None:
    while time.monotonic() < deadline and not dom.ended():
        banner = ssh_banner(port)
        if banner is not None:
            return banner
        time.sleep(1.0)
    return None


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


# --------------------------------------------------------------------------- transcript
@dataclass
class SerialFollower:
    """Reads the serial console file (written by QEMU) from where it last stopped."""

    path: Path
    offset: int = 0

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def take(self, *, final: bool = False, max_wait_s: float = 2.0) -> list[str]:
        """Complete lines written since the last take, once the console has gone quiet."""
        size, stop = -1, time.monotonic() + max_wait_s
        while True:
            now_size = self._size()
            if now_size == size or time.monotonic() >= stop:
                break
            size = now_size
            time.sleep(SERIAL_SETTLE_S)
        if not self.path.exists():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        cut = len(data) if final else data.rfind(b"\n") + 1
        self.offset += cut
        text = data[:cut].decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return lines


@dataclass
class Transcript:
    """The console the verdict reads: protocol lines plus the serial console, in order."""

    serial: SerialFollower
    lines: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def add_output(self, text: str) -> None:
        self.lines.extend(line for line in text.replace("\r", "").split("\n") if line.strip())

    def take_serial(self, *, final: bool = False) -> None:
        self.lines.extend(self.serial.take(final=final))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# --------------------------------------------------------------------------- guest steps
def driver_tarball(src: Path) -> bytes:
    """The driver sources (no build products, no dot-files) as an uncompressed tar."""
    skip_suffixes = {".o", ".ko", ".mod", ".cmd", ".symvers", ".order", ".a"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            rel = path.relative_to(src)
            if (
                path.suffix in skip_suffixes
                or ".mod." in rel.name
                or any(part.startswith(".") for part in rel.parts)
            ):
                continue
            info = tar.gettarinfo(str(path), arcname=str(rel))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def build_in_guest(guest: Guest, driver: Path, name: str, workdir: Path) -> ModuleBuild:
    """Copy the driver in and compile it against the guest's own kernel headers."""
    dest = f"{GUEST_DIR}/driver"
    q_dest = shlex.quote(dest)
    guest.run(f"rm -rf {shlex.quote(GUEST_DIR)} && mkdir -p {q_dest}", "copy")
    guest.put(driver_tarball(driver), f"{GUEST_DIR}/driver.tar", "copy")
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


PREPARE = (
    "dmesg -n 4; dmesg -c >/dev/null; "
    'echo "kernel=$(uname -r)"; '
    "if grep -qw vmx /proc/cpuinfo; then echo vmx=1; else echo vmx=0; fi; "
    'echo "cpus=$(grep -c ^processor /proc/cpuinfo)"; '
    "echo \"model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)\""
)


def _kv(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _step(guest: Guest, t: Transcript, step: str, command: str) -> None:
    """One driver step (insmod, rmmod): its kernel lines, its output, its RIG-STEP line."""
    r = guest.run(command, step, STEP_CAP_S)
    t.take_serial()
    t.add_output(r.stdout + r.stderr)
    t.add(f"RIG-STEP {step} rc={r.rc}")


def exercise_in_guest(guest: Guest, t: Transcript, plan: VmCellPlan, name: str, ko: str) -> None:
    """The initramfs appliance's sequence (guests/initramfs/init), one SSH command a step."""
    info = _kv(guest.run(PREPARE, "prepare").stdout)
    t.take_serial()  # boot log and anything since: before RIG-BEGIN, never judged
    model = "_".join(info.get("model", "").split())
    t.add(
        f"RIG-BEGIN run={plan.run_id} cell={plan.cell_id} kernel={info.get('kernel', '?')}",
        f"RIG-CPU vmx={info.get('vmx', '0')} cpus={info.get('cpus', '?')} model={model}",
    )
    params = " ".join(shlex.quote(p) for p in plan.module_params)
    q_name, q_ko = shlex.quote(name), shlex.quote(ko)
    for n in range(plan.repeat):  # one module per VM: run number n is iteration n
        t.add(f"RIG-RUN {n} module={name} iter={n}")
        # From here on kernel lines go to the serial console as well (see the init).
        _step(
            guest, t, "insmod",
            f"dmesg -n 8; echo 'rig: run={n} step=insmod' > /dev/kmsg; exec insmod {q_ko} {params}",
        )  # fmt: skip
        r = guest.run(
            f"cd /sys/kernel/{q_name} 2>/dev/null || exit 0; "
            'for f in *; do [ -f "$f" ] && sed "s/^/RIG-SYSFS $f: /" "$f"; done; true',
            "sysfs",
            STEP_CAP_S,
        )
        t.take_serial()
        t.add(*(ln for ln in r.stdout.splitlines() if ln.startswith("RIG-SYSFS ")))
        loaded = guest.run(f"grep -q '^{name} ' /proc/modules", "lsmod").rc == 0
        if loaded:
            _step(
                guest,
                t,
                "rmmod",
                f"echo 'rig: run={n} step=rmmod' > /dev/kmsg; exec rmmod {q_name}",
            )
        else:
            t.add("RIG-STEP rmmod rc=none")
        mem = guest.run("grep MemFree /proc/meminfo", "meminfo").stdout.split()
        t.add(f"RIG-MEM free_kb={mem[1] if len(mem) > 1 else '?'}")
        dump = guest.run("dmesg -n 4; dmesg -c", "dmesg")
        t.take_serial()
        t.add("RIG-DMESG-BEGIN", *dump.stdout.splitlines(), "RIG-DMESG-END")
    t.add("RIG-END")


# --------------------------------------------------------------------------- the cell
def _tail_of(dom: LiveDomain) -> str:
    text = dom.console.read_text(errors="replace") if dom.console.exists() else ""
    return tail(text.replace("\r", ""), 30)


@contextlib.contextmanager
def _started_domain(
    backend: LibvirtBackend, spec: BootSpec, overlay: Path, seed: Path, deadline: float
) -> Iterator[tuple[LiveDomain, int]]:
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
                if _port_collision(res):
                    why = res.detail
                    continue
                raise InfraError(f"the VM did not start: {res.detail}\n{tail(res.emulator_log)}")
            yield dom, port
            return
    raise InfraError(f"no free loopback port for the VM's sshd after {PORT_ATTEMPTS} tries: {why}")


def run_vm_cell(
    plan: VmCellPlan,
    image: VmImage,
    backend: LibvirtBackend,
    *,
    progress: Progress | None = None,
) -> VmCellResult:
    """Boot, build, test and power off one VM. Infrastructure trouble raises InfraError."""
    say = progress or (lambda _msg: None)
    name = _module_name(plan.driver)
    for p in plan.module_params:
        if not _PARAM_RE.match(p):
            raise UsageError(f"module parameter {p!r} is not of the form name=value")
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
        seed = stack.enter_context(seed_disk(scratch, key.public))
        overlay = stack.enter_context(overlay_disk(image.disk, scratch))
        t0 = time.monotonic()
        dom, port = stack.enter_context(
            _started_domain(backend, spec, overlay, seed, boot_deadline)
        )
        say(f"{plan.cell_id}: VM started, sshd forwarded to 127.0.0.1:{port}")
        banner = wait_for_banner(port, dom, boot_deadline)
        if banner is None:
            state = "the domain ended" if dom.ended() else "the guest still runs"
            raise InfraError(
                f"the guest's sshd did not answer on 127.0.0.1:{port} within "
                f"{plan.boot_to_ssh_s:.0f} s ({state}); serial console tail:\n{_tail_of(dom)}"
            )
        guest = stack.enter_context(
            ssh_session(port, key.private, time.monotonic() + CONNECT_CAP_S)
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

        transcript = Transcript(SerialFollower(dom.console))
        lost: GuestLost | None = None
        if build.ok:
            t0 = time.monotonic()
            guest.deadline = t0 + plan.timeout_s
            try:
                exercise_in_guest(guest, transcript, plan, name, f"{GUEST_DIR}/driver/{name}.ko")
            except GuestLost as exc:
                lost = exc
            timings["load"] = time.monotonic() - t0
        t0 = time.monotonic()
        guest.deadline = t0 + QUICK_CAP_S
        end, detail = _finish(dom, guest, lost)
        timings["poweroff"] = time.monotonic() - t0
        transcript.take_serial(final=True)
        emulator_log = ""
        with contextlib.suppress(InfraError):
            emulator_log = dom.result().emulator_log
    timings["vm_total"] = time.monotonic() - t_start
    if not build.ok:
        return VmCellResult(build, None, timings)
    console = transcript.text()
    (wd / "transcript.txt").write_text(console)
    boot = BootResult(
        console=console,
        end=end,
        duration_s=time.monotonic() - t_start,
        emulator_log=emulator_log,
        detail=detail,
    )
    return VmCellResult(build, boot, timings)


def _finish(dom: LiveDomain, guest: Guest, lost: GuestLost | None) -> tuple[BootEnd, str]:
    """End the VM and say how: power it off (tests done), or judge why the guest went away."""
    if lost is None:
        with contextlib.suppress(GuestLost):
            guest.run("systemctl --no-block poweroff", "poweroff", 15)
        with contextlib.suppress(Exception):
            guest.conn.close()
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
