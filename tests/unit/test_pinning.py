"""Unit tests of rig.matrix.pinning (`rig images update`): apt output parsing, choice, rewrite.

The apt-cache samples were captured from deb.debian.org on 2026-11-25 with a private apt
configuration (fields irrelevant here, such as checksums, trimmed).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from rig.debian import apt_sources, compare_versions
from rig.errors import MatrixError, UsageError
from rig.matrix import parse_matrix
from rig.matrix.edit import checked_rewrite, rewrite_kernel_pin
from rig.matrix.pinning import (
    Candidate,
    Pin,
    candidates,
    choose,
    image_abi,
    in_series,
    newest_first,
    parse_depends,
    parse_stanzas,
    relevant_packages,
    series_of,
    update_failed,
    update_matrix,
    versions_of,
)
from rig.model import KernelSpec

REPO_MATRIX = Path(__file__).resolve().parents[2] / "matrix.yaml"

# apt-cache show linux-image-amd64 (bullseye)
BULLSEYE_META = """\
Package: linux-image-amd64
Source: linux-signed-amd64 (5.10.223+1)
Version: 5.10.223-1
Installed-Size: 13
Maintainer: Debian Kernel Team <debian-kernel@lists.debian.org>
Architecture: amd64
Provides: linux-image-generic, linux-latest-modules-5.10.0-32-amd64, virtualbox-guest-modules, \
wireguard-modules (= 1.0.0)
Depends: linux-image-5.10.0-32-amd64 (= 5.10.223-1)
Description: Linux for 64-bit PCs (meta-package)
Built-Using: linux (= 5.10.223-1)
Tag: admin::kernel, role::metapackage
Section: kernel
Priority: optional
Filename: pool/main/l/linux-signed-amd64/linux-image-amd64_5.10.223-1_amd64.deb
Size: 1484

"""

# apt-cache show linux-image-amd64 linux-image-6.12-amd64 (bookworm + bookworm-security)
BOOKWORM_META = """\
Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Installed-Size: 13
Architecture: amd64
Provides: linux-image-generic, linux-latest-modules-6.1.0-56-amd64, virtualbox-guest-modules, \
wireguard-modules (= 1.0.0)
Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)
Description: Linux for 64-bit PCs (meta-package)
Built-Using: linux (= 6.1.192-2)
Section: kernel
Filename: pool/updates/main/l/linux-signed-amd64/linux-image-amd64_6.1.192-2_amd64.deb
Size: 1480

Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.176+1)
Version: 6.1.176-1
Installed-Size: 13
Architecture: amd64
Provides: linux-image-generic, linux-latest-modules-6.1.0-50-amd64, virtualbox-guest-modules, \
wireguard-modules (= 1.0.0)
Depends: linux-image-6.1.0-50-amd64 (= 6.1.176-1)
Description: Linux for 64-bit PCs (meta-package)
Section: kernel
Filename: pool/main/l/linux-signed-amd64/linux-image-amd64_6.1.176-1_amd64.deb
Size: 1480

Package: linux-image-6.12-amd64
Source: linux-signed-6.12-amd64 (6.12.117+1~deb12u1)
Version: 6.12.117-1~deb12u1
Installed-Size: 13
Architecture: amd64
Provides: linux-latest-modules-6.12.117+deb12-amd64, virtualbox-guest-modules, \
wireguard-modules (= 1.0.0)
Depends: linux-image-6.12.117+deb12-amd64 (= 6.12.117-1~deb12u1)
Description: Linux for 64-bit PCs (meta-package)
Section: kernel
Filename: pool/updates/main/l/linux-signed-6.12-amd64/\
linux-image-6.12-amd64_6.12.117-1~deb12u1_amd64.deb
Size: 1476

"""

# apt-cache show linux-image-6.1.0-56-amd64 linux-headers-6.1.0-56-amd64 (bookworm-security)
BOOKWORM_IMAGE_AND_HEADERS = """\
Package: linux-image-6.1.0-56-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Installed-Size: 400652
Architecture: amd64
Replaces: linux-image-6.1.0-56-amd64-unsigned
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Suggests: linux-doc-6.1, debian-kernel-handbook, grub-pc | grub-efi-amd64 | extlinux
Conflicts: linux-image-6.1.0-56-amd64-unsigned
Breaks: fwupdate (<< 12-7), initramfs-tools (<< 0.120+deb8u2), wireless-regdb (<< 2019.06.03-1~)
Description: Linux 6.1 for 64-bit PCs (signed)
Built-Using: linux (= 6.1.192-2)
Section: kernel
Filename: pool/updates/main/l/linux-signed-amd64/linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb
Size: 70550672

