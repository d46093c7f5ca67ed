"""Kernels you built ({build: DIR}, `rig run --kernel PATH`) and kernels the rig builds from a
git tree ({tree: DIR, ref: REF, config: ...}), without building or booting anything: the
matrix keys and their problems, the one-off kernel of a run, the pure parts of the kernel
build (config merge, toolchain choice, what a build directory holds and what a module build
reads of it), the sandbox's command line and the module build's make command.
"""

from __future__ import annotations

import lzma
import os
import re
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rig.artifacts import Artifacts, Cache
from rig.artifacts.built import (
    BZIMAGE,
    KBUILD_MNT,
    KSRC_MNT,
    RELEASE,
    check_build_dir,
    copy_kvm,
    export_headers,
    source_of,
)
from rig.artifacts.kbuild import merge_config, missing_from
from rig.artifacts.module import _kernel_binds, _make
from rig.artifacts.steps import BUILD_DIR, SETPRIV, sandboxed
from rig.artifacts.toolchain import SUITE_BY_GCC, config_compiler, suite_for
from rig.errors import UsageError
from rig.guest.base import GuestJob
from rig.guest.vm import VmFlavour
from rig.lanes.libvirt import LibvirtBackend
from rig.matrix import load_matrix, parse_matrix
from rig.matrix.load import one_off_kernel
from rig.matrix.source import MatrixFileError
from rig.model import KernelArtifacts, KernelSpec
from rig.options import RunSettings, select

MATRIX = """\
version: 1
kernels:
  "6.12": {{suite: trixie, abi: "6.12.117+deb13-amd64"}}
  mine: {mine}
cpus:
  haswell: {{bochs: corei7_haswell_4770, tcg: Haswell, kvm: Haswell-noTSX}}
lanes:
  bochs: {{backend: bochs, vmx: true}}
  tcg: {{backend: libvirt, vmx: false, domain_type: qemu}}
  kvm: {{backend: libvirt, vmx: true, domain_type: kvm, guest: vm}}
  nested: {{backend: nested, vmx: true, l1_kernel: {l1}, l0_cpu: corei7_haswell_4770}}
default_slice: {{lanes: [bochs], kernels: ["6.12"], cpus: [haswell]}}
"""
KINDS = (
    "one of {suite, abi} (a Debian package), {build: DIR} (a kernel you built) or "
    "{tree: DIR, ref: REF} (a git tree the rig builds)"
)


def matrix_text(mine: str, l1: str = '"6.12"') -> str:
    return MATRIX.format(mine=mine, l1=l1)


def problems(text: str) -> list[str]:
    with pytest.raises(MatrixFileError) as info:
        parse_matrix(text, "m.yaml")
    return [p.render() for p in info.value.problems]


