#!/bin/busybox sh
# A Linux domU's /init (the small initramfs fv's linux-domu.cfg example boots): busybox
# and a shell on its console (hvc0), which dom0 reaches with `fv console`.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
hostname domU
echo "domU: Linux $(uname -r) ready"
exec setsid cttyhack sh -l
