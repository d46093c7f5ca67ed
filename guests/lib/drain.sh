# shellcheck shell=sh
# drain PORT: bytes written to a tty drain at the UART's pace: wait until the port's transmit
# counter settles, or the end of what was written is lost when the guest powers off.
# Sourced by the initramfs guest's /init and the crash kernel's /init.
drain() {
  last=""
  tries=0
  while [ "$tries" -lt 200 ]; do
    cur=$(grep "^$1:" /proc/tty/driver/serial 2>/dev/null | grep -o 'tx:[0-9]*')
    [ -n "$cur" ] && [ "$cur" = "$last" ] && return 0
    [ -z "$cur" ] && { sleep 1; return 0; }
    last=$cur
    tries=$((tries + 1))
    sleep 0.05
  done
}
