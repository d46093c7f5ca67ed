"""Unit tests of rig.bisect.debian_line / debian_pool: the package versions of one Debian
kernel line (`rig bisect --debian SUITE[:LINE]`), their order, the range asked for, the pool
URLs of their files, and whether the pool still serves them.

The apt-cache samples were captured from deb.debian.org on 2026-12-07 with a private apt
configuration of one suite each (fields irrelevant here trimmed; `$SEC/` and the like stand
for the long pool directories). Tests marked slow ask the live archive (network).
"""

from __future__ import annotations

import itertools
import random
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rig.bisect import debian_line
from rig.bisect.debian_line import (
    LineVersion,
    SuiteArg,
    archive_root,
    choose_line,
    find_version,
    kernel_name,
    line_versions,
    lines_of,
    parse_suite_arg,
    select_range,
    toolchain_suite,
    upstream_range,
    upstream_tag,
    versions_for,
)
from rig.bisect.debian_pool import (
    Reachability,
    VersionUnreachable,
    config_member,
    config_members,
    extract_config,
    http_status,
    pool_debs,
    pool_files,
    probe,
)
from rig.debian import download_debs
from rig.errors import InfraError, ToolMissing, UsageError
from rig.matrix.pinning import parse_stanzas
from rig.matrix.schema import _ABI_RE, _DEBVER_RE, _KERNEL_RE, _SUITE_RE
from rig.model import KernelSpec

MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
TEMPLATE = KernelSpec(name="6.12", suite="trixie", abi="6.12.117+deb13-amd64")
_DIRS = {
    "$SEC612/": "pool/updates/main/l/linux-signed-6.12-amd64/",
    "$SECL/": "pool/updates/main/l/linux/",
    "$SEC/": "pool/updates/main/l/linux-signed-amd64/",
    "$BPO/": "pool/main/l/linux-signed-amd64/",
}

TRIXIE_SECURITY = """\
Package: linux-image-6.12.115+deb13-amd64
Source: linux-signed-amd64 (6.12.115+1)
Version: 6.12.115-1
Built-Using: linux (= 6.12.115-1)
Depends: kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Filename: $SEC/linux-image-6.12.115+deb13-amd64_6.12.115-1_amd64.deb

Package: linux-image-6.12.115+deb13.1-amd64
Source: linux-signed-amd64 (6.12.115+2)
Version: 6.12.115-2
Built-Using: linux (= 6.12.115-2)
Depends: kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Filename: $SEC/linux-image-6.12.115+deb13.1-amd64_6.12.115-2_amd64.deb

Package: linux-image-6.12.117+deb13-amd64
Source: linux-signed-amd64 (6.12.117+1)
Version: 6.12.117-1
Built-Using: linux (= 6.12.117-1)
Depends: kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Filename: $SEC/linux-image-6.12.117+deb13-amd64_6.12.117-1_amd64.deb

Package: linux-image-6.12.117+deb13-amd64-dbg
Source: linux
Version: 6.12.117-1
Filename: $SECL/linux-image-6.12.117+deb13-amd64-dbg_6.12.117-1_amd64.deb

Package: linux-image-6.12.117+deb13-amd64-unsigned
Source: linux
Version: 6.12.117-1
Depends: kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Filename: $SECL/linux-image-6.12.117+deb13-amd64-unsigned_6.12.117-1_amd64.deb

Package: linux-image-6.12.117+deb13-cloud-amd64
Source: linux-signed-amd64 (6.12.117+1)
Version: 6.12.117-1
Built-Using: linux (= 6.12.117-1)
Depends: kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Filename: $SEC/linux-image-6.12.117+deb13-cloud-amd64_6.12.117-1_amd64.deb

Package: linux-image-6.12.117+deb13-rt-amd64
Source: linux-signed-amd64 (6.12.117+1)
Version: 6.12.117-1
Built-Using: linux (= 6.12.117-1)
Depends: kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Filename: $SEC/linux-image-6.12.117+deb13-rt-amd64_6.12.117-1_amd64.deb

Package: linux-image-6.12.90+deb13-amd64
Source: linux-signed-amd64 (6.12.90+1)
Version: 6.12.90-1
Built-Using: linux (= 6.12.90-1)
Depends: kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Filename: $SEC/linux-image-6.12.90+deb13-amd64_6.12.90-1_amd64.deb

Package: linux-image-6.12.90+deb13.1-amd64
Source: linux-signed-amd64 (6.12.90+2)
Version: 6.12.90-2
Built-Using: linux (= 6.12.90-2)
Depends: kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Filename: $SEC/linux-image-6.12.90+deb13.1-amd64_6.12.90-2_amd64.deb

Package: linux-image-amd64
Source: linux-signed-amd64 (6.12.118+1)
Version: 6.12.118-1
Depends: linux-image-6.12.118+deb13-amd64 (= 6.12.118-1)
Filename: $SEC/linux-image-amd64_6.12.118-1_amd64.deb

Package: linux-image-amd64-signed-template
Source: linux
Version: 6.12.118-1
Depends: dpkg-dev, python3:any
Filename: $SECL/linux-image-amd64-signed-template_6.12.118-1_amd64.deb
"""

