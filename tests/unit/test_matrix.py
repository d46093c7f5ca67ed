"""Unit and property tests of rig.matrix (matrix.yaml loading, validation, selection)."""

from __future__ import annotations

import contextlib
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig.errors import ExitCode, MatrixError, UsageError
from rig.matrix import (
    MAX_BYTES,
    MatrixFileError,
    cells_json,
    load_matrix,
    parse_matrix,
    parse_shard,
    shard,
)

REPO_MATRIX = Path(__file__).resolve().parents[2] / "matrix.yaml"

GOOD = """\
version: 1
defaults: {timeout: 300, memory: 512, vcpus: 1}
kernels:
  "6.12": {suite: trixie, abi: "6.12.117+deb13-amd64", version: "6.12.117-1"}
  "6.1": {suite: bookworm, abi: "6.1.0-44-amd64", extra_suites: [bookworm-security]}
cpus:
  penryn: {bochs: core2_penryn_t9600, tcg: Penryn}
  haswell: {bochs: corei7_haswell_4770}
lanes:
  bochs: {backend: bochs, vmx: true, timeout: 600}
  tcg: {backend: libvirt, vmx: false, domain_type: qemu}
exclude:
  - {lane: bochs, kernel: "6.1", cpu: haswell, reason: "hangs at boot"}
default_slice: {lanes: [bochs], kernels: ["6.12"], cpus: [haswell]}
"""


def problems(text: str | bytes) -> list[str]:
    with pytest.raises(MatrixFileError) as info:
        parse_matrix(text, "m.yaml")
    return [p.render() for p in info.value.problems]


def one(text: str | bytes) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------- the real file
def test_repo_matrix_loads_and_default_slice_is_as_documented() -> None:
    m = load_matrix(REPO_MATRIX)
    cells = m.select()
    assert [c.id for c in cells] == [
        "bochs-6.12-haswell",
        "bochs-6.12-penryn",
        "tcg-6.12-penryn",
    ]
    assert all(c.skip_reason is None for c in cells)  # every default cell can run
    by_id = {c.id: c for c in cells}
    assert by_id["bochs-6.12-haswell"].cpu_model == "corei7_haswell_4770"
    assert by_id["tcg-6.12-penryn"].cpu_model == "Penryn"
    tcg_haswell = m.cell("tcg", "6.12", "haswell")
    assert tcg_haswell.skip_reason == "lane 'tcg' has no CPU model for 'haswell'"
    assert m.kernels["6.12"].abi == "6.12.117+deb13-amd64"
    assert m.kernels["6.12"].version == "6.12.117-1"
    assert m.kernels["7.2"].check_valid_until is False
    assert m.lanes["tcg"].vmx is False
    assert m.lanes["kvm"].domain_type == "kvm"
    assert all(c.timeout_s == 400 and c.memory_mib == 512 and c.vcpus == 1 for c in cells)


def test_repo_matrix_full_and_exclusions() -> None:
    m = load_matrix(REPO_MATRIX)
    cells = m.all_cells()
    assert len(cells) == len(m.lanes) * len(m.kernels) * len(m.cpus)
    assert len({c.id for c in cells}) == len(cells)
    by_id = {c.id: c for c in cells}
    assert "misordered xstate" in (by_id["bochs-6.1-tigerlake"].skip_reason or "")
    assert "fpstate_reset" in (by_id["bochs-7.2-skylake"].skip_reason or "")
    assert by_id["bochs-6.12-tigerlake"].skip_reason is None
    assert by_id["bochs-6.1-generic"].cpu_model == "bx_generic"
    assert by_id["kvm-6.12-generic"].skip_reason is not None


# --------------------------------------------------------------------------- selection
def test_select_filters_replace_one_axis_of_the_default_slice() -> None:
    m = parse_matrix(GOOD, "m.yaml")
    assert [c.id for c in m.select()] == ["bochs-6.12-haswell"]
    assert [c.id for c in m.select(kernels=["6.1"])] == ["bochs-6.1-haswell"]
    assert [c.id for c in m.select(lanes=["tcg", "bochs"], cpus=["penryn"])] == [
        "tcg-6.12-penryn",
        "bochs-6.12-penryn",
    ]
    assert len(m.select(full=True)) == 8
    assert [c.id for c in m.select(cpus=["penryn", "penryn"])] == ["bochs-6.12-penryn"]
    assert m.select(lanes=None, kernels=None, cpus=None) == m.select()