Package: linux-headers-6.1.0-56-amd64
Source: linux
Version: 6.1.192-2
Installed-Size: 4150
Architecture: amd64
Depends: linux-headers-6.1.0-56-common (= 6.1.192-2), linux-kbuild-6.1 (>= 6.1.192-2), \
linux-compiler-gcc-12-x86
Description: Header files for Linux 6.1.0-56-amd64
Section: kernel
Filename: pool/updates/main/l/linux/linux-headers-6.1.0-56-amd64_6.1.192-2_amd64.deb
Size: 1841552
"""

# apt-cache show linux-image-amd64 (trixie + trixie-backports)
TRIXIE_BPO_META = """\
Package: linux-image-amd64
Source: linux-signed-amd64 (7.3.4+1~bpo13+1)
Version: 7.3.4-1~bpo13+1
Installed-Size: 15
Architecture: amd64
Provides: linux-image-generic, linux-latest-modules-7.3.4+deb13-amd64, \
virtualbox-guest-modules, wireguard-modules (= 1.0.0)
Depends: linux-base-amd64 (= 7.3.4-1~bpo13+1), linux-image-7.3.4+deb13-amd64 \
(= 7.3.4-1~bpo13+1), linux-modules-amd64 (= 7.3.4-1~bpo13+1)
Description: Linux for 64-bit PCs (meta-package)
Section: kernel
Filename: pool/main/l/linux-signed-amd64/linux-image-amd64_7.3.4-1~bpo13+1_amd64.deb
Size: 1500

Package: linux-image-amd64
Source: linux-signed-amd64 (6.12.117+1)
Version: 6.12.117-1
Installed-Size: 13
Architecture: amd64
Provides: linux-image-generic, linux-latest-modules-6.12.117+deb13-amd64, \
virtualbox-guest-modules, wireguard-modules (= 1.0.0)
Depends: linux-image-6.12.117+deb13-amd64 (= 6.12.117-1)
Description: Linux for 64-bit PCs (meta-package)
Tag: admin::kernel, role::metapackage
Section: kernel
Filename: pool/main/l/linux-signed-amd64/linux-image-amd64_6.12.117-1_amd64.deb
Size: 1476
"""

# apt-cache show of 7.3 image packages (trixie-backports): since 7.x linux-image-<abi> is
# itself small and depends on linux-binary-<abi> (the vmlinuz) and linux-modules-<abi>.
TRIXIE_BPO_IMAGES = """\
Package: linux-image-7.3.4+deb13-amd64
Source: linux-signed-amd64 (7.3.4+1~bpo13+1)
Version: 7.3.4-1~bpo13+1
Installed-Size: 15
Architecture: amd64
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), linux-binary-7.3.4+deb13-amd64 \
(= 7.3.4-1~bpo13+1), linux-modules-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)
Pre-Depends: linux-base (>= 4.17~)
Description: Linux 7.3.4 for 64-bit PCs
Section: kernel
Size: 1900

Package: linux-image-7.3.4+deb13-rt-amd64
Source: linux-signed-amd64 (7.3.4+1~bpo13+1)
Version: 7.3.4-1~bpo13+1
Architecture: amd64
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
linux-base-7.3.4+deb13-rt-amd64 (= 7.3.4-1~bpo13+1), linux-binary-7.3.4+deb13-rt-amd64 \
(= 7.3.4-1~bpo13+1), linux-modules-7.3.4+deb13-rt-amd64 (= 7.3.4-1~bpo13+1)
Description: Linux 7.3.4 for 64-bit PCs, PREEMPT_RT
Size: 1936

