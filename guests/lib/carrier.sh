# shellcheck shell=sh
# carrier_wait CHANNEL NEEDED: a snapshot's boot (rig/artifacts/media.py, rig/lanes/snapshots.py).
# Load the CD-ROM's drivers listed in /lib/rig-carrier/order, say `RIG-SNAPSHOT ready` on
# CHANNEL and wait: the host saves the machine here, and every restore swaps the CD's medium
# for a carrier (a header line `RIGCARRIER1 <length> <sha256>` in the first 2048-byte block,
# then a gzipped cpio), unpacked at / once its sha256 matches and it holds the file NEEDED.
# Restored, the carrier is there at once; a guest that never gets one stops (after about 60 s
# of its own time: the host saves it within seconds of guest time), never hangs.
# Sourced by the initramfs guest's /init and the nested lane's L1 /init.
take_carrier() {
  blockdev --flushbufs /dev/sr0 2> /dev/null || return 1
  # shellcheck disable=SC2046  # the header's words, split on purpose
  set -- "$1" $(dd if=/dev/sr0 bs=2048 count=1 2> /dev/null | head -c 200 | head -n 1 | tr -dc 'A-Za-z0-9 ')
  [ "$2" = RIGCARRIER1 ] && [ "$#" = 4 ] || return 1
  dd if=/dev/sr0 bs=2048 skip=1 count=$((($3 + 2047) / 2048)) 2> /dev/null | head -c "$3" > /carrier.gz
  [ "$(sha256sum /carrier.gz | cut -d ' ' -f 1)" = "$4" ] || return 1
  (cd / && gunzip -c /carrier.gz | cpio -idu 2> /dev/null) || return 1
  rm -f /carrier.gz
  [ -f "$1" ]
}
carrier_wait() {
  while read -r ko; do insmod "/lib/rig-carrier/$ko"; done < /lib/rig-carrier/order
  tries=0
  while [ ! -b /dev/sr0 ] && [ "$tries" -lt 100 ]; do sleep 0.1; tries=$((tries + 1)); done
  echo "RIG-SNAPSHOT ready sr0=$([ -b /dev/sr0 ] && echo yes || echo no)" > "$1"
  tries=0
  until take_carrier "$2"; do
    tries=$((tries + 1))
    if [ "$tries" -gt 300 ]; then
      echo "RIG-SNAPSHOT no-carrier" > "$1"
      poweroff -f
    fi
    sleep 0.2
  done
}
