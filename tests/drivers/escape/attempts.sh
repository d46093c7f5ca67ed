#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# The attacks of tests/drivers/escape, run by its Kbuild in the middle of the build. Each one
# prints what happened; none fails the build. A line with "WRITABLE" or "CONNECTED" means
# the sandbox let that attack through; the chroot escape shows as the proof file on the host.
# usage: attempts.sh CC SRC OBJ PROOF PORT SRCTREE
cc=$1 src=$2 obj=$3 proof=$4 port=$5 srctree=$6
echo "escape: the build runs as uid $(id -u) gid $(id -g) in $(pwd)"
echo "escape: $(grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status | tr '\t\n' '  ')"

# (a) the classic chroot escape: a static program, compiled here by the chroot's own gcc
# (freestanding: the chroot has no libc headers), chroot()s into a subdirectory, climbs out
# with chdir(".."), chroot(".")s at the real root and writes the proof file there.
# shellcheck disable=SC2086 # CC may hold options
if $cc -O1 -static -nostdlib -ffreestanding -fno-builtin -fno-stack-protector \
    -fno-pie -no-pie -fcf-protection=none -o "$obj/esc" "$src/esc.c"; then
  (cd "$obj" && ./esc "$proof") || echo "escape: (a) esc exited $?"
else
  echo "escape: (a) could not compile esc.c"
fi

# (b) poison the shared toolchain: the compiler, a header every module includes, a new file
# shellcheck disable=SC2086 # the first word of CC (which may start with a blank)
set -- $cc
gcc=$(readlink -f "$(command -v "$1")")
if (: >>"$gcc") 2>/dev/null; then
  echo "escape: (b) compiler $gcc: WRITABLE (opened for writing)"
else
  echo "escape: (b) compiler $gcc: cannot open for writing"
fi
header=$srctree/include/linux/module.h
if (echo '/* rig-escape-proof: a module build wrote this */' >>"$header") 2>/dev/null; then
  echo "escape: (b) header $header: WRITABLE (appended a line)"
else
  echo "escape: (b) header $header: cannot append"
fi
if (: >/usr/bin/rig-escape-proof) 2>/dev/null; then
  echo "escape: (b) new file /usr/bin/rig-escape-proof: WRITABLE (created)"
else
  echo "escape: (b) new file /usr/bin/rig-escape-proof: cannot create"
fi

# (c) the network: a TCP connection to a port the test listens on, on the host's loopback
if bash -c "echo rig-escape-proof >/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
  echo "escape: (c) network 127.0.0.1:$port: CONNECTED"
else
  echo "escape: (c) network 127.0.0.1:$port: cannot connect"
fi
exit 0