# =========================================================================== matrix
def test_build_and_tree_kernels_load_beside_the_matrix(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    text = matrix_text("{build: ../kbuild}").replace(
        "  mine:",
        "  t1: {tree: ../linux, ref: v6.13, config: minimal}\n"
        "  t2: {tree: /abs/linux, ref: HEAD~3, config: kernel.config, suite: bookworm}\n"
        "  t3: {tree: linux, ref: 0123abc, config: 'debian:6.12'}\n"
        "  t4: {tree: linux, ref: v1}\n"
        "  mine:",
    )
    (conf / "matrix.yaml").write_text(text)
    m = load_matrix(conf / "matrix.yaml")
    k = m.kernels
    assert k["mine"].kind == "build" and k["mine"].build == str(tmp_path / "kbuild")
    assert k["mine"].suite == ""  # none named: the suite of its compiler (suite_for)
    assert k["mine"].describe() == f"build {tmp_path / 'kbuild'}"
    assert (k["t1"].kind, k["t1"].tree, k["t1"].ref) == ("tree", str(tmp_path / "linux"), "v6.13")
    assert k["t1"].config == "minimal" and k["t1"].suite == "trixie"  # the default toolchain
    assert (k["t2"].tree, k["t2"].config) == ("/abs/linux", str(conf / "kernel.config"))
    assert k["t2"].suite == "bookworm"
    assert k["t3"].config == "debian:6.12" and k["t3"].config_from == k["6.12"]
    assert k["t3"].tree == str(conf / "linux")
    assert k["t4"].config == "" and k["t4"].config_from is None
    assert k["t4"].describe() == f"tree {conf / 'linux'} @ v1 (minimal)"
    assert k["6.12"].kind == "debian" and k["6.12"].describe() == "6.12.117+deb13-amd64"
    cells = m.select(lanes=["bochs"], kernels=["mine", "t1"], cpus=["haswell"])
    assert [c.id for c in cells] == ["bochs-mine-haswell", "bochs-t1-haswell"]


def test_paths_of_a_matrix_given_as_text_are_relative_to_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    m = parse_matrix(matrix_text("{build: kb}"), "<matrix>")
    assert m.kernels["mine"].build == str(tmp_path / "kb")


def test_describe_a_tree_kernel() -> None:
    spec = KernelSpec("t", "trixie", "", tree="/src/linux", ref="0123456789abcdef" * 2,
                      config="debian:6.12")  # fmt: skip
    assert spec.describe() == "tree /src/linux @ 0123456789ab (debian:6.12)"


@pytest.mark.parametrize(
    ("mine", "l1", "where", "what"),
    [
        ("{suite: trixie, abi: 6.1.0-1-amd64, build: /kb}", '"6.12"', "4:9",
         f"kernel 'mine' has abi and build; expected {KINDS}"),
        ("{build: /kb, tree: /t, ref: v1}", '"6.12"', "4:9", "kernel 'mine' has build and tree"),
        ("{tree: /linux}", '"6.12"', "4:9",
         "kernel 'mine' has only one of tree and ref; expected both"),
        ("{ref: v6.1}", '"6.12"', "4:9", f"kernel 'mine' has none of abi, build, tree; "
         f"expected {KINDS}"),
        ("{}", '"6.12"', "4:9", "kernel 'mine' has none of abi, build, tree"),
        ("{suite: trixie, abi: 6.1.0-1-amd64, config: minimal}", '"6.12"', "4:45",
         "'config' is only for kernels with 'tree'; expected no 'config' here"),
        ("{suite: trixie, abi: 6.1.0-1-amd64, ref: v6.1}", '"6.12"', "4:45",
         "'ref' is only for kernels with 'tree'; expected no 'ref' here"),
        ("{build: /kb, version: 6.1.1-1}", '"6.12"', "4:22",
         "'version' is only for kernels with 'abi'; expected no 'version' here"),
        ("{build: /kb, config: 'debian:6.12'}", '"6.12"', "4:22",
         "'config' is only for kernels with 'tree'"),
        ("{tree: /t, ref: v1, extra_suites: [bookworm-security]}", '"6.12"', "4:29",
         "'extra_suites' is only for kernels with 'abi'"),
        ("{abi: 6.1.0-1-amd64}", '"6.12"', "4:9",
         "missing key 'suite'; expected 'suite' in this mapping"),
        ("{tree: /t, ref: v1, config: 'debian:nope'}", '"6.12"', "4:37",
         "kernel 'mine' takes its config from 'nope', which is not a Debian kernel of this "
         "matrix; expected debian:NAME of one of: 6.12"),
        ("{tree: /t, ref: v1, config: 'debian:mine'}", '"6.12"', "4:37",
         "kernel 'mine' takes its config from 'mine', which is not a Debian kernel"),
        ("{tree: /t, ref: v1}", "mine", "11:51",
         "the nested lane's L1 kernel 'mine' is not a Debian kernel; expected a Debian kernel"),
        ("{build: /kb}", "mine", "11:51", "the nested lane's L1 kernel 'mine' is not a Debian"),
    ],
)  # fmt: skip
def test_each_wrong_kernel_is_one_located_problem(
    mine: str, l1: str, where: str, what: str
) -> None:
    found = problems(matrix_text(mine, l1))
    assert len(found) == 1, found
    assert found[0].startswith(f"m.yaml:{where}: {what}"), found[0]


def test_config_naming_a_built_kernel_is_one_located_problem() -> None:
    text = matrix_text("{tree: /t, ref: v1, config: 'debian:other'}").replace(
        "  mine:", "  other: {build: /kb}\n  mine:"
    )
    assert problems(text) == [
        "m.yaml:5:37: kernel 'mine' takes its config from 'other', which is not a Debian "
        "kernel of this matrix; expected debian:NAME of one of: 6.12"
    ]


# =========================================================================== rig run --kernel
def fake_build(where: Path, release: str = "6.13.0-rc1+", full: bool = False) -> Path:
    (where / "include/config").mkdir(parents=True)
    (where / RELEASE).write_text(release + "\n")
    if full:
        for rel in (BZIMAGE, ".config", "Module.symvers"):
            (where / rel).parent.mkdir(parents=True, exist_ok=True)
            (where / rel).write_text(rel)
    return where


def test_one_off_kernel_is_named_by_its_release(tmp_path: Path) -> None:
    build = fake_build(tmp_path / "kb")
    spec = one_off_kernel(str(build), ["6.12"])
    assert spec == KernelSpec(name="6.13.0-rc1_", suite="", abi="", build=str(build))
    assert spec.kind == "build"
    assert one_off_kernel(str(build), ["6.13.0-rc1_"]).name == "6.13.0-rc1_-2"
    taken = ["6.13.0-rc1_", "6.13.0-rc1_-2", "6.13.0-rc1_-3"]
    assert one_off_kernel(str(build), taken).name == "6.13.0-rc1_-4"
    assert one_off_kernel(str(build), iter(taken)).name == "6.13.0-rc1_-4"  # any iterable
    long = fake_build(tmp_path / "long", "6.13.0-" + "x" * 60 + "; rm -rf /")
    name = one_off_kernel(str(long), []).name
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,32}", name) and name.startswith("6.13.0-x")


