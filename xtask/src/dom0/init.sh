#!/bin/busybox sh
# dom0's /init (the initramfs `cargo xtask` builds): busybox's tools, the kernel's
# filesystems, the Xen drivers and PV frontends Debian's kernel builds as modules, eth0
# (sbin/net-up, in the background), then a shell on the console (hvc0).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /tmp /run
mount -t devpts devpts /dev/pts
# dom0 is privileged but not Xen's "initial domain": privcmd would otherwise limit it to
# one target domain, and the control tool needs every domain.
insmod /lib/modules/xen-privcmd.ko unrestricted=1
for m in xen-evtchn xen-gntdev xen-gntalloc xenfs; do
    insmod /lib/modules/$m.ko
done
mount -t xenfs xenfs /proc/xen
# The PV frontends: the hypervisor's vif (dom0's eth0, unless started with
# dom0_vif=none) and any disk given to dom0.
for m in xen-netfront xen-blkfront; do
    insmod /lib/modules/$m.ko
done
hostname dom0
# In the background: the shell does not wait for eth0 or a DHCP server.
/sbin/net-up >/run/net-up.log 2>&1 &
echo "dom0: Linux $(uname -r) ready"
exec setsid cttyhack sh -l