TRIXIE_BACKPORTS = """\
Package: linux-binary-6.19.6+deb13-amd64
Source: linux-signed-amd64 (6.19.6+2~bpo13+1)
Version: 6.19.6-2~bpo13+1
Built-Using: linux (= 6.19.6-2~bpo13+1)
Depends: linux-base-6.19.6+deb13-amd64 (= 6.19.6-2~bpo13+1)
Filename: $BPO/linux-binary-6.19.6+deb13-amd64_6.19.6-2~bpo13+1_amd64.deb

Package: linux-binary-7.2.12+deb13-amd64
Source: linux-signed-amd64 (7.2.12+1~bpo13+1)
Version: 7.2.12-1~bpo13+1
Built-Using: linux (= 7.2.12-1~bpo13+1)
Depends: linux-base-7.2.12+deb13-amd64 (= 7.2.12-1~bpo13+1)
Filename: $BPO/linux-binary-7.2.12+deb13-amd64_7.2.12-1~bpo13+1_amd64.deb

Package: linux-binary-7.3.4+deb13-amd64
Source: linux-signed-amd64 (7.3.4+1~bpo13+1)
Version: 7.3.4-1~bpo13+1
Built-Using: linux (= 7.3.4-1~bpo13+1)
Depends: linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)
Filename: $BPO/linux-binary-7.3.4+deb13-amd64_7.3.4-1~bpo13+1_amd64.deb

Package: linux-image-6.16.3+deb13-amd64
Source: linux-signed-amd64 (6.16.3+1~bpo13+1)
Version: 6.16.3-1~bpo13+1
Built-Using: linux (= 6.16.3-1~bpo13+1)
Depends: kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Filename: $BPO/linux-image-6.16.3+deb13-amd64_6.16.3-1~bpo13+1_amd64.deb

Package: linux-image-6.18.5+deb13-amd64
Source: linux-signed-amd64 (6.18.5+1~bpo13+1)
Version: 6.18.5-1~bpo13+1
Built-Using: linux (= 6.18.5-1~bpo13+1)
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, kmod,
 linux-base-6.18.5+deb13-amd64 (= 6.18.5-1~bpo13+1)
Filename: $BPO/linux-image-6.18.5+deb13-amd64_6.18.5-1~bpo13+1_amd64.deb

Package: linux-image-6.19.6+deb13-amd64
Source: linux-signed-amd64 (6.19.6+2~bpo13+1)
Version: 6.19.6-2~bpo13+1
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, kmod,
 linux-base-6.19.6+deb13-amd64 (= 6.19.6-2~bpo13+1),
 linux-binary-6.19.6+deb13-amd64 (= 6.19.6-2~bpo13+1),
 linux-modules-6.19.6+deb13-amd64 (= 6.19.6-2~bpo13+1)
Filename: $BPO/linux-image-6.19.6+deb13-amd64_6.19.6-2~bpo13+1_amd64.deb

Package: linux-image-7.3.4+deb13-amd64
Source: linux-signed-amd64 (7.3.4+1~bpo13+1)
Version: 7.3.4-1~bpo13+1
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool,
 linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1),
 linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1),
 linux-modules-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)
Filename: $BPO/linux-image-7.3.4+deb13-amd64_7.3.4-1~bpo13+1_amd64.deb
"""

BOOKWORM_SECURITY = """\
Package: linux-image-6.1.0-48-amd64
Source: linux-signed-amd64 (6.1.172+1)
Version: 6.1.172-1
Built-Using: linux (= 6.1.172-1)
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Filename: $SEC/linux-image-6.1.0-48-amd64_6.1.172-1_amd64.deb

Package: linux-image-6.1.0-57-amd64
Source: linux-signed-amd64 (6.1.192+3)
Version: 6.1.192-3
Built-Using: linux (= 6.1.192-3)
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Filename: $SEC/linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb

Package: linux-image-6.12-amd64
Source: linux-signed-6.12-amd64 (6.12.118+1~deb12u1)
Version: 6.12.118-1~deb12u1
Depends: linux-image-6.12.118+deb12-amd64 (= 6.12.118-1~deb12u1)
Filename: $SEC612/linux-image-6.12-amd64_6.12.118-1~deb12u1_amd64.deb

Package: linux-image-6.12.100+deb12-amd64
Source: linux-signed-6.12-amd64 (6.12.100+1~deb12u1)
Version: 6.12.100-1~deb12u1
Built-Using: linux-6.12 (= 6.12.100-1~deb12u1)
Depends: kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Filename: $SEC612/linux-image-6.12.100+deb12-amd64_6.12.100-1~deb12u1_amd64.deb

Package: linux-image-6.12.118+deb12-amd64
Source: linux-signed-6.12-amd64 (6.12.118+1~deb12u1)
Version: 6.12.118-1~deb12u1
Built-Using: linux-6.12 (= 6.12.118-1~deb12u1)
Depends: kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Filename: $SEC612/linux-image-6.12.118+deb12-amd64_6.12.118-1~deb12u1_amd64.deb
"""


def _expand(text: str) -> str:
    for short, full in _DIRS.items():
        text = text.replace(short, full)
    return text


class FakeIndex:
    """One suite's index, from apt-cache show text (what AptArchive answers)."""

    def __init__(self, *texts: str, extra: Sequence[dict[str, str]] = ()) -> None:
        self.stanzas = [s for t in texts for s in parse_stanzas(_expand(t))] + list(extra)
        self.asked: list[str] = []

    def pkgnames(self, prefix: str) -> list[str]:
        return sorted({s["Package"] for s in self.stanzas if s["Package"].startswith(prefix)})

    def show(self, packages: Sequence[str]) -> list[dict[str, str]]:
        self.asked += packages
        return [s for s in self.stanzas if s["Package"] in packages]


