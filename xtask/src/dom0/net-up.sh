#!/bin/busybox sh
# Brings the first network interface (netfront's eth0) up, in the background of /init:
# with the kernel command line's ip= when it has one (the format of Linux's
# Documentation/admin-guide/nfs/nfsroot.rst, which Debian's kernel does not act on
# itself: CONFIG_IP_PNP is off), else by DHCP (busybox udhcpc and its default script).
# Writes only to its log (/run/net-up.log): the console is the shell's.
export PATH=/bin:/sbin
dev=eth0
conf=
for word in $(cat /proc/cmdline); do
    case "$word" in
        ip=*) conf=${word#ip=} ;;
    esac
done
case "$conf" in
    off | none) echo "net-up: ip=$conf: no network"; exit 0 ;;
    "" | dhcp | on | any | both | bootp | rarp) client=; auto=dhcp ;;
    *)
        old_ifs=$IFS
        IFS=:
        # client:server:gateway:netmask:hostname:device:autoconf
        set -- $conf
        IFS=$old_ifs
        client=$1 gateway=$3 netmask=$4 host=$5 auto=$7
        [ -n "$6" ] && dev=$6
        ;;
esac
# The interface appears when netfront connects to its backend, or never (no vif, or a
# hypervisor started with dom0_vif=none): a few seconds at most.
tries=0
while [ ! -e /sys/class/net/$dev ]; do
    tries=$((tries + 1))
    if [ $tries -gt 50 ]; then
        echo "net-up: no $dev after 5 s: no network"
        exit 0
    fi
    sleep 0.1
done
ip link set lo up
ip link set $dev up
[ -n "$host" ] && hostname "$host"
if [ -n "$client" ]; then
    if [ -n "$netmask" ]; then
        ifconfig $dev "$client" netmask "$netmask" up
    else
        ifconfig $dev "$client" up
    fi
    [ -n "$gateway" ] && route add default gw "$gateway" dev $dev
    echo "net-up: $dev $client (ip= from the kernel command line)"
    exit 0
fi
case "$auto" in
    "" | off | none) echo "net-up: $dev up, no address (ip= without one)"; exit 0 ;;
esac
# -b: keep trying in the background if no server answers at once.
exec udhcpc -i $dev -b -t 5 -T 2 -s /usr/share/udhcpc/default.script
