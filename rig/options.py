"""The one option surface of a matrix run: `rig run --X` and the pytest plugin's `--rig-X`.

Each option is declared once (RUN_OPTIONS). `rig run` adds them to argparse and hands them to
pytest as `--rig-X` words (`pytest_words`); the plugin registers the same table with pytest.
Both turn the values into a RunSettings through `settings_from`, which checks every value
before anything is built, so bad input is exit 2 (UsageError) at once, never after a kernel
was fetched and a module compiled.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig.errors import UsageError
from rig.matrix.load import one_off_kernel
from rig.matrix.select import Matrix, parse_shard, shard
from rig.model import Cell

# Validators use fullmatch: `$` after re.match also accepts a trailing "\n" (a second line).
PARAM_RE = re.compile(r"[a-z][a-z0-9_]{0,63}=[A-Za-z0-9_.,-]{0,128}")
KERNEL_ARG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,=/-]{0,127}")
GUESTS = ("initramfs", "vm")
INJECTABLE = ("nmi", "mce")
BESIDE = ("kvm", "kvm-during")


def check_kernel_arg(arg: str, what: str = "kernel argument") -> str:
    """A word for the guest kernel's command line: never anything GRUB or a shell interprets."""
    if not KERNEL_ARG_RE.fullmatch(arg):
        raise UsageError(
            f"{what} {arg!r} is not a plain word",
            fix="use letters, digits and _ . , = / - only, e.g. clearcpuid=vmx",
        )
    return arg


def check_param(param: str) -> str:
    """A module parameter `name=value` (letters, digits, _ . , - only)."""
    if not PARAM_RE.fullmatch(param):
        raise UsageError(
            f"module parameter {param!r} is not of the form name=value",
            fix="e.g. --param break_field=host_addr_space_size (letters, digits, _ . , - only)",
        )
    return param


def msr_value(value: str) -> int:
    try:
        number = int(value, 0)
    except ValueError:
        number = -1
    if not 0 <= number <= 0xFFFFFFFF:
        raise UsageError(
            f"--feature-control {value!r} is not a 32-bit number", fix="e.g. --feature-control 0x1"
        )
    return number


@dataclass(frozen=True)
class Option:
    """One option of a run: `--NAME` for rig run, `--rig-NAME` for pytest."""

    name: str  # "kernel-arg"
    help: str
    repeat: bool = False  # may be given several times (a list)
    default: Any = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    flag: bool = False  # a switch without a value (`--all`)

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def argparse_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"help": self.help, "dest": self.dest}
        if self.flag:
            kw.update(action="store_true", default=False)
            return kw
        if self.repeat:
            kw.update(action="append", default=[])
        else:
            kw["default"] = self.default
        if self.metavar:
            kw["metavar"] = self.metavar
        if self.choices:
            kw["choices"] = self.choices
        return kw