def _image(version: str, abi: str) -> dict[str, str]:
    """A synthetic linux-image-<abi> stanza of trixie-security."""
    return {
        "Package": f"linux-image-{abi}",
        "Version": version,
        "Source": "linux-signed-amd64 (0)",
        "Built-Using": f"linux (= {version})",
        "Filename": f"{_DIRS['$SEC/']}linux-image-{abi}_{version.split(':')[-1]}_amd64.deb",
    }


def _versions(
    text: str, suite: str, line: str = "", template: KernelSpec = TEMPLATE
) -> list[LineVersion]:
    return line_versions(template, suite, line, FakeIndex(text))


# --------------------------------------------------------------------------- SUITE[:LINE]
@pytest.mark.parametrize(
    ("text", "suite", "line"),
    [
        ("trixie-security", "trixie-security", None),
        ("trixie-backports", "trixie-backports", None),
        ("bookworm-security:6.12", "bookworm-security", "6.12"),
        ("bullseye-security:5.10", "bullseye-security", "5.10"),
        ("sid:7.2", "sid", "7.2"),
        ("trixie", "trixie", None),
        ("trixie-backports:7.0", "trixie-backports", "7.0"),
    ],
)
def test_suite_arg_accepted(text: str, suite: str, line: str | None) -> None:
    assert parse_suite_arg(text) == SuiteArg(suite, line)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "trixie-security:",
        ":6.12",
        "trixie:6",
        "trixie:6.12.1",
        "trixie:06.12",
        "trixie:6.12-rc1",
        "Trixie",
        "trixie-updates",
        "trixie-proposed-updates",
        "trixie security",
        "trixie-security\n",
        " trixie-security",
        "trixie-security;rm -rf /",
        "../trixie",
        "trixie-security:6.12:6.1",
        "trixie--security",
        "6.12",
        "trixie-securityx",
    ],
)
def test_suite_arg_rejected(text: str) -> None:
    with pytest.raises(UsageError, match="not SUITE"):
        parse_suite_arg(text)


def _check_suite_arg(text: str) -> None:
    try:
        arg = parse_suite_arg(text)
    except UsageError as exc:
        assert "bookworm-security:6.12" in (exc.fix or "")
        return
    assert text == arg.suite + (f":{arg.line}" if arg.line is not None else "")
    assert _SUITE_RE.fullmatch(arg.suite)
    assert _SUITE_RE.fullmatch(arg.toolchain)
    assert arg.line is None or re.fullmatch(r"[1-9][0-9]*\.[0-9]+", arg.line)


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_suite_arg_junk_never_passes(text: str) -> None:
    _check_suite_arg(text)


@settings(max_examples=400, deadline=None)
@given(st.from_regex(r"[a-z0-9 :.~+/\n-]{0,24}", fullmatch=True))
def test_suite_arg_near_misses_never_pass(text: str) -> None:
    _check_suite_arg(text)


def test_toolchain_suite_and_archive_root() -> None:
    assert toolchain_suite("trixie-security") == "trixie"
    assert toolchain_suite("trixie-backports") == "trixie"
    assert toolchain_suite("bookworm-security") == "bookworm"
    assert toolchain_suite("sid") == "sid"
    assert toolchain_suite("experimental") == "sid"
    assert archive_root(MIRROR, "trixie-security") == SECURITY
    assert archive_root("https://deb.debian.org/debian/", "bookworm-security") == (
        "https://deb.debian.org/debian-security"
    )
    assert archive_root(MIRROR + "/", "trixie-backports") == MIRROR


# --------------------------------------------------------------------------- versions
def test_trixie_security_line() -> None:
    idx = FakeIndex(TRIXIE_SECURITY)
    vs = line_versions(TEMPLATE, "trixie-security", "6.12", idx)
    assert [(v.version, v.abi) for v in vs] == [
        ("6.12.90-1", "6.12.90+deb13-amd64"),
        ("6.12.90-2", "6.12.90+deb13.1-amd64"),
        ("6.12.115-1", "6.12.115+deb13-amd64"),
        ("6.12.115-2", "6.12.115+deb13.1-amd64"),
        ("6.12.117-1", "6.12.117+deb13-amd64"),
    ]
    # only default-flavour ABI images were asked about: no rt/cloud/dbg/unsigned/metapackage
    assert all(re.fullmatch(r"linux-image-6\.12\.[0-9]+\+deb13(\.1)?-amd64", p) for p in idx.asked)
    v = vs[-1]
    assert (v.suite, v.source, v.split, v.has_base) == ("trixie-security", "linux", False, False)
    assert v.image_path == (
        "pool/updates/main/l/linux-signed-amd64/linux-image-6.12.117+deb13-amd64_6.12.117-1_amd64.deb"
    )
    assert v.spec() == KernelSpec(
        name="6.12.117-1",
        suite="trixie",
        abi="6.12.117+deb13-amd64",
        version="6.12.117-1",
        extra_suites=("trixie-security",),
    )
    assert v.install_packages == (
        "linux-kbuild-6.12.117+deb13",
        "linux-headers-6.12.117+deb13-common",
        "linux-image-6.12.117+deb13-amd64",
        "linux-headers-6.12.117+deb13-amd64",
    )
    assert v.kernel_packages == ("linux-image-6.12.117+deb13-amd64",)
    assert v.config_package == "linux-image-6.12.117+deb13-amd64"


def test_duplicate_stanzas_give_one_version_each() -> None:
    once = _versions(TRIXIE_SECURITY, "trixie-security", "6.12")
    twice = line_versions(
        TEMPLATE, "trixie-security", "6.12", FakeIndex(TRIXIE_SECURITY, TRIXIE_SECURITY)
    )
    assert twice == once
    assert len({(v.abi, v.version) for v in once}) == len(once) == 5