@pytest.mark.parametrize("what", ["missing", "plain dir", "a file"])
def test_one_off_kernel_refuses_what_is_not_a_build(tmp_path: Path, what: str) -> None:
    path = tmp_path / "x"
    if what == "plain dir":
        (path / "include").mkdir(parents=True)
    elif what == "a file":
        path.write_text("bzImage")
    with pytest.raises(UsageError) as err:
        one_off_kernel(str(path), [])
    assert "no include/config/kernel.release" in err.value.what
    assert err.value.fix and "O=" in err.value.fix


def test_select_with_a_path_runs_that_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_build(tmp_path / "that" / "dir", "6.13.0")
    monkeypatch.chdir(tmp_path)
    m = parse_matrix(matrix_text("{build: /kb}"), "m.yaml")
    chosen = RunSettings(lanes=("bochs",), kernels=("6.12", "./that/dir"), cpus=("haswell",))
    cells = select(m, chosen)
    assert [c.id for c in cells] == ["bochs-6.12-haswell", "bochs-6.13.0-haswell"]
    assert cells[1].kernel.build == str(tmp_path / "that" / "dir")
    assert cells[1].kernel.kind == "build" and cells[1].skip_reason is None
    with pytest.raises(UsageError):
        select(m, RunSettings(kernels=("./nowhere",)))
    # the same release twice: two kernels, two names
    fake_build(tmp_path / "other", "6.13.0")
    twice = select(m, RunSettings(lanes=("bochs",), kernels=("./that/dir", "./other"),
                                  cpus=("haswell",)))  # fmt: skip
    assert [c.kernel.name for c in twice] == ["6.13.0", "6.13.0-2"]


# =========================================================================== kbuild
def test_merge_config_by_example() -> None:
    base = (
        "# Automatically generated file; DO NOT EDIT.\n"
        "CONFIG_A=y\n"
        "# CONFIG_KVM is not set\n"
        "CONFIG_KVM_INTEL=y\n"
        "CONFIG_AB=m\n"
        "\n"
        'CONFIG_CMDLINE="quiet"\n'
    )
    fragment = (
        "# the rig's fragment\n"
        "CONFIG_KVM=m\n"
        "CONFIG_KVM_INTEL=m\n"
        "# CONFIG_A is not set\n"
        'CONFIG_CMDLINE="console=ttyS0"\n'
    )
    assert merge_config(base, fragment) == (
        "# Automatically generated file; DO NOT EDIT.\n"
        "CONFIG_AB=m\n"  # not CONFIG_A: a symbol is matched whole
        "\n"
        "CONFIG_KVM=m\n"
        "CONFIG_KVM_INTEL=m\n"
        "# CONFIG_A is not set\n"
        'CONFIG_CMDLINE="console=ttyS0"\n'
    )


