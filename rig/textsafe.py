"""Untrusted text (guest output, a driver's build log, fields of a JUnit file) made safe for
where it goes: XML, a terminal or CI log, JUnit system-out.

Pure functions, no rig imports: the verdict and guest side may use them too.

    xml_safe(s)    every character XML 1.0 forbids as `#xNN` text (pytest's junitxml style)
    shown(s)       control characters as visible `\\xNN` escapes, never raw (terminal, CI log)
    no_markers(s)  `[[ATTACHMENT|` neutralised: a guest cannot name a host file for Jenkins
"""

from __future__ import annotations

import re

_XML_FORBIDDEN = re.compile("[^\t\n\r\x20-\x7e\x80-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Outside XML 1.0's Char (#x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] |
[#x10000-#x10FFFF]): C0 controls, lone surrogates, U+FFFE/U+FFFF. DEL (#x7F) too, as pytest's
`bin_xml_escape` does (XML allows it; it is a control all the same)."""

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""C0 controls except tab and newline, DEL and the C1 controls (U+0080-U+009F; U+009B is CSI)."""

ATTACHMENT = "[[ATTACHMENT|"
"""What the Jenkins JUnit Attachments plugin looks for (`\\[\\[ATTACHMENT\\|.+\\]\\]`)."""
GUEST_ATTACHMENT = "[[ATTACHMENT(guest)|"
"""What `no_markers` makes of it: shown as it was, read by no plugin."""


def _hex(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"#x{code:02X}" if code <= 0xFF else f"#x{code:04X}"


def xml_safe(text: str) -> str:
    """`text` with every character XML 1.0 cannot carry replaced by visible `#xNN` text (not an
    XML reference: `#x1B`, `#xFFFE`), so ElementTree's output always parses. Idempotent."""
    return _XML_FORBIDDEN.sub(_hex, text)


_SHOWN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def shown(text: str) -> str:
    """`text` for a terminal or CI log: each control character other than tab and newline as
    `\\xNN` (an ANSI escape prints as `\\x1b[2J`, a carriage return as `\\x0d`), and a lone
    surrogate (no terminal can print it: UTF-8 has none) as `\\udNNN`."""
    return _SHOWN.sub(lambda m: f"\\{'u' if ord(m.group()) > 0xFF else 'x'}"
                      f"{ord(m.group()):0{4 if ord(m.group()) > 0xFF else 2}x}", text)  # fmt: skip


def no_markers(text: str) -> str:
    """Guest text for JUnit system-out after the rig's own `[[ATTACHMENT|path]]` markers: every
    `[[ATTACHMENT|` it holds becomes `[[ATTACHMENT(guest)|`, which the plugin ignores."""
    return text.replace(ATTACHMENT, GUEST_ATTACHMENT)
