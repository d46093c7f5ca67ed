"""Which Bochs runs a bochs lane's boots: the host's 2.7 (its debugger continued by `-rc`) or
a Debian release's, run from its own debootstrap with that release's loader and libraries."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rig.artifacts.emulator import BochsRelease
from rig.errors import InfraError
from rig.lanes.bochs import BIOS, VGABIOS, BochsBackend, bochsrc, host_bochs, release_bochs
from rig.model import BootSpec, GuestImage


def _spec(tmp_path: Path) -> BootSpec:
    image = GuestImage(kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd", cmdline="quiet")
    return BootSpec(image=image, cpu_model="corei7_haswell_4770", memory_mib=512, vcpus=1,
                    timeout_s=60, workdir=tmp_path)  # fmt: skip


def test_the_hosts_bochs_is_continued_past_its_debugger(tmp_path: Path) -> None:
    bochs = host_bochs()
    argv = bochs.argv(tmp_path, ["-f", "rc"])
    assert argv[:4] == ["unshare", "--net", "--", "bochs-bin"]
    assert argv[-2:] == ["-rc", str(tmp_path / "bochs.rc")]
    assert (tmp_path / "bochs.rc").read_text() == "c\n"
    assert (bochs.bios, bochs.vgabios, bochs.release) == (BIOS, VGABIOS, "")


def test_a_releases_bochs_runs_with_its_own_loader_libraries_plugins_and_bios(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    bochs = release_bochs(BochsRelease(root, "trixie"))
    argv = bochs.argv(tmp_path / "cell", ["-r", "state"])
    assert argv[:4] == ["unshare", "--net", "--", "env"]
    assert f"LTDL_LIBRARY_PATH={root}/usr/lib/x86_64-linux-gnu/bochs/plugins" in argv
    loader = argv.index(f"{root}/lib64/ld-linux-x86-64.so.2")
    assert argv[loader + 1] == "--library-path"
    assert argv[loader + 2].split(":") == [f"{root}/usr/lib/x86_64-linux-gnu",
                                           f"{root}/lib/x86_64-linux-gnu"]  # fmt: skip
    assert argv[loader + 3] == f"{root}/usr/bin/bochs-bin"
    assert argv[-3:] == ["-q", "-r", "state"]  # no debugger to continue: no -rc
    assert bochs.bios == root / "usr/share/bochs/BIOS-bochs-latest"
    assert bochs.release == "trixie" and root / "usr/bin/bochs-bin" in bochs.files
    rc = bochsrc(_spec(tmp_path), tmp_path / "boot.iso", tmp_path / "c", tmp_path / "a",
                 tmp_path / "log", bios=bochs.bios, vgabios=bochs.vgabios)  # fmt: skip
    assert f"romimage: file={bochs.bios}\n" in rc and f"vgaromimage: file={bochs.vgabios}\n" in rc


def test_a_bios_path_that_would_break_the_bochsrc_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InfraError):
        bochsrc(_spec(tmp_path), tmp_path / "boot.iso", tmp_path / "c", tmp_path / "a",
                tmp_path / "log", bios=Path("/a b/BIOS"))  # fmt: skip


def test_a_release_needs_the_cache_and_debootstrap_not_the_hosts_bochs(tmp_path: Path) -> None:
    assert "cache" in (BochsBackend(emulator="trixie").unavailable() or "")
    assert BochsBackend(emulator="trixie", cache_root=tmp_path).unavailable() in (
        None,
        "debootstrap missing (apt-get install debootstrap), for Bochs of trixie",
    )


HELP_CPU_3_0 = """00000000000i[      ] LTDL_LIBRARY_PATH not set. using compile time default
Supported CPU models:

core2_penryn_t9600
corei7_haswell_4770
tigerlake

========================================================================
                        Bochs x86 Emulator 3.0
"""


def test_a_releases_models_are_what_its_help_lists_and_others_run_on_the_host(
    tmp_path: Path,
) -> None:
    from rig.artifacts.emulator import MODELS_FILE, cpu_models
    from rig.lanes.bochs import bochs_for

    found = cpu_models(HELP_CPU_3_0)
    assert found == ["core2_penryn_t9600", "corei7_haswell_4770", "tigerlake"]
    assert cpu_models("Bochs x86 Emulator 3.0\nno list\n") == []
    (tmp_path / "root").mkdir()
    (tmp_path / MODELS_FILE).write_text("\n".join(found) + "\n")
    release = BochsRelease(tmp_path / "root", "trixie")
    assert release.models() == frozenset(found)
    assert bochs_for(release, "corei7_haswell_4770").release == "trixie"
    if shutil.which("bochs-bin"):
        assert bochs_for(release, "bx_generic").release == ""  # 3.0 has no bx_generic
    else:
        with pytest.raises(InfraError, match="bx_generic"):
            bochs_for(release, "bx_generic")
