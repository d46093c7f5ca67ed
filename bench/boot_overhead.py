"""The rig's overhead over bare emulator boots of the same kernel + initramfs + driver.

Each comparison is a benchmark of its own, in alternating pairs (bench/pairs.py):
  boot-overhead-tcg    A = bare QEMU (TCG, -kernel/-initrd, two serial files, no libvirt)
                       B = the rig's tcg lane (embedded libvirt, console watcher)
  boot-overhead-bochs  A = bare Bochs (the same ISO and bochsrc as the lane, run directly)
                       B = the rig's bochs lane (it makes its ISO, runs and watches Bochs)
  boot-overhead-vng    A = the rig's tcg lane, B = virtme-ng `vng --run KERNEL --disable-kvm
                       --verbose --exec true` (no driver), when vng is installed: checked by
                       its init's `script exited with code 0` line (a Debian kernel's
                       virtio_console is a module vng cannot load from its host, so vng's own
                       exit status is 255 whatever the script did; its console still says)

Every boot is checked: the guest must power off and the rig's judge, given what the guest
printed (console and agent channel, bare boots included), must find the cell's expected
verdicts (bochs: all five stages PASSED; tcg: build and teardown PASSED, the driver's
no_vmx decline SKIPPED). One failed boot or wrong verdict fails the benchmark (exit status 1,
no numbers). Timed: the boot only, from start to the emulator's exit (bare) or to the lane's
return (rig). The kernel and driver are fetched and built before anything is timed; the
warmup run of each arm warms the page cache and libvirt's embedded pool.

    .venv/bin/python bench/boot_overhead.py [--kernel 6.12] [--lanes tcg bochs] [--pairs 5]

Writes bench/results/boot-overhead-*.json and prints the rows of docs/benchmarks.md's table.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a script: `bench` from the checkout

from bench.checks import expected_stages, verdict_problems
from bench.cli import add_pair_options
from bench.pairs import REPO, Arm, CallArm, Proc, Runner, run_pairs
from bench.results import finish
from rig.artifacts import Artifacts, Cache, default_cache_root
from rig.guest.initramfs import initramfs_image
from rig.lanes import backend_for
from rig.lanes.base import AGENT_FILE, CONSOLE_FILE, POWEROFF_RE, read_text
from rig.lanes.bochs import bochsrc
from rig.lanes.bochs_media import boot_iso
from rig.matrix import load_matrix
from rig.model import BootEnd, BootResult, BootSpec, Cell, GuestImage, ModuleBuild
from rig.verdict import judge

CPUS = {"tcg": "penryn", "bochs": "haswell"}  # the default slice's cells of each lane
CELL_DIR = Path("runs/bench/cells")  # a run's layout under each run's own directory


@dataclass(frozen=True)
class Boot:
    result: BootResult
    returncode: int | None = None  # a bare emulator's exit status (None: a rig lane)


@dataclass(frozen=True)
class Setup:
    cell: Cell
    build: ModuleBuild
    image: GuestImage
    iso: Path | None  # bare Bochs boots the ISO made here, untimed
    cache: Path

    def spec(self, workdir: Path) -> BootSpec:
        model = self.cell.cpu_model
        assert model is not None
        return BootSpec(
            image=self.image,
            cpu_model=model,
            memory_mib=self.cell.memory_mib,
            vcpus=self.cell.vcpus,
            timeout_s=self.cell.timeout_s,
            workdir=workdir,
        )

    def check(self, boot: Boot, workdir: Path) -> str | None:
        """Powered off, exit status 0 (bare QEMU), and the judge's verdicts as expected."""
        problems: list[str] = []
        if boot.returncode not in (None, 0):
            problems.append(f"exit status {boot.returncode}")
        if boot.result.end is not BootEnd.POWEROFF:
            problems.append(
                f"the guest did not power off ({boot.result.end.value}: {boot.result.detail})"
            )
        verdict = judge(self.cell, self.build, boot.result)
        got = {verdict.cell_id: {s: (v.outcome.value, v.reason) for s, v in verdict.stages.items()}}
        problems += verdict_problems(got, {self.cell.id: expected_stages(self.cell.lane.vmx)})
        return "; ".join(problems) or None