def test_select_keeps_skipped_cells_with_reasons_and_lane_overrides() -> None:
    m = parse_matrix(GOOD, "m.yaml")
    cells = {c.id: c for c in m.select(full=True)}
    assert cells["bochs-6.1-haswell"].skip_reason == "excluded in m.yaml: hangs at boot"
    assert cells["tcg-6.12-haswell"].skip_reason == "lane 'tcg' has no CPU model for 'haswell'"
    assert cells["bochs-6.12-penryn"].timeout_s == 600  # lane override
    assert cells["tcg-6.12-penryn"].timeout_s == 300  # defaults


def test_select_unknown_names_is_a_usage_error_listing_valid_names() -> None:
    m = parse_matrix(GOOD, "m.yaml")
    with pytest.raises(UsageError) as info:
        m.select(kernels=["6.13", "6.12"])
    assert info.value.exit_code == ExitCode.USAGE
    assert "'6.13'" in str(info.value)
    assert "6.12, 6.1" in str(info.value.fix)
    with pytest.raises(UsageError, match="unknown cpu 'zen'"):
        m.select(cpus=["zen"])
    with pytest.raises(UsageError, match="unknown lane"):
        m.cell("kvm", "6.12", "penryn")


# --------------------------------------------------------------------------- validation
def test_matrix_file_error_is_exit_code_2_with_where_and_fix() -> None:
    with pytest.raises(MatrixError) as info:
        parse_matrix(GOOD.replace("vmx: true", 'vmx: "yes"'), "m.yaml")
    err = info.value
    assert err.exit_code == ExitCode.USAGE
    assert int(err.exit_code) == 2
    assert err.where == "m.yaml:10:32"
    assert err.fix
    assert str(err).startswith("m.yaml:10:32: wrong type for vmx: the string 'yes'")


def test_unknown_key_reports_line_col_and_allowed_keys() -> None:
    msg = one(GOOD.replace("vmx: true,", "vmx: true, vxm: 1,"))
    assert msg == (
        "m.yaml:10:38: unknown key 'vxm'; expected one of: backend, vmx, guest, uri, "
        "domain_type, timeout, memory, vcpus, l1_kernel, l0_cpu, l0_cpus, launcher, emulator"
    )


def test_unknown_key_and_missing_key_both_reported() -> None:
    found = problems(GOOD.replace("suite: trixie", "suit: trixie"))
    assert any(
        p.startswith("m.yaml:4:12: unknown key 'suit'; expected one of: suite") for p in found
    )
    assert any(p.startswith("m.yaml:4:11: missing key 'suite'") for p in found)


def test_wrong_type_and_unknown_backend() -> None:
    found = problems(
        GOOD.replace("backend: bochs", "backend: qemu").replace("timeout: 300", "timeout: x")
    )
    assert "m.yaml:2:21: wrong type for timeout: the string 'x'; expected an integer" in found
    wrong = "m.yaml:10:20: invalid backend 'qemu'; expected one of 'bochs', 'libvirt' or 'nested'"
    assert wrong in found
    assert len(found) == 2


def test_unquoted_float_kernel_name_is_refused_with_quote_hint() -> None:
    msg = one(GOOD.replace('"6.1": {', "6.10: {").replace('kernel: "6.1"', 'kernel: "6.10"'))
    assert msg.startswith("m.yaml:5:3: key '6.10' is read by YAML as float")
    assert 'quote it as "6.10"' in msg


