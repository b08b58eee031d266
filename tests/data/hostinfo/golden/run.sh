#!/bin/sh
# Run upstream's hostinfo (golden/main.go built in an elemental-operator checkout) on a recorded
# tree, in a private network and UTS namespace whose interfaces carry the tree's addresses: ghw reads
# /sys and /proc under GHW_CHROOT, but upstream's IP lists and hostname come from the live system.
#   run.sh <hostinfo-golden binary> <tree name> [ethtool]
# as root; writes <tree>.golden.json and <tree>.ip-addr.json, or with "ethtool" <tree>.ethtool.golden.json,
# made with ghw's tools enabled and ../ethtool/ethtool (recorded outputs) first on PATH.
set -eu
bin=$1; name=$2; mode=${3:-}
here=$(cd "$(dirname "$0")/.." && pwd)
tree=$here/$name
exec env MODE="$mode" ETHTOOL_DIR="$here/ethtool" unshare -n -u sh -eu -c '
addr() { ip link add "$1" type veth peer name "p-$1"; ip link set "$1" addrgenmode none; ip link set "$1" up; }
case "$1" in
this-vm)
  addr eth0
  ip addr add 192.0.2.2/24 dev eth0
  ip -6 addr add fd00::2/64 dev eth0 nodad
  ip -6 addr add fe80::fc:ff:fe00:1/64 dev eth0 nodad ;;
qemu-q35)
  addr enp1s0; addr eth1; addr br0
  ip addr add 10.0.2.15/24 dev enp1s0
  ip addr add 10.0.2.16/24 dev enp1s0
  ip -6 addr add fd00::15/64 dev enp1s0 nodad
  ip -6 addr add fe80::5054:ff:fe12:3456/64 dev enp1s0 nodad
  ip addr add 192.168.100.1/24 dev br0 ;;
esac
hostname "$(cat "$2/proc/sys/kernel/hostname")"
if [ "$MODE" = ethtool ]; then
  HOME=/nonexistent PATH="$ETHTOOL_DIR:$PATH" GHW_CHROOT="$2" "$3" > "$2.ethtool.golden.json"
else
  ip -j addr > "$2.ip-addr.json"
  HOME=/nonexistent GHW_CHROOT="$2" GHW_DISABLE_TOOLS=1 "$3" > "$2.golden.json"
fi
' run "$name" "$tree" "$bin"
