"""The schema of matrix.yaml as strict pydantic models, and pydantic's errors as located Problems.

    MatrixModel.model_validate(data)   strict: unknown keys, wrong types, bad names are errors
    pydantic_problems(err, doc)        each error -> a Problem at the FILE:LINE:COL of its key
                                       or value (from the Document's marks)

Names and strings that end up in commands or file names (kernels, suites, ABIs, mirrors, URIs)
are checked against tight patterns here.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from rig.matrix.source import Document, Path_, describe

# Every pattern is used with fullmatch (`$` after match would accept a trailing newline).
# Lane and CPU names are plain identifiers (no '-'), so that the cell id
# "<lane>-<kernel>-<cpu>" splits back unambiguously and two cells never share an id.
_IDENT_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_KERNEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SUITE_RE = re.compile(r"[a-z][a-z0-9-]{0,63}")
_ABI_RE = re.compile(r"[a-z0-9][a-z0-9.+~-]{0,127}")
_DEBVER_RE = re.compile(r"(?:[0-9]{1,5}:)?[0-9][A-Za-z0-9.+~-]{0,127}")
_MIRROR_RE = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/-]*)?")
_URI_RE = re.compile(r"[a-z+]+://[^\s'\"`$;&|<>\\]*")


def _checker(regex: re.Pattern[str], what: str, expected: str) -> AfterValidator:
    def check(value: str) -> str:
        if not regex.fullmatch(value):
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
_HOSTPATH_RE = re.compile(r"[A-Za-z0-9._/+~-][A-Za-z0-9._/+~@:-]{0,1023}")
_GITREF_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/+~^@{}-]{0,199}")
_KCONFIG_RE = re.compile(
    r"minimal|debian:[A-Za-z0-9][A-Za-z0-9._-]{0,31}|[A-Za-z0-9._/+~-]{1,1024}"
)
HostPath = Annotated[
    str, _checker(_HOSTPATH_RE, "path", "a path of letters, digits and . _ / + ~ - @ :")
]
GitRef = Annotated[
    str, _checker(_GITREF_RE, "ref", "a git commit, tag or branch (like v6.12 or HEAD~3)")
]
KernelConfig = Annotated[
    str, _checker(_KCONFIG_RE, "config", "minimal, debian:NAME (a Debian kernel) or a FILE")
]


def _model_name(value: str) -> str:
    if value and not _MODEL_RE.fullmatch(value):
        raise ValueError(
            f"CPU model {value!r} is not valid; expected a model name of letters, digits, "
            "'.', '_', '-' (or \"\" for none)"
        )
    return value


def _deb_version(value: str) -> str:
    if value and not _DEBVER_RE.fullmatch(value):
        raise ValueError(
            f"version {value!r} is not valid; expected a Debian version like 6.12.117-1 "
            '(or "" for the newest)'
        )
    return value


def _uri(value: str) -> str:
    if value and not _URI_RE.fullmatch(value):
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
    """A Debian package ({suite, abi, ...}), a kernel build directory ({build: DIR}) or a git
    tree the rig builds ({tree: DIR, ref: REF, config?: minimal|FILE|debian:NAME}); `suite`
    is then the toolchain that builds it and the driver (default trixie)."""

    suite: Suite = ""
    abi: Abi | None = None
    version: DebVersion = ""
    mirror: Mirror = "http://deb.debian.org/debian"
    extra_suites: list[Suite] = Field(default_factory=list)
    check_valid_until: bool = True
    build: HostPath | None = None
    tree: HostPath | None = None
    ref: GitRef | None = None
    config: KernelConfig | None = None
    # which keys go together (one kind, suite for a Debian kernel): rig.matrix.checks


class LaneModel(_Strict):
    backend: typing.Literal["bochs", "libvirt", "nested"]
    vmx: bool
    guest: typing.Literal["initramfs", "vm"] = "initramfs"
    uri: Uri = ""
    domain_type: typing.Literal["qemu", "kvm"] = "qemu"
    timeout: int | None = Field(None, ge=10, le=86400)
    memory: int | None = Field(None, ge=64, le=262144)
    vcpus: int | None = Field(None, ge=1, le=64)
    l1_kernel: KernelName | None = None  # nested: the kernel of L1 (a name under kernels:)
    l0_cpu: ModelName = ""  # nested: the Bochs model of L0 for every L2 model ...
    l0_cpus: dict[ModelName, ModelName] = Field(default_factory=dict)  # ... but these
    launcher: typing.Literal["qemu", "libvirt"] | None = None  # nested: how L1 starts L2
    # bochs: Bochs from this Debian suite's packages (rig.artifacts.emulator), not the host's
    emulator: typing.Literal["trixie"] | None = None

    @model_validator(mode="after")
    def _nested_keys(self) -> LaneModel:
        if self.emulator is not None and self.backend != "bochs":
            raise ValueError("emulator applies to the bochs backend only; expected backend: bochs")
        nested = self.l1_kernel is not None or self.l0_cpu or self.l0_cpus or self.launcher
        if self.backend == "nested" and (self.l1_kernel is None or not self.l0_cpu):
            raise ValueError("a nested lane needs l1_kernel and l0_cpu; expected both keys")
        if self.backend != "nested" and nested:
            raise ValueError(
                "l1_kernel, l0_cpu, l0_cpus, launcher apply to the nested backend only; "
                "expected backend: nested"
            )
        return self


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


def _one_or_many(value: Any) -> Any:
    """default_slice: a mapping is a list of one (problems are located as in the mapping)."""
    return [value] if isinstance(value, dict) else value


class MatrixModel(_Strict):
    version: Annotated[int, AfterValidator(_version)]
    defaults: DefaultsModel = Field(default_factory=DefaultsModel)  # type: ignore[arg-type]
    kernels: dict[KernelName, KernelModel] = Field(min_length=1)
    cpus: dict[CpuName, dict[LaneName, ModelName]] = Field(min_length=1)
    lanes: dict[LaneName, LaneModel] = Field(min_length=1)
    exclude: list[ExcludeModel] = Field(default_factory=list)
    # one cross product, or a list of them (their union): e.g. bochs x {haswell, penryn}
    # plus tcg x {penryn}, so that every cell of the default run can run
    default_slice: Annotated[list[SliceModel], BeforeValidator(_one_or_many), Field(min_length=1)]


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


def pydantic_problems(err: ValidationError, doc: Document) -> None:
    for e in err.errors(include_url=False):
        loc: Path_ = tuple(e["loc"])
        if loc[:2] == ("default_slice", 0) and isinstance(
            (doc.data or {}).get("default_slice") if isinstance(doc.data, dict) else None, dict
        ):
            loc = loc[:1] + loc[2:]  # the one-mapping form: no list index in the file
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
                f"wrong type for {where}: {describe(value)}{hint}",
                _TYPE_WORDS[etype],
                key=is_key,
            )
        else:
            doc.at(path, f"{field_name}: {e['msg']}", key=is_key)
