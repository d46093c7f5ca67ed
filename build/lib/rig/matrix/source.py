"""The untrusted YAML source of matrix.yaml -> plain data with the place of every key and value.

    read_document(data, source) -> Document   data, key/value marks by path, problems found

The file is read with ruamel.yaml (YAML 1.1 rules for plain scalars, as PyYAML read it before:
`yes`/`no` are booleans, `6.10` is a float): its event stream is checked first (no anchors, no
aliases, nesting at most MAX_DEPTH), then its node tree, which carries the line and column of
every node, is turned into dicts, lists and scalars here. Refused, each with FILE:LINE:COL:
files over MAX_BYTES, bytes that are not UTF-8, control characters, YAML syntax errors, more
than one document, anchors and aliases, tags other than the plain scalar/mapping/sequence ones,
duplicate keys, and keys that are not strings (an unquoted `6.10:` is a float).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ruamel.yaml import YAML
from ruamel.yaml.constructor import BaseConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, NodeEvent
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.resolver import VersionedResolver

from rig.errors import MatrixError

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_SHOWN = 30  # problems rendered in the message (all are in .problems)

YAML_PREFIX = "tag:yaml.org,2002:"
STR_TAG = YAML_PREFIX + "str"
PLAIN_TAGS = frozenset(
    YAML_PREFIX + kind for kind in ("str", "int", "float", "bool", "null", "map", "seq")
)

Path_ = tuple[str | int, ...]


class Mark(Protocol):
    """Where a YAML node starts (ruamel.yaml's StreamMark, 0-based)."""

    @property
    def line(self) -> int: ...

    @property
    def column(self) -> int: ...


# --------------------------------------------------------------------------- problems
@dataclass(frozen=True)
class Problem:
    """One thing wrong with a matrix file, at a 1-based line and column."""

    source: str
    line: int
    col: int
    what: str
    expected: str = ""
    fix: str = ""

    def render(self) -> str:
        text = f"{self.source}:{self.line}:{self.col}: {self.what}"
        if self.expected:
            text += f"; expected {self.expected}"
        return text


class MatrixFileError(MatrixError):
    """matrix.yaml is malformed: `problems` lists every problem found (exit code 2)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        ordered = sorted(set(problems), key=lambda p: (p.line, p.col, p.what))
        self.problems: tuple[Problem, ...] = tuple(ordered)
        first = self.problems[0]
        rest = "".join(f"\n{p.render()}" for p in self.problems[1:MAX_SHOWN])
        if len(self.problems) > MAX_SHOWN:
            rest += f"\n... and {len(self.problems) - MAX_SHOWN} more problems"
        what = first.render().split(": ", 1)[1] + rest
        fixes = list(dict.fromkeys(p.fix for p in self.problems if p.fix))
        fix = "; ".join(fixes[:3]) or "edit the file; the schema is described in its header"
        super().__init__(what, where=f"{first.source}:{first.line}:{first.col}", fix=fix)


@dataclass
class Document:
    """The document as plain data plus the marks of every key and value, by path."""

    source: str
    data: Any = None
    key_marks: dict[Path_, Mark] = field(default_factory=dict)
    value_marks: dict[Path_, Mark] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def problem(self, mark: Mark | None, what: str, expected: str = "", fix: str = "") -> None:
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        self.problems.append(Problem(self.source, line, col, what, expected, fix))

    def problem_at(self, line: int, col: int, what: str, expected: str = "", fix: str = "") -> None:
        self.problems.append(Problem(self.source, line, col, what, expected, fix))

    def mark_for(self, path: Path_, *, key: bool = False) -> Mark | None:
        """Mark of the node at `path`, or of its nearest existing ancestor."""
        if key and path in self.key_marks:
            return self.key_marks[path]
        for n in range(len(path), -1, -1):
            mark = self.value_marks.get(path[:n])
            if mark is not None:
                return mark
        return None

    def at(
        self, path: Path_, what: str, expected: str = "", fix: str = "", *, key: bool = False
    ) -> None:
        self.problem(self.mark_for(path, key=key), what, expected, fix)


def describe(value: Any) -> str:
    """A value as the messages name it: "the string 'yes'", "a mapping"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, col


# Plain scalars are typed as YAML 1.1 does in PyYAML's SafeLoader (which read matrix.yaml
# before): `yes`/`on` are booleans, `6.10` a float, but `y`, `n` and `1e9` are strings (ruamel's
# own YAML 1.1 rules make them a boolean and a float).
_IMPLICIT: tuple[tuple[str, str, str], ...] = (
    (
        "bool",
        "yYnNtTfFoO",
        r"yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF",
    ),
    (
        "float",
        "-+0123456789.",
        r"""[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
        |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN)""",
    ),
    (
        "int",
        "-+0123456789",
        r"""[-+]?0b[0-1_]+
        |[-+]?0[0-7_]+
        |[-+]?(?:0|[1-9][0-9_]*)
        |[-+]?0x[0-9a-fA-F_]+
        |[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+""",
    ),
    ("merge", "<", r"<<"),
    ("null", "~nN", r"~|null|Null|NULL|"),
    (
        "timestamp",
        "0123456789",
        r"""[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]
        |[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?
         (?:[Tt]|[\ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?
         (?:[\ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?""",
    ),
    ("value", "=", r"="),
)


def _implicit_table() -> dict[str, list[tuple[str, re.Pattern[str]]]]:
    # the empty plain scalar (`key:` with nothing after it) is null
    table = {"": [(YAML_PREFIX + "null", re.compile("^$"))]}
    for kind, first, regex in _IMPLICIT:
        entry = (YAML_PREFIX + kind, re.compile(rf"^(?:{regex})$", re.VERBOSE))
        for char in first:
            table.setdefault(char, []).append(entry)
    return table


class _Resolver(VersionedResolver):
    """ruamel.yaml's resolver with PyYAML's table of implicit (untagged) scalar types."""

    _table = _implicit_table()

    @property
    def versioned_resolver(self) -> dict[str, list[tuple[str, re.Pattern[str]]]]:
        return {char: list(entries) for char, entries in self._table.items()}

    @property
    def processing_version(self) -> tuple[int, int]:
        return (1, 1)  # also for the constructor: 010 is octal, 1:20 sexagesimal


def _yaml() -> YAML:
    yaml = YAML(typ="safe", pure=True)
    yaml.Resolver = _Resolver
    yaml.version = (1, 1)
    return yaml


# --------------------------------------------------------------------------- YAML layer
def _refuse_events(text: str, doc: Document) -> bool:
    """Walk the event stream: False (and a problem) at an anchor, an alias or deep nesting."""
    depth = 0
    for event in _yaml().parse(text):
        mark = event.start_mark
        if isinstance(event, AliasEvent):
            doc.problem(
                mark,
                f"YAML alias '*{event.anchor}' is not allowed",
                "every value written out in full",
                "replace the alias by a copy of the value it refers to",
            )
            return False
        if isinstance(event, NodeEvent):
            if event.anchor is not None:
                doc.problem(
                    mark,
                    f"YAML anchor '&{event.anchor}' is not allowed",
                    "plain values without anchors",
                    "remove the anchor and write values out in full",
                )
                return False
            if depth >= MAX_DEPTH:
                doc.problem(
                    mark,
                    f"nesting deeper than {MAX_DEPTH} levels",
                    "the flat shape of matrix.yaml",
                    "flatten the document",
                )
                return False
        if isinstance(event, CollectionStartEvent):
            depth += 1
        elif isinstance(event, CollectionEndEvent):
            depth -= 1
    return True


def _compose(yaml: YAML, text: str, doc: Document) -> Node | None:
    try:
        if not _refuse_events(text, doc):
            return None
        root: Node | None = yaml.compose(text)
        return root
    except ReaderError as err:
        line, col = _line_col(text, err.position)
        char = err.character
        code = ord(char) if isinstance(char, str) and len(char) == 1 else char
        shown = f"U+{code:04X}" if isinstance(code, int) else repr(code)
        doc.problem_at(
            line,
            col,
            f"character {shown} is not allowed in YAML ({err.reason})",
            "printable text",
            "remove the control character",
        )
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        what = " ".join(p for p in (err.context, err.problem) if p) or "invalid YAML"
        doc.problem(mark, f"YAML syntax error: {what}", "valid YAML", "fix the YAML syntax")
    except YAMLError as err:  # pragma: no cover - ruamel.yaml's syntax errors are marked
        doc.problem(None, f"YAML error: {err}", "valid YAML", "fix the YAML syntax")
    return None


def _construct(node: Node, path: Path_, doc: Document, scalars: BaseConstructor) -> Any:
    doc.value_marks.setdefault(path, node.start_mark)
    tag = node.tag or ""
    if tag not in PLAIN_TAGS:
        short = tag.replace(YAML_PREFIX, "!!")
        doc.problem(
            node.start_mark,
            f"YAML tag {short} is not allowed",
            "a plain string, number, boolean, list or mapping",
            "remove the tag (quote dates and other special scalars)",
        )
        return None
    if isinstance(node, MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _key(key_node, doc)
            if key is None:
                continue
            if key in result:
                first = doc.key_marks[(*path, key)]
                doc.problem(
                    key_node.start_mark,
                    f"duplicate key '{key}' (first at line {first.line + 1})",
                    "each key once per mapping",
                    "remove or rename one of the duplicate keys",
                )
                continue
            doc.key_marks[(*path, key)] = key_node.start_mark
            result[key] = _construct(value_node, (*path, key), doc, scalars)
        return result
    if isinstance(node, SequenceNode):
        return [_construct(item, (*path, i), doc, scalars) for i, item in enumerate(node.value)]
    assert isinstance(node, ScalarNode)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ruamel's advice on YAML 1.1 floats like 1e9
            return scalars.construct_object(node, deep=True)
    except (ValueError, OverflowError, YAMLError) as err:
        doc.problem(
            node.start_mark, f"cannot read value {node.value[:40]!r}: {err}", "a plain value"
        )
        return None


def _key(node: Node, doc: Document) -> str | None:
    if not isinstance(node, ScalarNode):
        doc.problem(node.start_mark, "a list or mapping used as a key", "a plain name as key")
        return None
    if node.tag != STR_TAG:
        kind = (node.tag or "").replace(YAML_PREFIX, "")
        doc.problem(
            node.start_mark,
            f"key {node.value!r} is read by YAML as {kind}, not as a name",
            f'a string key: quote it as "{node.value}"',
            f'write the key as "{node.value}"',
        )
    # keep validating the rest with the key as written
    return str(node.value)


def _decode(data: bytes | str, doc: Document) -> str | None:
    """The text of the file, or None (and a problem) when it is too big or not UTF-8."""
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as err:
            line, col = _line_col(data, err.start)
            doc.problem_at(line, col, "text cannot be encoded as UTF-8", "UTF-8 text")
            return None
    else:
        raw = data
    if len(raw) > MAX_BYTES:
        doc.problem_at(
            1,
            1,
            f"file is {len(raw)} bytes, more than the {MAX_BYTES} allowed",
            "a matrix file under 1 MiB",
            "is this really matrix.yaml?",
        )
        return None
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        col = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        doc.problem_at(
            line,
            col,
            f"not valid UTF-8 at byte offset {err.start} (byte 0x{raw[err.start]:02x})",
            "UTF-8 text",
            "save the file as UTF-8",
        )
        return None


def read_document(data: bytes | str, source: str) -> Document:
    """Read matrix text into a Document; `problems` says what is wrong with it, if anything.

    `data` is None when the YAML could not be read at all; otherwise problems of single keys
    or values (a tag, a duplicate key) are listed and the rest of the document is kept.
    """
    doc = Document(source)
    text = _decode(data, doc)
    if text is None:
        return doc
    yaml = _yaml()
    root = _compose(yaml, text, doc)
    if doc.problems:
        return doc
    if root is None:
        doc.problem_at(1, 1, "the file is empty", "a mapping with version, kernels, cpus, lanes")
        return doc
    doc.data = _construct(root, (), doc, yaml.constructor)
    return doc