RUN_OPTIONS: tuple[Option, ...] = (
    Option("lane", "lane name (repeatable)", repeat=True),
    Option(
        "kernel",
        "kernel name, or a kernel build directory (a path: ./DIR) (repeatable)",
        repeat=True,
    ),
    Option("cpu", "CPU generation (repeatable)", repeat=True),
    Option(
        "all",
        "the whole matrix: an axis not given means every name on it, not default_slice's",
        flag=True,
        default=False,
    ),
    Option(
        "shard",
        "run only shard I of N of the selection (deterministic: cells dealt round-robin by id, "
        "runnable ones first), e.g. --all --shard 2/4",
        metavar="I/N",
    ),
    Option("driver", "driver source tree (default: the project's driver/)", metavar="DIR"),
    Option(
        "profile",
        "how the module's dmesg lines are read (rig/verdict/profiles.py): vmlaunch-rig (the "
        "project's driver, default) or vmlaunch-original (vishmohan/vmlaunch)",
        metavar="NAME",
    ),
    Option(
        "strict-build",
        "build warnings fail `build` for any profile (they always do for vmlaunch-rig)",
        flag=True,
        default=False,
    ),
    Option("param", "module parameter name=value (repeatable)", repeat=True),
    Option("timeout", "per-cell timeout in seconds (default: the matrix's)", metavar="SECONDS"),
    Option(
        "uri",
        "libvirt URI for libvirt lanes (default: embedded); repeat for a pool of hosts: each "
        "cell leases a free slot on a live one (URI?slots=N, the rig's own parameter, default "
        "1); a remote host (qemu+ssh://...) gets kernel and initrd uploaded and its consoles "
        "streamed back (initramfs guests)",
        repeat=True,
    ),
    Option("guest", "guest flavour (default: per lane)", choices=GUESTS),
    Option("repeat", "load/unload cycles of the driver in each guest", default="1", metavar="N"),
    Option(
        "preload",
        "module source tree built like the driver, loaded before it and left loaded "
        "(e.g. tests/drivers/vmxhog); its ARRANGES file names the refusal it sets up",
        repeat=True,
        metavar="DIR",
    ),
    Option(
        "kernel-arg",
        "word appended to the guest kernel command line (repeatable; initramfs guests)",
        repeat=True,
        metavar="WORD",
    ),
    Option(
        "feature-control",
        "IA32_FEATURE_CONTROL as a firmware would leave it, written by GRUB before the kernel "
        "(bochs lane): 0x1 = locked with VMX off (arranges the vmx_disabled_by_bios refusal)",
        metavar="VALUE",
    ),
    Option(
        "beside",
        "another hypervisor beside the driver (VMX lanes, initramfs guests): kvm = the guest "
        "kernel's own kvm_intel loaded first with a VM open (arranges the vmx_busy refusal; "
        "the VM must outlive the driver's runs); kvm-during = kvm_intel loaded while the "
        "driver is, running a VM: refused in hold mode, allowed in window mode",
        choices=BESIDE,
    ),
    Option(
        "crash",
        "the crash path: load the driver (with --param, e.g. hold_vmx=1), load the cell's "
        "kernel as a kdump kernel (kexec -p, crashkernel=), crash the guest (sysrq c): the "
        "crash kernel must boot and find a vmcore (teardown); initramfs guests",
        flag=True,
        default=False,
    ),
    Option(
        "cpu-witness",
        "the CPU beneath as witness on the bochs lane: Bochs logs the guest's VMLAUNCH, VMRESUME "
        "and VM exits, and the judge compares them with the driver's lines (costs a third more "
        "boot time; the nested lanes' witness, KVM's trace in L1, is always on)",
        flag=True,
        default=False,
    ),
    Option(
        "snapshot",
        "boot once, test many (the bochs and tcg lanes): each (kernel, CPU model) boots once "
        "to a guest waiting for its module, the emulator saves the machine, and every cell "
        "restores it and gets its module on the CD (cached by everything that went in; other "
        "lanes boot as usual)",
        flag=True,
        default=False,
    ),
    Option(
        "inject",
        "event injected into the guest from outside while each run's driver is loaded "
        "(repeatable): nmi = NMIs, mce = action-optional machine checks; the nested lane "
        "injects them from its L1 QEMU's monitor",
        repeat=True,
        choices=INJECTABLE,
        metavar="EVENT",
    ),
    Option(
        "require-lane",
        "a lane that must run on this host: if it cannot, the run is an infrastructure "
        "error (exit 3) instead of a skip (repeatable)",
        repeat=True,
        metavar="LANE",
    ),
    Option("runs-dir", "where run directories live", default=".rig/runs", metavar="DIR"),
    Option("cache", "artifact cache (default $RIG_CACHE_DIR or ~/.cache/vmlaunch-rig)"),
    Option("run-id", "run id (default: a new one per run)"),
)


