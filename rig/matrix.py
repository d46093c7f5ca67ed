"""matrix.yaml: the kernels x CPU models x lanes to test, and the cells selected from it.

    load_matrix(path) -> Matrix          read, validate (every problem with FILE:LINE:COL)
    parse_matrix(data, source) -> Matrix the same from bytes/str already in memory
    Matrix.select(lanes, kernels, cpus)  the cells of one run (filters from the command line)

Selection rule (documented for `rig run`): an axis given on the command line selects those names
from the whole matrix; an axis not given falls back to `default_slice` in matrix.yaml; with
`full=True` an axis not given means every name on it. Cells that cannot run (the lane has no
model for the CPU, or an `exclude` entry matches) are returned with `skip_reason` set: they are
never dropped silently.

The loader treats matrix.yaml as untrusted input: files over 1 MiB, non-UTF-8 bytes, YAML anchors
and aliases, tags other than the plain scalar/mapping/sequence ones, duplicate keys and nesting
deeper than 32 levels are refused. Every problem raises `MatrixFileError` (a `MatrixError`, exit
code 2) that lists all problems found, one `FILE:LINE:COL: what; expected ...` line each.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from yaml.error import MarkedYAMLError
from yaml.events import AliasEvent, NodeEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from rig.errors import MatrixError, UsageError
from rig.model import Cell, CpuSpec, KernelSpec, LaneSpec

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_SHOWN = 30  # problems rendered in the message (all are in .problems)
DEFAULT_MATRIX_NAME = "matrix.yaml"

# Lane and CPU names are plain identifiers (no '-'), so that the cell id
# "<lane>-<kernel>-<cpu>" splits back unambiguously and two cells never share an id.
_IDENT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_KERNEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SUITE_RE = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
_ABI_RE = re.compile(r"^[a-z0-9][a-z0-9.+~-]{0,127}$")
_DEBVER_RE = re.compile(r"^(?:[0-9]{1,5}:)?[0-9][A-Za-z0-9.+~-]{0,127}$")
_MIRROR_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/-]*)?$")
_URI_RE = re.compile(r"^[a-z+]+://[^\s'\"`$;&|<>\\]*$")

_PLAIN_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}
_STR_TAG = "tag:yaml.org,2002:str"

Path_ = tuple[str | int, ...]


class Mark(Protocol):
    """Where a YAML node starts (PyYAML's Mark, 0-based)."""

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


class _Fatal(Exception):
    """Stops composing the YAML document (alias, anchor, too deep)."""

    def __init__(self, mark: Mark | None, what: str, expected: str, fix: str) -> None:
        super().__init__(what)
        self.mark = mark
        self.what = what
        self.expected = expected
        self.fix = fix


# --------------------------------------------------------------------------- YAML layer
class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases and caps nesting while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            raise _Fatal(
                event.start_mark,
                f"YAML alias '*{event.anchor}' is not allowed",
                "every value written out in full",
                "replace the alias by a copy of the value it refers to",
            )
        if isinstance(event, NodeEvent) and event.anchor is not None:
            raise _Fatal(
                event.start_mark,
                f"YAML anchor '&{event.anchor}' is not allowed",
                "plain values without anchors",
                "remove the anchor and write values out in full",
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Fatal(
                    event.start_mark,
                    f"nesting deeper than {MAX_DEPTH} levels",
                    "the flat shape of matrix.yaml",
                    "flatten the document",
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


@dataclass
class _Doc:
    """The document as plain data plus the marks of every key and value, by path."""

    source: str
    data: Any = None
    key_marks: dict[Path_, Mark] = field(default_factory=dict)
    value_marks: dict[Path_, Mark] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def problem(self, mark: Mark | None, what: str, expected: str = "", fix: str = "") -> None:
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
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


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, col


def _describe(value: Any) -> str:
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


def _compose(text: str, doc: _Doc) -> Node | None:
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        return loader.get_single_node()
    except _Fatal as fatal:
        doc.problem(fatal.mark, fatal.what, fatal.expected, fatal.fix)
    except ReaderError as err:
        line, col = _line_col(text, err.position)
        char = err.character
        code = ord(char) if isinstance(char, str) and len(char) == 1 else char
        shown = f"U+{code:04X}" if isinstance(code, int) else repr(code)
        doc.problems.append(
            Problem(
                doc.source,
                line,
                col,
                f"character {shown} is not allowed in YAML ({err.reason})",
                "printable text",
                "remove the control character",
            )
        )
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        what = " ".join(p for p in (err.context, err.problem) if p) or "invalid YAML"
        doc.problem(mark, f"YAML syntax error: {what}", "valid YAML", "fix the YAML syntax")
    except yaml.YAMLError as err:  # pragma: no cover - every PyYAML error above is marked
        doc.problem(None, f"YAML error: {err}", "valid YAML", "fix the YAML syntax")
    finally:
        if loader is not None:
            loader.dispose()
    return None


def _construct(node: Node, path: Path_, doc: _Doc, loader: yaml.SafeLoader) -> Any:
    doc.value_marks.setdefault(path, node.start_mark)
    if node.tag not in _PLAIN_TAGS:
        short = node.tag.replace("tag:yaml.org,2002:", "!!")
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
            key = _key(key_node, doc, loader)
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
            result[key] = _construct(value_node, (*path, key), doc, loader)
        return result
    if isinstance(node, SequenceNode):
        return [_construct(item, (*path, i), doc, loader) for i, item in enumerate(node.value)]
    assert isinstance(node, ScalarNode)
    try:
        return loader.construct_object(node, deep=True)
    except (ValueError, OverflowError, yaml.YAMLError) as err:
        doc.problem(
            node.start_mark, f"cannot read value {node.value[:40]!r}: {err}", "a plain value"
        )
        return None


def _key(node: Node, doc: _Doc, loader: yaml.SafeLoader) -> str | None:
    if not isinstance(node, ScalarNode):
        doc.problem(node.start_mark, "a list or mapping used as a key", "a plain name as key")
        return None
    if node.tag != _STR_TAG:
        kind = node.tag.replace("tag:yaml.org,2002:", "")
        doc.problem(
            node.start_mark,
            f"key {node.value!r} is read by YAML as {kind}, not as a name",
            f'a string key: quote it as "{node.value}"',
            f'write the key as "{node.value}"',
        )
        # keep validating the rest with the key as written
        return str(node.value)
    return str(node.value)


def _read_document(data: bytes | str, source: str) -> _Doc:
    doc = _Doc(source)
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as err:
            line, col = _line_col(data, err.start)
            doc.problems.append(
                Problem(source, line, col, "text cannot be encoded as UTF-8", "UTF-8 text")
            )
            return doc
    else:
        raw = data
    if len(raw) > MAX_BYTES:
        doc.problems.append(
            Problem(
                source,
                1,
                1,
                f"file is {len(raw)} bytes, more than the {MAX_BYTES} allowed",
                "a matrix file under 1 MiB",
                "is this really matrix.yaml?",
            )
        )
        return doc
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        col = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        doc.problems.append(
            Problem(
                source,
                line,
                col,
                f"not valid UTF-8 at byte offset {err.start} (byte 0x{raw[err.start]:02x})",
                "UTF-8 text",
                "save the file as UTF-8",
            )
        )
        return doc
    root = _compose(text, doc)
    if doc.problems:
        return doc
    if root is None:
        doc.problems.append(
            Problem(
                source, 1, 1, "the file is empty", "a mapping with version, kernels, cpus, lanes"
            )
        )
        return doc
    loader = yaml.SafeLoader("")
    try:
        doc.data = _construct(root, (), doc, loader)
    finally:
        loader.dispose()
    return doc


# --------------------------------------------------------------------------- schema
def _checker(regex: re.Pattern[str], what: str, expected: str) -> AfterValidator:
    def check(value: str) -> str:
        if not regex.match(value):
            raise ValueError(f"{what} {value!r} is not valid; expected {expected}")
        return value

    return AfterValidator(check)


LaneName = Annotated[
    str, _checker(_IDENT_RE, "lane name", "an identifier [A-Za-z][A-Za-z0-9_]*, at most 32")
]
CpuName = Annotated[
    str, _checker(_IDENT_RE, "CPU name", "an identifier [A-Za-z][A-Za-z0-9_]*, at most 32")
]
KernelName = Annotated[
    str, _checker(_KERNEL_RE, "kernel name", "letters, digits, '.', '_', '-' (like \"6.12\")")
]
ModelName = Annotated[str, AfterValidator(lambda v: _model_name(v))]
Suite = Annotated[str, _checker(_SUITE_RE, "suite", "a Debian suite name like trixie")]
Abi = Annotated[str, _checker(_ABI_RE, "abi", "a kernel ABI like 6.12.117+deb13-amd64")]
DebVersion = Annotated[str, AfterValidator(lambda v: _deb_version(v))]
Mirror = Annotated[str, _checker(_MIRROR_RE, "mirror", "an http(s) URL without spaces")]
Uri = Annotated[str, AfterValidator(lambda v: _uri(v))]
Reason = Annotated[str, AfterValidator(lambda v: _reason(v))]


def _model_name(value: str) -> str:
    if value and not _MODEL_RE.match(value):
        raise ValueError(
            f"CPU model {value!r} is not valid; expected a model name of letters, digits, "
            "'.', '_', '-' (or \"\" for none)"
        )
    return value


def _deb_version(value: str) -> str:
    if value and not _DEBVER_RE.match(value):
        raise ValueError(
            f"version {value!r} is not valid; expected a Debian version like 6.12.117-1 "
            '(or "" for the newest)'
        )
    return value


def _uri(value: str) -> str:
    if value and not _URI_RE.match(value):
        raise ValueError(f"uri {value!r} is not valid; expected a libvirt URI like qemu:///system")
    return value


def _reason(value: str) -> str:
    if not value.strip():
        raise ValueError("empty reason; expected a sentence saying why the cell is excluded")
    return value.strip()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DefaultsModel(_Strict):
    timeout: int = Field(400, ge=10, le=86400)
    memory: int = Field(512, ge=64, le=262144)
    vcpus: int = Field(1, ge=1, le=64)


class KernelModel(_Strict):
    suite: Suite
    abi: Abi
    version: DebVersion = ""
    mirror: Mirror = "http://deb.debian.org/debian"
    extra_suites: list[Suite] = Field(default_factory=list)
    check_valid_until: bool = True


class LaneModel(_Strict):
    backend: typing.Literal["bochs", "libvirt"]
    vmx: bool
    guest: typing.Literal["initramfs", "vm"] = "initramfs"
    uri: Uri = ""
    domain_type: typing.Literal["qemu", "kvm"] = "qemu"
    timeout: int | None = Field(None, ge=10, le=86400)
    memory: int | None = Field(None, ge=64, le=262144)
    vcpus: int | None = Field(None, ge=1, le=64)


class ExcludeModel(_Strict):
    lane: LaneName | None = None
    kernel: KernelName | None = None
    cpu: CpuName | None = None
    reason: Reason

    @model_validator(mode="after")
    def _one_axis(self) -> ExcludeModel:
        if self.lane is None and self.kernel is None and self.cpu is None:
            raise ValueError(
                "exclude entry names no lane, kernel or cpu; expected at least one of them"
            )
        return self


class SliceModel(_Strict):
    lanes: list[LaneName] = Field(min_length=1)
    kernels: list[KernelName] = Field(min_length=1)
    cpus: list[CpuName] = Field(min_length=1)


def _version(value: int) -> int:
    if value != 1:
        raise ValueError(f"version {value} is not supported; expected version: 1")
    return value


class MatrixModel(_Strict):
    version: Annotated[int, AfterValidator(_version)]
    defaults: DefaultsModel = Field(default_factory=DefaultsModel)  # type: ignore[arg-type]
    kernels: dict[KernelName, KernelModel] = Field(min_length=1)
    cpus: dict[CpuName, dict[LaneName, ModelName]] = Field(min_length=1)
    lanes: dict[LaneName, LaneModel] = Field(min_length=1)
    exclude: list[ExcludeModel] = Field(default_factory=list)
    default_slice: SliceModel


_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "none_required": "null",
}


def _allowed_keys(loc: Path_) -> list[str]:
    """Keys the schema allows in the mapping at `loc` (for 'unknown key' messages)."""
    current: Any = MatrixModel
    for part in loc:
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return []
            current = info.annotation
        elif origin in (dict, list):
            current = typing.get_args(current)[-1]
        else:
            return []
        # unwrap Optional[X] / Annotated[X, ...]
        args = [a for a in typing.get_args(current) if a is not type(None)]
        if typing.get_origin(current) in (typing.Union, type(int | None)) and len(args) == 1:
            current = args[0]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _pydantic_problems(err: ValidationError, doc: _Doc) -> None:
    for e in err.errors(include_url=False):
        loc: Path_ = tuple(e["loc"])
        etype = e["type"]
        is_key = bool(loc) and loc[-1] == "[key]"
        path = loc[:-1] if is_key else loc
        field_name = str(path[-1]) if path else "document"
        value = e.get("input")
        ctx = e.get("ctx") or {}
        if etype == "value_error":
            msg = str(ctx.get("error", e["msg"]))
            what, _, expected = msg.partition("; expected ")
            doc.at(path, what, expected, key=is_key)
        elif etype == "missing":
            doc.at(path, f"missing key '{field_name}'", f"'{field_name}' in this mapping")
        elif etype == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(path[:-1]))
            doc.at(
                path,
                f"unknown key '{field_name}'",
                f"one of: {allowed}" if allowed else "no other keys",
                "check the spelling of the key",
                key=True,
            )
        elif etype == "literal_error":
            doc.at(path, f"invalid {field_name} {value!r}", f"one of {ctx.get('expected')}")
        elif etype == "too_short":
            doc.at(path, f"'{field_name}' is empty", "at least one entry")
        elif etype in ("greater_than_equal", "less_than_equal"):
            limit = ctx.get("ge", ctx.get("le"))
            op = ">=" if etype == "greater_than_equal" else "<="
            doc.at(path, f"{field_name} {value!r} is out of range", f"a value {op} {limit}")
        elif etype in _TYPE_WORDS:
            hint = ""
            if etype == "string_type" and isinstance(value, float | int):
                hint = " (quote it if it is a name)"
            where = "key" if is_key else field_name
            doc.at(
                path,
                f"wrong type for {where}: {_describe(value)}{hint}",
                _TYPE_WORDS[etype],
                key=is_key,
            )
        else:
            doc.at(path, f"{field_name}: {e['msg']}", key=is_key)


# --------------------------------------------------------------------------- cross checks
def _names(data: Any, section: str) -> list[str]:
    part = data.get(section) if isinstance(data, dict) else None
    return [k for k in part if isinstance(k, str)] if isinstance(part, dict) else []


def _cross_check(data: Any, doc: _Doc) -> None:
    """Checks between sections, on the raw data (so they run even when other parts are bad)."""
    if not isinstance(data, dict):
        doc.at(
            (), f"the document is {_describe(data)}", "a mapping with version, kernels, cpus, lanes"
        )
        return
    lanes, kernels, cpus = (_names(data, s) for s in ("lanes", "kernels", "cpus"))
    axes = {"lane": lanes, "kernel": kernels, "cpu": cpus}

    for section in ("lanes", "kernels", "cpus"):
        seen: dict[str, str] = {}
        for name in _names(data, section):
            folded = name.lower()
            if folded in seen:
                doc.at(
                    (section, name),
                    f"name '{name}' differs from '{seen[folded]}' only in case",
                    "names that differ in more than case",
                    key=True,
                )
            seen[folded] = name

    def known(path: Path_, axis: str, name: Any) -> None:
        if isinstance(name, str) and axes[axis] and name not in axes[axis]:
            doc.at(path, f"unknown {axis} '{name}'", "one of: " + ", ".join(axes[axis]))

    cpu_section = data.get("cpus")
    if isinstance(cpu_section, dict):
        for cpu, models in cpu_section.items():
            if not isinstance(models, dict):
                continue
            for lane in models:
                if isinstance(lane, str) and lanes and lane not in lanes:
                    doc.at(
                        ("cpus", cpu, lane),
                        f"CPU '{cpu}' names unknown lane '{lane}'",
                        "one of: " + ", ".join(lanes),
                        key=True,
                    )
            if not any(isinstance(m, str) and m for m in models.values()):
                doc.at(("cpus", cpu), f"CPU '{cpu}' has no model in any lane", "at least one")

    lane_section = data.get("lanes")
    if isinstance(lane_section, dict):
        for name, lane in lane_section.items():
            if isinstance(lane, dict):
                _check_lane(name, lane, doc)

    excludes = data.get("exclude")
    if isinstance(excludes, list):
        for i, entry in enumerate(excludes):
            if isinstance(entry, dict):
                for axis in ("lane", "kernel", "cpu"):
                    known(("exclude", i, axis), axis, entry.get(axis))

    slice_ = data.get("default_slice")
    if isinstance(slice_, dict):
        for plural, axis in (("lanes", "lane"), ("kernels", "kernel"), ("cpus", "cpu")):
            items = slice_.get(plural)
            if isinstance(items, list):
                for i, name in enumerate(items):
                    known(("default_slice", plural, i), axis, name)


def _check_lane(name: str, lane: dict[str, Any], doc: _Doc) -> None:
    backend = lane.get("backend")
    if backend == "bochs":
        for key, allowed in (("guest", "initramfs"), ("domain_type", None), ("uri", None)):
            if key in lane and (allowed is None or lane[key] != allowed):
                doc.at(
                    ("lanes", name, key),
                    f"lane '{name}': '{key}: {lane[key]}' does not apply to the bochs backend",
                    "guest: initramfs and no domain_type/uri" if key != "guest" else "initramfs",
                    key=True,
                )
    elif (
        backend == "libvirt"
        and lane.get("domain_type", "qemu") == "qemu"
        and lane.get("vmx") is True
    ):
        doc.at(
            ("lanes", name, "vmx"),
            f"lane '{name}' is QEMU TCG (domain_type: qemu) but claims vmx: true",
            "vmx: false (TCG never exposes VMX)",
        )


# --------------------------------------------------------------------------- the matrix
@dataclass(frozen=True)
class Exclusion:
    lane: str | None
    kernel: str | None
    cpu: str | None
    reason: str

    def matches(self, lane: str, kernel: str, cpu: str) -> bool:
        return (
            self.lane in (None, lane) and self.kernel in (None, kernel) and self.cpu in (None, cpu)
        )


@dataclass(frozen=True)
class Slice:
    lanes: tuple[str, ...]
    kernels: tuple[str, ...]
    cpus: tuple[str, ...]


@dataclass(frozen=True)
class Matrix:
    """A validated matrix. Dicts keep the order of matrix.yaml."""

    source: str
    kernels: dict[str, KernelSpec]
    cpus: dict[str, CpuSpec]
    lanes: dict[str, LaneSpec]
    exclude: tuple[Exclusion, ...]
    default_slice: Slice
    timeout_s: int = 400
    memory_mib: int = 512
    vcpus: int = 1
    lane_overrides: dict[str, tuple[int | None, int | None, int | None]] = field(
        default_factory=dict
    )

    # ----------------------------------------------------------------- selection
    def select(
        self,
        lanes: Iterable[str] | None = (),
        kernels: Iterable[str] | None = (),
        cpus: Iterable[str] | None = (),
        *,
        full: bool = False,
    ) -> list[Cell]:
        """Cells for these filters, ordered lane, kernel, CPU.

        An axis with names selects exactly those (from the whole matrix, in the order given);
        an empty (or None) axis means `default_slice`'s names, or every name when `full` is true.
        Raises UsageError (exit 2) for an unknown name, listing the valid ones.
        """
        lane_names = self._axis(
            "lane", list(lanes or ()), self.lanes, self.default_slice.lanes, full
        )
        kernel_names = self._axis(
            "kernel", list(kernels or ()), self.kernels, self.default_slice.kernels, full
        )
        cpu_names = self._axis("cpu", list(cpus or ()), self.cpus, self.default_slice.cpus, full)
        return [
            self.cell(lane, kernel, cpu)
            for lane in lane_names
            for kernel in kernel_names
            for cpu in cpu_names
        ]

    def all_cells(self) -> list[Cell]:
        return self.select(full=True)

    def cell(self, lane: str, kernel: str, cpu: str) -> Cell:
        """The one cell lane x kernel x cpu, with its skip reason if it cannot run."""
        self._axis("lane", [lane], self.lanes, (), True)
        self._axis("kernel", [kernel], self.kernels, (), True)
        self._axis("cpu", [cpu], self.cpus, (), True)
        lane_spec, cpu_spec = self.lanes[lane], self.cpus[cpu]
        skip: str | None = None
        for rule in self.exclude:
            if rule.matches(lane, kernel, cpu):
                skip = f"excluded in {Path(self.source).name}: {rule.reason}"
                break
        if skip is None and cpu_spec.model_for(lane) is None:
            skip = f"lane '{lane}' has no CPU model for '{cpu}'"
        timeout, memory, vcpus = self.lane_overrides.get(lane, (None, None, None))
        return Cell(
            lane=lane_spec,
            kernel=self.kernels[kernel],
            cpu=cpu_spec,
            timeout_s=timeout if timeout is not None else self.timeout_s,
            memory_mib=memory if memory is not None else self.memory_mib,
            vcpus=vcpus if vcpus is not None else self.vcpus,
            skip_reason=skip,
        )

    def _axis(
        self,
        axis: str,
        wanted: list[str],
        known: dict[str, Any],
        default: tuple[str, ...],
        full: bool,
    ) -> list[str]:
        if not wanted:
            return list(known) if full else list(default)
        unknown = [w for w in wanted if w not in known]
        if unknown:
            names = ", ".join(repr(u) for u in unknown)
            raise UsageError(
                f"unknown {axis} {names} (not in {self.source})",
                fix=f"valid {axis} names: {', '.join(known)}",
            )
        return list(dict.fromkeys(wanted))


def _to_matrix(model: MatrixModel, source: str) -> Matrix:
    kernels = {
        name: KernelSpec(
            name=name,
            suite=k.suite,
            abi=k.abi,
            version=k.version,
            mirror=k.mirror,
            extra_suites=tuple(k.extra_suites),
            check_valid_until=k.check_valid_until,
        )
        for name, k in model.kernels.items()
    }
    cpus = {name: CpuSpec(name=name, models=dict(models)) for name, models in model.cpus.items()}
    lanes = {
        name: LaneSpec(
            name=name,
            backend=lane.backend,
            vmx=lane.vmx,
            guest=lane.guest,
            uri=lane.uri,
            domain_type=lane.domain_type,
        )
        for name, lane in model.lanes.items()
    }
    overrides = {
        name: (lane.timeout, lane.memory, lane.vcpus) for name, lane in model.lanes.items()
    }
    return Matrix(
        source=source,
        kernels=kernels,
        cpus=cpus,
        lanes=lanes,
        exclude=tuple(
            Exclusion(lane=e.lane, kernel=e.kernel, cpu=e.cpu, reason=e.reason)
            for e in model.exclude
        ),
        default_slice=Slice(
            lanes=tuple(dict.fromkeys(model.default_slice.lanes)),
            kernels=tuple(dict.fromkeys(model.default_slice.kernels)),
            cpus=tuple(dict.fromkeys(model.default_slice.cpus)),
        ),
        timeout_s=model.defaults.timeout,
        memory_mib=model.defaults.memory,
        vcpus=model.defaults.vcpus,
        lane_overrides=overrides,
    )


def parse_matrix(data: bytes | str, source: str = "<matrix>") -> Matrix:
    """Validate matrix text; raises MatrixFileError listing every problem found."""
    doc = _read_document(data, source)
    if doc.problems and doc.data is None:
        raise MatrixFileError(doc.problems)
    # Problems of the YAML layer (duplicate keys, tags, non-string keys) do not stop the
    # schema checks; a schema problem at the same place as one of those is a consequence.
    n_structural = len(doc.problems)
    structural = {(p.line, p.col) for p in doc.problems}
    model: MatrixModel | None = None
    if isinstance(doc.data, dict):
        try:
            model = MatrixModel.model_validate(doc.data)
        except ValidationError as err:
            _pydantic_problems(err, doc)
    _cross_check(doc.data, doc)
    problems = [
        p
        for i, p in enumerate(doc.problems)
        if i < n_structural or (p.line, p.col) not in structural
    ]
    if problems or model is None:
        raise MatrixFileError(problems or [Problem(source, 1, 1, "invalid matrix")])
    return _to_matrix(model, source)


def load_matrix(path: str | Path) -> Matrix:
    """Read and validate a matrix file (MatrixFileError, exit 2, on any problem)."""
    p = Path(path)
    source = str(path)
    try:
        if not p.is_file():
            what = "is not a regular file" if p.exists() else "does not exist"
            raise MatrixError(
                f"matrix file {what}",
                where=source,
                fix=f"pass --matrix PATH, or create {DEFAULT_MATRIX_NAME}",
            )
        with p.open("rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as err:
        raise MatrixError(
            f"cannot read matrix file: {err.strerror or err}",
            where=source,
            fix="check the path and its permissions",
        ) from err
    return parse_matrix(data, source)
