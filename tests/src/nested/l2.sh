#!/bin/sh
# The nested bed's helper, run in the host VM (L1): starts a nested guest (L2) and talks to
# its shell (through `vfmig-echo shell`: L1's busybox has no client for unix sockets).
#
#   l2 start NAME VF INCOMING   VF: a PCI address for vfio-pci, or -; INCOMING: a migration
#                               URI to wait on, or -
#   l2 up NAME SECONDS          wait until the guest has booted
#   l2 sh NAME COMMAND...       run COMMAND in the guest: its output and status
#
# Nothing stops the guests: they end with L1.
set -u
dir=/tmp/l2-$2
case $1 in
start)
    mkdir -p "$dir"
    rm -f "$dir"/*.sock
    vf=
    [ "$3" != - ] && vf="-device vfio-pci,host=$3,id=vf,bus=rp1,rombar=0,failover_pair_id=vfmig"
    incoming=
    [ "$4" != - ] && incoming="-incoming $4"
    # tb-size: TCG's translation cache defaults to 1 GiB, more than L1 has for two guests.
    # zero-page-detection=none: this nearly empty guest's zero pages would otherwise drain
    # past vfmig's hold throttle while the guest, TCG inside TCG, takes some 15 s to save its
    # state (0.1 s on the main bed), and vfmig would give the migration up (seen). Sent in
    # full, they drain at the throttle's pace, as a guest's pages with data in them do.
    # shellcheck disable=SC2086
    setsid qemu-system-x86_64 -accel tcg,tb-size=64 -M q35 -m 256 -smp 1 -nodefaults \
        -global migration.zero-page-detection=none \
        -display none -no-reboot -kernel /nested/vmlinuz -initrd /nested/initramfs.gz \
        -append "$(cat /tmp/l2-cmdline)" -serial "file:$dir/console.log" \
        -qmp "unix:$dir/qmp.sock,server=on,wait=off" \
        -device virtio-serial-pci,id=vser0 \
        -chardev "socket,id=agent,path=$dir/agent.sock,server=on,wait=off" \
        -device virtserialport,bus=vser0.0,chardev=agent,name=org.vfmig.agent.0 \
        -chardev "socket,id=shell,path=$dir/shell.sock,server=on,wait=off" \
        -device virtserialport,bus=vser0.0,chardev=shell,name=org.vfmig.test.shell \
        -device pcie-root-port,id=rp1,chassis=1,slot=1 $vf $incoming \
        </dev/null >"$dir/qemu.log" 2>&1 &
    echo $! >"$dir/pid"
    ;;
up)
    i=0
    until grep -q "vfmig-init: guest up" "$dir/console.log" 2>/dev/null; do
        if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null || [ $i -ge $(($3 * 2)) ]; then
            echo "$2 did not boot within $3 s; QEMU said: $(cat "$dir/qemu.log")"
            tail -20 "$dir/console.log"
            exit 1
        fi
        sleep 0.5
        i=$((i + 1))
    done
    ;;
sh)
    shift 2
    exec vfmig-echo shell "$dir/shell.sock" "$*"
    ;;
esac