@pytest.mark.parametrize(
    ("bad", "where", "words"),
    [
        ('"6.12": {', "m.yaml:4:3", "kernel name '6 12'"),
        ("penryn: {", "m.yaml:7:3", "CPU name 'pen-ryn'"),
        ("tcg: {", "m.yaml:11:3", "lane name 'tc;g'"),
    ],
)
def test_names_must_be_plain(bad: str, where: str, words: str) -> None:
    replacement = {'"6.12": {': '"6 12": {', "penryn: {": "pen-ryn: {", "tcg: {": '"tc;g": {'}
    found = problems(GOOD.replace(bad, replacement[bad]))
    assert any(p.startswith(f"{where}: {words} is not valid") for p in found), found


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ('"6.1": {', '"6.1\\n": {', "kernel name '6.1\\n' is not valid"),
        ("bochs: corei7_haswell_4770", 'bochs: "corei7_haswell_4770\\n"',
         "CPU model 'corei7_haswell_4770\\n' is not valid"),
        ("abi: \"6.1.0-44-amd64\"", 'abi: "6.1.0-44-amd64\\n"', "abi '6.1.0-44-amd64\\n'"),
        ("suite: trixie", 'suite: "trixie\\n"', "suite 'trixie\\n' is not valid"),
        ("penryn: {", '"penryn\\n": {', "CPU name 'penryn\\n' is not valid"),
        ("domain_type: qemu}", 'domain_type: qemu, uri: "qemu:///system\\n"}',
         "uri 'qemu:///system\\n' is not valid"),
    ],
)  # fmt: skip
def test_a_trailing_newline_is_not_part_of_a_name(old: str, new: str, words: str) -> None:
    """L3: `^...$` with re.match took "6.1\\n"; the schema uses fullmatch (exit 2, located)."""
    assert old in GOOD
    with pytest.raises(MatrixFileError) as info:
        parse_matrix(GOOD.replace(old, new, 1), "m.yaml")
    assert info.value.exit_code == ExitCode.USAGE
    assert any(words in p.render() for p in info.value.problems), info.value.problems


def test_duplicate_keys_are_detected_on_the_node_tree() -> None:
    text = GOOD.replace(
        "  haswell: {bochs: corei7_haswell_4770}\n",
        "  haswell: {bochs: corei7_haswell_4770}\n  penryn: {bochs: x}\n",
    )
    msg = one(text)
    assert msg == (
        "m.yaml:9:3: duplicate key 'penryn' (first at line 7); expected each key once per mapping"
    )
    inner = one(GOOD.replace("vmx: false,", "vmx: false, vmx: false,"))
    assert "duplicate key 'vmx'" in inner


def test_empty_axes_are_refused() -> None:
    found = problems(GOOD.replace("cpus: [haswell]}", "cpus: []}"))
    assert found == ["m.yaml:14:58: 'cpus' is empty; expected at least one entry"]
    empty_lanes = re.sub(r"lanes:\n(  .*\n)+", "lanes: {}\n", GOOD)
    assert any("'lanes' is empty" in p for p in problems(empty_lanes))


def test_exclude_entries_are_checked() -> None:
    text = GOOD.replace(
        '  - {lane: bochs, kernel: "6.1", cpu: haswell, reason: "hangs at boot"}\n',
        '  - {lane: bochs, kernel: "6.1", cpu: zen}\n'
        "  - {reason: x}\n"
        '  - {lane: kvm, reason: "  "}\n',
    )
    found = problems(text)
    assert any(p.startswith("m.yaml:13:5: missing key 'reason'") for p in found)
    assert any(
        p.startswith("m.yaml:13:39: unknown cpu 'zen'; expected one of: penryn, haswell")
        for p in found
    )
    assert any(
        p.startswith("m.yaml:14:5: exclude entry names no lane, kernel or cpu") for p in found
    )
    assert any("unknown lane 'kvm'" in p for p in found)
    assert any("empty reason" in p for p in found)


def test_default_slice_names_are_checked() -> None:
    msg = one(GOOD.replace('kernels: ["6.12"]', 'kernels: ["6.13"]'))
    assert msg == "m.yaml:14:43: unknown kernel '6.13'; expected one of: 6.12, 6.1"


def test_lane_consistency() -> None:
    assert "TCG never exposes VMX" in one(GOOD.replace("vmx: false", "vmx: true"))
    assert "does not apply to the bochs backend" in one(
        GOOD.replace("backend: bochs, vmx: true", "backend: bochs, vmx: true, guest: vm")
    )


def test_cpu_naming_unknown_lane_and_bad_model() -> None:
    found = problems(GOOD.replace("tcg: Penryn", 'kvm: Penryn, tcg: "Pen ryn"'))
    assert any("CPU 'penryn' names unknown lane 'kvm'" in p for p in found)
    assert any("CPU model 'Pen ryn' is not valid" in p for p in found)


def test_version_must_be_1() -> None:
    assert one(GOOD.replace("version: 1", "version: 2")).startswith(
        "m.yaml:1:10: version 2 is not supported"
    )
    assert "wrong type for version" in one(GOOD.replace("version: 1", "version: true"))


