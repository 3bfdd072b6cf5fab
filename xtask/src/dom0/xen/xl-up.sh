#!/bin/sh
# Xen 4.17's dom0 side, brought up on Debian's kernel with the busybox initramfs (what
# `xtask::xen_xl` boots): the virtio drivers (dom0 owns the QEMU machine's devices under
# Xen), xenstored, dom0's own xenstore entries (xen-init-dom0), xenconsoled, netback and
# blkback, and the bridge xenbr0 with the first NIC as its uplink and dom0's address.
#   xl-up [DOM0_ADDRESS/PREFIX]
export PATH=/bin:/sbin:/usr/bin:/usr/lib/xen-4.17/bin
export LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu
fail() { echo "xl-up: $*"; cat $log 2>/dev/null; exit 1; }
# The daemons get no part of this script's output: its caller reads that to EOF.
log=/var/log/xen/xl-up.log
quiet() { "$@" </dev/null >>$log 2>&1; }
# The toolstack's state on a tmpfs of its own: the initramfs' root is nearly full.
mkdir -p /var
mount -t tmpfs -o size=32m,mode=755 tmpfs /var || fail "mount /var"
mkdir -p /var/lib/xen /var/lib/xenstored /var/log/xen/console /var/lock /run/xen \
    /run/xenstored
ln -s /run /var/run
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
    failover net_failover virtio_net virtio_blk; do
    insmod /lib/modules/$m.ko || fail "insmod $m"
done
# Both daemons run as background jobs of this script, not forked by themselves: here
# xenstored's own fork never returned, and xenconsoled's forked daemon died at once.
xenstored --no-fork --pid-file /run/xenstored.pid </dev/null >>$log 2>&1 &
tries=0
until xenstore-exists / 2>/dev/null; do
    tries=$((tries + 1))
    [ $tries -gt 100 ] && fail "xenstored does not answer"
    sleep 0.1
done
quiet xen-init-dom0 || fail "xen-init-dom0"
xenconsoled --interactive --pid-file=/run/xenconsoled.pid </dev/null >>$log 2>&1 &
sleep 1
pidof xenconsoled >/dev/null || fail "xenconsoled did not start"
for m in xen-netback xen-blkback llc stp bridge; do
    insmod /lib/modules/$m.ko || fail "insmod $m"
done
tries=0
while [ ! -e /sys/class/net/eth0 ]; do
    tries=$((tries + 1))
    [ $tries -gt 100 ] && fail "no eth0"
    sleep 0.1
done
brctl addbr xenbr0 || fail "brctl addbr"
brctl addif xenbr0 eth0 || fail "brctl addif"
ip link set lo up
ip link set eth0 up
ip link set xenbr0 up
[ -n "$1" ] && { ip addr add "$1" dev xenbr0 || fail "ip addr add $1"; }
echo "xl-up: ready"
