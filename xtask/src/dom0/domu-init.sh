#!/bin/busybox sh
# A Linux domU's /init (the small initramfs fv's linux-domu.cfg example boots): busybox
# and a shell on its console (hvc0), which dom0 reaches with `fv console`; the PV
# frontends (eth0, /dev/xvd*) and ext4, so that `mount /dev/xvda /mnt` works; eth0 comes
# up in the background (DHCP, or the ip= fv puts on the command line from xm's
# ip/netmask/gateway settings).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run /mnt
# ext4's checksums need crc32c (a soft dependency) before jbd2 and ext4.
for m in xen-netfront xen-blkfront crc32c_generic crc16 mbcache jbd2 ext4; do
    insmod /lib/modules/$m.ko
done
hostname domU
/sbin/net-up >/run/net-up.log 2>&1 &
# What a specialised initramfs adds (the device bench's TCP sink), in the background.
[ -x /etc/rc.local ] && /etc/rc.local </dev/null >/run/rc.local.log 2>&1 &
echo "domU: Linux $(uname -r) ready"
exec setsid cttyhack sh -l