def test_many_errors_reported_in_one_message() -> None:
    text = (
        GOOD.replace("suite: trixie", "suite: 12")
        .replace("vcpus: 1", "vcpus: 0")
        .replace("cpus: [haswell]", "cpus: [zen]")
    )
    with pytest.raises(MatrixFileError) as info:
        parse_matrix(text, "m.yaml")
    rendered = str(info.value)
    assert len(info.value.problems) == 3
    assert rendered.count("m.yaml:") == 3
    lines = [ln for ln in rendered.splitlines() if ln.startswith("m.yaml:")]
    assert lines == sorted(lines, key=lambda ln: [int(x) for x in ln.split(":")[1:3]])


# --------------------------------------------------------------------------- hostile input
def test_aliases_and_anchors_are_refused() -> None:
    bomb = 'a: &a ["x","x"]\nb: &b [*a,*a]\nc: &c [*b,*b]\n'
    assert "YAML anchor '&a' is not allowed" in one(bomb)
    alias = GOOD + "extra: *nothing\n"
    assert "YAML alias" in one(alias) or "syntax" in one(alias)


def test_python_tags_are_refused() -> None:
    payload = "!!python/object/apply:os.system ['touch /tmp/rig-pwned']"
    msg = one(GOOD.replace("version: 1", f"version: {payload}"))
    assert msg.startswith("m.yaml:1:10: YAML tag !!python/object/apply:os.system is not allowed")
    assert not Path("/tmp/rig-pwned").exists()
    binary = one(GOOD.replace('abi: "6.1.0-44-amd64"', "abi: !!binary aGk="))
    assert binary.startswith("m.yaml:5:")
    assert "tag !!binary is not allowed" in binary


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "matrix.yaml"
    big.write_bytes(b"# " + b"x" * MAX_BYTES + b"\n")
    with pytest.raises(MatrixFileError, match="more than the 1048576"):
        load_matrix(big)


def test_non_utf8_reports_byte_offset() -> None:
    data = GOOD.encode().replace(b"hangs at boot", b"hangs \xff boot")
    msg = one(data)
    offset = data.index(b"\xff")
    assert f"not valid UTF-8 at byte offset {offset}" in msg
    assert msg.startswith("m.yaml:13:")


def test_control_characters_and_syntax_errors_have_positions() -> None:
    assert one("version: 1\nkernels: {a\x07: 1}\n").startswith("m.yaml:2:")
    assert one("version: [1\n").startswith("m.yaml:")
    assert "nesting deeper" in one("a: " + "[" * 200 + "]" * 200)


def test_empty_and_non_mapping_documents() -> None:
    assert "empty" in one("")
    assert "the document is a list" in one("- a\n- b\n")
    assert "YAML syntax error" in one("a: 1\n---\nb: 2\n")


def test_load_matrix_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(MatrixError, match="does not exist") as info:
        load_matrix(tmp_path / "nope.yaml")
    assert info.value.exit_code == 2
    with pytest.raises(MatrixError, match="not a regular file"):
        load_matrix(tmp_path)


# --------------------------------------------------------------------------- properties
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_loader_only_raises_matrix_error_on_bytes(data: bytes) -> None:
    with contextlib.suppress(MatrixError):
        parse_matrix(data, "m.yaml")


_yamlish = st.sampled_from(
    [
        *"{}[]:,-&*!|>'\"#%@` \n\t?",
        "\n  ",
        "!!python/object:x",
        "<<: ",
        "&a ",
        "*a",
        "0x1",
        "1e9",
        "~",
        "null",
        "true",
        "2024-01-01",
        "'6.12'",
    ]
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.text(max_size=8), _yamlish), max_size=60))
def test_loader_only_raises_matrix_error_on_text(parts: list[str]) -> None:
    with contextlib.suppress(MatrixError):
        parse_matrix("".join(parts), "m.yaml")


@settings(max_examples=200)
@given(st.integers(0, len(GOOD) - 1), st.integers(0, 40), st.text(max_size=5))
def test_mutated_good_matrix_only_raises_matrix_error(pos: int, cut: int, insert: str) -> None:
    text = GOOD[:pos] + insert + GOOD[pos + cut :]
    try:
        m = parse_matrix(text, "m.yaml")
    except MatrixError as err:
        assert isinstance(err, MatrixFileError)
        assert all(p.line >= 1 and p.col >= 1 for p in err.problems)
        assert re.match(r"m\.yaml:\d+:\d+: ", str(err))
    else:
        assert len({c.id for c in m.all_cells()}) == len(m.all_cells())


