"""A kernel git tree for the bisection tests: Debian's linux-source-6.12 as one commit, then a
short series of planted commits, tagged, oldest first:

    rig-base      the Debian tree (good)
    rig-docs      a documentation change (good)
    rig-flaky     a late initcall that panics one boot in two (flaky: an infrastructure
                  error before the test, retried)
    rig-nobuild   a half-done rename in arch/x86/kernel/cpu/common.c (does not build: skip)
    rig-fixed     the rename finished and the flaky initcall dropped (good)
    rig-culprit   cr4_update_irqsoff() drops CR4.VMXE ("VMX is the virt layer's"): a realistic
                  regression for any VMX module that sets CR4.VMXE with cr4_set_bits()
    rig-end       a MAINTAINERS change (bad, through the culprit)

`git bisect start rig-end rig-base` tests rig-nobuild first, then rig-flaky: each planted
property is met on the way. Made once under the cache (keyed by this recipe), with git's own
objects, never the user's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from filelock import FileLock

from rig.artifacts import Cache, in_root, run_step, stderr_progress
from rig.artifacts.toolchain import toolchain

SOURCE = "linux-source-6.12"
MIRROR = "http://deb.debian.org/debian"
COMMON = "arch/x86/kernel/cpu/common.c"
FLAKY = """
/* planted by vmlaunch-rig's bisection test: one boot in two dies here */
static int __init rig_planted_flaky(void)
{
\tif (get_random_u32() & 1)
\t\tpanic("rig-planted: flaky boot");
\treturn 0;
}
late_initcall(rig_planted_flaky);
"""
# (tag, subject, [(file, old text, new text)]); "" as old text appends
SERIES: tuple[tuple[str, str, tuple[tuple[str, str, str], ...]], ...] = (
    ("rig-docs", "Documentation: kvm: say where the VMX capability MSRs are read",
     (("Documentation/virt/kvm/api.rst", "", "\n.. VMX capability MSRs: arch/x86/kvm/vmx\n"),)),
    ("rig-flaky", "init: a late initcall for early boot debugging",
     (("init/main.c", "", FLAKY),)),
    ("rig-nobuild", "x86/cpu: rename newval in cr4_update_irqsoff()",
     ((COMMON, "unsigned long newval, cr4 = this_cpu_read(cpu_tlbstate.cr4);",
       "unsigned long new_cr4, cr4 = this_cpu_read(cpu_tlbstate.cr4);"),)),
    ("rig-fixed", "x86/cpu: finish the rename; init: drop the debugging initcall",
     ((COMMON, "unsigned long new_cr4, cr4 = this_cpu_read(cpu_tlbstate.cr4);",
       "unsigned long newval, cr4 = this_cpu_read(cpu_tlbstate.cr4);"),
      ("init/main.c", FLAKY, ""))),
    ("rig-culprit", "x86/cpu: CR4.VMXE is the virtualization layer's, not cr4_set_bits()'",
     ((COMMON, "\tnewval = (cr4 & ~clear) | set;",
       "\tset &= ~X86_CR4_VMXE;\t/* VMX is enabled by the virtualization layer only */\n"
       "\tnewval = (cr4 & ~clear) | set;"),)),
    ("rig-end", "MAINTAINERS: a new reviewer",
     (("MAINTAINERS", "", "\n"),)),
)  # fmt: skip
RECIPE = hashlib.sha256(repr((SOURCE, SERIES)).encode()).hexdigest()[:12]


def _git(tree: Path, *args: str) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "LC_ALL": "C",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_DATE": "2026-12-01T00:00:00Z",
           "GIT_COMMITTER_DATE": "2026-12-01T00:00:00Z"}  # fmt: skip
    return subprocess.run(
        ["git", "-C", str(tree), "-c", "user.name=Planted", "-c", "user.email=planted@rig",
         *args], check=True, capture_output=True, text=True, env=env,
    ).stdout.strip()  # fmt: skip


def planted_tree(cache: Cache) -> Path:
    """The tree (made on first use: ~1 min and a 154 MB download)."""
    final = cache.root / "test-trees" / f"linux-6.12-planted-{RECIPE}"
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if not (final / ".git").is_dir():
            tmp = final.with_name(final.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            _make(cache, tmp)
            tmp.rename(final)
    return final


def _make(cache: Cache, dest: Path) -> None:
    root = toolchain(cache, "trixie", MIRROR, stderr_progress)
    work = root / "var/tmp/rig-src"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = dest.with_suffix(".log")
    try:
        run_step(in_root(root, ["apt-get", "-q", "update"]), log=log, what="apt-get update")
        run_step(in_root(root, ["apt-get", "-q", "download", SOURCE], cwd="/var/tmp/rig-src"),
                 log=log, what=f"apt-get download {SOURCE}")  # fmt: skip
        deb = next(work.glob(f"{SOURCE}_*.deb"))
        dest.mkdir(parents=True)
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                              stdout=subprocess.PIPE) as p:  # fmt: skip
            assert p.stdout is not None
            with tarfile.open(fileobj=p.stdout, mode="r|") as outer:
                for member in outer:
                    if member.name.endswith(f"{SOURCE}.tar.xz"):
                        src = outer.extractfile(member)
                        assert src is not None
                        (work / "src.tar.xz").write_bytes(src.read())
                        break
        subprocess.run(["tar", "-xJf", str(work / "src.tar.xz"), "-C", str(dest),
                        "--strip-components=1"], check=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _git(dest, "init", "-q")
    _git(dest, "add", "-A", "-f")  # Debian's .gitignore ignores the top level
    _git(dest, "commit", "-q", "-m", f"Debian's {SOURCE}")
    _git(dest, "tag", "rig-base")
    for tag, subject, edits in SERIES:
        for name, old, new in edits:
            path = dest / name
            text = path.read_text()
            if old:
                assert old in text, f"{name}: {old!r} not found"
                text = text.replace(old, new, 1)
            else:
                text += new
            path.write_text(text)
            _git(dest, "add", "-f", name)
        _git(dest, "commit", "-q", "-m", subject)
        _git(dest, "tag", tag)