Package: linux-image-7.3.4+deb13-amd64-dbg
Source: linux
Version: 7.3.4-1~bpo13+1
Architecture: amd64
Depends: linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)
Description: Linux 7.3.4 for 64-bit PCs (debug symbols)
Section: debug
Size: 1188857816
"""

SID_META = """\
Package: linux-image-amd64
Source: linux-signed-amd64 (7.2.13+1)
Version: 7.2.13-1
Installed-Size: 16
Architecture: amd64
Provides: linux-image-generic, linux-latest-modules-7.2.13+deb14-amd64, \
virtualbox-guest-modules, wireguard-modules (= 1.0.0)
Depends: linux-base-amd64 (= 7.2.13-1), linux-image-7.2.13+deb14-amd64 (= 7.2.13-1)
Description: Linux for 64-bit PCs (meta-package)
Tag: admin::kernel, role::metapackage
Section: kernel
Size: 1692
"""

# `apt-cache pkgnames linux-image-` in bookworm + bookworm-security (excerpt)
BOOKWORM_NAMES_TEXT = """\
linux-image-6.1.0-50-amd64 linux-image-6.1.0-50-amd64-dbg linux-image-6.1.0-50-amd64-unsigned
linux-image-6.1.0-50-cloud-amd64 linux-image-6.1.0-50-rt-amd64 linux-image-6.1.0-55-amd64
linux-image-6.1.0-56-amd64 linux-image-6.1.0-56-amd64-dbg linux-image-6.1.0-56-amd64-unsigned
linux-image-6.1.0-56-cloud-amd64 linux-image-6.1.0-56-cloud-amd64-dbg
linux-image-6.1.0-56-rt-amd64 linux-image-6.1.0-56-rt-amd64-unsigned linux-image-6.12-amd64
linux-image-6.12-amd64-dbg linux-image-6.12-amd64-signed-template linux-image-6.12-cloud-amd64
linux-image-6.12.117+deb12-amd64 linux-image-6.12.117+deb12-rt-amd64 linux-image-amd64
linux-image-amd64-dbg linux-image-amd64-signed-template linux-image-cloud-amd64
linux-image-rt-amd64
"""
BOOKWORM_NAMES = BOOKWORM_NAMES_TEXT.split()


def spec(name: str, suite: str, abi: str, version: str = "", *extra: str) -> KernelSpec:
    return KernelSpec(name=name, suite=suite, abi=abi, version=version, extra_suites=extra)


# --------------------------------------------------------------------------- versions
@pytest.mark.parametrize(
    ("a", "b", "sign"),
    [
        ("6.1.192-2", "6.1.192-1", 1),
        ("6.1.192-2", "6.1.176-1", 1),
        ("6.12.117-1", "6.1.192-2", 1),
        ("7.3.4-1~bpo13+1", "7.3.4-1", -1),
        ("7.3.4-1~bpo13+1", "6.12.117-1", 1),
        ("7.3~rc7-1~exp1", "7.3-1", -1),
        ("6.12.117-1~deb12u1", "6.12.117-1", -1),
        ("5.10.223-1", "5.10.223-1", 0),
        ("1:1.0-1", "9.9-9", 1),
        ("1.0", "1.0-0", 0),
        ("1.0a", "1.0", 1),
        ("1.0+b1", "1.0", 1),
        ("1.0~", "1.0", -1),
        ("1.009", "1.9", 0),
        ("6.1.0-9", "6.1.0-56", -1),
    ],
)
def test_compare_versions(a: str, b: str, sign: int) -> None:
    got = compare_versions(a, b)
    assert (got > 0) - (got < 0) == sign
    back = compare_versions(b, a)
    assert (back > 0) - (back < 0) == -sign


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg not installed")
def test_compare_versions_agrees_with_dpkg() -> None:
    versions = [
        "6.1.192-2", "6.1.192-1", "6.1.176-1", "6.12.117-1", "6.12.117-1~deb12u1",
        "7.3.4-1~bpo13+1", "7.3~rc7-1~exp1", "7.2.13-1", "1:0.1", "0.1+dfsg-1", "0.1~a-1",
        "0.1.a", "0.1a", "2.0-1+b1", "2.0-1.1", "10", "9.99",
    ]  # fmt: skip
    for a in versions:
        for b in versions:
            for op, want in (("lt", -1), ("eq", 0), ("gt", 1)):
                rc = subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False)
                got = compare_versions(a, b)
                if rc.returncode == 0:
                    assert (got > 0) - (got < 0) == want, (a, op, b)


# --------------------------------------------------------------------------- parsing
def test_parse_stanzas_joins_continuations_and_splits_paragraphs() -> None:
    st = parse_stanzas(BOOKWORM_META)
    assert [s["Version"] for s in st] == ["6.1.192-2", "6.1.176-1", "6.12.117-1~deb12u1"]
    assert st[0]["Depends"] == "linux-image-6.1.0-56-amd64 (= 6.1.192-2)"
    multi = parse_stanzas("Package: x\nDescription: a\n  more\n .\n end\n")
    assert multi == [{"Package": "x", "Description": "a\nmore\n.\nend"}]


def test_parse_depends() -> None:
    deps = parse_depends(
        "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, "
        "linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), kmod:amd64"
    )
    assert [[r.name for r in e] for e in deps] == [
        ["dracut", "initramfs-tools", "linux-initramfs-tool"],
        ["linux-base-7.3.4+deb13-amd64"],
        ["kmod"],
    ]
    assert deps[0][1].op == ">=" and deps[0][1].version == "0.120+deb8u2"
    assert deps[1][0].op == "=" and deps[1][0].version == "7.3.4-1~bpo13+1"


@pytest.mark.parametrize(
    ("package", "abi"),
    [
        ("linux-image-6.1.0-56-amd64", "6.1.0-56-amd64"),
        ("linux-image-5.10.0-32-amd64", "5.10.0-32-amd64"),
        ("linux-image-6.12.117+deb13-amd64", "6.12.117+deb13-amd64"),
        ("linux-image-7.2.13+deb14-amd64", "7.2.13+deb14-amd64"),
        ("linux-image-7.3.0-rc7-amd64", "7.3.0-rc7-amd64"),
        ("linux-image-amd64", None),
        ("linux-image-6.12-amd64", None),
        ("linux-image-6.1.0-56-amd64-dbg", None),
        ("linux-image-6.1.0-56-amd64-unsigned", None),
        ("linux-image-6.1.0-56-rt-amd64", None),
        ("linux-image-6.1.0-56-cloud-amd64", None),
        ("linux-image-6.12.117+deb12-rt-amd64", None),
        ("linux-image-amd64-signed-template", None),
        ("linux-headers-6.1.0-56-amd64", None),
        ("linux-image-6.1.0-56-arm64", None),
    ],
)
def test_image_abi(package: str, abi: str | None) -> None:
    assert image_abi(package) == abi


def test_series() -> None:
    assert series_of("6.1", "6.1.0-44-amd64") == "6.1"
    assert series_of("6.12", "whatever") == "6.12"
    assert series_of("lts", "6.1.0-44-amd64") == "6.1"
    assert in_series("6.1", "6.1.192-2") and in_series("6.1", "6.1.0-56-amd64")
    assert not in_series("6.1", "6.12.117-1~deb12u1")
    assert not in_series("6.1", "6.12.117+deb12-amd64")
    assert in_series("7.3", "7.3~rc7-1~exp1") and in_series("7.3", "1:7.3.4-1")
    assert not in_series("7.3", "7.2.13-1")
    assert in_series(None, "anything")


def test_relevant_packages_keep_metapackages_and_the_series_images() -> None:
    assert relevant_packages(BOOKWORM_NAMES, "6.1") == [
        "linux-image-6.1.0-50-amd64",
        "linux-image-6.1.0-55-amd64",
        "linux-image-6.1.0-56-amd64",
        "linux-image-amd64",
    ]
    assert relevant_packages(BOOKWORM_NAMES, "6.12") == [
        "linux-image-6.12-amd64",
        "linux-image-6.12.117+deb12-amd64",
        "linux-image-amd64",
    ]


def test_candidates_from_metapackages_and_images() -> None:
    got = candidates(parse_stanzas(BOOKWORM_META + "\n" + BOOKWORM_IMAGE_AND_HEADERS))
    assert got == [
        Candidate("6.1.0-56-amd64", "6.1.192-2", "linux-image-amd64"),
        Candidate("6.1.0-50-amd64", "6.1.176-1", "linux-image-amd64"),
        Candidate("6.12.117+deb12-amd64", "6.12.117-1~deb12u1", "linux-image-6.12-amd64"),
        Candidate("6.1.0-56-amd64", "6.1.192-2", "linux-image-6.1.0-56-amd64"),
    ]


def test_7x_image_packages_are_images_not_metapackages() -> None:
    # linux-image-7.3.4+deb13-amd64 depends on linux-binary-/linux-modules-<abi>, not on
    # another linux-image: it is the image itself; -rt and -dbg are left out.
    assert candidates(parse_stanzas(TRIXIE_BPO_IMAGES)) == [
        Candidate("7.3.4+deb13-amd64", "7.3.4-1~bpo13+1", "linux-image-7.3.4+deb13-amd64")
    ]


# --------------------------------------------------------------------------- choice
def _all(*texts: str) -> list[Candidate]:
    return candidates(parse_stanzas("\n".join(texts)))


def test_newest_first_prefers_series_and_metapackage_via() -> None:
    cands = _all(BOOKWORM_META, BOOKWORM_IMAGE_AND_HEADERS)
    got = newest_first(cands, "6.1")
    assert [(c.abi, c.version, c.via) for c in got] == [
        ("6.1.0-56-amd64", "6.1.192-2", "linux-image-amd64"),
        ("6.1.0-50-amd64", "6.1.176-1", "linux-image-amd64"),
    ]
    assert newest_first(cands, "6.12")[0].abi == "6.12.117+deb12-amd64"


def test_choose_each_line() -> None:
    def headers(abi: str) -> set[str]:
        return {
            "5.10.0-32-amd64": {"5.10.223-1"},
            "6.1.0-56-amd64": {"6.1.192-2"},
            "6.1.0-50-amd64": {"6.1.176-1"},
            "6.12.117+deb13-amd64": {"6.12.117-1"},
            "6.12.117+deb12-amd64": {"6.12.117-1~deb12u1"},
            "7.2.13+deb14-amd64": {"7.2.13-1"},
            "7.3.4+deb13-amd64": {"7.3.4-1~bpo13+1"},
        }.get(abi, set())

    def pick(s: KernelSpec, *texts: str) -> tuple[str, str]:
        p = choose(s, _all(*texts), headers)
        return p.abi, p.version

    assert pick(spec("5.10", "bullseye", "5.10.0-32-amd64"), BULLSEYE_META) == (
        "5.10.0-32-amd64",
        "5.10.223-1",
    )
    # 6.1 stays 6.1 although bookworm-security also has 6.12.117+deb12
    bookworm = spec("6.1", "bookworm", "6.1.0-44-amd64", "", "bookworm-security")
    assert pick(bookworm, BOOKWORM_META, BOOKWORM_IMAGE_AND_HEADERS) == (
        "6.1.0-56-amd64",
        "6.1.192-2",
    )
    # 6.12 on trixie alone does not see backports' 7.3
    assert pick(spec("6.12", "trixie", "6.12.117+deb13-amd64"), TRIXIE_BPO_META) == (
        "6.12.117+deb13-amd64",
        "6.12.117-1",
    )
    assert pick(spec("7.2", "sid", "7.2.13+deb14-amd64"), SID_META) == (
        "7.2.13+deb14-amd64",
        "7.2.13-1",
    )
    bpo = spec("7.3", "trixie", "7.3.4+deb13-amd64", "", "trixie-backports")
    assert pick(bpo, TRIXIE_BPO_META, TRIXIE_BPO_IMAGES) == (
        "7.3.4+deb13-amd64",
        "7.3.4-1~bpo13+1",
    )


def test_choose_skips_a_kernel_without_headers_at_its_version() -> None:
    bookworm = spec("6.1", "bookworm", "6.1.0-44-amd64", "", "bookworm-security")
    pin = choose(
        bookworm,
        _all(BOOKWORM_META),
        lambda abi: {"6.1.176-1"} if abi == "6.1.0-50-amd64" else set(),
    )
    assert (pin.abi, pin.version) == ("6.1.0-50-amd64", "6.1.176-1")
    assert pin.skipped and "6.1.0-56-amd64 6.1.192-2" in pin.skipped[0]


def test_choose_without_a_kernel_of_the_line_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"no linux-image-\*-amd64 of the 5\.10 line"):
        choose(spec("5.10", "bookworm", "5.10.0-32-amd64"), _all(BOOKWORM_META), lambda _: set())
    with pytest.raises(UsageError, match="headers"):
        choose(spec("6.1", "bookworm", "6.1.0-1-amd64"), _all(BOOKWORM_META), lambda _: set())


def test_versions_of() -> None:
    st = parse_stanzas(BOOKWORM_IMAGE_AND_HEADERS)
    assert versions_of(st, "linux-headers-6.1.0-56-amd64") == {"6.1.192-2"}
    assert versions_of(st, "linux-headers-6.1.0-55-amd64") == set()


def test_update_failed_sees_warnings_that_exit_0() -> None:
    dns = (
        "Err:1 http://deb.debian.invalid/debian bookworm InRelease\n"
        "  Could not resolve 'deb.debian.invalid'\nReading package lists...\n"
        "W: Failed to fetch http://deb.debian.invalid/debian/dists/bookworm/InRelease\n"
        "W: Some index files failed to download. They have been ignored, or old ones used.\n"
    )
    assert update_failed(dns)
    assert update_failed("E: Release file for http://x/dists/sid/InRelease is expired")
    ok = (
        "Get:1 http://deb.debian.org/debian bullseye InRelease [75.1 kB]\n"
        "Get:2 http://deb.debian.org/debian bullseye/main amd64 Packages [8066 kB]\n"
        "Fetched 8141 kB in 2s (5045 kB/s)\nReading package lists...\n"
    )
    assert not update_failed(ok)


# --------------------------------------------------------------------------- rewrite
MATRIX = """\
# header comment: abi: "not-this"
version: 1

