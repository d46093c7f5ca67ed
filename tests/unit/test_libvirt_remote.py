"""The remote transport's pure parts (rig.lanes.libvirt_remote); the real thing boots in
tests/e2e/test_remote_host.py against a libvirt host that shares no filesystem with us."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rig.errors import InfraError
from rig.lanes.libvirt import domain_xml
from rig.lanes.libvirt_remote import host_xml, is_remote, sha256_of
from tests.unit.test_lanes import _spec


@pytest.mark.parametrize(
    ("uri", "remote"),
    [
        ("embed", False),
        ("qemu:///system", False),
        ("qemu:///session", False),
        ("qemu:///embed?root=/tmp/x", False),
        ("qemu+unix:///system", False),
        ("qemu+unix:///system?socket=/tmp/sock", False),
        ("qemu+ssh://root@host/system", True),
        ("qemu+ssh://root@127.0.0.1:2222/system?keyfile=/k&no_verify=1", True),
        ("qemu+tcp://host/system", True),
        ("qemu://host/system", True),  # TLS, the default transport with a host
        ("qemu+tls:///system", True),  # a transport other than the local socket
        ("qemu+ext:///system?command=/bin/x", True),
    ],
)
def test_which_uris_are_remote(uri: str, remote: bool) -> None:
    assert is_remote(uri) is remote


def test_a_remote_domain_has_pty_serial_ports_and_the_hosts_paths(tmp_path: Path) -> None:
    libvirt = pytest.importorskip("libvirt")
    xml = domain_xml(_spec(tmp_path), name="rig-r", domain_type="qemu",
                     console=tmp_path / "console.txt", require_vmx=False,
                     agent=tmp_path / "agent.txt", pty=True)  # fmt: skip
    xml = host_xml(xml, kernel="/var/lib/libvirt/vmlaunch-rig/vmlinuz-ab",
                   initrd="/var/lib/libvirt/vmlaunch-rig/rig-r.initrd")  # fmt: skip
    assert str(tmp_path) not in xml  # nothing of the controller's reaches the host
    root = ET.fromstring(xml)
    serials = root.findall("devices/serial")
    assert [(s.get("type"), s.find("source")) for s in serials] == [("pty", None)] * 2
    assert root.findtext("os/kernel") == "/var/lib/libvirt/vmlaunch-rig/vmlinuz-ab"
    assert root.findtext("os/initrd") == "/var/lib/libvirt/vmlaunch-rig/rig-r.initrd"
    conn = libvirt.open("test:///default")
    try:
        dom = conn.createXML(xml, 0)
        assert dom.name() == "rig-r"
        dom.destroy()
    finally:
        conn.close()


def test_host_xml_refuses_a_domain_without_a_kernel() -> None:
    with pytest.raises(InfraError, match="os/kernel"):
        host_xml("<domain><os/></domain>", kernel="/k", initrd="/i")


def test_content_names_come_from_the_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * (3 << 20))
    b.write_bytes(b"x" * (3 << 20))
    assert sha256_of(a) == sha256_of(b)
    b.write_bytes(b"x" * (3 << 20) + b"y")
    assert sha256_of(a) != sha256_of(b)