def test_template_mirror_and_valid_until_carry_over() -> None:
    tmpl = replace(TEMPLATE, mirror="https://mirror.example/debian", check_valid_until=False)
    (v, *_) = _versions(TRIXIE_SECURITY, "trixie-security", "6.12", tmpl)
    assert (v.spec().mirror, v.spec().check_valid_until) == ("https://mirror.example/debian", False)


def test_backports_line_image_binary_base() -> None:
    vs = _versions(TRIXIE_BACKPORTS, "trixie-backports")
    assert [v.version for v in vs] == [
        "6.16.3-1~bpo13+1",
        "6.18.5-1~bpo13+1",
        "6.19.6-2~bpo13+1",
        "7.2.12-1~bpo13+1",
        "7.3.4-1~bpo13+1",
    ]
    assert [(v.split, v.has_base) for v in vs] == [
        (False, False),
        (False, True),
        (True, True),
        (True, True),  # only linux-binary-7.2.12 in the index: its own stanza says so
        (True, True),
    ]
    assert {v.source for v in vs} == {"linux"}  # 6.19's image has no Built-Using: its Source
    v72 = vs[3]
    assert v72.image_path == (
        "pool/main/l/linux-signed-amd64/linux-image-7.2.12+deb13-amd64_7.2.12-1~bpo13+1_amd64.deb"
    )
    v73 = vs[-1]
    assert v73.name == "7.3.4-1_bpo13_1"
    assert v73.install_packages == (
        "linux-kbuild-7.3.4+deb13",
        "linux-headers-7.3.4+deb13-common",
        "linux-base-7.3.4+deb13-amd64",
        "linux-headers-7.3.4+deb13-amd64",
    )
    assert v73.kernel_packages == (
        "linux-image-7.3.4+deb13-amd64",
        "linux-binary-7.3.4+deb13-amd64",
        "linux-base-7.3.4+deb13-amd64",
    )
    assert v73.config_package == "linux-base-7.3.4+deb13-amd64"
    assert vs[1].config_package == "linux-image-6.18.5+deb13-amd64"
    assert [v.version for v in _versions(TRIXIE_BACKPORTS, "trixie-backports", "7.3")] == [
        "7.3.4-1~bpo13+1"
    ]


def test_specs_are_shaped_like_the_matrix_entries() -> None:
    """matrix.yaml's "7.3" (trixie + trixie-backports) and "6.1" (bookworm + -security)."""
    v73 = _versions(TRIXIE_BACKPORTS, "trixie-backports", "7.3")[-1].spec()
    assert (v73.suite, v73.extra_suites, v73.abi, v73.version) == (
        "trixie",
        ("trixie-backports",),
        "7.3.4+deb13-amd64",
        "7.3.4-1~bpo13+1",
    )
    v61 = _versions(BOOKWORM_SECURITY, "bookworm-security", "6.1")[0].spec()
    assert (v61.suite, v61.extra_suites, v61.mirror) == (
        "bookworm",
        ("bookworm-security",),
        MIRROR,
    )
    for spec in (v73, v61):
        assert _KERNEL_RE.fullmatch(spec.name)
        assert _SUITE_RE.fullmatch(spec.suite)
        assert _ABI_RE.fullmatch(spec.abi)
        assert _DEBVER_RE.fullmatch(spec.version)


def test_bookworm_security_holds_two_lines() -> None:
    vs = _versions(BOOKWORM_SECURITY, "bookworm-security")
    assert {k: [v.version for v in g] for k, g in lines_of(vs).items()} == {
        "linux": ["6.1.172-1", "6.1.192-3"],
        "linux-6.12": ["6.12.100-1~deb12u1", "6.12.118-1~deb12u1"],
    }
    with pytest.raises(UsageError) as exc:
        choose_line(SuiteArg("bookworm-security", None), vs)
    assert "6.1 (linux: 2 versions), 6.12 (linux-6.12: 2 versions)" in exc.value.what
    assert "--debian bookworm-security:6.12" in (exc.value.fix or "")
    only = choose_line(SuiteArg("bookworm-security", "6.12"), vs)
    assert [(v.abi, v.source) for v in only] == [
        ("6.12.100+deb12-amd64", "linux-6.12"),
        ("6.12.118+deb12-amd64", "linux-6.12"),
    ]
    assert [v.abi for v in choose_line(SuiteArg("bookworm-security", "6.1"), vs)] == [
        "6.1.0-48-amd64",
        "6.1.0-57-amd64",
    ]
    assert [v.version for v in _versions(BOOKWORM_SECURITY, "bookworm-security", "6.1")] == [
        "6.1.172-1",
        "6.1.192-3",
    ]
    with pytest.raises(UsageError, match=r"holds no 6\.2 kernel"):
        choose_line(SuiteArg("bookworm-security", "6.2"), vs)


def test_one_line_spanning_series_needs_no_line() -> None:
    vs = _versions(TRIXIE_BACKPORTS, "trixie-backports")
    assert choose_line(SuiteArg("trixie-backports", None), vs) == vs
    with pytest.raises(UsageError, match="holds no linux-image"):
        choose_line(SuiteArg("trixie-updates", None), [])


