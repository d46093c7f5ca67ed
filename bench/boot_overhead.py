"""The rig's overhead over bare emulator boots of the same kernel + initramfs.

Measures, for kernel 6.12 and one module load/unload cycle:
  - bare QEMU (TCG, -kernel/-initrd, no libvirt) to poweroff
  - the rig's tcg lane (embedded libvirt, console watcher) to poweroff
  - bare Bochs (same ISO, same bochsrc) to poweroff
  - the rig's bochs lane to poweroff
  - virtme-ng (`vng --run`), when installed, for comparison with the published figures
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rig.artifacts import Artifacts, Cache, default_cache_root
from rig.guest.initramfs import initramfs_image
from rig.lanes.bochs import BochsBackend, bochsrc
from rig.lanes.bochs_media import boot_iso
from rig.lanes.libvirt import LibvirtBackend
from rig.matrix import load_matrix
from rig.model import BootSpec

REPO = Path(__file__).resolve().parents[1]


def timed(argv: list[str], cwd: Path, timeout: float = 900) -> float:
    t0 = time.monotonic()
    subprocess.run(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", default="6.12")
    ap.add_argument("--driver", type=Path, default=REPO / "driver")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/boot_overhead.json")
    args = ap.parse_args()
    matrix = load_matrix(REPO / "matrix.yaml")
    cache = default_cache_root()
    arts = Artifacts(Cache(cache))
    kernel = arts.kernel(matrix.kernels[args.kernel])
    build = arts.module(kernel, args.driver)
    assert build.ko is not None, build.log[-2000:]
    results: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            wd = Path(tmp) / "runs" / "bench" / "cells" / "c"
            wd.mkdir(parents=True)
            image = initramfs_image(
                kernel, [(build.ko, 1, ())], run_id="bench", cell_id="bench", workdir=wd
            )
            iso = boot_iso(image, wd)
            qemu = [
                "qemu-system-x86_64",
                "-machine",
                "pc,accel=tcg",
                "-cpu",
                "Penryn",
                "-m",
                "512",
                "-kernel",
                str(image.kernel),
                "-initrd",
                str(image.initrd),
                "-append",
                image.cmdline,
                "-display",
                "none",
                "-serial",
                f"file:{wd}/q.txt",
                "-no-reboot",
                "-nodefaults",
            ]
            results.setdefault("bare QEMU TCG", []).append(timed(qemu, wd))
            spec = BootSpec(
                image=image, cpu_model="Penryn", memory_mib=512, vcpus=1, timeout_s=600, workdir=wd
            )
            t0 = time.monotonic()
            LibvirtBackend(name="tcg", embed_pool=cache / "libvirt-embed").boot(spec)
            results.setdefault("rig tcg lane", []).append(time.monotonic() - t0)
            bspec = BootSpec(
                image=image,
                cpu_model="corei7_haswell_4770",
                memory_mib=512,
                vcpus=1,
                timeout_s=600,
                workdir=wd,
            )
            (wd / "bare.rc").write_text(
                bochsrc(bspec, iso, wd / "bare-console.txt", wd / "bare-agent.txt", wd / "bare.log")
            )
            (wd / "cont").write_text("c\n")
            results.setdefault("bare Bochs", []).append(
                timed(
                    [
                        "unshare",
                        "--net",
                        "--",
                        "bochs-bin",
                        "-q",
                        "-f",
                        str(wd / "bare.rc"),
                        "-rc",
                        str(wd / "cont"),
                    ],
                    wd,
                )
            )
            t0 = time.monotonic()
            BochsBackend().boot(bspec)
            results.setdefault("rig bochs lane", []).append(time.monotonic() - t0)
            if shutil.which("vng"):
                results.setdefault("virtme-ng vng --run (TCG)", []).append(
                    timed(
                        ["vng", "--run", str(image.kernel), "--disable-kvm", "--exec", "true"], wd
                    )
                )
    print(f"{'boot to poweroff, kernel ' + args.kernel:40} {'min s':>8} {'max s':>8}")
    for name, xs in results.items():
        print(f"{name:40} {min(xs):8.1f} {max(xs):8.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"results": results, "cores": os.cpu_count(), "loadavg": os.getloadavg()}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