SYMBOL = st.from_regex(r"CONFIG_[A-Z][A-Z0-9_]{0,12}", fullmatch=True)
VALUE = st.sampled_from(["y", "m", "n", '""', '"a b"', "0x10", "-1"])


def config_line(sym: str, value: str | None) -> str:
    return f"# {sym} is not set" if value is None else f"{sym}={value}"


CONFIG = st.dictionaries(SYMBOL, st.one_of(st.none(), VALUE), max_size=25)


@settings(max_examples=300, deadline=None)
@given(base=CONFIG, frag=CONFIG, noise=st.lists(st.sampled_from(["", "# comment", "#"])))
def test_merge_config_properties(
    base: dict[str, str | None], frag: dict[str, str | None], noise: list[str]
) -> None:
    base_lines = [config_line(s, v) for s, v in base.items()] + noise
    frag_lines = [config_line(s, v) for s, v in frag.items()]
    fragment = "".join(f"{ln}\n" for ln in ["# fragment", *frag_lines])
    merged = merge_config("".join(f"{ln}\n" for ln in base_lines), fragment)
    out = merged.splitlines()
    for line in frag_lines:
        assert out.count(line) == 1, line  # every fragment line, exactly once
    assert "# fragment" not in out  # only the fragment's symbols, not its comments
    named = [f"{s}=" for s in frag] + [f"# {s} is not set" for s in frag]
    kept = [ln for ln in base_lines if not any(ln.startswith(n) for n in named)]
    # the rest of the base in its order, then the fragment's lines
    assert merged == "\n".join([*kept, *frag_lines]) + "\n"
    assert missing_from(merged, fragment) == []
    assert merge_config(merged, fragment) == merged  # idempotent


def test_missing_from() -> None:
    fragment = "# comment\nCONFIG_KVM=m\n# CONFIG_WERROR is not set\nCONFIG_SERIAL_8250=y\n"
    config = "CONFIG_KVM=y\nCONFIG_SERIAL_8250=y\nCONFIG_OTHER=y\n"
    assert missing_from(config, fragment) == ["CONFIG_KVM=m (got: CONFIG_KVM=y)"]
    # a symbol olddefconfig dropped reads as not set
    assert missing_from("CONFIG_OTHER=y\n", fragment) == [
        "CONFIG_KVM=m (got: # CONFIG_KVM is not set)",
        "CONFIG_SERIAL_8250=y (got: # CONFIG_SERIAL_8250 is not set)",
    ]
    assert missing_from("CONFIG_WERROR=y\n", "# CONFIG_WERROR is not set\n") == [
        "# CONFIG_WERROR is not set (got: CONFIG_WERROR=y)"
    ]
    assert missing_from(config, "") == []


# =========================================================================== toolchain
GCC12 = 'CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14) 12.2.0"\n'
GCC14 = 'CONFIG_CC_VERSION_TEXT="gcc (Debian 14.2.0-19) 14.2.0"\n'


@pytest.mark.parametrize(
    ("config", "compiler", "suite"),
    [
        (f"CONFIG_A=y\n{GCC12}CONFIG_CC_IS_GCC=y\n", "gcc-12 (Debian 12.2.0-14) 12.2.0",
         "bookworm"),
        (GCC14, "gcc (Debian 14.2.0-19) 14.2.0", "trixie"),
        ('CONFIG_CC_VERSION_TEXT="gcc (GCC) 13.2.1 20231011"\n', "gcc (GCC) 13.2.1 20231011",
         "trixie"),
        ('CONFIG_CC_VERSION_TEXT="Debian clang version 16.0.6 (15)"\n',
         "Debian clang version 16.0.6 (15)", "trixie"),
        ("CONFIG_A=y\n", "", "trixie"),
        ('# CONFIG_CC_VERSION_TEXT="gcc (Debian 12.2.0-14) 12.2.0"\n', "", "trixie"),
    ],
)  # fmt: skip
def test_config_compiler_and_suite_for(config: str, compiler: str, suite: str) -> None:
    assert config_compiler(config) == compiler
    assert suite_for(config) == suite


