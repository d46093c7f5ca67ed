"""Comment-preserving edits of matrix.yaml: set one kernel's `abi:` and `version:` pin.

    rewrite_kernel_pin(text, name, abi, version) -> text   only those two values change
    checked_rewrite(...)                                   the same, then proves the result

ruamel.yaml's round-trip parser finds the kernel's entry and the exact span of its `abi:` and
`version:` values (its nodes carry start and end marks into the text, for block and flow
mappings, any quoting and any line ends). Only those spans are replaced, so comments, quoting
of everything else, flow mappings, blank lines and CRLF line ends stay as they were. (Dumping
the whole round-trip tree instead would re-lay the multi-line flow entries of `exclude:`.)
"""

from __future__ import annotations

import dataclasses
import re

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode

from rig.errors import MatrixError
from rig.matrix.load import parse_matrix

_PLAIN_OR_QUOTED = (None, "", '"', "'")
_LINE_END = re.compile(r"\r\n|\r|\n")


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _entry(root: Node | None, name: str, source: str) -> MappingNode:
    """The mapping node of kernel `name` under the top-level `kernels:` mapping."""
    kernels = None
    if isinstance(root, MappingNode):
        kernels = next((v for k, v in root.value if k.value == "kernels"), None)
    if not isinstance(kernels, MappingNode):
        raise MatrixError(
            "no `kernels:` mapping found",
            where=source,
            fix="write kernels: as a mapping, one kernel per key",
        )
    for key, value in kernels.value:
        if isinstance(key, ScalarNode) and key.value == name:
            if not isinstance(value, MappingNode):
                raise MatrixError(
                    f"kernel {name!r} is not a mapping",
                    where=f"{source}:{key.start_mark.line + 1}",
                )
            return value
    raise MatrixError(f"kernel {name!r} not found in the kernels: section", where=source)


def _values(entry: MappingNode, key: str) -> list[tuple[Node, Node]]:
    return [(k, v) for k, v in entry.value if isinstance(k, ScalarNode) and k.value == key]


def rewrite_kernel_pin(
    text: str, name: str, abi: str, version: str, source: str = "matrix.yaml"
) -> str:
    """matrix.yaml text with kernel `name`'s abi and version set; everything else untouched.

    The version key is added after abi when the entry has none: in a flow mapping right after
    the abi value, in a block mapping on a line of its own below the abi line.
    """
    try:
        root = YAML(typ="rt", pure=True).compose(text)
    except YAMLError as err:
        raise MatrixError(f"cannot read as YAML: {err}", where=source) from err
    entry = _entry(root, name, source)
    where = f"{source}:{entry.start_mark.line + 1}"
    abis, versions = _values(entry, "abi"), _values(entry, "version")
    if len(abis) != 1 or len(versions) > 1:
        raise MatrixError(
            f"kernel {name!r}: expected one abi and at most one version key, "
            f"found {len(abis)} and {len(versions)}",
            where=where,
        )
    for _, node in abis + versions:
        if not isinstance(node, ScalarNode) or node.style not in _PLAIN_OR_QUOTED:
            raise MatrixError(
                f"kernel {name!r}: abi and version must be plain or quoted strings",
                where=f"{source}:{node.start_mark.line + 1}",
                fix='write them on one line, like abi: "6.12.117+deb13-amd64"',
            )
    abi_key, abi_node = abis[0]
    edits = [(abi_node.start_mark.index, abi_node.end_mark.index, _quoted(abi))]
    if versions:
        node = versions[0][1]
        edits.append((node.start_mark.index, node.end_mark.index, _quoted(version)))
    elif entry.flow_style:
        end = abi_node.end_mark.index
        edits.append((end, end, f", version: {_quoted(version)}"))
    else:
        found = _LINE_END.search(text, abi_node.end_mark.index)
        at, line_end = (found.start(), found.group()) if found else (len(text), "\n")
        indent = " " * abi_key.start_mark.column
        edits.append((at, at, f"{line_end}{indent}version: {_quoted(version)}"))
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def checked_rewrite(text: str, name: str, abi: str, version: str, source: str) -> str:
    """rewrite_kernel_pin, then make sure the result loads and differs only in that pin."""
    before = parse_matrix(text, source)
    new = rewrite_kernel_pin(text, name, abi, version, source)
    after = parse_matrix(new, source)
    old = before.kernels.get(name)
    expected = before
    if old is not None:
        pinned = dataclasses.replace(old, abi=abi, version=version)
        # a nested lane's L1 kernel is that kernel too (LaneSpec.l1_kernel)
        lanes = {n: dataclasses.replace(lane, l1_kernel=pinned) if lane.l1_kernel == old else lane
                 for n, lane in before.lanes.items()}  # fmt: skip
        expected = dataclasses.replace(
            before, kernels={**before.kernels, name: pinned}, lanes=lanes
        )
    if old is None or after != expected:
        raise MatrixError(
            f"rewriting kernel {name!r} did not give abi={abi} version={version} "
            "with the rest of the matrix unchanged",
            where=source,
            fix="edit the kernel's abi/version by hand",
        )
    return new