ORDERED = [  # dpkg order, oldest first
    ("6.12.9-1", "6.12.9+deb13-amd64"),
    ("6.12.43-1~bpo12+1", "6.12.43+bpo-amd64"),
    ("6.12.43-1~deb12u1", "6.12.43+deb12-amd64"),
    ("6.12.43-1", "6.12.43+deb13-amd64"),
    ("6.12.43-1+deb13u1", "6.12.43+deb13.1-amd64"),
    ("6.12.43-2~bpo12+1", "6.12.43+deb13.2-amd64"),
    ("6.12.90-1", "6.12.90+deb13-amd64"),
    ("6.12.90-2", "6.12.90+deb13.3-amd64"),
    ("6.12.100-1", "6.12.100+deb13-amd64"),
    ("1:6.12.1-1", "6.12.1+deb13-amd64"),  # an epoch outranks everything
]


@settings(max_examples=60, deadline=None)
@given(st.permutations(ORDERED), st.integers(min_value=0, max_value=3))
def test_dpkg_order_and_dedup(shuffled: list[tuple[str, str]], dups: int) -> None:
    stanzas = [_image(v, a) for v, a in shuffled] + [_image(v, a) for v, a in shuffled[:dups]]
    idx = FakeIndex(extra=stanzas)
    vs = line_versions(TEMPLATE, "trixie-security", "6.12", idx)
    assert [(v.version, v.abi) for v in vs] == ORDERED


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg not installed")
def test_order_agrees_with_dpkg() -> None:
    for (older, _), (newer, _) in itertools.pairwise(ORDERED):
        subprocess.run(["dpkg", "--compare-versions", older, "lt", newer], check=True)


def test_other_lines_and_series_stay_out() -> None:
    stanzas = [_image("6.1.192-3", "6.1.0-57-amd64"), _image("6.12.117-1", "6.12.117+deb13-amd64")]
    stanzas.append(_image("6.120.1-1", "6.120.1+deb13-amd64"))  # not 6.12 either
    vs = line_versions(TEMPLATE, "trixie-security", "6.12", FakeIndex(extra=stanzas))
    assert [v.version for v in vs] == ["6.12.117-1"]


def test_names_that_read_alike_are_made_unique() -> None:
    stanzas = [_image("6.12.1-1+a", "6.12.1+a-amd64"), _image("6.12.1-1~a", "6.12.1+b-amd64")]
    vs = line_versions(TEMPLATE, "trixie-security", "6.12", FakeIndex(extra=stanzas))
    names = [v.name for v in vs]
    assert len(set(names)) == 2
    assert all(_KERNEL_RE.fullmatch(n) for n in names)


@pytest.mark.parametrize(
    ("version", "name"),
    [
        ("6.12.117-1", "6.12.117-1"),
        ("7.3.4-1~bpo13+1", "7.3.4-1_bpo13_1"),
        ("6.12.118-1~deb12u1", "6.12.118-1_deb12u1"),
        ("1:6.12.1-1", "1_6.12.1-1"),
        ("~x", "v_x"),
    ],
)
def test_kernel_name_examples(version: str, name: str) -> None:
    assert kernel_name(version) == name


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80), st.booleans())
def test_kernel_name_always_matches_the_schema(version: str, unique: bool) -> None:
    name = kernel_name(version, unique=unique)
    assert _KERNEL_RE.fullmatch(name), name
    if not unique and re.fullmatch(r"[0-9][A-Za-z0-9._-]{0,31}", version):
        assert name == version


class FakeArchive(FakeIndex):
    """suite_archive's stand-in: a context manager that needs an update first."""

    def __init__(self, *texts: str) -> None:
        super().__init__(*texts)
        self.updated = False

    def __enter__(self) -> FakeArchive:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def update(self) -> None:
        self.updated = True