def test_suite_for_every_known_gcc_and_a_default() -> None:
    for major, suite in SUITE_BY_GCC.items():
        text = f'CONFIG_CC_VERSION_TEXT="gcc (Debian {major}.1.0-1) {major}.1.0"\n'
        assert suite_for(text) == suite
    assert suite_for(GCC12, default="sid") == "bookworm"
    assert suite_for('CONFIG_CC_VERSION_TEXT="gcc (Debian 9.3.0-22) 9.3.0"', "bullseye") == (
        "bullseye"
    )


# =========================================================================== built
def test_check_build_dir_names_the_first_missing_file(tmp_path: Path) -> None:
    build = fake_build(tmp_path / "kb", "6.13.0-rc1", full=True)
    assert check_build_dir(build) == "6.13.0-rc1"
    for rel in (BZIMAGE, ".config", "Module.symvers", RELEASE):
        (build / rel).rename(build / "aside")
        with pytest.raises(UsageError) as err:
            check_build_dir(build)
        assert f"has no {rel}" in err.value.what and err.value.fix
        (build / "aside").rename(build / rel)
    (build / ".config").unlink()
    (build / "Module.symvers").unlink()
    with pytest.raises(UsageError, match=r"has no \.config"):  # the first of those missing
        check_build_dir(build)


KVM = {"irqbypass.ko": "virt/lib", "kvm.ko": "arch/x86/kvm", "kvm-intel.ko": "arch/x86/kvm"}


@pytest.mark.parametrize("xz", [set(), {"kvm.ko"}, set(KVM)])
def test_copy_kvm(tmp_path: Path, xz: set[str]) -> None:
    obj = tmp_path / "obj"
    for name, d in KVM.items():
        (obj / d).mkdir(parents=True, exist_ok=True)
        data = f"ELF {name}".encode()
        if name in xz:
            (obj / d / f"{name}.xz").write_bytes(lzma.compress(data, format=lzma.FORMAT_XZ))
        else:
            (obj / d / name).write_bytes(data)
    assert copy_kvm(obj, tmp_path / "kvm") is True
    assert {p.name: p.read_bytes() for p in (tmp_path / "kvm").iterdir()} == {
        name: f"ELF {name}".encode() for name in KVM
    }


def test_copy_kvm_without_all_modules(tmp_path: Path) -> None:
    obj = tmp_path / "obj"
    (obj / "virt/lib").mkdir(parents=True)
    (obj / "virt/lib/irqbypass.ko").write_bytes(b"ELF")
    (obj / "arch/x86/kvm").mkdir(parents=True)
    (obj / "arch/x86/kvm/kvm.ko").write_bytes(b"ELF")
    assert copy_kvm(obj, tmp_path / "kvm") is False  # kvm-intel built in, or not at all
    assert copy_kvm(tmp_path / "empty", tmp_path / "kvm2") is False


