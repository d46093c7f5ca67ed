"""tcg snapshots: libvirt saves the waiting base guest to a file, each cell restores it.

    blank_medium(path)                                   the save's empty CD (MEDIUM_BYTES)
    restore_xml(saved, console=, agent=, medium=) -> (name, xml)   the cell's restore

Saving: the base guest (rig.guest.carrier) boots with an empty CD-ROM on the IDE bus (its
drivers are what the base initrd loads, as on Bochs) and says `RIG-SNAPSHOT ready` on its
agent channel; the libvirt child then saves the domain (`virDomainSave`: QEMU's migration
stream to a file, the guest stopped) and keeps the domain XML the save holds
(`virDomainSaveImageGetXMLDesc`) beside it as `domain.xml`.

Restoring (`virDomainRestoreFlags` with that XML, edited): libvirt accepts only an XML whose
guest ABI, name and UUID match the save's (a new UUID is refused: "Target domain uuid ... does
not match source"), so every restore of a save is the same domain. That is safe only where
each boot has a libvirt of its own: the embedded driver's slots (rig.lanes.libvirt_child), so
only the `embed` URI restores. What a restore may change are host paths: the two serial ports'
files (the cell's console and agent channel) and the CD's medium (the cell's carrier, sized
as the empty CD the guest saw). Measured on this machine's QEMU 7.2 under TCG with 512 MiB: a
save in 1.5 s (96 MB), a restore in 0.3 s.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from rig.errors import InfraError

MEDIUM_BYTES = 64 << 20  # the empty CD's size: a cell's carrier (its /rig, gzipped) fits in it
CDROM_TARGET = "hdc"  # IDE secondary master: ata_piix + sr_mod, the base initrd's drivers
SAVE_FILE = "domain.save"
XML_FILE = "domain.xml"


def blank_medium(path: Path) -> None:
    """A sparse file of MEDIUM_BYTES zeros: the CD the base guest sees while it waits."""
    with path.open("wb") as fh:
        fh.truncate(MEDIUM_BYTES)


def restore_xml(saved: str, *, console: Path, agent: Path, medium: Path) -> tuple[str, str]:
    """The saved domain's name, and its XML with this cell's paths: console and agent channel
    (the two serial ports, in port order), the carrier as the CD's medium. The `<console>`
    elements libvirt adds as aliases of the first serial port go: the serial port stands for
    them."""
    try:
        dom = ET.fromstring(saved)  # noqa: S314 - libvirt's own, from a save in our cache
    except ET.ParseError as exc:
        raise InfraError(f"a saved domain's XML that does not parse: {exc}") from exc
    devices = dom.find("devices")
    if devices is None:
        raise InfraError("a saved domain's XML without <devices>")
    serials = [s.find("source") for s in devices.findall("serial")]
    cdroms = [d.find("source") for d in devices.findall("disk") if d.get("device") == "cdrom"]
    if len(serials) != 2 or len(cdroms) != 1 or None in (*serials, *cdroms):
        raise InfraError(
            f"a saved domain with {len(serials)} serial ports and {len(cdroms)} CD-ROMs "
            "(the rig saves 2 and 1): not a save of the rig's"
        )
    for source, path in zip([*serials, *cdroms], (console, agent, medium), strict=True):
        assert source is not None
        source.set("file" if source in cdroms else "path", str(path))
    for alias in devices.findall("console"):
        devices.remove(alias)
    return dom.findtext("name", ""), ET.tostring(dom, encoding="unicode")