def test_find_version_of_a_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the kernel stage asks when the index lists no headers at the pinned version."""
    asked: list[str] = []
    suites = {"trixie-backports": TRIXIE_BACKPORTS, "trixie": ""}

    def fake_archive(template: KernelSpec, suite: str) -> FakeArchive:
        asked.append(suite)
        return FakeArchive(suites[suite])

    monkeypatch.setattr(debian_line, "suite_archive", fake_archive)
    spec = KernelSpec(
        name="7.3",
        suite="trixie",
        abi="7.3.4+deb13-amd64",
        version="7.3.4-1~bpo13+1",
        extra_suites=("trixie-backports",),
    )
    v = find_version(spec)
    assert (v.name, v.abi, v.version, v.suite, v.split) == (
        "7.3",
        spec.abi,
        spec.version,
        "trixie-backports",
        True,
    )
    assert v.spec() == spec
    assert asked == ["trixie-backports"]
    assert find_version(replace(spec, version="")).version == "7.3.4-1~bpo13+1"  # the newest
    with pytest.raises(UsageError, match=r"no linux-image-7\.3\.4"):
        find_version(replace(spec, version="7.3.4-2~bpo13+1"))
    assert asked[-2:] == ["trixie-backports", "trixie"]


# --------------------------------------------------------------------------- --good/--bad
def test_select_range_inclusive() -> None:
    vs = _versions(TRIXIE_SECURITY, "trixie-security", "6.12")
    got = select_range(vs, "6.12.90-2", "6.12.117-1")
    assert [v.version for v in got] == ["6.12.90-2", "6.12.115-1", "6.12.115-2", "6.12.117-1"]
    assert select_range(vs, "6.12.115-1", "6.12.115-2") == vs[2:4]
    bpo = _versions(TRIXIE_BACKPORTS, "trixie-backports")
    assert select_range(bpo, "6.16.3-1_bpo13_1", "7.3.4-1~bpo13+1") == bpo  # name or version


def test_select_range_unknown_version_names_the_nearest_first() -> None:
    vs = _versions(TRIXIE_SECURITY, "trixie-security", "6.12")
    with pytest.raises(UsageError) as exc:
        select_range(vs, "6.12.116-1", "6.12.117-1")
    assert exc.value.what == (
        "--good 6.12.116-1: trixie-security holds no such version; nearest: "
        "6.12.117-1, 6.12.115-2, 6.12.115-1, 6.12.90-2, 6.12.90-1"
    )
    with pytest.raises(UsageError, match=r"--bad 6\.12\.80-1: .*nearest: 6\.12\.90-1, 6\.12\.90-2"):
        select_range(vs, "6.12.90-1", "6.12.80-1")
    with pytest.raises(UsageError, match=r"--bad banana: .*nearest: 6\.12\.117-1"):
        select_range(vs, "6.12.90-1", "banana")


def test_select_range_cuts_a_long_list() -> None:
    stanzas = [_image(f"6.12.{n}-1", f"6.12.{n}+deb13-amd64") for n in range(100, 120)]
    vs = line_versions(TEMPLATE, "trixie-security", "6.12", FakeIndex(extra=stanzas))
    with pytest.raises(UsageError, match=r"nearest: 6\.12\.110-1, 6\.12\.109-1, .*\(20 in all\)"):
        select_range(vs, "6.12.109-5", "6.12.119-1")


@pytest.mark.parametrize(
    ("good", "bad"), [("6.12.117-1", "6.12.117-1"), ("6.12.117-1", "6.12.90-1")]
)
def test_select_range_good_must_be_older(good: str, bad: str) -> None:
    vs = _versions(TRIXIE_SECURITY, "trixie-security", "6.12")
    with pytest.raises(UsageError, match="not older than") as exc:
        select_range(vs, good, bad)
    assert "--fix" in (exc.value.fix or "")


# --------------------------------------------------------------------------- upstream
@pytest.mark.parametrize(
    ("version", "tag"),
    [
        ("6.12.107-1", "v6.12.107"),
        ("7.3.4-1~bpo13+1", "v7.3.4"),
        ("6.12.118-1~deb12u1", "v6.12.118"),
        ("6.1.192-3", "v6.1.192"),
        ("6.12.115-2", "v6.12.115"),
        ("6.12-1~exp1", "v6.12"),
        ("6.12.0-1", "v6.12"),
        ("6.17~rc3-1~exp1", "v6.17-rc3"),
        ("1:6.12.1-1", "v6.12.1"),
    ],
)
def test_upstream_tag(version: str, tag: str) -> None:
    assert upstream_tag(version) == tag


@pytest.mark.parametrize("version", ["6.12.107", "banana-1", "6-1", "6.12.1a-1"])
def test_upstream_tag_rejects(version: str) -> None:
    with pytest.raises(UsageError, match="not a Debian kernel version"):
        upstream_tag(version)


def test_upstream_range() -> None:
    vs = {v.version: v for v in _versions(TRIXIE_SECURITY, "trixie-security", "6.12")}
    assert upstream_range(vs["6.12.90-2"], vs["6.12.115-1"]) == ("v6.12.90", "v6.12.115")
    with pytest.raises(UsageError, match=r"both upstream v6\.12\.115: the change is Debian's"):
        upstream_range(vs["6.12.115-1"], vs["6.12.115-2"])
    with pytest.raises(UsageError, match="not older"):
        upstream_range(vs["6.12.117-1"], vs["6.12.90-1"])
    bpo = _versions(TRIXIE_BACKPORTS, "trixie-backports")
    assert upstream_range(bpo[-2], bpo[-1]) == ("v7.2.12", "v7.3.4")


# --------------------------------------------------------------------------- pool files
def _by_version(text: str, suite: str, version: str) -> LineVersion:
    return next(v for v in _versions(text, suite) if v.version == version)


def test_pool_files_of_a_security_version() -> None:
    v = _by_version(TRIXIE_SECURITY, "trixie-security", "6.12.117-1")
    sec, main = f"{SECURITY}/pool/updates/main/l", f"{MIRROR}/pool/main/l"
    files = pool_files(v, MIRROR)
    assert [(f.package, f.filename) for f in files] == [
        ("linux-kbuild-6.12.117+deb13", "linux-kbuild-6.12.117+deb13_6.12.117-1_amd64.deb"),
        (
            "linux-headers-6.12.117+deb13-common",
            "linux-headers-6.12.117+deb13-common_6.12.117-1_all.deb",
        ),
        (
            "linux-image-6.12.117+deb13-amd64",
            "linux-image-6.12.117+deb13-amd64_6.12.117-1_amd64.deb",
        ),
        (
            "linux-headers-6.12.117+deb13-amd64",
            "linux-headers-6.12.117+deb13-amd64_6.12.117-1_amd64.deb",
        ),
    ]
    assert files[0].urls == (
        f"{sec}/linux/linux-kbuild-6.12.117%2Bdeb13_6.12.117-1_amd64.deb",
        f"{main}/linux/linux-kbuild-6.12.117%2Bdeb13_6.12.117-1_amd64.deb",
    )
    assert files[2].urls == (
        f"{sec}/linux-signed-amd64/linux-image-6.12.117%2Bdeb13-amd64_6.12.117-1_amd64.deb",
        f"{main}/linux-signed-amd64/linux-image-6.12.117%2Bdeb13-amd64_6.12.117-1_amd64.deb",
    )


def test_pool_files_of_a_backports_version() -> None:
    v = _by_version(TRIXIE_BACKPORTS, "trixie-backports", "7.3.4-1~bpo13+1")
    files = pool_files(v, MIRROR + "/")
    assert [f.package for f in files] == [*v.install_packages, *v.kernel_packages[:2]]
    assert [f.urls for f in files][-1] == (
        f"{MIRROR}/pool/main/l/linux-signed-amd64/"
        "linux-binary-7.3.4%2Bdeb13-amd64_7.3.4-1~bpo13%2B1_amd64.deb",
    )
    assert files[2].urls == (
        f"{MIRROR}/pool/main/l/linux/linux-base-7.3.4%2Bdeb13-amd64_7.3.4-1~bpo13%2B1_amd64.deb",
    )


def test_pool_files_of_bookworm_lines() -> None:
    v61 = _by_version(BOOKWORM_SECURITY, "bookworm-security", "6.1.172-1")
    assert [f.filename for f in pool_files(v61, MIRROR)] == [
        "linux-kbuild-6.1_6.1.172-1_amd64.deb",  # the old ABI scheme: one kbuild per series
        "linux-headers-6.1.0-48-common_6.1.172-1_all.deb",
        "linux-image-6.1.0-48-amd64_6.1.172-1_amd64.deb",
        "linux-headers-6.1.0-48-amd64_6.1.172-1_amd64.deb",
    ]
    v612 = _by_version(BOOKWORM_SECURITY, "bookworm-security", "6.12.100-1~deb12u1")
    first = pool_files(v612, "https://deb.debian.org/debian")[0]
    assert first.urls[0] == (
        "https://deb.debian.org/debian-security/pool/updates/main/l/linux-6.12/"
        "linux-kbuild-6.12.100%2Bdeb12_6.12.100-1~deb12u1_amd64.deb"
    )


# --------------------------------------------------------------------------- probe
def test_probe_all_found_in_the_suites_own_pool() -> None:
    v = _by_version(TRIXIE_SECURITY, "trixie-security", "6.12.117-1")
    asked: list[str] = []

    def status(url: str) -> int:
        asked.append(url)
        return 200

    reach = probe(v, MIRROR, status=status)
    assert reach.reachable and reach.reason() == ""
    assert reach.urls == [f.urls[0] for f in pool_files(v, MIRROR)] == asked
    assert pool_debs(v, MIRROR, status=status) == reach.urls


def test_probe_falls_back_to_the_main_pool() -> None:
    """trixie-security's 6.12.94 headers: 404 in debian-security, 200 in debian (seen)."""
    v = _by_version(TRIXIE_SECURITY, "trixie-security", "6.12.90-1")

    def status(url: str) -> int:
        return 404 if "debian-security" in url and "/l/linux/" in url else 200

    reach = probe(v, MIRROR, status=status)
    assert reach.reachable
    assert [u.split("/pool/")[0] for u in reach.urls] == [MIRROR, MIRROR, SECURITY, MIRROR]