def test_source_of(tmp_path: Path) -> None:
    src, obj = tmp_path / "linux", tmp_path / "out"
    src.mkdir()
    obj.mkdir()
    (obj / "source").symlink_to(src)  # what `make O=out` leaves
    assert source_of(obj) == src.resolve()
    assert source_of(src) == src  # built in the tree: the tree is its source
    (src / "source").mkdir()  # a directory named source is not an O= link
    assert source_of(src) == src


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_export_headers_keeps_what_a_module_build_reads(tmp_path: Path) -> None:
    src, obj, dest = tmp_path / "src", tmp_path / "obj", tmp_path / "hdr"
    keep_src = {
        "Makefile", "Kbuild", "Kconfig", "arch/x86/Makefile", "arch/x86/Makefile_32.cpu",
        "arch/x86/Kconfig", "drivers/net/Makefile", "drivers/net/Kconfig",
        "include/linux/module.h", "include/uapi/linux/kvm.h", "arch/x86/include/asm/vmx.h",
        "scripts/Makefile.build", "scripts/Makefile.modpost", "scripts/mod/modpost.c",
        "scripts/module.lds.S", "tools/include/linux/types.h",
    }  # fmt: skip
    drop_src = {
        "drivers/net/e1000.c", "kernel/fork.c", "README", ".git/config", ".git/objects/Makefile",
        "Documentation/index.rst", "arch/x86/kvm/vmx.c",
    }  # fmt: skip
    keep_obj = {
        ".config", "Makefile", "Module.symvers", "include/generated/autoconf.h",
        "include/config/auto.conf", "include/config/kernel.release",
        "arch/x86/include/generated/asm/orc_hash.h", "scripts/basic/fixdep",
        "scripts/mod/modpost", "scripts/module.lds", "tools/objtool/objtool",
        "tools/bpf/resolve_btfids/resolve_btfids",
    }  # fmt: skip
    drop_obj = {
        "scripts/mod/modpost.o", "scripts/mod/.modpost.o.cmd", "scripts/basic/.fixdep.cmd",
        "tools/objtool/libsubcmd/libsubcmd.a", "include/generated/.x.cmd", "kernel/fork.o",
        "vmlinux", "arch/x86/boot/bzImage", "arch/x86/kvm/kvm.ko", "modules.order",
        "scripts/mod/empty.mod",
    }  # fmt: skip
    _write(src, {rel: rel for rel in keep_src | drop_src})
    _write(obj, {rel: rel for rel in keep_obj | drop_obj})
    (src / "include/linux/link.h").symlink_to("/etc/passwd")  # never followed out
    (obj / "scripts/escape").symlink_to("/etc/shadow")
    (obj / "scripts/mod/modpost").chmod(0o755)
    export_headers(src, obj, dest)
    assert _files(dest / "src") == keep_src
    assert _files(dest / "obj") == keep_obj
    assert (dest / "obj/scripts/mod/modpost").read_text() == "scripts/mod/modpost"
    assert os.stat(dest / "obj/scripts/mod/modpost").st_mode & stat.S_IXUSR  # still runs
    assert not any(p.is_symlink() for p in dest.rglob("*"))


# =========================================================================== sandbox, make
@pytest.fixture
def bwrap_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `bwrap` on PATH (nothing runs it: the tests read the command line)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bwrap").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', '')}")


def _pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


@pytest.mark.usefixtures("bwrap_on_path")
def test_sandboxed_binds_and_env(tmp_path: Path) -> None:
    root, build = tmp_path / "root", tmp_path / "build"
    argv = sandboxed(
        root, ["make", "-C", KSRC_MNT, "modules"], build,
        ro_binds=[(tmp_path / "linux", KSRC_MNT), (tmp_path / "out", KBUILD_MNT)],
        rw_binds=[(tmp_path / "ccache", "/tmp/ccache")],
        env=[("KBUILD_BUILD_USER", "rig"), ("CCACHE_DIR", "/tmp/ccache")],
    )  # fmt: skip
    assert argv[0] == "bwrap"
    assert _pairs(argv, "--ro-bind") == [
        (str(root), "/"), (str(tmp_path / "linux"), KSRC_MNT), (str(tmp_path / "out"), KBUILD_MNT)
    ]  # fmt: skip
    assert _pairs(argv, "--bind") == [(str(build), BUILD_DIR),
                                      (str(tmp_path / "ccache"), "/tmp/ccache")]  # fmt: skip
    setenv = _pairs(argv, "--setenv")
    assert ("KBUILD_BUILD_USER", "rig") in setenv and ("CCACHE_DIR", "/tmp/ccache") in setenv
    # the binds come after the tmpfs at /tmp (else it would hide them), the env after
    # --clearenv, and all of it before the command, which setpriv runs as nobody
    tmpfs = argv.index("--tmpfs")
    assert all(argv.index(dest) > tmpfs for dest in (KSRC_MNT, KBUILD_MNT, "/tmp/ccache"))
    assert argv.index("--clearenv") < argv.index("KBUILD_BUILD_USER")
    sep = argv.index("--")
    assert argv[sep + 1] == SETPRIV and argv[-4:] == ["make", "-C", KSRC_MNT, "modules"]
    assert argv.index("/tmp/ccache") < sep and "--unshare-net" in argv[:sep]


