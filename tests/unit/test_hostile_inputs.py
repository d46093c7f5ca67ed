"""Hostile inputs at the rig's own trust boundaries (security findings L3 and L5).

L3: every validator refuses a trailing newline (they used `^...$` with re.match, and `$` also
matches before a final "\\n": `hold_vmx=1\\n` became a second line of the agent's plan).
L5: the embedded libvirt pool has no default under /var/tmp, and a slot never writes its
qemu.conf through a symlink.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from rig.errors import InfraError, UsageError
from rig.lanes import bochs
from rig.matrix import schema
from rig.model import BootSpec, GuestImage
from rig.options import KERNEL_ARG_RE, PARAM_RE, check_kernel_arg, check_param


def _typed(annotation: Any) -> Callable[[str], object]:
    return TypeAdapter(annotation).validate_python


def _bochs_model(model: str) -> object:
    spec = BootSpec(GuestImage(Path("k"), Path("i"), ""), model, 64, 1, 10, Path("/w"))
    w = Path("/w")
    return bochs.bochsrc(spec, w / "boot.iso", w / "c.txt", w / "a.txt", w / "b.log")


# (name, validator, the pattern it enforces): every value the pattern generates is accepted
VALIDATORS: list[tuple[str, Callable[[str], object], re.Pattern[str]]] = [
    ("--param", check_param, PARAM_RE),
    ("--kernel-arg", check_kernel_arg, KERNEL_ARG_RE),
    ("lane name", _typed(schema.LaneName), schema._IDENT_RE),
    ("CPU name", _typed(schema.CpuName), schema._IDENT_RE),
    ("kernel name", _typed(schema.KernelName), schema._KERNEL_RE),
    ("CPU model", _typed(schema.ModelName), schema._MODEL_RE),
    ("suite", _typed(schema.Suite), schema._SUITE_RE),
    ("abi", _typed(schema.Abi), schema._ABI_RE),
    ("version", _typed(schema.DebVersion), schema._DEBVER_RE),
    ("mirror", _typed(schema.Mirror), schema._MIRROR_RE),
    ("uri", _typed(schema.Uri), schema._URI_RE),
    ("Bochs model", _bochs_model, bochs._MODEL_RE),
]
REFUSED = (UsageError, ValidationError, ValueError, InfraError)
IDS = [name for name, _v, _p in VALIDATORS]


def accepts(validator: Callable[[str], object], value: str) -> bool:
    try:
        validator(value)
    except REFUSED:
        return False
    return True


def test_the_reported_cases_are_refused() -> None:
    assert check_param("hold_vmx=1") == "hold_vmx=1"
    with pytest.raises(UsageError, match="not of the form name=value"):
        check_param("hold_vmx=1\n")
    with pytest.raises(InfraError, match="not a Bochs CPU model name"):
        _bochs_model("corei7_haswell_4770\n")
    with pytest.raises(ValidationError, match="kernel name"):
        _typed(schema.KernelName)("6.1\n")


@pytest.mark.parametrize(("name", "validator", "pattern"), VALIDATORS, ids=IDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_valid_value_plus_newline_is_refused(
    name: str, validator: Callable[[str], object], pattern: re.Pattern[str], data: st.DataObject
) -> None:
    value = data.draw(st.from_regex(pattern, fullmatch=True).filter(lambda v: "\n" not in v))
    assert accepts(validator, value), (name, value)
    for tail in ("\n", "\r\n", "\n" + value):
        assert not accepts(validator, value + tail), (name, value + tail)


@pytest.mark.parametrize(("name", "validator", "pattern"), VALIDATORS, ids=IDS)
@settings(max_examples=60, deadline=None)
@given(value=st.text(alphabet=st.sampled_from("a0_.=:/-+~,\n\r x")))
def test_whatever_is_accepted_never_ends_a_line(
    name: str, validator: Callable[[str], object], pattern: re.Pattern[str], value: str
) -> None:
    """Whenever a value is checked and accepted, the same value with "\\n" after it is not."""
    if accepts(validator, value):
        assert "\n" not in value and "\r" not in value, (name, value)
        assert not accepts(validator, value + "\n"), (name, value)


# --------------------------------------------------------------------------- L5: embed pool
def test_the_embedded_pool_has_no_default_under_var_tmp() -> None:
    from rig.lanes.libvirt import LibvirtBackend

    with pytest.raises(TypeError, match="embed_pool"):
        LibvirtBackend(name="tcg")  # type: ignore[call-arg]
    pool = Path("/cache/libvirt-embed")
    assert LibvirtBackend(name="tcg", embed_pool=pool).embed_pool == pool


def test_embed_slot_writes_its_config_into_a_real_slot(tmp_path: Path) -> None:
    from rig.lanes.libvirt_child import embed_slot, qemu_conf

    with embed_slot(tmp_path / "pool") as root:
        assert root == tmp_path / "pool" / "slot-0"
        assert (root / "etc" / "qemu.conf").read_text() == qemu_conf()


@pytest.mark.parametrize(
    "link", ["slot-0", "slot-0/etc", "slot-0/etc/qemu.conf", "slot-0/rig.lock"]
)
def test_embed_slot_never_writes_through_a_symlink(tmp_path: Path, link: str) -> None:
    from rig.lanes.libvirt_child import embed_slot

    pool, victim = tmp_path / "pool", tmp_path / "victim"
    victim.mkdir()
    (victim / "qemu.conf").write_text("the victim's own\n")
    target = victim / "qemu.conf" if link.endswith("qemu.conf") else victim
    target = victim / "planted.lock" if link.endswith("rig.lock") else target
    (pool / link).parent.mkdir(parents=True, exist_ok=True)
    (pool / link).symlink_to(target)
    refused = pytest.raises(InfraError, match="is a symlink; the rig never writes through one")
    with refused, embed_slot(pool):
        pass
    assert sorted(p.name for p in victim.iterdir()) == ["qemu.conf"]
    assert (victim / "qemu.conf").read_text() == "the victim's own\n"