def test_probe_names_every_missing_file() -> None:
    v = _by_version(TRIXIE_SECURITY, "trixie-security", "6.12.90-1")

    def status(url: str) -> int:
        return 404 if "linux-kbuild" in url or "-common_" in url else 200

    reach = probe(v, MIRROR, status=status)
    assert isinstance(reach, Reachability) and not reach.reachable
    assert [f.package for f in reach.missing] == [
        "linux-kbuild-6.12.90+deb13",
        "linux-headers-6.12.90+deb13-common",
    ]
    assert "linux-kbuild-6.12.90+deb13_6.12.90-1_amd64.deb: not in the pool (404 at " in (
        reach.reason()
    )
    assert f"{SECURITY}/pool/updates/main/l/linux/linux-kbuild-" in reach.reason()
    with pytest.raises(VersionUnreachable) as exc:
        pool_debs(v, MIRROR, status=status)
    assert isinstance(exc.value, InfraError)
    assert exc.value.reachability == reach
    assert "6.12.90+deb13-amd64 6.12.90-1 (trixie-security) cannot be fetched" in exc.value.what


@pytest.mark.parametrize("code", [500, 403, 400, 301])
def test_probe_other_answers_are_infrastructure(code: int) -> None:
    v = _by_version(TRIXIE_BACKPORTS, "trixie-backports", "6.16.3-1~bpo13+1")
    with pytest.raises(InfraError, match=f"HTTP {code}") as exc:
        probe(v, MIRROR, status=lambda url: code)
    assert (exc.value.where or "").startswith(f"{MIRROR}/pool/main/l/linux/linux-kbuild-6.16.3")


# --------------------------------------------------------------------------- HTTP
class _Handler(BaseHTTPRequestHandler):
    methods: ClassVar[list[str]] = []

    def do_HEAD(self) -> None:
        self.methods.append(self.command)
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/pool/x%2By.deb")
        elif self.path == "/pool/x%2By.deb":
            self.send_response(200)
        elif self.path == "/boom":
            self.send_response(503)
        else:
            self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.methods.append(self.command)
        body = b"!<arch>\n" * 1000
        if self.path != "/pool/x%2By.deb":
            self.send_response(404)
            body = b""
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.methods = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_http_status_heads_and_follows_redirects_with_head(server: str) -> None:
    assert http_status(f"{server}/pool/x%2By.deb") == 200
    assert http_status(f"{server}/moved") == 200
    assert http_status(f"{server}/gone") == 404
    assert http_status(f"{server}/boom") == 503
    assert set(_Handler.methods) == {"HEAD"}