defaults: {timeout: 400, memory: 512, vcpus: 1}

kernels:
  # a comment line
  "6.12": {suite: trixie, abi: "6.12.117+deb13-amd64", version: "6.12.117-1"}
  "6.1": {suite: bookworm, abi: "6.1.0-44-amd64", extra_suites: [bookworm-security]}  # abi: x
  '5.10': {suite: bullseye, abi: 5.10.0-32-amd64, version: 5.10.223-1}
  "7.3":
    suite: trixie      # the toolchain chroot
    abi: '7.3.1+deb13-amd64'   # old
    extra_suites: [trixie-backports]
  lts:
    suite: bookworm
    abi: "6.1.0-1-amd64"
    version: "6.1.1-1"

cpus:
  haswell: {bochs: corei7_haswell_4770}

lanes:
  bochs: {backend: bochs, vmx: true}

default_slice: {lanes: [bochs], kernels: ["6.12"], cpus: [haswell]}
"""


def test_rewrite_flow_entry_with_version() -> None:
    new = rewrite_kernel_pin(MATRIX, "6.12", "6.12.120+deb13-amd64", "6.12.120-1")
    diff = [(a, b) for a, b in zip(MATRIX.splitlines(), new.splitlines(), strict=True) if a != b]
    assert diff == [
        (
            '  "6.12": {suite: trixie, abi: "6.12.117+deb13-amd64", version: "6.12.117-1"}',
            '  "6.12": {suite: trixie, abi: "6.12.120+deb13-amd64", version: "6.12.120-1"}',
        )
    ]


def test_rewrite_flow_entry_adds_version_and_keeps_comment() -> None:
    new = rewrite_kernel_pin(MATRIX, "6.1", "6.1.0-56-amd64", "6.1.192-2")
    assert (
        '  "6.1": {suite: bookworm, abi: "6.1.0-56-amd64", version: "6.1.192-2", '
        "extra_suites: [bookworm-security]}  # abi: x\n"
    ) in new
    assert new.count("\n") == MATRIX.count("\n")
    assert '# header comment: abi: "not-this"' in new


def test_rewrite_plain_values_and_single_quoted_key() -> None:
    new = rewrite_kernel_pin(MATRIX, "5.10", "5.10.0-33-amd64", "5.10.230-1")
    assert '  \'5.10\': {suite: bullseye, abi: "5.10.0-33-amd64", version: "5.10.230-1"}\n' in new


def test_rewrite_block_entry_inserts_version_line() -> None:
    new = rewrite_kernel_pin(MATRIX, "7.3", "7.3.4+deb13-amd64", "7.3.4-1~bpo13+1")
    assert (
        '  "7.3":\n    suite: trixie      # the toolchain chroot\n'
        '    abi: "7.3.4+deb13-amd64"   # old\n    version: "7.3.4-1~bpo13+1"\n'
        "    extra_suites: [trixie-backports]\n"
    ) in new
    lts = rewrite_kernel_pin(MATRIX, "lts", "6.1.0-56-amd64", "6.1.192-2")
    assert '    abi: "6.1.0-56-amd64"\n    version: "6.1.192-2"\n\ncpus:' in lts


def test_rewrite_keeps_crlf_line_ends() -> None:
    crlf = MATRIX.replace("\n", "\r\n")
    new = rewrite_kernel_pin(crlf, "7.3", "7.3.4+deb13-amd64", "7.3.4-1~bpo13+1")
    assert "\n" not in new.replace("\r\n", "")
    assert '    version: "7.3.4-1~bpo13+1"\r\n' in new


def test_rewrite_unknown_kernel_or_ambiguous_entry() -> None:
    with pytest.raises(MatrixError, match="not found"):
        rewrite_kernel_pin(MATRIX, "9.9", "9.9.0-1-amd64", "9.9-1")
    twice = MATRIX.replace('abi: "6.1.0-44-amd64"', 'abi: "a", abi: "b"')
    with pytest.raises(MatrixError, match="one abi"):
        rewrite_kernel_pin(twice, "6.1", "6.1.0-56-amd64", "6.1.192-2")
    with pytest.raises(MatrixError, match="kernels:"):
        rewrite_kernel_pin("version: 1\n", "6.1", "6.1.0-56-amd64", "6.1.192-2")


def test_every_rewrite_of_the_repo_matrix_still_loads() -> None:
    text = REPO_MATRIX.read_text()
    before = parse_matrix(text, "matrix.yaml")
    for name in before.kernels:
        new = checked_rewrite(text, name, "9.9.9+deb99-amd64", "9.9.9-1~x1", "matrix.yaml")
        after = parse_matrix(new, "matrix.yaml")
        assert after.kernels[name].abi == "9.9.9+deb99-amd64"
        assert after.kernels[name].version == "9.9.9-1~x1"
        for other in before.kernels:
            if other != name:
                assert after.kernels[other] == before.kernels[other]
        changed = [a for a, b in zip(text.splitlines(), new.splitlines(), strict=True) if a != b]
        assert len(changed) == 1


def test_matrix_sample_is_a_valid_matrix() -> None:
    assert list(parse_matrix(MATRIX, "m").kernels) == ["6.12", "6.1", "5.10", "7.3", "lts"]


def test_update_matrix_writes_only_the_pins(tmp_path: Path) -> None:
    path = tmp_path / "matrix.yaml"
    path.write_text(MATRIX)
    before = parse_matrix(MATRIX, "m")

    def resolver(s: KernelSpec) -> Pin:
        if s.name == "6.1":
            return Pin(s.name, s.abi, s.version, "6.1.0-56-amd64", "6.1.192-2", "linux-image-amd64")
        raise AssertionError(f"kernel {s.name} was not asked for")

    lines: list[str] = []
    pins = update_matrix(path, ["6.1"], resolver=resolver, out=lines.append)
    assert [p.name for p in pins] == ["6.1"]
    assert lines[0].split() == [
        "6.1", "6.1.0-44-amd64", "(newest)", "->", "6.1.0-56-amd64", "6.1.192-2",
        "[via", "linux-image-amd64]",
    ]  # fmt: skip
    assert lines[1] == f"wrote {path}"
    text = path.read_text()
    after = parse_matrix(text, "m")
    assert (after.kernels["6.1"].abi, after.kernels["6.1"].version) == (
        "6.1.0-56-amd64",
        "6.1.192-2",
    )
    assert {k: v for k, v in after.kernels.items() if k != "6.1"} == {
        k: v for k, v in before.kernels.items() if k != "6.1"
    }
    changed = [
        (a, b) for a, b in zip(MATRIX.splitlines(), text.splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 1 and changed[0][0].startswith('  "6.1":')

    # a second run finds everything pinned and writes nothing
    def same(s: KernelSpec) -> Pin:
        return Pin(s.name, s.abi, s.version, s.abi, s.version, "linux-image-amd64")

    mtime = path.stat().st_mtime_ns
    lines.clear()
    update_matrix(path, resolver=same, out=lines.append)
    assert len(lines) == 6 and all("(unchanged)" in ln for ln in lines[:5])
    assert "already pinned" in lines[5]
    assert path.stat().st_mtime_ns == mtime
    with pytest.raises(UsageError, match="unknown kernel"):
        update_matrix(path, ["4.19"], resolver=resolver, out=lines.append)


def test_update_matrix_writes_nothing_when_a_kernel_fails(tmp_path: Path) -> None:
    path = tmp_path / "matrix.yaml"
    path.write_text(MATRIX)

    def resolver(s: KernelSpec) -> Pin:
        if s.name == "7.3":
            raise UsageError("no kernel")
        return Pin(s.name, s.abi, s.version, s.abi, "0.0.1-1", "linux-image-amd64")

    with pytest.raises(UsageError):
        update_matrix(path, resolver=resolver, out=lambda _: None)
    assert path.read_text() == MATRIX


# --------------------------------------------------------------------------- rig.debian
def test_apt_sources_put_security_suites_on_the_security_mirror() -> None:
    s = spec("6.1", "bookworm", "6.1.0-44-amd64", "", "bookworm-security", "bookworm-updates")
    assert apt_sources(s) == (
        "deb http://deb.debian.org/debian bookworm main\n"
        "deb http://deb.debian.org/debian-security bookworm-security main\n"
        "deb http://deb.debian.org/debian bookworm-updates main\n"
    )
    mirrored = KernelSpec(
        name="6.1",
        suite="bookworm",
        abi="6.1.0-44-amd64",
        mirror="http://mirror.example/debian/",
        extra_suites=("bookworm-security",),
    )
    assert apt_sources(mirrored).splitlines()[1] == (
        "deb http://mirror.example/debian-security bookworm-security main"
    )


def test_compare_versions_refuses_what_is_no_debian_version() -> None:
    with pytest.raises(ValueError, match="Invalid version"):
        compare_versions("a:b", "1.0")


# --------------------------------------------------------------------------- rewrite, more
def test_rewrite_flow_kernels_mapping_and_last_line_without_newline() -> None:
    flow = 'version: 1\nkernels: {"6.1": {suite: bookworm, abi: "6.1.0-1-amd64"}}  # k\n'
    assert rewrite_kernel_pin(flow, "6.1", "6.1.0-2-amd64", "6.1.2-1") == (
        'version: 1\nkernels: {"6.1": {suite: bookworm, abi: "6.1.0-2-amd64", '
        'version: "6.1.2-1"}}  # k\n'
    )
    block = "kernels:\n  lts:\n    suite: bookworm\n    abi: 6.1.0-1-amd64"
    assert rewrite_kernel_pin(block, "lts", "6.1.0-2-amd64", "6.1.2-1") == (
        'kernels:\n  lts:\n    suite: bookworm\n    abi: "6.1.0-2-amd64"\n    version: "6.1.2-1"'
    )


def test_rewrite_leaves_comments_naming_abi_and_other_kernels_alone() -> None:
    text = MATRIX.replace(
        "  lts:\n    suite: bookworm\n",
        '  lts:\n    # abi: "keep-me", version: "keep-me"\n    suite: bookworm\n',
    )
    new = rewrite_kernel_pin(text, "lts", "6.1.0-56-amd64", "6.1.192-2")
    assert '    # abi: "keep-me", version: "keep-me"\n' in new
    changed = [(a, b) for a, b in zip(text.splitlines(), new.splitlines(), strict=True) if a != b]
    assert changed == [
        ('    abi: "6.1.0-1-amd64"', '    abi: "6.1.0-56-amd64"'),
        ('    version: "6.1.1-1"', '    version: "6.1.192-2"'),
    ]


def test_rewrite_refuses_block_scalars_and_non_mapping_entries() -> None:
    folded = MATRIX.replace('    abi: "6.1.0-1-amd64"\n', "    abi: >-\n      6.1.0-1-amd64\n")
    with pytest.raises(MatrixError, match="plain or quoted"):
        rewrite_kernel_pin(folded, "lts", "6.1.0-56-amd64", "6.1.192-2")
    with pytest.raises(MatrixError, match="not a mapping"):
        rewrite_kernel_pin("kernels:\n  lts: 6.1\n", "lts", "6.1.0-56-amd64", "6.1.192-2")
    with pytest.raises(MatrixError, match="cannot read as YAML"):
        rewrite_kernel_pin("kernels: [\n", "lts", "6.1.0-56-amd64", "6.1.192-2")


def test_checked_rewrite_refuses_an_unknown_kernel() -> None:
    with pytest.raises(MatrixError, match="not found"):
        checked_rewrite(MATRIX, "9.9", "9.9.0-1-amd64", "9.9-1", "m.yaml")
