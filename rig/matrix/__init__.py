"""matrix.yaml: the kernels x CPU models x lanes to test, and the cells selected from it.

    load_matrix(path) -> Matrix                  read, validate (every problem with FILE:LINE:COL)
    parse_matrix(data, source) -> Matrix         the same from bytes/str already in memory
    Matrix.select(lanes, kernels, cpus, *, everything=False)   the cells of one run
    shard(cells, i, n) / parse_shard("i/n")      one part of a selection (nightly shards)
    cells_json(cells)                            the cells as JSON-ready dicts
    runner_plan(cells, n)                        each shard's runner labels (nightly routing)

The modules, one concern each:
    source   the untrusted YAML source -> plain data with the FILE:LINE:COL of every value
    schema   the strict pydantic models; pydantic's errors -> located Problems
    checks   checks between sections (unknown names, lane consistency)
    select   Matrix, selection, shards, JSON view of cells
    runners  the runner labels each shard needs (kvm-nested or emulation)
    load     load_matrix / parse_matrix: the above put together
    edit     comment-preserving rewrite of a kernel's abi/version pin in matrix.yaml
    pinning  `rig images update`: pin each kernel to the newest package of its line
"""

from rig.matrix.load import DEFAULT_MATRIX_NAME, load_matrix, parse_matrix
from rig.matrix.runners import (
    EMULATION_LABEL,
    KVM_LABEL,
    SELF_HOSTED_LABELS,
    needs_kvm,
    runner_plan,
    shard_labels,
)
from rig.matrix.select import Exclusion, Matrix, Slice, cells_json, parse_shard, shard
from rig.matrix.source import MAX_BYTES, MAX_DEPTH, MatrixFileError, Problem

__all__ = [
    "DEFAULT_MATRIX_NAME",
    "EMULATION_LABEL",
    "KVM_LABEL",
    "MAX_BYTES",
    "MAX_DEPTH",
    "SELF_HOSTED_LABELS",
    "Exclusion",
    "Matrix",
    "MatrixFileError",
    "Problem",
    "Slice",
    "cells_json",
    "load_matrix",
    "needs_kvm",
    "parse_matrix",
    "parse_shard",
    "runner_plan",
    "shard",
    "shard_labels",
]
