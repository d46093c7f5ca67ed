"""Bochs from a Debian release's own packages, run beside the host's (the judge's binary).

    bochs_release(cache, suite, mirror, progress) -> BochsRelease   cached, made on first use
    BochsRelease.argv / .env / .bios / .vgabios                     how to run it, its BIOS
    BochsRelease.models()                                           the CPU models it has

Debian 12's Bochs 2.7 is built with the debugger and instrumentation, which turns off handler
chaining and trace linking (configure.in forces speedup_handlers_chaining=0 with the debugger)
and calls the debugger's epilog after every instruction. Debian 13's Bochs 3.0 keeps the
debugger out of its CPU loop unless asked (`-debugger`). Measured on this project's machine, the
same boot ISO (Debian 6.12, haswell, the rig's own driver, to power-off): 49.6 s under 2.7,
26.5 s under 3.0, with the same driver lines (docs/benchmarks.md, `bochs-release`).

The release's packages go into a minimal debootstrap of its suite, cached by suite, mirror and
packages. Bochs runs from there without a chroot: the suite's own dynamic loader with the
suite's libraries (`ld-linux-x86-64.so.2 --library-path ... bochs-bin`), its plugins found
through LTDL_LIBRARY_PATH, and its BIOS images named by path in the bochsrc, so every file a
boot uses (ISO, console, log fifo) keeps its host path.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rig.artifacts.cache import Cache, Progress, digest
from rig.artifacts.steps import in_root, require_tool, run_step
from rig.errors import InfraError

DEBIAN_MIRROR = "http://deb.debian.org/debian"
BOCHS_PACKAGES: tuple[str, ...] = ("bochs", "bochs-term", "bochsbios", "vgabios")
"""Bochs, a display plugin package it depends on (bochs-gui), its BIOS and VGA BIOS."""
LIBS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")
MODELS_FILE = "cpu-models.txt"  # beside the root: what `bochs-bin --help cpu` listed
_MODEL = re.compile(r"[a-z0-9_]{1,40}")


@dataclass(frozen=True)
class BochsRelease:
    """A Debian release's Bochs, unpacked in `root` (a debootstrap of `suite`)."""

    root: Path
    suite: str

    @property
    def binary(self) -> Path:
        return self.root / "usr/bin/bochs-bin"

    @property
    def argv(self) -> list[str]:
        """The command that runs this Bochs on the host (arguments follow)."""
        libs = ":".join(str(self.root / d) for d in LIBS)
        loader = self.root / "lib64/ld-linux-x86-64.so.2"
        return [str(loader), "--library-path", libs, str(self.binary)]

    @property
    def env(self) -> dict[str, str]:
        return {"LTDL_LIBRARY_PATH": str(self.root / "usr/lib/x86_64-linux-gnu/bochs/plugins")}

    @property
    def bios(self) -> Path:
        return self.root / "usr/share/bochs/BIOS-bochs-latest"

    @property
    def vgabios(self) -> Path:
        return self.root / "usr/share/vgabios/vgabios.bin"

    def models(self) -> frozenset[str]:
        """The CPU models this Bochs has (3.0 dropped 2.7's configurable bx_generic)."""
        listed = self.root.parent / MODELS_FILE
        return frozenset(listed.read_text().split()) if listed.is_file() else frozenset()

    def files(self) -> list[Path]:
        """What a snapshot's key names: the binary, the loader, the BIOS images."""
        return [self.binary, self.root / "lib64/ld-linux-x86-64.so.2", self.bios, self.vgabios]


def bochs_release(cache: Cache, suite: str, mirror: str, progress: Progress) -> BochsRelease:
    """`suite`'s Bochs, in a cached minimal debootstrap of that suite."""
    key = digest("bochs-release", suite, mirror, BOCHS_PACKAGES, MODELS_FILE)
    with cache.building("emulators", f"bochs-{suite}-{key}") as (final, tmp):
        if tmp is not None:
            for tool in ("debootstrap", "unshare"):
                require_tool(tool)
            progress(f"Bochs of {suite}: debootstrap, then {', '.join(BOCHS_PACKAGES)} (~2 min)")
            root, log = tmp / "root", tmp / "build.log"
            run_step(
                ["unshare", "--mount", "--propagation", "private", "--fork", "--pid",
                 "--kill-child", "debootstrap", "--variant=minbase", suite, str(root), mirror],
                log=log, what=f"debootstrap {suite} (for its Bochs)",
                inner_log=root / "debootstrap" / "debootstrap.log",
            )  # fmt: skip
            # apt, not debootstrap's --include: bochs depends on GTK, whose dconf wants a
            # virtual package (dbus-session-bus) that debootstrap's resolver cannot choose
            if not (root / "etc/resolv.conf").exists():
                shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")
            env = {"DEBIAN_FRONTEND": "noninteractive"}
            for argv in (["apt-get", "update", "-q"],
                         ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                          *BOCHS_PACKAGES]):  # fmt: skip
                run_step(in_root(root, argv, env), log=log, what=f"{argv[1]} Bochs of {suite}")
            for cached in (root / "var/cache/apt/archives").glob("*.deb"):
                cached.unlink()
            models = subprocess.run(in_root(root, ["bochs-bin", "--help", "cpu"]),
                                    capture_output=True, text=True, check=False)  # fmt: skip
            found = cpu_models(models.stdout + models.stderr)
            if not found:
                with log.open("a") as fh:
                    fh.write(models.stdout + models.stderr)
                raise InfraError(f"Bochs of {suite} listed no CPU models (`bochs-bin --help cpu`)",
                                 where=str(log))  # fmt: skip
            (tmp / MODELS_FILE).write_text("\n".join(found) + "\n")
    return BochsRelease(final / "root", suite)


def cpu_models(help_cpu: str) -> list[str]:
    """The model names `bochs-bin --help cpu` lists after "Supported CPU models:"."""
    _, _, rest = help_cpu.partition("Supported CPU models:")
    names: list[str] = []
    for line in rest.splitlines():
        if not line.strip() and not names:
            continue  # the blank line after the heading
        if not _MODEL.fullmatch(line.strip()):
            break
        names.append(line.strip())
    return names