def cell_workdir(workdir: Path, cell: Cell) -> Path:
    wd = workdir / CELL_DIR / cell.id
    wd.mkdir(parents=True, exist_ok=True)
    return wd


def bare_result(wd: Path, seconds: float, powered_off: bool, detail: str) -> BootResult:
    return BootResult(
        console=read_text(wd / CONSOLE_FILE),
        agent=read_text(wd / AGENT_FILE),
        end=BootEnd.POWEROFF if powered_off else BootEnd.EMULATOR,
        duration_s=seconds,
        detail=detail,
    )


def bare_qemu(s: Setup) -> CallArm[Boot]:
    def call(workdir: Path) -> Boot:
        wd = cell_workdir(workdir, s.cell)
        argv = [
            "qemu-system-x86_64",
            "-machine",
            "pc,accel=tcg",
            "-cpu",
            s.spec(wd).cpu_model,
            "-m",
            str(s.cell.memory_mib),
            "-smp",
            str(s.cell.vcpus),
            "-kernel",
            str(s.image.kernel),
            "-initrd",
            str(s.image.initrd),
            "-append",
            s.image.cmdline,
            "-display",
            "none",
            "-serial",
            f"file:{wd / CONSOLE_FILE}",
            "-serial",
            f"file:{wd / AGENT_FILE}",
            "-no-reboot",
            "-nodefaults",
        ]
        p = subprocess.run(
            argv,
            cwd=wd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=s.cell.timeout_s + 120,
            check=False,
        )
        off = p.returncode == 0 and POWEROFF_RE.search(read_text(wd / CONSOLE_FILE)) is not None
        said = p.stderr.decode(errors="replace").strip()[-300:]
        return Boot(
            bare_result(wd, 0.0, off, f"qemu exit status {p.returncode} {said}"), p.returncode
        )

    return CallArm("bare QEMU TCG", call, s.check, note="qemu-system-x86_64 -kernel/-initrd")


def bare_bochs(s: Setup) -> CallArm[Boot]:
    assert s.iso is not None
    iso = s.iso

    def prepare(workdir: Path) -> None:  # untimed: two small files
        wd = cell_workdir(workdir, s.cell)
        rc = bochsrc(s.spec(wd), iso, wd / CONSOLE_FILE, wd / AGENT_FILE, wd / "bochs.log")
        (wd / "bochsrc").write_text(rc)
        (wd / "bochs.rc").write_text("c\n")

    def call(workdir: Path) -> Boot:
        wd = cell_workdir(workdir, s.cell)
        argv = [
            "unshare",
            "--net",
            "--",
            "bochs-bin",
            "-q",
            "-f",
            str(wd / "bochsrc"),
            "-rc",
            str(wd / "bochs.rc"),
        ]
        with (wd / "bochs.out").open("wb") as out:
            p = subprocess.run(
                argv,
                cwd=wd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=s.cell.timeout_s + 120,
                check=False,
            )
        log = read_text(wd / "bochs.log")
        off = POWEROFF_RE.search(read_text(wd / CONSOLE_FILE)) is not None
        off = off or "soft power off" in log  # as the lane reads it
        return Boot(bare_result(wd, 0.0, off, f"bochs exit status {p.returncode}"))

    return CallArm("bare Bochs", call, s.check, prepare=prepare, note="bochs-bin, lane's bochsrc")