@dataclass(frozen=True)
class RunSettings:
    """The checked values of RUN_OPTIONS."""

    lanes: tuple[str, ...] = ()
    kernels: tuple[str, ...] = ()
    cpus: tuple[str, ...] = ()
    everything: bool = False  # --all
    shard: tuple[int, int] | None = None  # --shard I/N
    driver: Path = Path("driver")
    profile: str = "vmlaunch-rig"  # --profile: a name of rig.verdict.profiles.PROFILES
    strict_build: bool = False  # --strict-build: a foreign module's warnings are fatal too
    module_params: tuple[str, ...] = ()
    timeout_s: int | None = None
    uris: tuple[str, ...] = ()
    guest: str | None = None
    repeat: int = 1
    preload: tuple[Path, ...] = ()
    kernel_args: tuple[str, ...] = ()
    feature_control: int | None = None
    inject: tuple[str, ...] = ()  # --inject: events the lane injects (INJECTABLE)
    beside: str | None = None  # --beside: a hypervisor holding VMX beside the driver (BESIDE)
    crash: bool = False  # --crash: the kdump path with the driver loaded
    cpu_witness: bool = False  # --cpu-witness: Bochs logs the guest's VMX (BootResult.beneath)
    snapshot: bool = False  # --snapshot: lanes that can restore a saved guest do
    require_lanes: tuple[str, ...] = ()
    runs_dir: Path = Path(".rig/runs")
    cache: Path | None = None
    run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _positive(value: Any, what: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = low - 1
    if not low <= number <= high:
        raise UsageError(f"{what} takes a whole number from {low} to {high}, not {value!r}")
    return number


def _tree(value: str, what: str, default_driver: Path) -> Path:
    path = Path(value).resolve() if value else default_driver
    if not path.is_dir():
        raise UsageError(f"{what} {path}: no such directory", fix="pass a module source tree")
    if not (path / "Kbuild").exists() and not (path / "Makefile").exists():
        raise UsageError(
            f"{what} {path} is not a kernel module tree (no Kbuild or Makefile)",
            fix="pass a directory holding a module's sources and its Kbuild",
        )
    return path


def _one_of(value: Any, allowed: tuple[str, ...], what: str) -> str | None:
    if value in (None, ""):
        return None
    if value not in allowed:
        raise UsageError(f"{what} {value!r}: not one of {', '.join(allowed)}")
    return str(value)


PROFILES = ("vmlaunch-rig", "vmlaunch-original")
"""The module profiles' names (rig.verdict.profiles.PROFILES defines them; a test keeps the
two lists one)."""


def _profile(name: Any) -> str:
    """A module profile's name (UsageError naming the known ones)."""
    chosen = str(name) if name else PROFILES[0]
    if chosen not in PROFILES:
        raise UsageError(
            f"--profile {chosen!r}: no such module profile", fix=f"one of: {', '.join(PROFILES)}"
        )
    return chosen


def _injectable(event: str) -> str:
    if event not in INJECTABLE:
        raise UsageError(f"--inject {event!r}: not an event the rig injects",
                         fix=f"one of: {', '.join(INJECTABLE)}")  # fmt: skip
    return event


def settings_from(values: Mapping[str, Any], *, default_driver: Path) -> RunSettings:
    """Check every value (UsageError, exit 2) and return the run's settings."""

    def many(name: str) -> tuple[str, ...]:
        return tuple(str(v) for v in (values.get(name) or ()))

    timeout = values.get("timeout")
    fc = values.get("feature_control")
    cache = values.get("cache")
    return RunSettings(
        lanes=many("lane"),
        kernels=many("kernel"),
        cpus=many("cpu"),
        everything=bool(values.get("all")),
        shard=parse_shard(str(values["shard"])) if values.get("shard") else None,
        driver=_tree(str(values.get("driver") or ""), "--driver", default_driver),
        profile=_profile(values.get("profile")),
        strict_build=bool(values.get("strict_build")),
        module_params=tuple(check_param(p) for p in many("param")),
        timeout_s=None if timeout in (None, "") else _positive(timeout, "--timeout", 1, 86400),
        uris=many("uri"),
        guest=values.get("guest") or None,
        repeat=_positive(values.get("repeat") or 1, "--repeat", 1, 1000),
        preload=tuple(_tree(p, "--preload", default_driver) for p in many("preload")),
        kernel_args=tuple(check_kernel_arg(a, "--kernel-arg") for a in many("kernel_arg")),
        feature_control=None if fc in (None, "") else msr_value(str(fc)),
        inject=tuple(dict.fromkeys(_injectable(e) for e in many("inject"))),
        beside=_one_of(values.get("beside"), BESIDE, "--beside"),
        crash=bool(values.get("crash")),
        cpu_witness=bool(values.get("cpu_witness")),
        snapshot=bool(values.get("snapshot")),
        require_lanes=many("require_lane"),
        runs_dir=Path(values.get("runs_dir") or ".rig/runs").resolve(),
        cache=Path(cache) if cache else None,
        run_id=values.get("run_id") or None,
    )


def select(matrix: Matrix, settings: RunSettings) -> list[Cell]:
    """The cells of a run: --lane/--kernel/--cpu (and --all) select, then --shard splits."""
    names: list[str] = []
    for k in settings.kernels:  # a path (it has a '/') is a kernel you built
        if "/" in k:
            spec = one_off_kernel(k, matrix.kernels)
            matrix = matrix.with_kernels([spec])
            k = spec.name
        names.append(k)
    cells = matrix.select(
        lanes=settings.lanes,
        kernels=names,
        cpus=settings.cpus,
        everything=settings.everything,
    )
    if settings.shard is not None:
        cells = shard(cells, *settings.shard)
    return cells


def add_to_argparse(add: Callable[..., Any]) -> None:
    """`add` is an argparse parser's add_argument."""
    for opt in RUN_OPTIONS:
        add(f"--{opt.name}", **opt.argparse_kwargs())


def add_to_pytest(add: Callable[..., Any]) -> None:
    """`add` is a pytest option group's addoption: the same options as `--rig-NAME`."""
    for opt in RUN_OPTIONS:
        kw = opt.argparse_kwargs()
        kw["dest"] = f"rig_{opt.dest}"
        add(f"--rig-{opt.name}", **kw)


def pytest_words(values: Mapping[str, Any]) -> list[str]:
    """The pytest arguments that carry `values` (argparse dests) to the plugin."""
    words: list[str] = []
    for opt in RUN_OPTIONS:
        value = values.get(opt.dest)
        if opt.flag:
            words += [f"--rig-{opt.name}"] if value else []
            continue
        items: Sequence[Any] = (value or []) if opt.repeat else ([] if value is None else [value])
        for item in items:
            words += [f"--rig-{opt.name}", str(item)]
    return words


def values_of(namespace: Any, prefix: str = "") -> dict[str, Any]:
    """The RUN_OPTIONS values of an argparse or pytest namespace (pytest's carry `rig_`)."""
    return {o.dest: getattr(namespace, prefix + o.dest, None) for o in RUN_OPTIONS}