def test_http_status_without_an_answer_is_infrastructure(server: str) -> None:
    port = int(server.rsplit(":", 1)[1])
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    free = srv.server_address[1]
    srv.server_close()  # nobody listens there now
    assert free != port
    with pytest.raises(InfraError, match="got no answer") as exc:
        http_status(f"http://127.0.0.1:{free}/pool/x.deb", timeout_s=5)
    assert exc.value.where == f"http://127.0.0.1:{free}/pool/x.deb"
    assert "check network access to http://127.0.0.1" in (exc.value.fix or "")
    for url in ("file:///etc/passwd", "ftp://deb.debian.org/debian/x.deb"):
        with pytest.raises(InfraError, match="not an http"):
            http_status(url)


def test_download_debs(server: str, tmp_path: Path) -> None:
    (got,) = download_debs([f"{server}/pool/x%2By.deb"], tmp_path)
    assert got == tmp_path / "x+y.deb"
    assert got.read_bytes() == b"!<arch>\n" * 1000
    with pytest.raises(InfraError, match=r"HTTP 404 \(no longer in the pool\)") as exc:
        download_debs([f"{server}/pool/gone.deb"], tmp_path)
    assert exc.value.where == f"{server}/pool/gone.deb"
    for bad in (f"{server}/pool/..%2F..%2Fetc%2Fx.deb", f"{server}/pool/x.tar", "file:///x.deb"):
        with pytest.raises(InfraError, match="not a"):
            download_debs([bad], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x+y.deb"]


# --------------------------------------------------------------------------- config
def _deb(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: linux-test\nVersion: 1\nArchitecture: all\nMaintainer: x <x@x>\n"
        "Description: test\n"
    )
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    deb = tmp_path / "t.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
        check=True,
        capture_output=True,
    )
    return deb


ABI = "7.3.4+deb13-amd64"


def test_config_members() -> None:
    assert config_member("6.12.117+deb13-amd64") == "boot/config-6.12.117+deb13-amd64"
    assert config_members(ABI) == (f"boot/config-{ABI}", f"usr/lib/modules/{ABI}/config")


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")
@pytest.mark.parametrize("member", [f"boot/config-{ABI}", f"usr/lib/modules/{ABI}/config"])
def test_extract_config(tmp_path: Path, member: str) -> None:
    text = 'CONFIG_CC_VERSION_TEXT="gcc-14 (Debian 14.2.0-19) 14.2.0"\nCONFIG_KVM=m\n'
    deb = _deb(tmp_path, {"usr/share/doc/x": "doc", member: text, f"boot/vmlinuz-{ABI}": "k"})
    assert extract_config(deb, ABI) == text


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")
def test_extract_config_from_a_package_without_one(tmp_path: Path) -> None:
    deb = _deb(tmp_path, {"boot/config-6.1.0-1-amd64": "CONFIG_X=y\n"})  # another ABI's
    with pytest.raises(InfraError, match="holds no kernel config") as exc:
        extract_config(deb, ABI)
    assert exc.value.where == str(deb)
    junk = tmp_path / "junk.deb"
    junk.write_bytes(random.Random(1).randbytes(4096))
    with pytest.raises(InfraError):
        extract_config(junk, ABI)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")
def test_one_reader_serves_vmlinuz_kvm_modules_and_config(tmp_path: Path) -> None:
    """rig.debian.deb_members: the kernel image (kernel.py), KVM's modules (kvm.py) and the
    config (here) come out of one package by one reader; only regular files, only those named."""
    from rig.artifacts.kernel import _extract_vmlinuz
    from rig.debian import deb_members

    mods = f"usr/lib/modules/{ABI}/kernel"
    files = {f"boot/vmlinuz-{ABI}": "bzImage", f"boot/config-{ABI}": "CONFIG_X=y\n",
             f"{mods}/arch/x86/kvm/kvm.ko": "kvm", "usr/share/doc/x": "doc"}  # fmt: skip
    deb = _deb(tmp_path, files)
    got = deb_members(deb, {f"boot/vmlinuz-{ABI}", f"{mods}/arch/x86/kvm/kvm.ko", "boot/none"})
    assert got == {f"boot/vmlinuz-{ABI}": b"bzImage", f"{mods}/arch/x86/kvm/kvm.ko": b"kvm"}
    assert _extract_vmlinuz(deb, ABI, tmp_path / "vmlinuz")
    assert (tmp_path / "vmlinuz").read_bytes() == b"bzImage"
    assert not _extract_vmlinuz(deb, "6.1.0-1-amd64", tmp_path / "other")


def test_extract_config_needs_dpkg_deb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing, match="dpkg-deb"):
        extract_config(tmp_path / "x.deb", ABI)


# --------------------------------------------------------------------------- live archive
def _live(arg: str) -> list[LineVersion]:
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get not installed")
    return versions_for(TEMPLATE, parse_suite_arg(arg))


@pytest.mark.slow
def test_live_trixie_security_line() -> None:
    vs = _live("trixie-security")
    assert len(vs) >= 2
    assert all(v.abi.startswith("6.12.") and v.abi.endswith("-amd64") for v in vs)
    assert len({v.name for v in vs}) == len(vs)
    assert all(_KERNEL_RE.fullmatch(v.name) for v in vs)
    newest = vs[-1]
    reach = probe(newest, MIRROR)  # the newest one's headers are indexed: in the pool
    assert reach.reachable, reach.reason()
    assert [u.rsplit("/", 1)[1].split("_", 1)[0] for u in reach.urls] == [
        p.replace("+", "%2B") for p in newest.install_packages
    ]


@pytest.mark.slow
def test_live_bookworm_security_needs_a_line() -> None:
    with pytest.raises(UsageError, match=r"6\.1 \(linux: .*6\.12 \(linux-6\.12: "):
        _live("bookworm-security")
    assert {v.source for v in _live("bookworm-security:6.12")} == {"linux-6.12"}