@pytest.mark.usefixtures("bwrap_on_path")
@pytest.mark.parametrize(
    "dest", ["/etc/x", "/tmp", "tmp/x", "/tmpx/y", "/tmp/../etc", "/tmp/a/../../etc", ""]
)
@pytest.mark.parametrize("kind", ["ro_binds", "rw_binds"])
def test_sandboxed_refuses_mount_points_outside_tmp(tmp_path: Path, dest: str, kind: str) -> None:
    with pytest.raises(ValueError, match="not under /tmp"):
        if kind == "ro_binds":
            sandboxed(tmp_path, ["true"], tmp_path, ro_binds=[(tmp_path, dest)])
        else:
            sandboxed(tmp_path, ["true"], tmp_path, rw_binds=[(tmp_path, dest)])


def artifacts(
    tmp_path: Path, kbuild: Path | None = None, ksrc: Path | None = None
) -> KernelArtifacts:
    spec = KernelSpec("k", "trixie", "6.12.117+deb13-amd64" if kbuild is None else "",
                      build=str(kbuild or ""))  # fmt: skip
    return KernelArtifacts(spec=spec, vmlinuz=tmp_path / "vmlinuz",
                           headers=Path("/usr/src/linux-headers-6.12.117+deb13-amd64"),
                           chroot=tmp_path / "root", kbuild=kbuild, ksrc=ksrc)  # fmt: skip


def test_module_make_against_a_debian_kernel(tmp_path: Path) -> None:
    kernel = artifacts(tmp_path)
    assert _make(kernel) == ["make", "-C", "/usr/src/linux-headers-6.12.117+deb13-amd64",
                             f"M={BUILD_DIR}"]  # fmt: skip
    assert _kernel_binds(kernel) == []


def test_module_make_against_an_out_of_tree_build(tmp_path: Path) -> None:
    kernel = artifacts(tmp_path, kbuild=tmp_path / "out", ksrc=tmp_path / "linux")
    assert _make(kernel) == ["make", "-C", KSRC_MNT, f"O={KBUILD_MNT}", f"M={BUILD_DIR}",
                             "modules"]  # fmt: skip
    assert _kernel_binds(kernel) == [(tmp_path / "out", KBUILD_MNT),
                                     (tmp_path / "linux", KSRC_MNT)]  # fmt: skip


@pytest.mark.parametrize("ksrc", ["same", None])
def test_module_make_against_an_in_tree_build(tmp_path: Path, ksrc: str | None) -> None:
    tree = tmp_path / "linux"
    kernel = artifacts(tmp_path, kbuild=tree, ksrc=tree if ksrc else None)
    assert _make(kernel) == ["make", "-C", KBUILD_MNT, f"M={BUILD_DIR}", "modules"]
    assert _kernel_binds(kernel) == [(tree, KBUILD_MNT)]  # the tree once, read-only


# =========================================================================== vm guest
@pytest.mark.parametrize(
    ("kernel", "refused"),
    [("6.12", False), ("mine", True), ("tk", True)],
)
def test_a_vm_guest_refuses_a_kernel_without_debian_packages(
    tmp_path: Path, kernel: str, refused: bool
) -> None:
    text = matrix_text("{build: /kb}").replace("  mine:", "  tk: {tree: /t, ref: v1}\n  mine:")
    m = parse_matrix(text, "m.yaml")
    cell = m.cell("kvm", kernel, "haswell")
    job = GuestJob(cell=cell, cpu_model="Haswell-noTSX", workdir=tmp_path, run_id="r",
                   driver=tmp_path, artifacts=Artifacts(Cache(tmp_path)), timeout_s=1)  # fmt: skip
    lane = LibvirtBackend(name="kvm", domain_type="kvm", embed_pool=tmp_path / "pool")
    why = VmFlavour().unsupported(job, lane)
    if not refused:
        assert why is None
        return
    assert why is not None
    assert "--guest initramfs" in why and f"kernel {kernel} ({cell.kernel.describe()})" in why
    assert "Debian packages" in why
