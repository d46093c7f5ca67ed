"""Checks between the sections of matrix.yaml that a per-field schema cannot make.

Names that differ only in case, CPU models for unknown lanes, CPUs without any model, lane
settings that do not fit the backend, exclusions and the default slice naming unknown lanes,
kernels or CPUs. They run on the raw data, so they are reported even when other parts of the
file are bad.
"""

from __future__ import annotations

from typing import Any

from rig.matrix.source import Document, Path_, describe


def _names(data: Any, section: str) -> list[str]:
    part = data.get(section) if isinstance(data, dict) else None
    return [k for k in part if isinstance(k, str)] if isinstance(part, dict) else []


def cross_check(data: Any, doc: Document) -> None:
    """Checks between sections, on the raw data (so they run even when other parts are bad)."""
    if not isinstance(data, dict):
        doc.at(
            (), f"the document is {describe(data)}", "a mapping with version, kernels, cpus, lanes"
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

    kernel_section = data.get("kernels")
    debian = (
        {n for n, k in (kernel_section or {}).items() if isinstance(k, dict) and "abi" in k}
        if isinstance(kernel_section, dict)
        else set()
    )
    if isinstance(kernel_section, dict):
        for name, k in kernel_section.items():
            if isinstance(k, dict):
                _check_kernel(name, k, doc)
            config = k.get("config") if isinstance(k, dict) else None
            if (isinstance(config, str) and config.startswith("debian:")
                    and config[7:] not in debian):  # fmt: skip
                doc.at(("kernels", name, "config"),
                       f"kernel '{name}' takes its config from '{config[7:]}', which is "
                       "not a Debian kernel of this matrix",
                       "debian:NAME of one of: " + ", ".join(sorted(debian)))  # fmt: skip

    lane_section = data.get("lanes")
    if isinstance(lane_section, dict):
        for name, lane in lane_section.items():
            if isinstance(lane, dict):
                _check_lane(name, lane, doc)
                known(("lanes", name, "l1_kernel"), "kernel", lane.get("l1_kernel"))
                l1 = lane.get("l1_kernel")
                if isinstance(l1, str) and l1 in axes["kernel"] and l1 not in debian:
                    doc.at(("lanes", name, "l1_kernel"),
                           f"the nested lane's L1 kernel '{l1}' is not a Debian kernel",
                           "a Debian kernel (L1 is made of its packages)")  # fmt: skip

    excludes = data.get("exclude")
    if isinstance(excludes, list):
        for i, entry in enumerate(excludes):
            if isinstance(entry, dict):
                for axis in ("lane", "kernel", "cpu"):
                    known(("exclude", i, axis), axis, entry.get(axis))

    slices = data.get("default_slice")
    located: list[tuple[tuple[Any, ...], Any]] = []
    if isinstance(slices, dict):
        located = [(("default_slice",), slices)]
    elif isinstance(slices, list):
        located = [(("default_slice", j), s) for j, s in enumerate(slices)]
    for where, slice_ in located:
        if not isinstance(slice_, dict):
            continue
        for plural, axis in (("lanes", "lane"), ("kernels", "kernel"), ("cpus", "cpu")):
            items = slice_.get(plural)
            if isinstance(items, list):
                for i, name in enumerate(items):
                    known((*where, plural, i), axis, name)


def _check_kernel(name: str, k: dict[str, Any], doc: Document) -> None:
    """A kernel is one kind: a Debian package, a build directory or a tree and a ref."""
    kinds = [key for key in ("abi", "build", "tree") if key in k]
    if len(kinds) != 1:
        doc.at(("kernels", name),
               f"kernel '{name}' has {' and '.join(kinds) or 'none of abi, build, tree'}",
               "one of {suite, abi} (a Debian package), {build: DIR} (a kernel you built) "
               "or {tree: DIR, ref: REF} (a git tree the rig builds)")  # fmt: skip
        return  # what else it may hold depends on its kind: one problem, not a cascade
    if "abi" in k and "suite" not in k:
        doc.at(("kernels", name), "missing key 'suite'", "'suite' in this mapping")
    if "tree" in k and "ref" not in k:
        doc.at(("kernels", name), f"kernel '{name}' has only one of tree and ref", "both")
    for key, only in (("config", "tree"), ("ref", "tree"), ("version", "abi"),
                      ("extra_suites", "abi")):  # fmt: skip
        if key in k and only not in k:
            doc.at(("kernels", name, key), f"'{key}' is only for kernels with '{only}'",
                   f"no '{key}' here", key=True)  # fmt: skip


def _check_lane(name: str, lane: dict[str, Any], doc: Document) -> None:
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