_lane = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
_cpu = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,6}", fullmatch=True)
_kernel = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,6}", fullmatch=True)


def _unique_ci(names: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for n in names:
        seen.setdefault(n.lower(), n)
    return list(seen.values())


@st.composite
def matrices(draw: st.DrawFn) -> dict[str, Any]:
    lanes = _unique_ci(draw(st.lists(_lane, min_size=1, max_size=4)))
    kernels = _unique_ci(draw(st.lists(_kernel, min_size=1, max_size=4)))
    cpus = _unique_ci(draw(st.lists(_cpu, min_size=1, max_size=4)))
    lane_map = {}
    for name in lanes:
        if draw(st.booleans()):
            lane_map[name] = {"backend": "bochs", "vmx": True}
        else:
            lane_map[name] = {"backend": "libvirt", "vmx": False, "domain_type": "qemu"}
    cpu_map = {}
    for cpu in cpus:
        models = {lane: draw(st.sampled_from(["", "Penryn", "corei7_x"])) for lane in lanes}
        models[lanes[0]] = "Model1"
        cpu_map[cpu] = models
    exclude = [
        {"lane": draw(st.sampled_from(lanes)), "cpu": draw(st.sampled_from(cpus)), "reason": "r"}
        for _ in range(draw(st.integers(0, 3)))
    ]
    return {
        "version": 1,
        "kernels": {k: {"suite": "trixie", "abi": "6.12.1-amd64"} for k in kernels},
        "cpus": cpu_map,
        "lanes": lane_map,
        "exclude": exclude,
        "default_slice": {
            "lanes": draw(st.lists(st.sampled_from(lanes), min_size=1)),
            "kernels": draw(st.lists(st.sampled_from(kernels), min_size=1)),
            "cpus": draw(st.lists(st.sampled_from(cpus), min_size=1)),
        },
    }


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(matrices(), st.data())
def test_valid_generated_matrices_select_unique_cells(
    spec: dict[str, Any], data: st.DataObject
) -> None:
    m = parse_matrix(yaml.safe_dump(spec, sort_keys=False), "gen.yaml")
    every = m.all_cells()
    ids = [c.id for c in every]
    assert (
        len(ids) == len(set(ids)) == len(spec["lanes"]) * len(spec["kernels"]) * len(spec["cpus"])
    )
    lanes = data.draw(st.lists(st.sampled_from(list(spec["lanes"])), max_size=3))
    picked = m.select(lanes=lanes)
    assert len({c.id for c in picked}) == len(picked)
    for cell in every:
        excluded = any(
            e["lane"] == cell.lane.name and e["cpu"] == cell.cpu.name for e in spec["exclude"]
        )
        has_model = bool(spec["cpus"][cell.cpu.name].get(cell.lane.name))
        assert (cell.skip_reason is None) == (has_model and not excluded)


# --------------------------------------------------------------------------- YAML typing
def test_plain_scalars_are_typed_as_yaml_1_1_as_pyyaml_did() -> None:
    # yes/on are booleans, y/n and 1e9 are strings (ruamel's own 1.1 rules differ there)
    m = parse_matrix(GOOD.replace("vmx: true", "vmx: yes").replace("haswell", "n"), "m.yaml")
    assert m.lanes["bochs"].vmx is True
    assert "n" in m.cpus
    assert "wrong type for version: the string '1e0'" in one(
        GOOD.replace("version: 1", "version: 1e0")
    )
    octal = problems(GOOD.replace('"6.1": {', "010: {"))
    assert any(p.startswith("m.yaml:5:3: key '010' is read by YAML as int") for p in octal)


# --------------------------------------------------------------------------- everything
def test_select_everything_fills_the_axes_not_given_with_all_names() -> None:
    m = parse_matrix(GOOD, "m.yaml")
    assert m.select(everything=True) == m.all_cells() == m.select(full=True)
    assert [c.id for c in m.select(kernels=["6.1"], everything=True)] == [
        "bochs-6.1-penryn",
        "bochs-6.1-haswell",
        "tcg-6.1-penryn",
        "tcg-6.1-haswell",
    ]
    assert [c.id for c in m.select(kernels=["6.1"])] == ["bochs-6.1-haswell"]
    assert [c.id for c in m.select(lanes=["tcg"], cpus=["penryn"], everything=True)] == [
        "tcg-6.12-penryn",
        "tcg-6.1-penryn",
    ]
    with pytest.raises(UsageError, match="unknown lane 'kvm'"):
        m.select(lanes=["kvm"], everything=True)


# --------------------------------------------------------------------------- shards
def test_parse_shard() -> None:
    assert parse_shard("1/2") == (1, 2)
    assert parse_shard(" 3 / 3 ") == (3, 3)
    assert parse_shard("1/1") == (1, 1)


@pytest.mark.parametrize("bad", ["0/2", "3/2", "a/b", "1/0", "0/0", "", "1", "1/2/3", "-1/2"])
def test_parse_shard_refuses_bad_specs_with_a_fix(bad: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_shard(bad)
    assert info.value.exit_code == ExitCode.USAGE
    assert repr(bad) in str(info.value)
    assert "I/N" in str(info.value.fix)


def test_shard_of_the_repo_matrix() -> None:
    m = load_matrix(REPO_MATRIX)
    every = m.all_cells()
    parts = [shard(every, i, 4) for i in range(1, 5)]
    assert sorted(c.id for p in parts for c in p) == sorted(c.id for c in every)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    runnable = [sum(c.skip_reason is None for c in p) for p in parts]
    assert max(runnable) - min(runnable) <= 1
    assert shard(every, 1, 1) == every
    with pytest.raises(UsageError, match="out of range"):
        shard(every, 0, 4)
    with pytest.raises(UsageError, match="out of range"):
        shard(every, 5, 4)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(matrices(), st.integers(1, 7), st.randoms(use_true_random=False))
def test_shards_partition_the_selection(
    spec: dict[str, Any], count: int, rnd: random.Random
) -> None:
    m = parse_matrix(yaml.safe_dump(spec, sort_keys=False), "gen.yaml")
    cells = m.all_cells()
    parts = [shard(cells, i, count) for i in range(1, count + 1)]
    ids = [c.id for p in parts for c in p]
    assert sorted(ids) == sorted(c.id for c in cells)  # every cell in exactly one shard
    assert len(ids) == len(set(ids))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    runnable = [sum(c.skip_reason is None for c in p) for p in parts]
    assert max(runnable) - min(runnable) <= 1
    for p in parts:  # each shard keeps the order of the selection
        positions = [cells.index(c) for c in p]
        assert positions == sorted(positions)
    shuffled = list(cells)
    rnd.shuffle(shuffled)  # the order of the selection does not move cells between shards
    for i in range(1, count + 1):
        assert {c.id for c in shard(shuffled, i, count)} == {c.id for c in parts[i - 1]}


# --------------------------------------------------------------------------- JSON
def test_cells_json_is_plain_data_for_every_cell() -> None:
    m = parse_matrix(GOOD, "m.yaml")
    data = cells_json(m.all_cells())
    assert json.loads(json.dumps(data)) == data
    assert [d["id"] for d in data] == [c.id for c in m.all_cells()]
    by_id = {d["id"]: d for d in data}
    assert by_id["tcg-6.12-haswell"] == {
        "id": "tcg-6.12-haswell",
        "lane": "tcg",
        "kernel": "6.12",
        "kernel_abi": "6.12.117+deb13-amd64",
        "cpu": "haswell",
        "cpu_model": None,
        "skip_reason": "lane 'tcg' has no CPU model for 'haswell'",
    }
    assert by_id["bochs-6.1-penryn"] == {
        "id": "bochs-6.1-penryn",
        "lane": "bochs",
        "kernel": "6.1",
        "kernel_abi": "6.1.0-44-amd64",
        "cpu": "penryn",
        "cpu_model": "core2_penryn_t9600",
        "skip_reason": None,
    }
    assert by_id["bochs-6.1-haswell"]["skip_reason"] == "excluded in m.yaml: hangs at boot"
    assert cells_json([]) == []


def test_an_emulator_belongs_to_the_bochs_backend_only() -> None:
    m = parse_matrix(GOOD.replace("timeout: 600}", "timeout: 600, emulator: trixie}"), "m.yaml")
    assert m.lanes["bochs"].emulator == "trixie" and m.lanes["tcg"].emulator == ""
    msg = one(GOOD.replace("domain_type: qemu}", "domain_type: qemu, emulator: trixie}"))
    assert "emulator applies to the bochs backend only" in msg, msg
    assert "'sarge'" in one(GOOD.replace("timeout: 600}", "timeout: 600, emulator: sarge}"))