def rig_lane(s: Setup) -> CallArm[Boot]:
    backend = backend_for(s.cell.lane, embed_pool=s.cache / "libvirt-embed")

    def call(workdir: Path) -> Boot:
        return Boot(backend.boot(s.spec(cell_workdir(workdir, s.cell))))

    return CallArm(
        f"rig {s.cell.lane.name} lane", call, s.check, note=f"{type(backend).__name__}.boot"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--kernel", default="6.12")
    ap.add_argument("--driver", type=Path, default=REPO / "driver")
    ap.add_argument("--lanes", nargs="+", choices=sorted(CPUS), default=["tcg", "bochs"])
    ap.add_argument("--no-vng", action="store_true", help="leave virtme-ng out when installed")
    add_pair_options(ap)
    args = ap.parse_args()
    matrix = load_matrix(REPO / "matrix.yaml")
    cache = default_cache_root()
    arts = Artifacts(Cache(cache))
    kernel = arts.kernel(matrix.kernels[args.kernel])  # fetched and built before any timing
    build = arts.module(kernel, args.driver)
    if not build.ok or build.ko is None:
        print(f"BENCHMARK FAILED: the driver did not build against {args.kernel}:")
        print(build.log[-2000:])
        return 1
    comparisons: list[tuple[str, Runner, Runner]] = []
    with tempfile.TemporaryDirectory(prefix="bench-boot-", dir="/var/tmp") as tmp:
        for lane in args.lanes:
            cell = matrix.select([lane], [args.kernel], [CPUS[lane]])[0]
            why = cell.skip_reason or (None if cell.cpu_model else f"no {lane} model")
            why = why or backend_for(cell.lane, embed_pool=cache / "libvirt-embed").unavailable()
            if why is not None:
                print(f"BENCHMARK FAILED: {cell.id} cannot run here: {why} (--lanes to choose)")
                return 1
            wd = cell_workdir(Path(tmp), cell)
            image = initramfs_image(
                kernel, [(build.ko, 1, ())], run_id="bench", cell_id=cell.id, workdir=wd
            )
            iso = boot_iso(image, wd) if lane == "bochs" else None
            s = Setup(cell, build, image, iso, cache)
            if lane == "tcg":
                comparisons.append(("boot-overhead-tcg", bare_qemu(s), rig_lane(s)))
                vng = shutil.which("vng")
                if vng and not args.no_vng:
                    # the package's own vmlinuz (the same bytes as the rig's copy), where vng
                    # finds the kernel's modules beside it (../lib/modules: 9p, virtio)
                    packaged = sorted((kernel.vmlinuz.parent / "root/boot").glob("vmlinuz-*"))
                    run = packaged[0] if packaged else image.kernel
                    command = [vng, "--run", str(run), "--disable-kvm", "--verbose",
                               "--exec", "true"]  # fmt: skip
                    vng_arm = Arm("virtme-ng (no driver)", command, cwd=wd, check=vng_ran)
                    comparisons.append(("boot-overhead-vng", rig_lane(s), vng_arm))
            else:
                comparisons.append(("boot-overhead-bochs", bare_bochs(s), rig_lane(s)))
        for name, a, b in comparisons:
            print(f"== {name}: A = {a.name}, B = {b.name} (kernel {args.kernel})")
            result = run_pairs(a, b, args.pairs, args.warmup, keep=args.keep)
            extra = {"kernel": args.kernel, "ratio": f"B/A: {b.name} over {a.name}"}
            if finish(name, result, extra=extra, out_dir=args.results) != 0:
                return 1  # a failed run fails the benchmark: the rest is not run
    return 0


def vng_ran(proc: Proc, _workdir: Path) -> str | None:
    """virtme-ng's run is good when its init says the script exited with code 0 and the
    guest powered off (its exit status cannot say: see the module's docstring)."""
    said = (proc.stdout or "") + (proc.stderr or "")
    if "virtme-ng-init: script exited with code 0" in said and "reboot: Power down" in said:
        return None
    return f"virtme-ng: no `script exited with code 0` (exit status {proc.returncode})"


if __name__ == "__main__":
    sys.exit(main())
