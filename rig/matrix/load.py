"""Loading matrix.yaml: read the source, validate it, build the Matrix.

    load_matrix(path) -> Matrix          read, validate (every problem with FILE:LINE:COL)
    one_off_kernel(path, taken)          `rig run --kernel PATH`: a build directory as a kernel
    parse_matrix(data, source) -> Matrix the same from bytes/str already in memory

Every problem raises `MatrixFileError` (a `MatrixError`, exit code 2) that lists all problems
found, one `FILE:LINE:COL: what; expected ...` line each.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from pydantic import ValidationError

from rig.errors import MatrixError, UsageError
from rig.matrix.checks import cross_check
from rig.matrix.schema import MatrixModel, pydantic_problems
from rig.matrix.select import Exclusion, Matrix, Slice
from rig.matrix.source import MAX_BYTES, MatrixFileError, Problem, read_document
from rig.model import CpuSpec, KernelSpec, LaneSpec

DEFAULT_MATRIX_NAME = "matrix.yaml"
DEFAULT_TOOLCHAIN_SUITE = "trixie"
"""The suite whose toolchain builds a kernel you built (and the driver against it) when the
matrix names none."""


def _beside(source: str, path: str | None) -> str:
    """A path of the matrix, relative to the matrix file's directory, made absolute."""
    if not path:
        return ""
    base = Path(source).parent if Path(source).is_file() else Path.cwd()
    return str((base / Path(path).expanduser()).resolve())


def _config_beside(source: str, config: str | None) -> str:
    if not config or config == "minimal" or config.startswith("debian:"):
        return config or ""
    return _beside(source, config)


def to_matrix(model: MatrixModel, source: str) -> Matrix:
    kernels = {
        name: KernelSpec(
            name=name,
            suite=k.suite or ("" if k.build else DEFAULT_TOOLCHAIN_SUITE),
            abi=k.abi or "",
            version=k.version,
            mirror=k.mirror,
            extra_suites=tuple(k.extra_suites),
            check_valid_until=k.check_valid_until,
            build=_beside(source, k.build),
            tree=_beside(source, k.tree),
            ref=k.ref or "",
            config=_config_beside(source, k.config),
        )
        for name, k in model.kernels.items()
    }
    kernels = {  # a tree kernel whose config is a Debian kernel's knows that kernel
        name: replace(spec, config_from=kernels[spec.config[7:]])
        if spec.config.startswith("debian:") and spec.config[7:] in kernels
        else spec
        for name, spec in kernels.items()
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
            l1_kernel=kernels.get(lane.l1_kernel or ""),
            l0_cpus=(("", lane.l0_cpu), *sorted(lane.l0_cpus.items())) if lane.l0_cpu else (),
            launcher=lane.launcher or "qemu",
            emulator=lane.emulator or "",
        )
        for name, lane in model.lanes.items()
    }
    ds = model.default_slice
    slices = ds if isinstance(ds, list) else [ds]
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
            lanes=tuple(dict.fromkeys(n for s in slices for n in s.lanes)),
            kernels=tuple(dict.fromkeys(n for s in slices for n in s.kernels)),
            cpus=tuple(dict.fromkeys(n for s in slices for n in s.cpus)),
        ),
        default_slices=tuple(
            Slice(tuple(s.lanes), tuple(s.kernels), tuple(s.cpus)) for s in slices
        ),
        timeout_s=model.defaults.timeout,
        memory_mib=model.defaults.memory,
        vcpus=model.defaults.vcpus,
        lane_overrides=overrides,
    )


def parse_matrix(data: bytes | str, source: str = "<matrix>") -> Matrix:
    """Validate matrix text; raises MatrixFileError listing every problem found."""
    doc = read_document(data, source)
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
            pydantic_problems(err, doc)
    cross_check(doc.data, doc)
    problems = [
        p
        for i, p in enumerate(doc.problems)
        if i < n_structural or (p.line, p.col) not in structural
    ]
    if problems or model is None:
        raise MatrixFileError(problems or [Problem(source, 1, 1, "invalid matrix")])
    return to_matrix(model, source)


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


_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def one_off_kernel(path: str, taken: Iterable[str]) -> KernelSpec:
    """`rig run --kernel PATH`: a kernel build directory as a kernel of this run, named by
    its release (made unique among `taken`); UsageError when PATH is not a built kernel."""
    build = Path(path).resolve()
    release_file = build / "include/config/kernel.release"
    if not build.is_dir() or not release_file.is_file():
        raise UsageError(
            f"--kernel {path}: not a kernel name of the matrix, nor a kernel build directory "
            "(no include/config/kernel.release)",
            fix="pass a matrix kernel name, or the directory you built a kernel in "
            "(make bzImage modules, or its O= directory)",
        )
    stem = _NAME_CHARS.sub("_", release_file.read_text().strip())[:26] or "built"
    name, n, names = stem, 1, set(taken)  # once: `taken` may be an iterator
    while name in names:
        n += 1
        name = f"{stem}-{n}"
    return KernelSpec(name=name, suite="", abi="", build=str(build))
